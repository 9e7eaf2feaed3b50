"""What the images will take besides disk, planned from the measurement sets' metadata alone: the memory of
each worker process and a rough time; how many workers can run side by side; one line for what cannot fit."""

import collections

from ..casa.mpi import mpi_info, mpi_servers_available, tclean_parallel
from ..core.fileops import human_bytes
from ..core.host import available_memory
from ..core.messages import ReprocessingError, duration_text
from ..imaging.image_casa import estimate_image_bytes
from ..imaging.memory_model import job_channels, job_memory, job_seconds
from ..steps.image import processes_text

# the images' disk (preflight_images): how many, their products, the peak while imaging, the free bytes
ImageEstimate = collections.namedtuple('ImageEstimate', 'images delivered peak available engine processes')
ImageNeeds = collections.namedtuple('ImageNeeds', 'job disk memory seconds')
# workers: processes making images at once; limit: bytes each may use (None: not checked), and why;
# share: servers a cube's channels are spread over under MPI (1 without)
ImageResources = collections.namedtuple('ImageResources', 'needs workers limit limit_text share')


def plan_image_resources(plan, jobs):
    """Each image's disk, memory and time; the workers (plan.image_jobs, fewer when the memory asks for it, unless
    --jobs was given) and the limit per worker.  Raises the one line of the largest image that cannot fit."""
    request, workers = plan.request, plan.image_jobs
    mpi = mpi_servers_available()
    servers = max(1, mpi_info().size - 1) if mpi else 1
    needs = [ImageNeeds(job, estimate_image_bytes([job])[1], job_memory(job, servers if tclean_parallel(job) else 1),
                        job_seconds(job)) for job in jobs]
    largest = max(needs, key=lambda need: need.memory)
    available = available_memory()
    limit, limit_text = None, ''
    if request.memory_per_worker is not None:
        limit, limit_text = request.memory_per_worker, '--memory-per-worker %s' % human_bytes(request.memory_per_worker)
    elif available is not None and not mpi:  # under MPI the servers may be on other nodes: only a given limit
        if request.jobs is None and workers > 1 and largest.memory * workers > available:
            fewer = max(1, min(workers - 1, available // largest.memory))
            plan.notes.append('%d images side by side would need about %s of memory, %s is available: %d process%s '
                              'make%s them (give --jobs to choose)' % (
                                  workers, human_bytes(largest.memory * workers), human_bytes(available), fewer,
                                  'es' if fewer > 1 else '', '' if fewer > 1 else 's'))
            workers = fewer
        limit = available // workers
        limit_text = 'the %s available%s' % (human_bytes(available), ' / %d workers' % workers if workers > 1 else '')
    if plan.imaging_engine == 'casa' and limit is not None and largest.memory > limit:
        raise ReprocessingError(
            'the image %s (%dx%d%s) needs about %s of memory in %s, more than %s allows — %s' % (
                largest.job.name, largest.job.imsize[0], largest.job.imsize[1],
                ' x %d channels' % largest.job.nchan if largest.job.spectral else '', human_bytes(largest.memory),
                'each MPI server' if servers > 1 and tclean_parallel(largest.job) else 'one process',
                limit_text, _advice(workers, mpi, request.memory_per_worker is not None)))
    plan.image_jobs = workers
    return ImageResources(needs, workers, limit, limit_text, servers)


def _advice(workers, mpi, given):
    smaller = 'make it smaller (--imsize, --nchan, --nbins, --spw)'
    if mpi:
        return 'start more MPI servers (mpirun -n), %s, or give a larger --memory-per-worker' % smaller
    fewer = 'run fewer workers (--jobs %d), ' % (workers - 1) if workers > 1 and not given else ''
    return '%s%s, give a larger --memory-per-worker if the machine has it, or spread its channels over MPI ' \
           'servers (mpirun, see "Running on a cluster")' % (fewer, smaller)


def describe_image_resources(resources):
    """The plan's lines (--dry-run): one per image, then the workers' memory and the rough total time."""
    lines = []
    for need in resources.needs:
        job = need.job
        lines.append('    %s: %dx%d%s, about %s on disk, %s of memory%s, ~%s' % (
            job.name, job.imsize[0], job.imsize[1], ' x %d channels' % job.nchan if job.spectral else '',
            human_bytes(need.disk), human_bytes(need.memory),
            ' per MPI server (%d channels each)' % job_channels(job, resources.share)
            if resources.share > 1 and tclean_parallel(job) else '', duration_text(need.seconds)))
    largest = max(need.memory for need in resources.needs)
    total = sum(need.seconds for need in resources.needs) / max(1, resources.workers)
    lines.append('  Memory: about %s for the largest image%s; imaging takes roughly %s (from the image sizes '
                 'only: more data takes longer)' % (
                     human_bytes(largest), ', each worker may use %s (%s)' % (human_bytes(resources.limit),
                                                                            resources.limit_text)
                     if resources.limit is not None else '', duration_text(total)))
    return lines


def describe_image_estimate(estimate):
    text = 'Images: %d to make%s, about %s of products (%s on disk while imaging), %s free' % (
        estimate.images, processes_text(estimate.processes), human_bytes(estimate.delivered),
        human_bytes(estimate.peak), human_bytes(estimate.available))
    if estimate.engine == 'pipeline':
        text += ' (sized by the pipeline\'s heuristics, before its size mitigation)'
    return text
