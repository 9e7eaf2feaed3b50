"""Step --contsub_fast: continuum subtraction with CASA alone (uvcontsub from cont.dat, or the tables)."""

import datetime
from pathlib import Path

from ..casa.workers import eb_workers
from ..contdat.against_ms import contdat_preflight, say_fit_table
from ..contdat.grammar import CONTDAT_FINGERPRINT_NAME, contdat_fingerprint, recorded_contdat_fingerprint
from ..contsub.line_update import continuum_by_spw, expected_line_record, line_ms_decision, say_line_decisions, write_line_record
from ..contsub.spectra import draw_spectra, plot_contsub_spectra, plots_or_warning, say_spectra, spectrum_requests
from ..contsub.uvcont_tables import contsub_apply_uvcont_tables
from ..contsub.uvcontsub import build_fitspec, describe_line_columns, mstransform_fit_of, uvcontsub_takes_fitspec
from ..core.fileops import directory_bytes, human_bytes, relative_path, write_atomically
from ..core.layout import eb_name, line_ms_path
from ..core.messages import ReprocessingError, say
from ..run.run_state import pause_point, publish_line_outputs


def run_contsub_fast(plan, state, step, casa):
    """--contsub_fast: apply the delivered continuum tables (Cycle 9), or fit cont.dat with CASA uvcontsub.

    cont.dat is checked against the MSes first; on an error nothing is written.
    """
    method, reason = choose_contsub_fast_method(plan.request.contsub, plan.delivery, [Path(ms) for ms in step.inputs],
                                                selfcal=[s.path for s in plan.column_surveys if s.has_selfcal])
    say('  method: %s' % reason)
    if method == 'tables':
        contdat_preflight(plan, casa)
        record_delivered_contdat(plan.delivery)
        result = contsub_apply_uvcont_tables(plan, state, step, casa, list(plan.delivery.uvcont_tables))
        result['reason'] = reason
        for ms in step.inputs:
            if line_ms_path(Path(ms)).is_dir():
                write_line_record(Path(ms), expected_line_record(Path(ms), method='uvcont tables', continuum={},
                                                                 tables=list(plan.delivery.uvcont_tables)),
                                  seconds=result.get('seconds', 0.0) or 0.0)
        result['spectra'] = _spectra_after_contsub(plan, casa, step.inputs, result.get('outputs', []))
        return result
    return contsub_with_uvcontsub(plan, state, step, casa, reason)


CONTDAT_EDIT_SLACK_S = 60


def choose_contsub_fast_method(request, delivery, targets, *, selfcal=()):
    """('tables' or 'uvcontsub', why) — decided from files and flags alone (pure: no CASA).

    request: the ContsubRequest; selfcal: the targets that hold self-calibrated data (CORRECTED_DATA).
    """
    fit = 'fitting the continuum from %s with CASA uvcontsub' % relative_path(delivery.contdat, delivery.root)
    if request.refit:
        return 'uvcontsub', '%s: --refit was given (the delivered continuum tables are not used)' % fit
    if selfcal and list(delivery.uvcont_tables):
        return 'uvcontsub', ('%s: %d execution block(s) hold self-calibrated data, and the delivered continuum tables '
                             'were fitted to the regular calibration' % (fit, len(selfcal)))
    if request.fitorder is not None:
        return 'uvcontsub', '%s: --fitorder was given, and the delivered tables have their fit order built in' % fit
    tables = list(delivery.uvcont_tables)
    if not tables:
        return 'uvcontsub', '%s: caltables/ holds no *uvcont.tbl (Cycle 10 and later deliver none)' % fit
    owners = {eb_name(ms) for ms in targets if any(t.name.startswith(eb_name(ms) + '_target')
                                                   or t.name.startswith(eb_name(ms) + '.') for t in tables)}
    without = [eb_name(ms) for ms in targets if eb_name(ms) not in owners]
    if without:
        return 'uvcontsub', '%s: caltables/ has continuum tables for only %d of the %d execution blocks (none for ' \
                            '%s)' % (fit, len(targets) - len(without), len(targets), ', '.join(without))
    recorded, where = recorded_contdat_fingerprint(contdat_fingerprint_places(delivery))
    if recorded is not None:
        rule = 'by content: the delivered cont.dat\'s fingerprint is in %s' % relative_path(where, delivery.root)
        if contdat_fingerprint(delivery.contdat) != recorded:
            return 'uvcontsub', '%s: cont.dat was edited since delivery, so the delivered continuum tables no longer ' \
                                'match it (%s)' % (fit, rule)
        return 'tables', ('applying the delivered continuum fits caltables/*uvcont.tbl (a Cycle 9 delivery, and cont.dat '
                          'is the delivered one, %s) — add --refit to fit cont.dat with CASA uvcontsub instead' % rule)
    contdat_time = delivery.contdat.stat().st_mtime
    tables_time = min(_table_mtime(table) for table in tables)
    # The pipeline writes cont.dat before the tables; a copy made without keeping times (cp -r)
    # stamps them all within seconds, in any order.  An edit comes later than that.
    if contdat_time > tables_time + CONTDAT_EDIT_SLACK_S:
        return 'uvcontsub', '%s: cont.dat (changed %s) is newer than the delivered continuum tables (%s), so they ' \
                            'no longer match it' % (fit, _mtime_text(contdat_time), _mtime_text(tables_time))
    return 'tables', ('applying the delivered continuum fits caltables/*uvcont.tbl (a Cycle 9 delivery, and cont.dat '
                      'is not newer than them: by modification times, no fingerprint of the delivered cont.dat is '
                      'recorded; this run records one) — add --refit to fit cont.dat with CASA uvcontsub instead')


