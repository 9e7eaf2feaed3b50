"""What the images will take besides disk, planned from the measurement sets' metadata alone: the memory of
each worker process and a rough time; how many workers can run side by side; one line for what cannot fit."""

import collections

from ..casa.mpi import mpi_info, mpi_servers_available, tclean_parallel
from ..core.fileops import human_bytes
from ..core.host import available_memory
from ..core.messages import ReprocessingError, duration_text
from ..imaging.image_casa import estimate_image_bytes
from ..imaging.cube_chunks import MIN_CHUNK_NCHAN, cube_chunking
from ..imaging.memory_model import job_channels, job_memory, job_seconds
from ..steps.image import imaging_processes, processes_text

# the images' disk (preflight_images): how many, their products, the peak while imaging, the free bytes
ImageEstimate = collections.namedtuple('ImageEstimate', 'images delivered peak available engine processes')
# memory: of the process making the image, or one chunk of it; chunks: None (one tclean) or [(first, count)]
ImageNeeds = collections.namedtuple('ImageNeeds', 'job disk memory seconds chunks')
# workers: processes making images at once; limit: bytes each may use (None: not checked), and why;
# share: servers a cube's channels are spread over under MPI (1 without); split: --split-cube as it applies
# ('no' under MPI and with the pipeline engine)
ImageResources = collections.namedtuple('ImageResources', 'needs workers limit limit_text share split')


