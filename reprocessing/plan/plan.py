"""The plan: every decision and check made before the first long step, and the steps to run."""

import collections
import os
import sys

from ..casa.casa_engine import is_monolithic_casa, load_casa, native_output_into, native_stdout_silenced
from ..casa.data_columns import describe_selfcal, survey_data_columns
from ..casa.ms_imaging import read_ms_for_imaging, require_baselines_to_image
from ..casa.ms_tables import check_measurement_set, is_entirely_flagged
from ..casa.pipeline_engine import require_pipeline_for_contsub
from ..casa.workers import resolve_jobs
from ..contdat.against_ms import contdat_preflight, read_delivery_contdat
from ..contsub.line_update import continuum_by_spw, expected_line_record, is_recorded_line_ms, line_ms_decision, say_line_decisions
from ..core.fileops import directory_bytes, file_count, free_bytes, human_bytes, relative_path, removal_blocker, require_free_space
from ..core.layout import WORK_DIR_NAME, line_ms_path
from ..core.messages import ReprocessingError, UsageError, one_line, say, warn
from ..imaging.archive_compare import find_archive_products
from ..imaging.image_casa import plan_casa_images, require_image_space
from ..imaging.image_publish import check_no_collisions, check_reused_images_dir
from ..imaging.image_update import check_update_names, decide_images, say_decisions
from ..imaging.products import ous_from_path
from ..run.interrupted import kept_by_interrupted_run, kept_note
from ..run.staging import is_read_only
from ..steps.check import run_check
from ..steps.cleanup import run_cleanup
from ..steps.combine import run_combine
from ..steps.concat import run_concat
from ..steps.contsub_fast import choose_contsub_fast_method, run_contsub_fast
from ..steps.contsub_pipeline import run_contsub
from ..steps.image import choose_imaging_engine, continuum_channel_finder, expected_finals, observed_first, run_image
from ..steps.weblog import choose_weblog, report_weblog, run_weblog
from .combine_plan import plan_combination


Step = collections.namedtuple('Step', 'name summary inputs outputs extra_bytes function')


class Plan(object):
    """What this run will do: the user's request (never changed), the steps, and what planning decided."""

    def __init__(self, request, delivery):
        self.request = request         # RunRequest: what the user asked for
        self.delivery = delivery
        self.steps = []
        self.notes = []
        self.contdat = None            # ContDat, read (pure Python) while planning a contsub or --check
        self.contdat_analysis = None   # ContDatAnalysis, made by the first step that checks cont.dat with CASA
        self.column_surveys = []       # ColumnSurvey of every uid*_targets.ms (preflight_data_columns)
        self.replace_line_ms = False   # existing uid*_targets_line.ms are replaced (--overwrite-line, --update)
        self.contsub_jobs = 1          # processes of the continuum subtraction: the disk check's and the run's
        self.imaging_engine = None     # 'pipeline' or 'casa', with --image
        self.image_estimate = None     # ImageEstimate, with --image (preflight_images)
        self.combination = None        # Combination, with --combine (preflight_combination)
        self.combination = None        # Combination, with --combine (preflight_combination)

    @property
    def imaging(self):
        return self.request.image

    @property
    def extra_bytes(self):
        return sum(step.extra_bytes for step in self.steps)

    def read_contdat(self):
        """caltables/cont.dat read once (pure Python); its syntax errors stop the run where first read."""
        if self.contdat is None:
            self.contdat = read_delivery_contdat(self.delivery)
        return self.contdat