def contdat_fingerprint_places(delivery):
    """Where the delivered cont.dat's fingerprint may be: prep's record, then the first run's."""
    return [delivery.caltables / CONTDAT_FINGERPRINT_NAME, delivery.work_dir / CONTDAT_FINGERPRINT_NAME]


def record_delivered_contdat(delivery):
    """Remember cont.dat as delivered (the times said so), so later runs decide by content."""
    places = contdat_fingerprint_places(delivery)
    if recorded_contdat_fingerprint(places)[0] is None:
        delivery.work_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(places[1], contdat_fingerprint(delivery.contdat) + '\n')


def _table_mtime(table):
    marker = Path(table) / 'table.dat'
    return (marker if marker.exists() else Path(table)).stat().st_mtime


def _mtime_text(seconds):
    return datetime.datetime.fromtimestamp(seconds).strftime('%Y-%m-%d %H:%M')


# -- CASA uvcontsub with fitspec from cont.dat ------------------------------------------------------


def contsub_with_uvcontsub(plan, state, step, casa, reason):
    delivery, request = plan.delivery, plan.request.contsub
    targets = [Path(ms) for ms in step.inputs]
    with_fitspec = uvcontsub_takes_fitspec(casa)
    jobs = plan.contsub_jobs
    selfcal_by_ms = dict((str(survey.path), survey.has_selfcal) for survey in plan.column_surveys)
    say_columns(targets, selfcal_by_ms)
    # Worker processes load CASA while cont.dat is checked here; they write nothing until given work.
    # Under MPI (mpicasa, or mpirun with casampi) the MPI servers are the workers instead.
    with eb_workers(jobs, state=state) as workers:
        analysis = contdat_preflight(plan, casa)
        say_fit_table(analysis, fitorder=request.fitorder)
        expected = dict((str(ms), expected_line_record(ms, method='uvcontsub', continuum=continuum_by_spw(
            analysis, ms, fitorder=request.fitorder))) for ms in targets)
        decisions = [(ms, False, None) for ms in targets]
        if request.update:
            decisions = [(ms,) + line_ms_decision(ms, expected[str(ms)]) for ms in targets]
            say_line_decisions(decisions, delivery)
        made = [ms for ms, keep, _why in decisions if not keep]
        tasks, outputs = [], []
        for ms in made:
            field, spw, fitspec = build_fitspec(analysis.selections[str(ms)], fitorder=request.fitorder)
            if not fitspec:
                raise ReprocessingError('cont.dat selects nothing to fit in %s (see the notes above) — add blocks for '
                                        'its fields and spws' % ms.name)
            final = line_ms_path(ms)
            partial = state.partial_name(final)
            state.will_create(partial)
            outputs.append((partial, final))
            selfcal_fit = None
            if selfcal_by_ms.get(str(ms)):
                # the fit of CORRECTED_DATA, written beside the line MS and folded into it
                selfcal_fit = state.partial_name(final.with_name(final.name[:-3] + '.selfcal.ms'))
                state.will_create(selfcal_fit)
            mstransform_fit = None if with_fitspec else mstransform_fit_of(fitspec, ms_name=ms.name,
                                                                            casa_version=casa.version)
            tasks.append({'function': 'subtract_continuum', 'eb': eb_name(ms), 'arguments': {
                'ms': str(ms), 'output': str(partial), 'field': field, 'spw': spw, 'fitspec': fitspec,
                'spectra': spectrum_requests(casa, analysis, ms),
                'selfcal_fit': None if selfcal_fit is None else str(selfcal_fit), 'mstransform_fit': mstransform_fit}})
        say('  subtracting the continuum of %d execution block%s%s' % (
            len(tasks), '' if len(tasks) == 1 else 's', ' in %d processes' % workers.count if workers.count > 1
            else ''))
        pause_point('contsub-tasks', state)
        results = workers.run(tasks, casa=casa) if tasks else []
        spectra = _spectra_of(results)
    pause_point('contsub-written', state)
    for task in tasks:
        if task['arguments']['selfcal_fit']:
            state.created_for_good(Path(task['arguments']['selfcal_fit']))  # removed by the worker
    replaced = {str(final) for final in publish_line_outputs(state, outputs, replace=plan.replace_line_ms)}
    for ms, (_partial, final), result in zip(made, outputs, results):
        write_line_record(ms, expected[str(ms)], seconds=result['seconds'])
        say('  wrote %s: %d rows, spws %s, %s (%s, %.1f s)%s' % (
            relative_path(final, delivery.root), result['rows'], result['spw'], describe_line_columns(result['columns']),
            human_bytes(directory_bytes(final)), result['seconds'],
            '; it replaced the earlier line MS (%s)' % ('--update' if request.update
                                                         else '--overwrite-line') if str(final) in replaced else ''))
    pictures = plots_or_warning(lambda: draw_spectra(spectra, delivery.spectra_dir))
    say_spectra(pictures, delivery)
    update = dict((line_ms_path(ms).name, 'kept: unchanged' if keep else 'made: %s' % why)
                  for ms, keep, why in decisions) if request.update else {}
    return {'outputs': [str(line_ms_path(ms)) for ms in targets], 'method': 'uvcontsub', 'reason': reason,
            'update': update, 'jobs': workers.count, 'fitspec': dict((eb_name(ms), task['arguments']['fitspec'])
                                                                     for ms, task in zip(made, tasks)),
            'seconds_per_eb': dict((task['eb'], result['seconds']) for task, result in zip(tasks, results)),
            'columns': dict((task['eb'], result['columns']) for task, result in zip(tasks, results)),
            'spectra': [str(path) for path in pictures]}


