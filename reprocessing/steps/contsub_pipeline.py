"""Step --contsub: the ALMA pipeline subtracts the continuum, the way the installed release does it."""

import collections
from pathlib import Path

from ..casa.data_columns import SELFCAL_COLUMN, add_selfcal_column, has_selfcal_column
from ..casa.mpi import mpi_info
from ..casa.ms_tables import column_names
from ..casa.pipeline_calls import pipeline_contsub_calls, pipeline_line_name
from ..casa.pipeline_engine import load_pipeline_tasks, ms_records_pipeline_datatypes, pipeline_reads_datatype_record, run_pipeline_calls, stage_for_pipeline_contsub, task_parameter_names
from ..contdat.against_ms import contdat_preflight
from ..contdat.for_pipeline import place_contdat_for_pipeline
from ..contsub.selfcal_restore import EXTRACTED_PATTERNS, find_selfcal_resources
from ..contsub.uvcontsub import build_fitspec, describe_line_columns, uvcontsub_checked
from ..core.fileops import directory_bytes, human_bytes, move_tree, relative_path, remove_tree
from ..core.layout import WORK_DIR_NAME, line_ms_path
from ..core.messages import ReprocessingError, say
from ..run.run_state import publish_line_outputs


def run_contsub(plan, state, step, casa):
    """--contsub: the ALMA pipeline subtracts the continuum, the way the installed release does it.

    The pipeline works in working_reprocess/ on stand-ins of the user's MSes (shadows, or copies
    for PL2022, which applies its fit into the MS), so the user's MSes are only read; its line
    MSes are then moved into measurement_sets/ under temporary names and published.
    """
    analysis = contdat_preflight(plan, casa)
    delivery = plan.delivery
    targets = [Path(ms) for ms in step.inputs]
    revision, tasks = load_pipeline_tasks(work_dir=delivery.work_dir)
    selfcal = {str(survey.path) for survey in plan.column_surveys if survey.has_selfcal}
    resources = selfcal_resources_for(delivery, targets, selfcal)
    decided = pipeline_contsub_calls(
        revision=revision, task_parameters=dict((name, task_parameter_names(task)) for name, task in tasks.items()),
        vis=[ms.name for ms in targets], mpi_size=mpi_info().size,
        datatypes_recorded=pipeline_reads_datatype_record() and all(
            ms_records_pipeline_datatypes(casa, ms) for ms in targets),
        selfcal_resources=None if resources is None else resources.path)
    say('  pipeline %s (%s): %s' % (revision, decided.release, decided.flow))
    for note in decided.notes:
        say('  note: ' + note)
    work_dir = delivery.work_dir
    state.pipeline_dir = work_dir
    staged = stage_for_pipeline_contsub(state, targets, work_dir, copy=decided.copies_ms)
    place_contdat_for_pipeline(delivery, grammar=decided.contdat_grammar, release=decided.release)
    produced = collections.OrderedDict((ms, work_dir / pipeline_line_name(ms.name)) for ms in targets)
    for path in produced.values():
        state.will_create(path)  # removed by the journal if the pipeline fails or the run is killed
    extracted = prepare_selfcal_restore(state, work_dir, resources if decided.selfcal_restore else None)
    failed = []
    if decided.selfcal_restore:
        tasks = dict(tasks, hif_selfcal=restore_or_note(tasks['hif_selfcal'], failed))
    run_pipeline_calls(tasks, decided.calls, work_dir=work_dir, casa_log=state.casa_logfile)
    missing = [path.name for path in produced.values() if not (path / 'table.dat').exists()]
    if missing:
        raise ReprocessingError('the pipeline did not write %s — see its weblog (%s/pipeline-*/html/index.html) '
                                'and the CASA log' % (', '.join(missing), WORK_DIR_NAME))
    restored = set()
    if failed:
        say('  note: hif_selfcal(restore_only=True) failed (%s): the self-calibrated CORRECTED_DATA is fitted '
            'instead' % failed[0])
    elif decided.selfcal_restore:
        restored = {str(ms) for ms, path in produced.items() if str(ms) in selfcal and has_selfcal_column(casa, path)}
        for ms, path in produced.items():
            if str(ms) in restored:
                say('  %s: CORRECTED_DATA = the delivery\'s self-calibration tables (%s, %s) applied by '
                    'hif_selfcal(restore_only=True)' % (path.name, relative_path(resources.path, delivery.root),
                                                        resources.json_name))
            elif str(ms) in selfcal:
                say('  note: hif_selfcal applied no self-calibration table to %s' % path.name)
        for path in extracted:  # hif_selfcal's copies of the tgz's resources: not left for a later run to find
            remove_tree(path)
            state.created_for_good(path)
    for ms, path in produced.items():
        if str(ms) in selfcal and str(ms) not in restored:
            add_selfcal_line_data(casa, state, analysis=analysis, ms=ms, line_ms=path, fitorder=plan.request.contsub.fitorder,
                                  replace=bool(failed))
    outputs = []
    for ms, path in produced.items():
        final = line_ms_path(ms)
        partial = state.partial_name(final)
        state.will_create(partial)
        move_tree(path, partial)
        state.created_for_good(path)
        outputs.append((partial, final))
    replaced = {str(final) for final in publish_line_outputs(state, outputs, replace=plan.replace_line_ms)}
    for stand_in in staged.values():
        remove_tree(stand_in)
        state.created_for_good(stand_in)
    for _partial, final in outputs:
        say('  wrote %s (%s)%s' % (relative_path(final, delivery.root), human_bytes(directory_bytes(final)),
                                   '; it replaced the earlier line MS (--overwrite-line)' if str(final) in replaced
                                   else ''))
    return {'outputs': [str(final) for _partial, final in outputs], 'method': 'pipeline',
            'pipeline': revision, 'release': decided.release, 'flow': decided.flow,
            'calls': [[name, kwargs] for name, kwargs in decided.calls],
            'selfcal': dict((Path(ms).name, 'hif_selfcal restore_only' if ms in restored else 'CORRECTED_DATA fitted')
                            for ms in sorted(selfcal))}