def make_plan(request, delivery):
    """Validate the request against the delivery and list the steps to run."""
    plan = Plan(request, delivery)
    needs_data = set(request.actions) - {'cleanup', 'weblog'}
    if needs_data:
        delivery.check_layout()
        if delivery.imaging_ms:
            plan.notes.append('measurement_sets/ also holds %d imaging MS(es) of the pipeline (%s, PIPE-3003); this '
                              'run reads the uid*_targets*.ms and leaves them as they are'
                              % (len(delivery.imaging_ms), delivery.imaging_ms[0].name))
    contsub = request.contsub is not None
    if request.check:
        _plan_check(plan)
    if contsub:
        _plan_contsub(plan)
    if request.image is not None:
        _plan_image(plan)
    if request.combine is not None:
        plan_combine_step(plan)
    if request.concat_targets:
        _plan_concat(plan, delivery.targets, 'calibrated_final.ms')
    if request.concat_lines:
        if not delivery.targets_line and not contsub:
            raise ReprocessingError(
                'no uid*_targets_line.ms in %s, so there is nothing to concatenate for --calibrated_final_line — '
                'make them in the same run with --contsub or --contsub_fast' % delivery.ms_dir)
        inputs = delivery.targets_line or [line_ms_path(ms) for ms in delivery.targets]
        _plan_concat(plan, inputs, 'calibrated_final_line.ms')
    if request.cleanup:
        plan.steps.append(Step('cleanup', 'remove %s/ and the logs this tool created' % WORK_DIR_NAME,
                               [delivery.work_dir], [], 0, run_cleanup))
    if request.weblog is not None:
        _plan_weblog(plan)
    _check_free_space(plan)
    return plan


def _plan_contsub(plan):
    delivery, request = plan.delivery, plan.request.contsub
    if not delivery.contdat.is_file():
        raise ReprocessingError('%s is missing — continuum subtraction needs it: restore it from the delivery'
                                % delivery.contdat)
    plan.read_contdat()  # syntax errors stop the run here
    if request.engine == 'pipeline':
        require_pipeline_for_contsub()
    plan.replace_line_ms = request.overwrite_line
    if not request.overwrite_line and kept_by_interrupted_run(delivery, [line_ms_path(ms) for ms in delivery.targets]):
        plan.notes.append(kept_note(delivery, [line_ms_path(ms) for ms in delivery.targets]))
        return
    if delivery.targets_line and not request.overwrite_line and request.update:
        unrecorded = [line for line in delivery.targets_line if not is_recorded_line_ms(line)]
        if unrecorded:
            raise ReprocessingError(
                '--update: %s has no provenance record, so this tool did not make it (or its record is damaged) '
                '— move it away, or add --overwrite-line to replace it' % unrecorded[0].name)
        plan.replace_line_ms = True  # this tool's own line MSes: the stale ones are replaced
        plan.notes.append('--update: line MSes whose source MS or continuum fit changed are made again, the '
                          'others kept')
    if delivery.targets_line and not plan.replace_line_ms:
        raise ReprocessingError(
            'measurement_sets/ already holds %d uid*_targets_line.ms — move them elsewhere, or add '
            '--overwrite-line to replace them once the new ones are complete' % len(delivery.targets_line))
    for line_ms in delivery.targets_line if plan.replace_line_ms else []:
        blocker = removal_blocker(line_ms)  # replacing removes the old one once the new ones are published
        if blocker is not None:
            raise ReprocessingError(
                '--overwrite-line would replace %s, which you may not remove (%s is another user\'s and not '
                'writable for you) — ask its owner to remove it, or reprocess a copy of the delivery that you own'
                % (relative_path(line_ms, delivery.root), relative_path(blocker, delivery.root)))
    engine = 'pipeline' if request.engine == 'pipeline' else 'CASA'
    function = run_contsub if request.engine == 'pipeline' else run_contsub_fast
    outputs = [line_ms_path(ms) for ms in delivery.targets]
    _require_writable_folder(delivery, outputs[0])
    extra = sum(directory_bytes(ms) for ms in delivery.targets)
    # One answer to "how many processes", for the disk check (scratch per process) and the run.
    plan.contsub_jobs = 1 if request.engine == 'pipeline' else resolve_jobs(request.jobs, len(delivery.targets),
                                                                             total_bytes=extra)
    plan.steps.append(Step('contsub', 'continuum subtraction (%s) from %s' % (engine, delivery.contdat),
                           list(delivery.targets), outputs, extra, function))


