"""Step --image: make the images with the chosen engine, publish them, describe them."""

import datetime
import functools
import sys
from pathlib import Path

from ..casa.data_columns import has_selfcal_column
from ..casa.eb_tasks import eb_task
from ..casa.mpi import mpi_servers_available
from ..casa.ms_imaging import read_ms_for_imaging, virtual_spw_map
from ..casa.pipeline_engine import pipeline_is_installed, stage_for_pipeline_contsub
from ..casa.workers import EbWorkers, resolve_jobs
from ..contdat.against_ms import contdat_preflight
from ..core.fileops import changed_files, directory_bytes, file_states, human_bytes, relative_path, remove_tree
from ..core.layout import Delivery
from ..core.messages import ReprocessingError, say
from ..imaging.archive_compare import compare_with_archive, find_archive_products, format_comparison
from ..imaging.image_casa import plan_casa_images, require_image_space
from ..imaging.image_pipeline import run_pipeline_imaging
from ..imaging.image_publish import format_image_table, image_table, publish_products
from ..imaging.image_resume import resume_finished
from ..imaging.image_update import expected_record, decide_images, describe_kept, discard_retired, image_stem, kept_rows, retire_stale_images, say_decisions, update_summary, write_image_records
from ..imaging.products import ImageProduct, ous_from_path
from ..imaging.cell_beams import KnownBeams, psf_beam_finder
from ..imaging.cube_chunks import MIN_CHUNK_NCHAN, chunk_clean, chunk_dirty, cube_chunking
from ..imaging.cube_split import make_split_cube
from ..imaging.memory_model import job_memory
from ..imaging.tclean_run import run_image_job, run_tclean_jobs
from ..run.run_state import pause_point
from ..run.staging import make_shadow, space_free_path


def choose_imaging_engine(requested):
    """'pipeline' or 'casa': auto takes the pipeline when this Python can import it."""
    if requested == 'casa':
        return 'casa'
    available = 'pipeline' in sys.modules or pipeline_is_installed()
    if requested == 'pipeline' and not available:
        raise ReprocessingError('--engine pipeline: the ALMA pipeline cannot be imported in this Python (%s) — '
                                'run inside "casa --pipeline", or use --engine casa' % sys.executable)
    return 'pipeline' if available else 'casa'


# --- The image step --------------------------------------------------------------

def _say_notes(notes):
    for note in notes:
        say('  note: ' + note)


def continuum_channel_finder(plan, casa):
    """(info, field, real spw, virtual spw) -> (TOPO channels of cont.dat's ranges or '' for all, note)."""
    delivery = plan.delivery
    if not delivery.contdat.is_file():
        def without_contdat(info, field, spw_id, virtual_id):
            return '', 'no cont.dat: mfs/cont images use every channel, lines included'
        return without_contdat, None
    analysis = contdat_preflight(plan, casa)
    by_ms = {Path(path).name: selections for path, selections in analysis.selections.items()}

    def channels(info, field, spw_id, virtual_id):
        for selection in by_ms.get(info.name, []):
            if selection.field_name == field and selection.spw_id == spw_id:
                if selection.chan:
                    return selection.chan, None
                return '', ('cont.dat gives no continuum ranges for field %s spw %d (%s): its mfs/cont images use '
                            'every channel, as the pipeline does' % (field, virtual_id, selection.reason))
        return '', ('cont.dat has no block for field %s spw %d: its mfs/cont images use every channel, as the '
                    'pipeline does' % (field, virtual_id))
    return channels, analysis.contdat


