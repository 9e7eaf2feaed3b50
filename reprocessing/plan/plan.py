"""The plan: every decision and check made before the first long step, and the steps to run.

Each action's planning that grew large has its own module beside this one (image_plan for --image,
combine_plan for --combine); what they share (Plan, Step, the disk checks) is in planning."""

import os

from ..casa.casa_engine import native_output_into, native_stdout_silenced
from ..casa.data_columns import describe_selfcal, survey_data_columns
from ..casa.ms_tables import check_measurement_set, is_entirely_flagged
from ..casa.pipeline_engine import require_pipeline_for_contsub
from ..casa.workers import resolve_jobs
from ..contsub.line_update import is_recorded_line_ms
from ..contsub.selfcal_restore import find_selfcal_resources
from ..core.fileops import directory_bytes, free_bytes, human_bytes, relative_path, removal_blocker
from ..core.layout import WORK_DIR_NAME, line_ms_path
from ..core.messages import ReprocessingError, say, warn
from ..run.interrupted import kept_by_interrupted_run, kept_note
from ..run.staging import is_read_only
from ..steps.check import run_check
from ..steps.cleanup import run_cleanup
from ..steps.combine import run_combine
from ..steps.concat import run_concat
from ..steps.contsub_fast import choose_contsub_fast_method, run_contsub_fast
from ..steps.contsub_pipeline import run_contsub
from ..steps.weblog import choose_weblog, report_weblog, run_weblog
from .combine_plan import plan_combination
from .image_plan import plan_image
from .resources import describe_image_estimate, describe_image_resources
from .planning import Plan, Step, casa_for_planning, check_free_space, require_writable_folder


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
        plan_image(plan)
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
    check_free_space(plan)
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
    require_writable_folder(delivery, outputs[0])
    extra = sum(directory_bytes(ms) for ms in delivery.targets)
    # One answer to "how many processes", for the disk check (scratch per process) and the run.
    plan.contsub_jobs = 1 if request.engine == 'pipeline' else resolve_jobs(plan.request.jobs, len(delivery.targets),
                                                                             total_bytes=extra)
    plan.steps.append(Step('contsub', 'continuum subtraction (%s) from %s' % (engine, delivery.contdat),
                           list(delivery.targets), outputs, extra, function))


def _plan_concat(plan, inputs, output_name):
    delivery = plan.delivery
    output = delivery.output(output_name)
    if kept_by_interrupted_run(delivery, [output]):
        plan.notes.append(kept_note(delivery, [output]))
        return
    if output.exists() or output.is_symlink():
        raise ReprocessingError('%s already exists — rename or remove it to make a new one' % output)
    require_writable_folder(delivery, output)
    extra = sum(directory_bytes(ms) for ms in inputs if ms.exists())
    read_only = [ms for ms in inputs if ms.exists() and is_read_only(ms)]
    if read_only:  # concat writes into its inputs: it gets copies of these (make_stand_in_to_update)
        extra += sum(directory_bytes(ms) for ms in read_only)
        plan.notes.append('%d of the measurement sets for %s are read-only: concat works on copies of them '
                          '(%s more disk while it runs)' % (len(read_only), output_name, human_bytes(
                              sum(directory_bytes(ms) for ms in read_only))))
    plan.steps.append(Step(output_name[:-3], 'concatenate %d MS into %s' % (len(inputs), output),
                           list(inputs), [output], extra, run_concat))


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
        lines.extend(describe_image_resources(plan.image_resources))
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
    casa = casa_for_planning()
    with native_output_into(os.devnull), native_stdout_silenced():
        for ms in inputs:
            check_measurement_set(casa, ms, root=delivery.root)
        flagged = [ms for ms in inputs if is_entirely_flagged(casa, ms)]
    for ms in flagged:
        warn('every visibility of %s is flagged: it adds nothing to the line MSes, images or concatenated MS — '
             'check its flags (flagmanager), or move it out of measurement_sets/ if that is meant'
             % relative_path(ms, delivery.root))


def preflight_data_columns(plan):
    """Read which MSes hold self-calibrated data (CORRECTED_DATA), say what each step reads and writes.

    Called by run() right after make_plan, before the first step (--dry-run too).  A line MS that
    --overwrite-line would replace may hold self-calibrated data that its new twin would lack: that
    is refused here (better data is never replaced by worse).
    """
    delivery, request = plan.delivery, plan.request
    contsub = request.contsub
    casa = casa_for_planning()
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
        resources = find_selfcal_resources(delivery.root, [ms.name for ms in delivery.targets])[0] \
            if any(selfcal.values()) else None
        if resources is not None:
            readers.append('after the pipeline\'s hif_uvcontsub (which fits DATA), hif_selfcal(restore_only=True) '
                           'applies the self-calibration tables of %s to the line MSes (pipeline 2024.1.1.18 on; with '
                           'an older one the same cont.dat ranges are fitted in CORRECTED_DATA), so each line MS keeps '
                           'both columns' % relative_path(resources.path, delivery.root))
        else:
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
        check_free_space(plan)
    return plan.column_surveys


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


def plan_combine_step(plan):
    """--combine: the step; what combines is read from every delivery's MSes by preflight_combination."""
    request = plan.request.combine
    output = plan.delivery.root / 'combined'
    if output.exists() and any(output.iterdir()):
        raise ReprocessingError('%s exists and is not empty — move it away (or delete it) and run again' % output)
    plan.steps.append(Step('combine', 'joint %s with %d other deliver%s%s into %s' % (
        ' and '.join({'mfs': 'continuum images', 'cube': 'cubes'}[m] for m in request.specmodes),
        len(request.deliveries), 'y' if len(request.deliveries) == 1 else 'ies',
        ', feathered with %s' % request.feather if request.feather else '', output.name),
        list(plan.delivery.targets), [output], 0, run_combine))


def preflight_combination(plan):
    """Read every delivery's MSes (metadata) and decide what combines; one line per what cannot."""
    request = plan.request.combine
    with native_output_into(os.devnull), native_stdout_silenced():
        plan.combination = plan_combination(casa_for_planning(), plan.delivery, request.deliveries,
                                            request.feather, request)
    for line in plan.combination.notes:
        say('  combine: ' + line)