def _plan_image(plan):
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
    products = [n for n in ('start', 'width', 'nchan', 'restfreq', 'outframe', 'veltype', 'moments', 'beam')
                if getattr(request, n, None) is not None]
    if engine == 'pipeline' and products:  # issue 27: the pipeline engine does not pass them on yet
        raise UsageError('%s are made by the CASA engine only (the pipeline engine does not pass them on yet) — add '
                         '--engine casa' % ', '.join('--' + n for n in products))
    if request.archive_products is not None:
        find_archive_products(delivery.root, request.archive_products)  # a folder without archive images stops here
    plan.imaging_engine = engine
    engine_name = 'ALMA pipeline' if engine == 'pipeline' else 'CASA tclean, no pipeline'
    inputs = list(delivery.targets) + ([] if makes_line_ms else list(delivery.targets_line) if cubes else [])
    plan.steps.append(Step('image', 'images %s (%s) into %s' % (','.join(request.specmodes), engine_name, images),
                           inputs, [images], 0, run_image))


def _plan_concat(plan, inputs, output_name):
    delivery = plan.delivery
    output = delivery.output(output_name)
    if kept_by_interrupted_run(delivery, [output]):
        plan.notes.append(kept_note(delivery, [output]))
        return
    if output.exists() or output.is_symlink():
        raise ReprocessingError('%s already exists — rename or remove it to make a new one' % output)
    _require_writable_folder(delivery, output)
    extra = sum(directory_bytes(ms) for ms in inputs if ms.exists())
    read_only = [ms for ms in inputs if ms.exists() and is_read_only(ms)]
    if read_only:  # concat writes into its inputs: it gets copies of these (make_stand_in_to_update)
        extra += sum(directory_bytes(ms) for ms in read_only)
        plan.notes.append('%d of the measurement sets for %s are read-only: concat works on copies of them '
                          '(%s more disk while it runs)' % (len(read_only), output_name, human_bytes(
                              sum(directory_bytes(ms) for ms in read_only))))
    plan.steps.append(Step(output_name[:-3], 'concatenate %d MS into %s' % (len(inputs), output),
                           list(inputs), [output], extra, run_concat))


def _require_writable_folder(delivery, output):
    """Outputs go beside the user's MSes: a measurement_sets/ the user may not write stops the plan."""
    if not os.access(str(output.parent), os.W_OK | os.X_OK):
        raise ReprocessingError('%s would be written into %s, which is not writable for you — make it writable '
                                '(chmod u+w %s) if it is yours, or reprocess a copy of the delivery'
                                % (output.name, relative_path(output.parent, delivery.root) + '/', output.parent))


def _check_free_space(plan):
    """Bytes and files: each step that writes copies of its inputs (line MSes, a concatenated MS) makes
    about as many files as they have."""
    files = file_count([ms for step in plan.steps if step.extra_bytes for ms in step.inputs if os.path.exists(str(ms))])
    require_free_space(plan.delivery.root, plan.extra_bytes, what='this plan', files=files,
                       advice='free some space or run fewer steps at once')


def describe_plan(plan):
    delivery = plan.delivery
    lines = ['Plan for %s' % delivery.root]
    for number, step in enumerate(plan.steps, 1):
        lines.append('  %d. %s' % (number, step.summary))
        for path in step.inputs:
            lines.append('       in:  %s' % relative_path(path, delivery.root))
        for path in step.outputs:
            lines.append('       out: %s' % relative_path(path, delivery.root))
    if plan.extra_bytes:
        lines.append('  Extra disk needed: about %s (%s free)'
                     % (human_bytes(plan.extra_bytes), human_bytes(free_bytes(delivery.root))))
    if plan.image_estimate is not None:
        lines.append('  ' + describe_image_estimate(plan.image_estimate) + (
            ' (before --update keeps the unchanged ones)' if plan.request.update else ''))
    for note in plan.notes:
        lines.append('  Note: ' + note)
    return '\n'.join(lines)


def _plan_check(plan):
    delivery = plan.delivery
    if not delivery.contdat.is_file():
        raise ReprocessingError('%s is missing — there is nothing to check: restore it from the delivery'
                                % delivery.contdat)
    plan.read_contdat()
    plan.steps.append(Step('check', 'check %s against %d measurement set(s)' % (
        relative_path(delivery.contdat, delivery.root), len(delivery.targets)), [delivery.contdat] + list(
        delivery.targets), [], 0, run_check))