def selfcal_resources_for(delivery, targets, selfcal):
    """The delivery's self-calibration restore resources (contsub/selfcal_restore.py) when every MS is
    self-calibrated, else None; the run says what it found and why it does not use it."""
    if not selfcal:
        return None
    resources, notes = find_selfcal_resources(delivery.root, [ms.name for ms in targets])
    for note in notes:
        say('  note: ' + note)
    if resources is None:
        say('  self-calibration: no *.auxproducts.tgz with self-calibration tables for these MSes in the delivery or '
            'beside it: the self-calibrated CORRECTED_DATA is fitted again')
        return None
    unlabelled = [ms.name for ms in targets if str(ms) not in selfcal]
    if unlabelled:
        say('  note: %s has self-calibration tables, but %s has no CORRECTED_DATA: they are not applied, the '
            'self-calibrated CORRECTED_DATA is fitted again' % (relative_path(resources.path, delivery.root),
                                                                 ', '.join(unlabelled)))
        return None
    say('  self-calibration: %s (%s; %s) has tables for %s' % (
        relative_path(resources.path, delivery.root), resources.json_name, ', '.join(resources.targets),
        ', '.join(sorted(resources.covered))))
    return resources


def prepare_selfcal_restore(state, work_dir, resources):
    """The paths hif_selfcal will extract the tgz's resources to, with leftovers of an earlier run removed
    (hif_selfcal also reads any *.selfcal.json in its working folder)."""
    if resources is None:
        return []
    stale = set()
    for pattern in EXTRACTED_PATTERNS:
        stale.update(Path(work_dir).glob(pattern))
    for path in sorted(stale):
        remove_tree(path)
    paths = [Path(work_dir) / name for name in resources.extracted]
    for path in paths:
        state.will_create(path)
    return paths


def restore_or_note(task, failed):
    """hif_selfcal that notes its failure in failed instead of stopping the run: the line MSes are there, and the
    tool's own fit of CORRECTED_DATA gives the same data."""
    def restore(**arguments):
        try:
            return task(**arguments)
        except Exception as error:  # whatever the pipeline raises
            failed.append(' '.join(str(error).split())[-300:] or repr(error))
    return restore


def add_selfcal_line_data(casa, state, *, analysis, ms, line_ms, fitorder, replace=False):
    """Give the pipeline's line MS of a self-calibrated MS its CORRECTED_DATA: the self-calibrated line data.

    hif_uvcontsub fits the regular calibration (DATA) only and labels its output REGCAL_LINE_SCIENCE
    (pipeline/hif/tasks/uvcontsub/uvcontsub.py); in the pipeline the self-calibrated line data come
    from hif_selfcal applying its gain tables afterwards.  Here the same cont.dat ranges are fitted
    in CORRECTED_DATA with CASA uvcontsub (a phase-only gain is one complex factor per row, so
    fitting the corrected data equals correcting the fitted data) and written into the line MS.
    replace: overwrite a CORRECTED_DATA that a failed hif_selfcal(restore_only=True) may have begun.
    """
    if SELFCAL_COLUMN in column_names(casa, line_ms) and not replace:
        say('  %s: the pipeline kept CORRECTED_DATA (self-calibrated)' % line_ms.name)
        return
    field, spw, fitspec = build_fitspec(analysis.selections[str(ms)], fitorder=fitorder)
    scratch = state.partial_name(line_ms.with_name(line_ms.name[:-3] + '.selfcal.ms'))
    state.will_create(scratch)
    say('  %s: fitting the same cont.dat ranges in CORRECTED_DATA (self-calibrated), CASA uvcontsub' % ms.name)
    uvcontsub_checked(casa, ms=ms, output=scratch, field=field, spw=spw, fitspec=fitspec, datacolumn='corrected')
    add_selfcal_column(casa, line_ms=line_ms, selfcal_fit=scratch)
    remove_tree(scratch)
    state.created_for_good(scratch)
    say('  %s: %s' % (line_ms.name, describe_line_columns(['DATA', SELFCAL_COLUMN])))