def run_image(plan, state, step, casa):
    """Make the images with the chosen engine, then publish the products into the images folder."""
    request, engine = plan.imaging, plan.imaging_engine
    delivery = Delivery(plan.delivery.root)  # listed again: --contsub may have just made the line MSes
    images_dir = request.images_dir
    lines = list(delivery.targets_line)
    if {'cube', 'repBW'} & set(request.specmodes) and not lines and not request.allow_cubes_with_continuum:
        raise ReprocessingError('no uid*_targets_line.ms, so cube images would contain the continuum — make them '
                                'with --contsub_fast (or --contsub), or add --allow-cubes-with-continuum')
    user_files = file_states(list(delivery.targets) + lines)
    ous = ous_from_path(delivery.root)
    say('  engine: %s; specmodes %s' % ('ALMA pipeline' if engine == 'pipeline' else 'CASA tclean (no pipeline)',
                                         ','.join(request.specmodes)))
    redone = {}  # channels cube health cleaned again, by tclean job (pipeline-free engine)
    if engine == 'pipeline':
        # plotms keeps the directory of the first pipeline step of this process, and the pipeline
        # gives it relative paths: after --contsub, imaging must run where the contsub ran.
        work_dir = state.pipeline_dir or delivery.work_dir / (
            'pipeline-image-%s' % datetime.datetime.now().strftime('%Y%m%dT%H%M%S'))
        work_dir.mkdir(parents=True, exist_ok=True)
        # hifa_importdata writes into what it imports: it gets shadows (stand-ins) in its working directory
        targets = list(stage_for_pipeline_contsub(state, delivery.targets, work_dir, copy=False).values())
        line_shadows = list(stage_for_pipeline_contsub(state, lines, work_dir, copy=False).values())
        selfcal = [shadow for shadow in targets + line_shadows if has_selfcal_column(casa, shadow)]
        inputs = {'targets': targets, 'targets_line': line_shadows, 'selfcal': selfcal}
        products = run_pipeline_imaging(plan, state, casa, request, inputs=inputs, work_dir=work_dir)
        notes = []
    else:
        # The workers load CASA while this process reads the measurement sets and plans: started here, not when
        # the images and chunks are known, a cube of 254 channels in 8 chunks on 2 workers took 20.4 s against
        # 21.3 s (means of 3, alternated); narrow() then fits them to the run's own count.
        count, share_cores = planned_workers(plan)
        with EbWorkers.started(count, state=state, share_cores=share_cores) as workers:
            work_dir = delivery.imaging_dir
            if work_dir.exists():
                say('  removing %s/ left by an earlier run (its products were published then, or never)'
                    % relative_path(work_dir, delivery.root))
                remove_tree(work_dir)
            state.will_create(work_dir)
            staging = state.staging_dir / 'image'
            state.will_create(staging)
            work_dir.mkdir(parents=True)
            # tclean is given these paths (several MSes per image): none may have a space (space_free_path)
            reachable = space_free_path(state, staging)
            target_shadows = [reachable / make_shadow(ms, staging / ms.name, short_links=True).name
                              for ms in delivery.targets]
            line_shadows = [reachable / make_shadow(ms, staging / ms.name, short_links=True).name for ms in lines]
            say('  reading %d measurement sets' % (len(target_shadows) + len(line_shadows)))
            # the shadows' metadata is their MSes' (read by the plan's checks), with the shadows' paths
            targets = sorted((read_ms_for_imaging(casa, ms, at=shadow)
                              for ms, shadow in zip(delivery.targets, target_shadows)), key=observed_first)
            line_infos = sorted((read_ms_for_imaging(casa, ms, at=shadow) for ms, shadow in zip(lines, line_shadows)),
                                key=observed_first)
            channels_for, contdat = None, None
            if {'mfs', 'cont'} & set(request.specmodes):
                channels_for, contdat = continuum_channel_finder(plan, casa)
            # the cells come from PSFs, as the pipeline's (one mfs PSF per spw that decides a cell)
            beam_for = psf_beam_finder(casa, request, infos=targets, spw_map=virtual_spw_map(targets),
                                       work_dir=work_dir, known_beams=KnownBeams(delivery.known_beams_file, dict(
                                           zip(target_shadows, delivery.targets))))
            jobs, notes = plan_casa_images(casa, request, targets=targets, lines=line_infos, channels_for=channels_for,
                                           contdat=contdat, ous=ous, beam_for=beam_for)
            for field, virtual_id in beam_for.kept:
                say('  the cell of spw %d (%s) from the PSF beam an earlier run made of the same data and settings '
                    '(%s)' % (virtual_id, field, relative_path(delivery.known_beams_file, delivery.root)))
            _say_notes(notes)
            if not jobs:
                raise ReprocessingError('nothing to image with --specmodes %s (see the notes above) — choose other '
                                        'specmodes, fields or spws' % ','.join(request.specmodes))
            decisions, aside = None, None
            if request.update:
                decisions = decide_images(casa, jobs, request, images_dir=images_dir, infos=targets + line_infos,
                                          delivery_ms_dir=delivery.ms_dir, ous=ous)
                say_decisions(decisions)
                jobs = [decision.job for decision in decisions if decision.reasons]
            if not jobs:  # --update: every image is kept
                workers.narrow(1)
                return _kept_only_result(plan, state, decisions, images_dir=images_dir, notes=notes, work_dir=work_dir,
                                         staging=staging, user_files=user_files)
            # what a stopped run finished with the same inputs and parameters is kept (image_resume)
            records = dict((job.name, expected_record(casa, job, request, infos=targets + line_infos,
                                                      delivery_ms_dir=delivery.ms_dir, ous=ous)) for job in jobs)
            chunks = split_cubes(plan, jobs)
            for name, ranges in chunks.items():  # a cube made otherwise is another product: not kept for this one
                records[name]['parameters']['channel_chunks'] = [[first, count] for first, count in ranges]
            kept = resume_finished(delivery.finished_images_dir, records)
            for name in kept:  # a cube kept whole: its chunks, if a stop left any, are of no more use
                remove_tree(delivery.chunks_dir / name)
            units = sum(len(chunks.get(job.name) or [None]) for job in jobs if job.name not in kept)
            processes = max(1, min(plan.image_jobs, units))  # --update may have kept some too
            _check_image_space([job for job in jobs if job.name not in kept], request, images_dir, processes)
            if decisions is not None:
                aside = retire_stale_images(state, decisions, images_dir=images_dir, expected_names=dict(
                    (image_stem(job, ous), [p.fits_name(ous) for p in expected_finals([job])]
                     + [p.path.name for p in expected_finals([job])]) for job in jobs))
                pause_point('images-set-aside', state)
            seconds = {}
            workers.narrow(processes, share_cores=bool(chunks))
            products = run_tclean_jobs(casa, request, jobs, work_dir=work_dir, state=state, workers=workers,
                                       seconds=seconds, redone=redone, finished_dir=delivery.finished_images_dir,
                                       records=records, kept=kept, chunks=chunks, make_split=functools.partial(
                                           make_split_cube, casa, request, work_dir=work_dir,
                                           store_dir=delivery.chunks_dir))
    if not products:
        raise ReprocessingError('the %s made no images — see the CASA log %s' % (engine, state.casa_logfile))
    if engine != 'pipeline':
        decisions = decisions or decide_images(casa, jobs, request, images_dir=images_dir,
                                               infos=targets + line_infos, delivery_ms_dir=delivery.ms_dir, ous=ous)
    placed = publish_products(state, products, images_dir=images_dir, all_products=request.all_products,
                              ous=ous, casa=casa, before_naming=None if engine == 'pipeline' else functools.partial(
                                  _records_into, decisions, seconds=seconds, ous=ous))
    if engine != 'pipeline':
        remove_tree(staging)
        state.created_for_good(staging)
        remove_tree(work_dir)  # the intermediates (psf, residual, model, ...) unless they were kept
        state.created_for_good(work_dir)
        for finished in (delivery.finished_images_dir, delivery.chunks_dir):  # emptied: every image is published
            if finished.exists():
                remove_tree(finished)
    changed = changed_files(user_files)
    if changed:
        raise ReprocessingError('files of your measurement sets changed during imaging (%s) — this must never '
                                'happen: restore them from the delivery and report it' % ', '.join(changed[:3]))
    if engine != 'pipeline':
        records = dict(images_dir=images_dir, seconds_by_job=seconds, placed=placed, ous=ous)
        write_image_records(decisions, [], state=state, **records)  # at once: the files are this tool's now
        if aside is not None or request.update:
            discard_retired(state, aside)
    table = image_table(casa, placed, ous=ous, thumbnails_dir=delivery.report_dir / 'images', redone=dict(
        (ImageProduct.from_working_name(Path(name + '.image')).archive_stem(ous), channels)
        for name, channels in redone.items()))
    if engine != 'pipeline':
        write_image_records(decisions, table, **records)  # again, with the table's row for later reports
        table = kept_rows(decisions) + table
    comparison = _compare_with_archive(plan, casa, placed, ous)
    fits_count = sum(1 for _p, _c, fits in placed if fits)
    total = sum(directory_bytes(path) for _p, casa_path, fits in placed for path in (casa_path, fits) if path)
    say('  %d images: %d FITS files and %d CASA images, %s, in %s' % (
        len(table), fits_count, len(placed), human_bytes(total), relative_path(images_dir, delivery.root)))
    for line in format_image_table(table):
        say(line)
    return {'outputs': [str(images_dir)], 'engine': engine, 'images': table, 'notes': notes, 'bytes': total,
            'fits': fits_count, 'casa_images': len(placed),
            'update': update_summary(decisions) if plan.imaging.update else {},
            'archive_comparison': comparison}