# --- The plan's pre-flight: every input MS opens (metadata only), before the first step ------------

def check_measurement_sets(plan):
    """Open every measurement set a step reads (main table and subtables, no column): a broken one
    (an empty directory, no table.dat, a missing FIELD) is named in one line now, --dry-run too.

    Called by run() right after make_plan, like preflight_images: CASA is loaded and logs nowhere.
    """
    delivery = plan.delivery
    inputs = []
    for step in plan.steps:
        inputs.extend(path for path in step.inputs if str(path).endswith('.ms') and path not in inputs)
    if plan.replace_line_ms:
        inputs.extend(delivery.targets_line)  # the line MSes to replace: preflight_data_columns reads them
    inputs = [path for path in inputs if path.is_dir()]  # line MSes this run makes do not exist yet
    if not inputs:
        return
    casa = _casa_for_planning()
    with native_output_into(os.devnull), native_stdout_silenced():
        for ms in inputs:
            check_measurement_set(casa, ms, root=delivery.root)
        flagged = [ms for ms in inputs if is_entirely_flagged(casa, ms)]
    for ms in flagged:
        warn('every visibility of %s is flagged: it adds nothing to the line MSes, images or concatenated MS — '
             'check its flags (flagmanager), or move it out of measurement_sets/ if that is meant'
             % relative_path(ms, delivery.root))


# --- The plan's pre-flight: what the images will take, before the first long step --

ImageEstimate = collections.namedtuple('ImageEstimate', 'images delivered peak available engine')


def preflight_images(plan):
    """Size the image products from the MS metadata while planning (--dry-run too); stop if they cannot fit.

    Called by run() right after make_plan (which stays free of CASA), before the first step.
    CASA is loaded to read the measurement sets' metadata (read-only) and logs nowhere: a plan
    writes no file, and the run's log is chosen when its first step starts.  The images are sized
    with the pipeline-free engine's heuristics, which follow the pipeline's, so the pipeline engine
    gets the same estimate (with its iter0 images), before any size mitigation of its own.
    """
    delivery, request, engine = plan.delivery, plan.imaging, plan.imaging_engine
    casa = _casa_for_planning()
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
    images_dir = request.images_dir
    delivered, peak, available = require_image_space(jobs, folder=images_dir, all_products=request.all_products,
                                                     iterations=2 if engine == 'pipeline' else 1)
    plan.image_estimate = ImageEstimate(len(jobs), delivered, peak, available, engine)
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
    _check_free_space(plan)
    return plan.image_estimate


def preflight_data_columns(plan):
    """Read which MSes hold self-calibrated data (CORRECTED_DATA), say what each step reads and writes.

    Called by run() right after make_plan, before the first step (--dry-run too).  A line MS that
    --overwrite-line would replace may hold self-calibrated data that its new twin would lack: that
    is refused here (better data is never replaced by worse).
    """
    delivery, request = plan.delivery, plan.request
    contsub = request.contsub
    casa = _casa_for_planning()
    with native_output_into(os.devnull), native_stdout_silenced():
        plan.column_surveys = [survey_data_columns(casa, ms) for ms in delivery.targets]
        replaced = [survey_data_columns(casa, ms) for ms in delivery.targets_line] if plan.replace_line_ms else []
    selfcal = dict((survey.path.name, survey.has_selfcal) for survey in plan.column_surveys)
    for old in replaced:
        source = old.path.name.replace('_targets_line.ms', '_targets.ms')
        if old.selfcal_pairs and not selfcal.get(source, False):
            raise ReprocessingError(
                '%s holds self-calibrated data (CORRECTED_DATA) but %s has none, so its replacement would not be '
                'self-calibrated — --overwrite-line never replaces self-calibrated data with regular calibration: '
                'move %s elsewhere first if you want that' % (old.path.name, source, old.path.name))
    readers = []
    if contsub is not None and contsub.engine == 'casa':
        readers.append('--contsub_fast fits both columns and each line MS keeps both (DATA = regular calibration, '
                       'CORRECTED_DATA = self-calibrated), as the pipeline delivers them')
        plan.notes.append('--contsub_fast will be %s' % choose_contsub_fast_method(
            contsub, delivery, delivery.targets,
            selfcal=[survey.path for survey in plan.column_surveys if survey.has_selfcal])[1])
    if contsub is not None and contsub.engine == 'pipeline':
        readers.append('after the pipeline\'s hif_uvcontsub (which fits DATA), the same cont.dat ranges are fitted '
                       'in CORRECTED_DATA with CASA uvcontsub, so each line MS keeps both columns')
    if request.image is not None:
        readers.append('imaging reads CORRECTED_DATA (DATA where an MS has no CORRECTED_DATA)')
    if request.concat_targets or request.concat_lines:
        readers.append('concat keeps both columns in calibrated_final*.ms')  # and says so when it runs
    for line in describe_selfcal(plan.column_surveys, reader='; '.join(readers) or 'no step of this run reads them'):
        plan.notes.append(line)
    selfcal_sizes = [directory_bytes(survey.path) for survey in plan.column_surveys if survey.has_selfcal]
    if selfcal_sizes and contsub is not None:
        # the fit of CORRECTED_DATA is written beside its line MS (one column: about half the MS) before
        # it is folded in; workers run side by side, so count one per process
        scratch = max(selfcal_sizes) // 2 * max(1, min(len(selfcal_sizes), plan.contsub_jobs))
        plan.steps[:] = [step._replace(extra_bytes=step.extra_bytes + scratch) if step.name == 'contsub' else step
                         for step in plan.steps]
        _check_free_space(plan)
    return plan.column_surveys


