"""Cycle 9 deliveries: the delivered continuum tables (caltables/*uvcont.tbl) subtract the continuum.

Real CASA on a simulated Cycle 9 delivery whose uvcont tables are AMueller ('A') solutions made
like the Cycle 9 pipeline's.  What a user sees: uid*_targets_line.ms with the continuum gone and
the line kept, the user's uid*_targets.ms byte-identical, and a table that does not belong to its
MS refused before anything is written.
"""
import math
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import mean_spectrum, truth_of, user_ms_digests

CYCLE9 = dict(n_ebs=2, with_uvcont=True)


def run_uvcont_path(delivery, casa, *extra_flags):
    """contsub_apply_uvcont_tables as the --contsub_fast step calls it, with a real run state."""
    found = sfr.Delivery(delivery)
    options = sfr.build_parser().parse_args(['--contsub_fast'] + list(extra_flags))
    plan = sfr.Plan(sfr.run_request(options, found.root), found)  # the engine alone: no plan-time refusal
    plan.replace_line_ms = plan.request.contsub.overwrite_line
    step = sfr.Step('contsub', 'continuum subtraction', list(found.targets),
                    [sfr.line_ms_path(ms) for ms in found.targets], 0, None)
    state = sfr.RunState(found)
    state.acquire()
    state.begin('test')
    try:
        return sfr.contsub_apply_uvcont_tables(plan, state, step, casa, found.uvcont_tables)
    finally:
        state.finish()
        state.release()


def channels_of(fitspw, spw_id):
    """[channels] of spw_id in a CASA selection like '25:2~12;49~59,27:4~15'."""
    for part in fitspw.split(','):
        spw, ranges = part.split(':')
        if int(spw) == spw_id:
            return [c for r in ranges.split(';') for c in range(int(r.split('~')[0]), int(r.split('~')[1]) + 1)]
    raise AssertionError('spw %d not in %s' % (spw_id, fitspw))


def read_column(casa, path, column=None):
    table = casa.casatools.table()
    table.open(str(path))
    try:
        return table.nrows() if column is None else [int(v) for v in table.getcol(column)]
    finally:
        table.close()


def edit_table(casa, path, edit):
    table = casa.casatools.table()
    table.open(str(path), nomodify=False)
    try:
        edit(table)
    finally:
        table.close()


def test_delivered_tables_remove_the_continuum_and_keep_the_line(delivery_factory, casa):
    delivery = delivery_factory(**CYCLE9)
    truth = truth_of(delivery)
    before = user_ms_digests(delivery)
    result = run_uvcont_path(delivery, casa)
    assert result['method'] == 'uvcont tables' and len(result['outputs']) == 2
    after = user_ms_digests(delivery)
    assert {name: after[name] for name in before} == before, 'a user MS changed'
    noise = truth['noise_jy']
    for eb in truth['ebs']:
        targets = delivery / eb['ms']
        line = sfr.line_ms_path(targets)
        assert line.is_dir(), 'no line MS for %s' % targets.name
        assert read_column(casa, line) == read_column(casa, targets) == eb['rows']
        assert sorted(set(read_column(casa, line, 'FIELD_ID'))) == sorted(set(read_column(casa, targets, 'FIELD_ID')))
        assert sfr.spws_with_data(casa, line) == [25, 27]
        table = casa.casatools.table()
        table.open(str(line))
        assert 'CORRECTED_DATA' not in table.colnames()
        table.close()
        for spw in eb['spws']:
            spectrum, samples = mean_spectrum(casa, line, spw['id'])
            raw, _ = mean_spectrum(casa, targets, spw['id'])
            line_free = channels_of(list(eb['fitspw'].values())[0], spw['id'])
            sigma_of_mean = noise / math.sqrt(samples * len(line_free))
            assert abs(numpy.mean(spectrum.real[line_free])) < 3 * sigma_of_mean
            assert abs(numpy.mean(raw.real[line_free]) - truth['continuum_jy']) < 0.1 * truth['continuum_jy']
            peak_channel = int(round(spw['line_topo_channel']))
            assert abs(spectrum.real[peak_channel] - truth['line_peak_jy']) < 0.05 * truth['line_peak_jy']
    leftovers = [p.name for p in (delivery / 'measurement_sets').iterdir() if p.name.startswith('.')]
    assert leftovers == [], 'a temporary output was left behind'
    assert not (delivery / 'working_reprocess' / 'staging' / 'contsub').exists(), 'the scratch MSes were kept'