def _spectra_of(results):
    """The spectra the tasks measured, each naming the line MS its 'after' curve comes from."""
    spectra = []
    for result in results:
        for spectrum in result.get('spectra', []):
            spectrum['after_ms'] = line_ms_path(Path(spectrum['before_ms'])).name
            spectra.append(spectrum)
    return spectra


def _spectra_after_contsub(plan, casa, before, after):
    """Spectra for a contsub path that did not measure them on the way (the delivered tables)."""
    pairs = [(Path(b), Path(a)) for b, a in zip(before, after) if Path(a).is_dir()]
    if not pairs:
        return []
    contdat = plan.read_contdat()
    pictures = plots_or_warning(lambda: plot_contsub_spectra(
        before_ms=[b for b, _a in pairs], after_ms=[a for _b, a in pairs], contdat=contdat,
        out_dir=plan.delivery.spectra_dir, casa=casa))
    say_spectra(pictures, plan.delivery)
    return [str(path) for path in pictures]


def say_columns(targets, selfcal_by_ms):
    with_selfcal = [ms for ms in targets if selfcal_by_ms.get(str(ms))]
    if with_selfcal:
        say('  reads the self-calibrated data (CORRECTED_DATA) and the regular calibration (DATA) of %d execution '
            'block%s%s; each line MS gets both, as the pipeline delivers them' % (
                len(with_selfcal), '' if len(with_selfcal) == 1 else 's',
                '' if len(with_selfcal) == len(targets) else ' (DATA only of the other %d)'
                % (len(targets) - len(with_selfcal))))
    else:
        say('  reads DATA (no CORRECTED_DATA: no self-calibrated data) of %d execution block%s' % (
            len(targets), '' if len(targets) == 1 else 's'))