def _every_channel(info, field, spw_id, virtual_id):
    """Channel selection while sizing images: the channels do not change an mfs image's size."""
    return '', None


def _casa_for_planning():
    if is_monolithic_casa() or 'casatools' in sys.modules:
        return load_casa()
    return load_casa(logfile=os.devnull)


def describe_image_estimate(estimate):
    text = 'Images: %d to make, about %s of products (%s on disk while imaging), %s free' % (
        estimate.images, human_bytes(estimate.delivered), human_bytes(estimate.peak), human_bytes(estimate.available))
    if estimate.engine == 'pipeline':
        text += ' (sized by the pipeline\'s heuristics, before its size mitigation)'
    return text


def _plan_weblog(plan):
    """On its own, --weblog must find what to serve now; after other steps, a NAME must exist already."""
    delivery, name = plan.delivery, plan.request.weblog.name
    alone = not plan.steps
    if name == 'report':
        if alone:
            report_weblog(delivery)
        summary = 'serve the reprocessing report'
    elif name == 'latest' and not alone:
        summary = 'serve the weblog this run makes (or the reprocessing report)'
    else:
        weblog = choose_weblog(delivery, name)
        summary = 'serve the weblog %s' % weblog.name
    plan.steps.append(Step('weblog', summary, [], [], 0, run_weblog))


def preview_update(plan):
    """--dry-run --update: which line MSes and images would be kept, which remade and why, and how long the
    remade images took when last made.  Reads the measurement sets and cont.dat with CASA; writes nothing."""
    delivery, request = plan.delivery, plan.request
    casa = _casa_for_planning()
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


def plan_combine_step(plan):
    """--combine: the step; what combines is read from every delivery's MSes by preflight_combination."""
    request = plan.request.combine
    output = plan.delivery.root / 'combined'
    if output.exists() and any(output.iterdir()):
        raise ReprocessingError('%s exists and is not empty — move it away (or delete it) and run again' % output)
    plan.steps.append(Step('combine', 'joint images with %d other deliver%s%s into %s' % (
        len(request.deliveries), 'y' if len(request.deliveries) == 1 else 'ies',
        ', feathered with %s' % request.feather if request.feather else '', output.name),
        list(plan.delivery.targets), [output], 0, run_combine))


def preflight_combination(plan):
    """Read every delivery's MSes (metadata) and decide what combines; one line per what cannot."""
    request = plan.request.combine
    with native_output_into(os.devnull), native_stdout_silenced():
        plan.combination = plan_combination(_casa_for_planning(), plan.delivery, request.deliveries,
                                            request.feather)
    for line in plan.combination.notes:
        say('  combine: ' + line)