def test_a_table_covering_one_spw_leaves_the_other_out_and_says_so(delivery_factory, casa, capsys):
    delivery = delivery_factory(**CYCLE9)
    for table in sorted((delivery / 'caltables').glob('*uvcont.tbl')):
        edit_table(casa, table, lambda t: t.removerows([int(r) for r in t.rownumbers()
                                                        if t.getcell('SPECTRAL_WINDOW_ID', int(r)) == 27]))
    result = run_uvcont_path(delivery, casa)
    for output in result['outputs']:
        assert sfr.spws_with_data(casa, output) == [25]
    assert 'spw 27 has no continuum solution: left out of the line MS' in capsys.readouterr().out
    assert all(pairs == [['IRAS_16293-2422', 27]] for pairs in result['left_out'].values())


def _swap_table_names(delivery, casa):
    first, second = sorted((delivery / 'caltables').glob('*uvcont.tbl'))
    uid_first, uid_second = first.name.split('_targets')[0], second.name.split('_targets')[0]
    parking = first.with_name('parked')
    first.rename(parking)
    second.rename(second.with_name(second.name.replace(uid_second, uid_first)))
    parking.rename(first.with_name(first.name.replace(uid_first, uid_second)))


def _rename_field_in_table(delivery, casa):
    table = sorted((delivery / 'caltables').glob('*uvcont.tbl'))[0]
    edit_table(casa, table / 'FIELD', lambda t: t.putcell('NAME', 0, 'SomeOtherSource'))


def _move_solutions_to_an_empty_spw(delivery, casa):
    table = sorted((delivery / 'caltables').glob('*uvcont.tbl'))[-1]
    edit_table(casa, table, lambda t: t.putcol('SPECTRAL_WINDOW_ID',
                                               numpy.where(t.getcol('SPECTRAL_WINDOW_ID') == 27, 23,
                                                           t.getcol('SPECTRAL_WINDOW_ID'))))


def _not_a_continuum_table(delivery, casa):
    table = sorted((delivery / 'caltables').glob('*uvcont.tbl'))[0]
    edit_table(casa, table, lambda t: t.putkeyword('VisCal', 'G Jones'))


@pytest.mark.parametrize('corrupt, message', [
    (_swap_table_names, 'was solved on uid___'),
    (_rename_field_in_table, 'has solutions for field 0 "SomeOtherSource", but field 0 of'),
    (_move_solutions_to_an_empty_spw, 'has solutions for spw 23'),
    (_not_a_continuum_table, 'is a "G Jones" calibration table, not a continuum fit'),
], ids=['table-of-another-EB', 'unknown-field', 'spw-without-data', 'not-an-A-table'])
def test_a_table_that_does_not_match_its_ms_stops_before_anything_is_written(delivery_factory, casa, corrupt,
                                                                              message):
    delivery = delivery_factory(**CYCLE9)
    corrupt(delivery, casa)
    before = user_ms_digests(delivery)
    with pytest.raises(sfr.ReprocessingError) as raised:
        run_uvcont_path(delivery, casa)
    text = str(raised.value)
    assert message in text and 'remove it from caltables/' in text and '\n' not in text
    assert user_ms_digests(delivery) == before
    assert sorted(p.name for p in (delivery / 'measurement_sets').iterdir()) == sorted(before)


def test_every_ms_needs_its_table_and_every_table_its_ms(tmp_path):
    targets = [tmp_path / 'uid___A002_X1_X2_targets.ms', tmp_path / 'uid___A002_X3_X4_targets.ms']
    tables = [tmp_path / 'uid___A002_X1_X2_targets.ms.hif_uvcontfit.s10_1.IRAS.uvcont.tbl',
              tmp_path / 'uid___A002_X1_X2_targets.ms.hif_uvcontfit.s10_1.OTHER.uvcont.tbl',
              tmp_path / 'uid___A002_X3_X4_target.ms.hif_uvcontfit.s12_1.uvcont.tbl',  # named before Cycle 9
              tmp_path / 'uid___A002_X9_X9_targets.ms.hif_uvcontfit.s10_1.uvcont.tbl']
    by_ms, orphans = sfr.uvcont_tables_by_ms(targets, tables)
    assert [t.name for t in by_ms[targets[0]]] == [tables[0].name, tables[1].name]
    assert by_ms[targets[1]] == [tables[2]]
    assert orphans == [tables[3]]
    by_ms, orphans = sfr.uvcont_tables_by_ms(targets, tables[:2])
    assert by_ms[targets[1]] == [] and orphans == []


