"""The plan of --image: the engine, the images folder's rules, and the pre-flight that sizes the images."""

import os

from ..casa.casa_engine import native_output_into, native_stdout_silenced
from ..casa.ms_imaging import read_ms_for_imaging, require_baselines_to_image, virtual_spw_map
from ..casa.pipeline_calls import grid_options_given, pipeline_grid_refusal
from ..casa.pipeline_engine import pipeline_grid_support
from ..contdat.against_ms import contdat_preflight
from ..contsub.line_update import continuum_by_spw, expected_line_record, line_ms_decision, say_line_decisions
from ..core.layout import line_ms_path
from ..core.messages import ReprocessingError, UsageError, one_line, say
from ..imaging.archive_compare import find_archive_products
from ..imaging.beams import check_target_before_tclean
from ..imaging.image_casa import plan_casa_images, require_image_space
from ..imaging.image_publish import check_no_collisions, check_reused_images_dir
from ..imaging.image_update import check_update_names, decide_images, say_decisions
from ..imaging.products import ous_from_path
from ..steps.contsub_fast import choose_contsub_fast_method
from ..steps.image import choose_imaging_engine, continuum_channel_finder, expected_finals, imaging_processes, observed_first, run_image
from .planning import Step, casa_for_planning, check_free_space
from .resources import ImageEstimate, plan_image_resources


def plan_image(plan):
    delivery, request = plan.delivery, plan.request.image
    engine = choose_imaging_engine(request.engine)
    images = request.images_dir
    delivery.check_output_folder(images, '--image', also=[request.archive_products])  # before anything is written
    if images.exists() and not images.is_dir():
        raise ReprocessingError('%s exists and is not a directory — choose another name with --image DIR' % images)
    update = request.update
    if update and engine != 'casa':
        raise ReprocessingError('--update works with the CASA imaging engine (the pipeline\'s imaging parameters '
                                'are not recorded) — add --engine casa')
    if images.is_dir() and any(images.iterdir()) and not update:
        if not request.reuse_images:
            raise ReprocessingError('the images directory %s exists and is not empty — choose another name '
                                    'with --image DIR, move it away, or add --reuse-images' % images)
        check_reused_images_dir(images, request.specmodes)
    makes_line_ms = plan.request.contsub is not None
    cubes = [mode for mode in request.specmodes if mode in ('cube', 'repBW')]
    if cubes and not makes_line_ms and not delivery.targets_line:
        if not request.allow_cubes_with_continuum:
            raise ReprocessingError(
                'no uid*_targets_line.ms, so %s images would contain the continuum — add --contsub_fast (or '
                '--contsub) to make the line MSes first, leave them out (--specmodes mfs,cont), or add '
                '--allow-cubes-with-continuum' % '/'.join(cubes))
        plan.notes.append('%s images are made from uid*_targets.ms: they contain the continuum '
                          '(--allow-cubes-with-continuum)' % '/'.join(cubes))
    if {'mfs', 'cont'} & set(request.specmodes) and not delivery.contdat.is_file():
        plan.notes.append('no caltables/cont.dat: mfs/cont images use every channel, lines included')
    limits = [n for n in ('maxproductsize', 'maxcubesize', 'maxcubelimit') if getattr(request, n) is not None]
    if engine == 'casa' and (limits or not request.mitigation):
        plan.notes.append('%s only apply to the pipeline\'s size mitigation: the CASA engine checks the free '
                          'disk instead' % ', '.join('--' + n for n in limits or ['no-mitigation']))
    if engine == 'pipeline' and grid_options_given(request):  # through hif_makeimlist, where the release takes them
        refusal = pipeline_grid_refusal(request, pipeline_grid_support())
        if refusal:
            raise UsageError(refusal)
    if request.archive_products is not None:
        find_archive_products(delivery.root, request.archive_products)  # a folder without archive images stops here
    if plan.request.jobs and engine == 'pipeline':
        plan.notes.append('--jobs %d: the pipeline makes its images in this process (under mpicasa, on its MPI '
                          'servers); the CASA engine (--engine casa) makes them in worker processes'
                          % plan.request.jobs)
    plan.imaging_engine = engine
    engine_name = 'ALMA pipeline' if engine == 'pipeline' else 'CASA tclean, no pipeline'
    inputs = list(delivery.targets) + ([] if makes_line_ms else list(delivery.targets_line) if cubes else [])
    plan.steps.append(Step('image', 'images %s (%s) into %s' % (','.join(request.specmodes), engine_name, images),
                           inputs, [images], 0, run_image))


# --- The plan's pre-flight: what the images will take, before the first long step --