def plan_image_resources(plan, jobs):
    """Each image's disk, memory and time; the workers (plan.image_jobs, fewer when the memory asks for it, unless
    --jobs was given; more when cubes are split in chunks) and the limit per worker; the cubes made in channel
    chunks (--split-cube).  Raises the one line of the largest image that cannot fit."""
    request, workers = plan.request, plan.image_jobs
    mpi = mpi_servers_available()
    servers = max(1, mpi_info().size - 1) if mpi else 1
    split = request.split_cube if plan.imaging_engine == 'casa' and not mpi else 'no'
    if request.split_cube not in ('auto', 'no') and split == 'no':
        plan.notes.append('--split-cube %s: %s' % (request.split_cube, 'under MPI tclean spreads each cube over the '
                                                   'servers itself (parallel=True)' if mpi else
                                                   'the pipeline makes its cubes whole (--engine casa splits them)'))
    whole = dict((job.name, job_memory(job, servers if tclean_parallel(job) else 1)) for job in jobs)
    largest = max(jobs, key=lambda job: whole[job.name])
    available = available_memory()
    limit, limit_text = None, ''
    if request.memory_per_worker is not None:
        limit, limit_text = request.memory_per_worker, '--memory-per-worker %s' % human_bytes(request.memory_per_worker)
    elif available is not None and not mpi:  # under MPI the servers may be on other nodes: only a given limit
        if request.jobs is None and workers > 1 and whole[largest.name] * workers > available:
            fewer = max(1, min(workers - 1, available // whole[largest.name]))
            plan.notes.append('%d images side by side would need about %s of memory, %s is available: %d process%s '
                              'make%s them (give --jobs to choose)' % (
                                  workers, human_bytes(whole[largest.name] * workers), human_bytes(available), fewer,
                                  'es' if fewer > 1 else '', '' if fewer > 1 else 's'))
            workers = fewer
        limit, limit_text = _available_share(available, workers)
    chunks = dict((job.name, cube_chunking(job, split=split, limit=limit, workers=workers)) for job in jobs)
    units = sum(len(ranges) if ranges else 1 for ranges in chunks.values())
    if plan.imaging_engine == 'casa' and units > workers and (request.jobs is not None or split != 'auto'):
        workers = imaging_processes(request.jobs, units, engine=plan.imaging_engine)  # the chunks' workers
        if request.memory_per_worker is None and available is not None and not mpi:
            limit, limit_text = _available_share(available, workers)
            chunks = dict((job.name, cube_chunking(job, split=split, limit=limit, workers=workers)) for job in jobs)
    needs = [ImageNeeds(job, estimate_image_bytes([job])[1], _memory(job, chunks[job.name], whole[job.name]),
                        job_seconds(job), chunks[job.name]) for job in jobs]
    if plan.imaging_engine == 'casa' and limit is not None:
        _refuse_what_cannot_fit(needs, limit, limit_text, workers=workers, mpi=mpi, servers=servers,
                                given=request.memory_per_worker is not None, split=split)
    plan.image_jobs = workers
    return ImageResources(needs, workers, limit, limit_text, servers, split)


def _available_share(available, workers):
    return available // workers, 'the %s available%s' % (human_bytes(available),
                                                        ' / %d workers' % workers if workers > 1 else '')


def _memory(job, chunks, whole):
    """Bytes of the largest process making the job: the whole image, or its largest chunk."""
    return job_memory(job._replace(nchan=max(count for _first, count in chunks))) if chunks else whole


def _refuse_what_cannot_fit(needs, limit, limit_text, *, workers, mpi, servers, given, split):
    unsplittable = [need for need in needs if need.chunks == []]
    if unsplittable:
        need = max(unsplittable, key=lambda n: n.memory)
        job = need.job
        smallest = job_memory(job._replace(nchan=min(MIN_CHUNK_NCHAN, job.nchan)))
        raise ReprocessingError(
            'the cube %s (%dx%d x %d channels) needs about %s of memory in one process even in chunks of %d '
            'channels, more than %s allows — make its planes smaller (--imsize, --cell), give a larger '
            '--memory-per-worker if the machine has it%s' % (
                job.name, job.imsize[0], job.imsize[1], job.nchan, human_bytes(smallest), min(MIN_CHUNK_NCHAN, job.nchan),
                limit_text, ', or run fewer workers (--jobs %d)' % (workers - 1) if workers > 1 and not given else ''))
    largest = max(needs, key=lambda need: need.memory)
    if largest.memory > limit:
        job = largest.job
        raise ReprocessingError(
            'the image %s (%dx%d%s) needs about %s of memory in %s, more than %s allows — %s' % (
                job.name, job.imsize[0], job.imsize[1], ' x %d channels' % job.nchan if job.spectral else '',
                human_bytes(largest.memory), 'each MPI server' if servers > 1 and tclean_parallel(job) else 'one process',
                limit_text, _advice(workers, mpi, given, cube=bool(job.spectral) and split == 'no')))


def _advice(workers, mpi, given, cube=False):
    smaller = 'make it smaller (--imsize, --nchan, --nbins, --spw)'
    if mpi:
        return 'start more MPI servers (mpirun -n), %s, or give a larger --memory-per-worker' % smaller
    fewer = 'run fewer workers (--jobs %d), ' % (workers - 1) if workers > 1 and not given else ''
    chunks = 'make it in channel chunks (--split-cube auto), ' if cube else ''
    return '%s%s%s, give a larger --memory-per-worker if the machine has it, or spread its channels over MPI ' \
           'servers (mpirun, see "Running on a cluster")' % (chunks, fewer, smaller)


def describe_image_resources(resources):
    """The plan's lines (--dry-run): one per image, then the workers' memory and the rough total time."""
    lines = []
    for need in resources.needs:
        job = need.job
        lines.append('    %s: %dx%d%s, about %s on disk, %s%s of memory%s, ~%s' % (
            job.name, job.imsize[0], job.imsize[1], ' x %d channels' % job.nchan if job.spectral else '',
            human_bytes(need.disk), split_text(need.chunks), human_bytes(need.memory),
            ' per MPI server (%d channels each)' % job_channels(job, resources.share)
            if resources.share > 1 and tclean_parallel(job) else ' per worker' if need.chunks else '',
            duration_text(need.seconds)))
    largest = max(need.memory for need in resources.needs)
    total = sum(need.seconds for need in resources.needs) / max(1, resources.workers)
    lines.append('  Memory: about %s for the largest image%s; imaging takes roughly %s (from the image sizes '
                 'only: more data takes longer)' % (
                     human_bytes(largest), ', each worker may use %s (%s)' % (human_bytes(resources.limit),
                                                                            resources.limit_text)
                     if resources.limit is not None else '', duration_text(total)))
    return lines


def split_text(chunks):
    """'made in 4 chunks of 30-32 channels: ' (a split cube), else ''."""
    if not chunks:
        return ''
    sizes = sorted(count for _first, count in chunks)
    return 'made in %d chunks of %s channels: ' % (len(chunks), '%d' % sizes[0] if sizes[0] == sizes[-1]
                                                   else '%d-%d' % (sizes[0], sizes[-1]))


def describe_image_estimate(estimate):
    text = 'Images: %d to make%s, about %s of products (%s on disk while imaging), %s free' % (
        estimate.images, processes_text(estimate.processes), human_bytes(estimate.delivered),
        human_bytes(estimate.peak), human_bytes(estimate.available))
    if estimate.engine == 'pipeline':
        text += ' (sized by the pipeline\'s heuristics, before its size mitigation)'
    return text