def test_the_first_ms_without_a_table_is_named_in_the_error(delivery_factory, casa):
    delivery = delivery_factory(**CYCLE9)
    lost = sorted((delivery / 'caltables').glob('*uvcont.tbl'))[-1]
    sfr.remove_tree(lost)
    with pytest.raises(sfr.ReprocessingError, match='has no continuum table .* for uid___'):
        run_uvcont_path(delivery, casa)


def _layout(pairs, fields):
    return sfr.MsLayout(path='/d/uid___A002_X1_X2_targets.ms', start=0.0, fields=fields,
                        spws={25: sfr.SpwInfo(25, 'SW25', 64), 27: sfr.SpwInfo(27, 'SW27', 64)},
                        pairs=set(pairs), rows=100)


def test_tables_covering_different_spws_per_field_select_exactly_those_pairs():
    layout = _layout([(0, 25), (0, 27), (1, 25), (1, 27)], {'A': [0], 'B': [1]})
    coverages = [sfr.UvcontCoverage(Path('a.uvcont.tbl'), {(0, 25), (0, 27)}, {0: 'A', 1: 'B'}, {}, ''),
                 sfr.UvcontCoverage(Path('b.uvcont.tbl'), {(1, 25)}, {0: 'A', 1: 'B'}, {}, '')]
    selection = sfr.plan_uvcont_selection(layout, coverages, dd_ids={25: [3], 27: [4]})
    assert (selection.field, selection.spw) == ('0,1', '25,27')
    assert selection.taql == '(FIELD_ID==0 AND DATA_DESC_ID IN [3,4]) OR (FIELD_ID==1 AND DATA_DESC_ID IN [3])'
    assert [(a.table.name, a.field_ids) for a in selection.applications] == [('a.uvcont.tbl', [0]),
                                                                              ('b.uvcont.tbl', [1])]
    assert selection.left_out == [('B', 27)]
    rectangular = sfr.plan_uvcont_selection(layout, coverages[:1], dd_ids={25: [3], 27: [4]})
    assert rectangular.taql == '' and rectangular.left_out == [('B', 25), ('B', 27)]


def test_two_tables_for_one_field_are_refused():
    layout = _layout([(0, 25)], {'A': [0]})
    coverages = [sfr.UvcontCoverage(Path('a.uvcont.tbl'), {(0, 25)}, {0: 'A'}, {}, ''),
                 sfr.UvcontCoverage(Path('b.uvcont.tbl'), {(0, 25)}, {0: 'A'}, {}, '')]
    with pytest.raises(sfr.ReprocessingError, match='both have solutions for field 0 .* keep only one of them'):
        sfr.plan_uvcont_selection(layout, coverages, dd_ids={25: [0]})


def test_existing_line_mses_are_replaced_only_with_overwrite_line_and_only_once_the_new_ones_exist(
        delivery_factory, casa):
    delivery = delivery_factory(**CYCLE9)
    first = run_uvcont_path(delivery, casa)
    made = {Path(p).name: (Path(p) / 'table.dat').stat().st_mtime_ns for p in first['outputs']}
    with pytest.raises(sfr.ReprocessingError, match='add --overwrite-line to replace it'):
        run_uvcont_path(delivery, casa)
    assert {name: ((delivery / 'measurement_sets' / name) / 'table.dat').stat().st_mtime_ns
            for name in made} == made, 'an existing line MS was replaced without --overwrite-line'
    second = run_uvcont_path(delivery, casa, '--overwrite-line')
    assert sorted(second['outputs']) == sorted(first['outputs'])
    assert all((Path(p) / 'table.dat').stat().st_mtime_ns != made[Path(p).name] for p in second['outputs'])
    assert not [p for p in (delivery / 'measurement_sets').iterdir() if 'replaced' in p.name or p.name[0] == '.']