def preflight_images(plan):
    """Size the image products from the MS metadata while planning (--dry-run too); stop if they cannot fit.

    Called by run() right after make_plan (which stays free of CASA), before the first step.
    CASA is loaded to read the measurement sets' metadata (read-only) and logs nowhere: a plan
    writes no file, and the run's log is chosen when its first step starts.  The images are sized
    with the pipeline-free engine's heuristics, which follow the pipeline's, so the pipeline engine
    gets the same estimate (with its iter0 images), before any size mitigation of its own.
    """
    delivery, request, engine = plan.delivery, plan.imaging, plan.imaging_engine
    casa = casa_for_planning()
    makes_line_ms = plan.request.contsub is not None
    try:
        with native_output_into(os.devnull), native_stdout_silenced():
            targets = sorted((read_ms_for_imaging(casa, ms) for ms in delivery.targets), key=observed_first)
            # line MSes this run makes have the spws and channels of the targets MSes they come from
            lines = [] if makes_line_ms else sorted(
                (read_ms_for_imaging(casa, ms) for ms in delivery.targets_line), key=observed_first)
            require_baselines_to_image(targets + lines)
            jobs, _notes = plan_casa_images(casa, request, targets=targets, lines=lines,
                                            channels_for=_every_channel, contdat=None,
                                            ous=ous_from_path(delivery.root))
    except RuntimeError as error:
        raise ReprocessingError('cannot read the measurement sets\' metadata to plan the images (%s) — check '
                                'the measurement sets in %s' % (one_line(error), delivery.ms_dir))
    if not jobs and engine == 'casa':
        raise ReprocessingError('nothing to image with --specmodes %s in these measurement sets — choose other '
                                'specmodes, fields or spws' % ','.join(request.specmodes))
    check_target_before_tclean(request.beam, jobs, targets=targets, spw_map=virtual_spw_map(targets),
                               robust=request.robust, uvrange=request.uvrange)
    plan.image_jobs = imaging_processes(plan.request.jobs, len(jobs), engine=engine)
    plan.image_resources = plan_image_resources(plan, jobs)  # may lower plan.image_jobs, or refuse in one line
    images_dir = request.images_dir
    delivered, peak, available = require_image_space(jobs, folder=images_dir, all_products=request.all_products,
                                                     iterations=2 if engine == 'pipeline' else 1)
    plan.image_estimate = ImageEstimate(len(jobs), delivered, peak, available, engine,
                                        plan.image_jobs if engine == 'casa' else None)
    if images_dir.is_dir() and request.update:
        check_update_names(jobs, images_dir, ous=ous_from_path(delivery.root), expected_names=lambda job: [
            name for p in expected_finals([job]) for name in (p.fits_name(ous_from_path(delivery.root)), p.path.name)])
    elif images_dir.is_dir():  # --reuse-images: none of this run's names may be taken
        expected = expected_finals(jobs)
        ous = ous_from_path(delivery.root)
        names = [p.fits_name(ous) for p in expected]
        if engine == 'casa':  # the pipeline's CASA images carry its stage number, known only when it runs
            names += [p.path.name for p in expected]
        check_no_collisions(images_dir, names)
    # the whole plan's free-disk check, again, with the images (beside, e.g., this run's line MSes)
    plan.steps[:] = [step._replace(extra_bytes=peak) if step.function is run_image else step
                     for step in plan.steps]
    check_free_space(plan)
    return plan.image_estimate


def _every_channel(info, field, spw_id, virtual_id):
    """Channel selection while sizing images: the channels do not change an mfs image's size."""
    return '', None


def preview_update(plan):
    """--dry-run --update: which line MSes and images would be kept, which remade and why, and how long the
    remade images took when last made.  Reads the measurement sets and cont.dat with CASA; writes nothing."""
    delivery, request = plan.delivery, plan.request
    casa = casa_for_planning()
    with native_output_into(os.devnull), native_stdout_silenced():
        say_lines = []
        line_records = {}
        if request.contsub is not None and request.contsub.engine == 'casa':
            method = choose_contsub_fast_method(request.contsub, delivery, delivery.targets)[0]
            analysis = contdat_preflight(plan, casa)
            for ms in delivery.targets:
                expected = expected_line_record(ms, method='uvcontsub', continuum=continuum_by_spw(
                    analysis, ms, fitorder=request.contsub.fitorder)) if method == 'uvcontsub' else expected_line_record(
                    ms, method='uvcont tables', continuum={}, tables=list(delivery.uvcont_tables))
                keep, why = line_ms_decision(ms, expected)
                say_lines.append((ms, keep, why))
                line_records[line_ms_path(ms).name] = expected
        decisions = None
        lines = list(delivery.targets_line)
        if request.image is not None and (lines or not {'cube', 'repBW'} & set(plan.imaging.specmodes)):
            imaging = plan.imaging
            targets = sorted((read_ms_for_imaging(casa, ms) for ms in delivery.targets), key=observed_first)
            line_infos = sorted((read_ms_for_imaging(casa, ms) for ms in lines), key=observed_first)
            channels_for, contdat = (None, None)
            if {'mfs', 'cont'} & set(imaging.specmodes):
                channels_for, contdat = continuum_channel_finder(plan, casa)
            jobs, _notes = plan_casa_images(casa, imaging, targets=targets, lines=line_infos,
                                            channels_for=channels_for, contdat=contdat,
                                            ous=ous_from_path(delivery.root))
            decisions = decide_images(casa, jobs, imaging, images_dir=imaging.images_dir,
                                      infos=targets + line_infos, delivery_ms_dir=delivery.ms_dir,
                                      ous=ous_from_path(delivery.root), line_records=line_records,
                                      estimated_geometry=True)
    if say_lines:
        say_line_decisions(say_lines, delivery)
    if decisions is not None:
        say_decisions(decisions, dry_run=True)
    elif request.image is not None:
        say('  --update: no line MSes yet, so every image is made')