def _records_into(decisions, folder, placed, *, seconds, ous):
    """A new images folder gets its name with the provenance records of its images in it (publish_products)."""
    write_image_records(decisions, [], images_dir=folder, seconds_by_job=seconds, placed=placed, ous=ous)


# What a cube made in chunks differs by from the one-process cube (README "One cube over several workers").
SPLIT_DIFFERENCE = ('it differs slightly from the cube one tclean makes: briggsbwtaper weights each chunk by '
                    'its own bandwidth (per-plane beams measured within 0.3 %) and automasking follows each '
                    'chunk\'s own cycles (masks of a few channels differ; cube rms measured within 2-6 %)')


def planned_workers(plan):
    """(workers, share_cores) the plan gives the images (1: none), started before the run's own planning: the
    cores shared among them when a cube is made in chunks (EbWorkers.started)."""
    resources = plan.image_resources
    if resources is None:
        return 1, False
    return plan.image_jobs, any(need.chunks for need in resources.needs)


def split_cubes(plan, jobs):
    """{name: [(first channel, count)]} of the cubes made in channel chunks (--split-cube), for the jobs as the
    run made them (their cell from the PSF), with the plan's memory limit; the run says which and why."""
    resources = plan.image_resources
    if resources is None or resources.split == 'no':
        return {}
    chunks = {}
    for job in jobs:
        ranges = cube_chunking(job, split=resources.split, limit=resources.limit, workers=resources.workers)
        if ranges == []:
            raise ReprocessingError('the cube %s (%dx%d x %d channels) does not fit %s even in chunks of %d '
                                    'channels — make its planes smaller (--imsize, --cell), or give a larger '
                                    '--memory-per-worker' % (job.name, job.imsize[0], job.imsize[1], job.nchan,
                                                             resources.limit_text, MIN_CHUNK_NCHAN))
        if ranges:
            chunks[job.name] = ranges
            sizes = sorted(count for _first, count in ranges)
            say('  note: %s is made in %d chunks of %s channels (%s), %s' % (
                job.name, len(ranges), sizes[0] if sizes[0] == sizes[-1] else '%d-%d' % (sizes[0], sizes[-1]),
                'it needs about %s in one process, more than %s allows' % (
                    human_bytes(job_memory(job)), resources.limit_text)
                if resources.limit is not None and job_memory(job) > resources.limit else
                '--split-cube %s' % resources.split, SPLIT_DIFFERENCE))
    return chunks


