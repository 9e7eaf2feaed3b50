"""Each MS's metadata is read once per run (casa/ms_tables.ms_metadata), and a changed MS is read again.

The plan's checks, cont.dat's check, the column survey, imaging and the report all ask the same
questions of the same MSes; the answers are kept with the state of the MS's files.  These tests
change a real simulated MS (a column added to the main table, a field renamed in the FIELD
subtable, the MS replaced by a copy) and check that the next answer is the new one.
"""
import os
import shutil
import time

import pytest

import scriptForReprocessing as sfr


@pytest.fixture
def ms(delivery_factory):
    found = sorted((delivery_factory(n_ebs=1) / 'measurement_sets').glob('*_targets.ms'))
    assert found, 'the simulated delivery has no uid*_targets.ms'
    return found[0]


def _age(ms, stamp=None):
    """Date every file of ms back (as a delivery copied with its times is): answers read from it are kept."""
    stamp = time.time() - 60 if stamp is None else stamp
    for folder, _dirs, files in os.walk(str(ms)):
        for name in files:
            os.utime(os.path.join(folder, name), (stamp, stamp))


def test_answers_are_kept_while_the_ms_is_unchanged(casa, ms):
    _age(ms)
    first = sfr.read_ms_layout(casa, ms)
    assert sfr.read_ms_layout(casa, ms) is first, 'the layout was read again from an unchanged MS'
    assert sfr.survey_data_columns(casa, ms) is sfr.survey_data_columns(casa, ms)
    assert sfr.read_ms_for_imaging(casa, ms) is sfr.read_ms_for_imaging(casa, ms)
    # the caller's copy: changing it does not change what the next caller gets
    sfr.dd_ids_by_spw(casa, ms).clear()
    assert sfr.dd_ids_by_spw(casa, ms), 'a caller emptied the kept data descriptions'


def test_a_column_added_to_the_ms_is_seen(casa, ms):
    _age(ms)
    assert 'CORRECTED_DATA' not in sfr.column_names(casa, ms)
    assert not sfr.survey_data_columns(casa, ms).has_selfcal
    calibrater = casa.casatools.calibrater()
    try:
        calibrater.open(str(ms), compress=False, addcorr=True, addmodel=False)
        calibrater.close()
    finally:
        calibrater.done()
    assert 'CORRECTED_DATA' in sfr.column_names(casa, ms), 'stale column names served after CORRECTED_DATA was added'
    assert sfr.survey_data_columns(casa, ms).has_selfcal, 'stale column survey served'
    assert sfr.read_ms_for_imaging(casa, ms).datacolumn == 'corrected'


def test_a_field_renamed_in_the_field_subtable_is_seen(casa, ms):
    _age(ms)
    before = sfr.read_ms_layout(casa, ms)
    old_name = list(before.fields)[0]
    table = casa.casatools.table()
    table.open(str(ms / 'FIELD'), nomodify=False)
    try:
        for row in range(table.nrows()):
            if table.getcell('NAME', row) == old_name:
                table.putcell('NAME', row, 'RENAMED')
    finally:
        table.close()
    after = sfr.read_ms_layout(casa, ms)
    assert 'RENAMED' in after.fields and old_name not in after.fields, \
        'the layout read before FIELD was changed was served (fields %s)' % list(after.fields)


def test_an_ms_replaced_by_another_with_the_same_times_is_read_again(casa, ms, delivery_factory):
    stamp = time.time() - 3600
    _age(ms, stamp)
    assert sorted(sfr.read_ms_layout(casa, ms).spws) == [25, 27]
    source = sorted((delivery_factory(n_ebs=1, spw_ids=(25,)) / 'measurement_sets').glob('*_targets.ms'))[0]
    _age(source, stamp)
    shutil.rmtree(str(ms))
    shutil.copytree(str(source), str(ms))  # copy2: the other MS's files with the same times, new inodes
    assert sorted(sfr.read_ms_layout(casa, ms).spws) == [25], 'the replaced MS was served its old layout'


def test_a_shadow_is_described_as_its_ms_under_its_own_path(casa, ms, tmp_path):
    # The image step gives tclean shadows of the MSes the plan's checks read: it takes the MS's answer, re-pathed.
    _age(ms)
    shadow = sfr.make_shadow(ms, tmp_path / 'staging' / ms.name, short_links=True)
    read_there = sfr._read_ms_for_imaging(casa, shadow)
    kept = sfr.read_ms_for_imaging(casa, ms)
    given = sfr.read_ms_for_imaging(casa, ms, at=shadow)
    assert given.path == shadow and given.layout.path == shadow and given.name == ms.name
    assert kept.path == ms and kept.layout.path == ms, 'the answer kept for the MS was changed'
    assert given._replace(layout=None) == read_there._replace(layout=None)
    mine, theirs = dict(vars(given.layout)), dict(vars(read_there.layout))
    assert repr(mine.pop('frames')) == repr(theirs.pop('frames'))  # numpy arrays inside: compared as printed
    assert mine == theirs