def _compare_with_archive(plan, casa, placed, ous):
    """The new images beside the archive's (when the delivery has them, or --archive-products points at them)."""
    archive = find_archive_products(plan.delivery.root, plan.imaging.archive_products)
    if archive is None:
        return []
    rows = compare_with_archive(casa, placed, archive, ous=ous, pictures_dir=plan.delivery.report_dir / 'archive')
    say('  compared with the archive\'s images in %s: %d of %d images have a twin' % (
        relative_path(archive, plan.delivery.root), len(rows), len({p.image_key for p, _c, _f in placed})))
    if rows:
        for line in format_comparison(rows):
            say(line)
    return rows


def _kept_only_result(plan, state, decisions, *, images_dir, notes, work_dir, staging, user_files):
    """--update found every requested image up to date: nothing to make, the records' rows are the table."""
    remove_tree(staging)
    state.created_for_good(staging)
    remove_tree(work_dir)
    state.created_for_good(work_dir)
    changed = changed_files(user_files)
    if changed:
        raise ReprocessingError('files of your measurement sets changed during imaging (%s) — this must never '
                                'happen: restore them from the delivery and report it' % ', '.join(changed[:3]))
    table = kept_rows(decisions)
    say('  nothing to image: %s in %s' % (describe_kept(decisions, images_dir),
                                           relative_path(images_dir, plan.delivery.root)))
    for line in format_image_table(table):
        say(line)
    return {'outputs': [str(images_dir)], 'engine': 'casa', 'images': table, 'notes': notes, 'bytes': 0, 'fits': 0,
            'casa_images': 0, 'update': update_summary(decisions)}


def imaging_processes(requested, images, *, engine):
    """Processes making images at once (the plan's answer, Plan.image_jobs): --jobs N, else one per core (each
    image's tclean runs in one process), at most one per image; one under MPI, where tclean itself spreads cubes
    over the servers, and with the pipeline, which images in this process."""
    if engine == 'pipeline' or mpi_servers_available():
        return 1
    return resolve_jobs(requested, max(1, images))


def processes_text(count):
    return ' in %d process%s' % (count, 'es' if count > 1 else '') if count else ''


@eb_task
def image_job(casa, report, **arguments):
    """One pipeline-free image (image_casa.run_image_job), in a worker process or here."""
    return run_image_job(casa, report, **arguments)


@eb_task
def cube_chunk_dirty(casa, report, **arguments):
    """The dirty image of one channel chunk of a cube (imaging/cube_chunks.py), in a worker or an MPI server."""
    return chunk_dirty(casa, report, **arguments)


@eb_task
def cube_chunk_clean(casa, report, **arguments):
    """One channel chunk of a cube cleaned to the whole cube's threshold (imaging/cube_chunks.py)."""
    return chunk_clean(casa, report, **arguments)


def observed_first(info):
    return (info.layout.start, info.name)


def expected_finals(jobs):
    """The final products the jobs will make, named as they will be (for collision checks)."""
    products = []
    for job in jobs:
        extensions = ('image.tt0.pbcor', 'pb.tt0', 'mask', 'alpha', 'alpha.error') \
            if job.deconvolver == 'mtmfs' else ('image.pbcor', 'pb', 'mask')
        products.extend(ImageProduct.from_working_name(Path(job.name + '.' + ext)) for ext in extensions)
    return products


def _check_image_space(jobs, request, images_dir, processes):
    delivered, peak, available = require_image_space(jobs, folder=images_dir, all_products=request.all_products)
    say('  %d images to make%s: about %s of products (%s on disk while imaging), %s free'
        % (len(jobs), processes_text(processes), human_bytes(delivered), human_bytes(peak), human_bytes(available)))
