"""cont.dat as users and every pipeline release write it, and the decisions made from it before CASA starts.

Pure Python: no CASA, no measurement set content.  Every error names the file and line and says
what to do, in one line.
"""
import os
import subprocess
import sys
import time

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT

V1 = """\
IRAS_16293-2422

SPW25
216.8974464165~216.9100650994GHz
216.9433502214~216.9559686137GHz

SPW27
NONE
"""

V2 = """\
Field: IRAS_16293-2422

SpectralWindow: 25
216.8974464165~216.9100650994GHz LSRK
216.9433502214~216.9559686137GHz LSRK

SpectralWindow: 27
ALL

Field: "Elias_2-27"

SpectralWindow: 25
216897.4~216910.0MHz LSRK; 216943350221.4~216955968613.7Hz LSRK;216950000~216951000kHz SOURCE

SpectralWindow: 27
NONE
"""

V3 = """\
Field: IRAS_16293-2422

SpectralWindow: 25 X1189462395#ALMA_RB_06#BB_1#SW-01#FULL_RES
Flags: LOWBANDWIDTH
216.8974464165~216.9100650994GHz LSRK

SpectralWindow: 27 X1189462395#ALMA_RB_06#BB_2#SW-01#FULL_RES

SpectralWindow: 29 X1189462395#ALMA_RB_06#BB_3#SW-01#FULL_RES
Flags: ALLCONT LOWSPREAD

SpectralWindow: 31 X1189462395#ALMA_RB_06#BB_4#SW-01#FULL_RES
ALLCONT
"""


def parse(text):
    return sfr.parse_contdat(text, path='cont.dat', display='caltables/cont.dat')


def errors_of(text):
    """Every error of text, as reported: ['caltables/cont.dat:LINE: error: what — what to do', ...]."""
    with pytest.raises(sfr.ContDatErrors) as raised:
        parse(text)
    summary = str(raised.value)
    lines = raised.value.lines()
    assert '\n' not in summary and summary == 'caltables/cont.dat has %d error%s (listed above) — correct %s and ' \
        'run again; nothing was written' % (len(lines), '' if len(lines) == 1 else 's',
                                           'it' if len(lines) == 1 else 'them')
    assert all('\n' not in line and ' — ' in line for line in lines)
    return lines


def error_of(text):
    """The one error of text (reading goes on after it without follow-on errors)."""
    line, = errors_of(text)
    return line


def test_v1_bare_field_names_and_spw_lines_with_ranges_in_topo():
    contdat = parse(V1)
    assert contdat.version == 1
    field = contdat.fields['IRAS_16293-2422']
    assert list(field.spws) == [25, 27]
    ranges = field.spws[25].ranges
    assert [(r.frame, r.line) for r in ranges] == [('TOPO', 4), ('TOPO', 5)]
    assert [(r.lo_hz, r.hi_hz) for r in ranges] == [pytest.approx((216897446416.5, 216910065099.4)),
                                                    pytest.approx((216943350221.4, 216955968613.7))]
    assert field.spws[27].fit_all_channels and field.spws[27].selection_word == 'NONE'


def test_v2_fields_spws_units_frames_and_semicolon_joined_ranges():
    contdat = parse(V2)
    assert contdat.version == 2
    assert list(contdat.fields) == ['IRAS_16293-2422', 'Elias_2-27'], 'quotes around a field name are dropped'
    first = contdat.fields['IRAS_16293-2422']
    assert first.line == 1 and first.spws[25].line == 3 and first.spws[25].name is None
    assert first.spws[27].fit_all_channels and first.spws[27].selection_word == 'ALL'
    joined = contdat.fields['Elias_2-27'].spws[25].ranges
    assert [(round(r.lo_hz), round(r.hi_hz), r.frame) for r in joined] == [
        (216897400000, 216910000000, 'LSRK'), (216943350221, 216955968614, 'LSRK'),
        (216950000000, 216951000000, 'SOURCE')]
    assert {r.line for r in joined} == {13}
    assert contdat.problems == []


def test_v3_names_flags_and_an_empty_block_meaning_none():
    contdat = parse(V3)
    assert contdat.version == 3
    spws = contdat.fields['IRAS_16293-2422'].spws
    assert spws[25].name == 'X1189462395#ALMA_RB_06#BB_1#SW-01#FULL_RES'
    assert spws[25].flags == ['LOWBANDWIDTH'] and spws[25].low_bandwidth and not spws[25].fit_all_channels
    assert spws[27].ranges == [] and spws[27].fit_all_channels and spws[27].selection_word == 'NONE'
    assert spws[29].flags == ['ALLCONT', 'LOWSPREAD'] and spws[29].low_bandwidth
    assert spws[29].selection_word == 'ALLCONT' and spws[31].selection_word == 'ALLCONT'
    assert not spws[31].low_bandwidth


def test_windows_line_ends_and_surrounding_spaces_are_accepted():
    contdat = parse('  Field: A  \r\n\r\nSpectralWindow: 25\r\n   230.0~230.1GHz LSRK   \r\n')
    assert contdat.fields['A'].spws[25].ranges[0].hi_hz == 230.1e9


# -- cont.dat for each pipeline release ---------------------------------------------------------------

@pytest.mark.parametrize('revision, fits_first, grammar', [
    ('2022.2.0.64', True, 2), ('2023.1.0.124', False, 2), ('2023.1.1.9', False, 2), ('2024.0.0.95', False, 2),
    ('2024.0.0.96', False, 3), ('2024.1.1.22', False, 3), ('2026.0.0.0+1377-gfbf19139c1', False, 3),
    ('unknown', True, 2), ('unknown', False, 3)])
def test_the_grammar_each_release_reads_follows_its_contfilehandler(revision, fits_first, grammar):
    # 2024.0.0.96 is the first tag whose ContFileHandler.read() knows "SpectralWindow: N NAME" and Flags:
    assert sfr.contdat_grammar_read_by(revision, fits_with_uvcontfit=fits_first) == grammar


def blocks_of(contdat):
    """{(field, spw): (ranges in Hz with frames, NONE/ALL/ALLCONT)}: what the pipeline fits from."""
    return {(field.name, spw.virtual_id): ([(r.lo_hz, r.hi_hz, r.frame) for r in spw.ranges],
                                           'ranges' if spw.ranges else spw.selection_word)
            for field, spw in contdat.blocks()}


def lines_a_v2_reader_matches(text):
    """Each line as PL2022/PL2023 read it: compared from column 0 and never stripped (their
    contfilehandler.py), so a line that is none of these is taken for a field name or ignored."""
    import re
    kinds = []
    for line in text.splitlines():
        if re.match(r'^Field: \S', line) or re.match(r'^SpectralWindow: \d+$', line) or re.match(r'^SPW\d+$', line):
            kinds.append(line.split()[0])
        elif line in ('NONE', 'ALL'):
            kinds.append(line)
        elif re.match(r'^[\d.]+~[\d.]+(Hz|kHz|MHz|GHz) (LSRK|SOURCE|TOPO)(; ?[\d.]+~[\d.]+(Hz|kHz|MHz|GHz) '
                      r'(LSRK|SOURCE|TOPO))*$', line):
            kinds.append('ranges')
        else:
            kinds.append('NOT READ: ' + line)
    return kinds


def test_a_v3_file_becomes_v2_for_pl2022_and_pl2023_with_the_same_ranges():
    converted, changes = sfr.contdat_in_grammar(V3, 2)
    assert not [kind for kind in lines_a_v2_reader_matches(converted) if kind.startswith('NOT READ')]
    assert 'SpectralWindow: 25\n' in converted and 'Flags' not in converted and 'ALLCONT' not in converted
    before, after = parse(V3), parse(converted)
    assert after.version == 2
    expected = blocks_of(before)
    # ALLCONT (the line, or the flag of a block without ranges) is ALL: every channel is continuum
    expected.update({key: (ranges, 'ALL') for key, (ranges, word) in expected.items() if word == 'ALLCONT'})
    assert blocks_of(after) == expected
    assert changes == ['the spw names taken off 4 "SpectralWindow: N NAME" lines', '2 "Flags:" lines left out',
                       'ALLCONT written as ALL (every channel is continuum)']


def test_v1_and_v2_files_keep_their_lines_for_old_releases_and_every_file_is_unchanged_for_new_ones():
    for text in (V1, V2):
        converted, changes = sfr.contdat_in_grammar(text, 2)
        assert changes == []
        assert converted.splitlines() == [line for line in text.splitlines() if line]
    spaced = '  Field: A  \r\nSpectralWindow: 25 \r\n ALL \r\n'
    assert lines_a_v2_reader_matches(sfr.contdat_in_grammar(spaced, 2)[0]) == ['Field:', 'SpectralWindow:', 'ALL']
    for text in (V1, V2, V3, spaced):
        assert sfr.contdat_in_grammar(text, 3) == (text, [])


def test_a_later_block_for_the_same_field_or_spw_replaces_the_earlier_one_with_a_warning():
    contdat = parse('Field: A\nSpectralWindow: 25\n1~2GHz LSRK\nSpectralWindow: 25\n3~4GHz LSRK\n'
                    'Field: B\nSpectralWindow: 25\nNONE\nField: A\nSpectralWindow: 27\n5~6GHz LSRK\n')
    assert list(contdat.fields['A'].spws) == [27], 'like the pipeline, the later field block wins'
    assert [(p.severity, p.line) for p in contdat.problems] == [('warning', 4), ('warning', 9)]
    assert 'spw 25 of field "A" appears again (first at line 2)' in contdat.problems[0].message
    assert 'field "A" appears again (first at line 1)' in contdat.problems[1].message
    assert all(p.path == 'caltables/cont.dat' for p in contdat.problems)


def test_unknown_flags_are_warned_about_and_ignored():
    contdat = parse('Field: A\nSpectralWindow: 25 NAME\nFlags: LOWBANDWIDTH SPARKLY\n1~2GHz LSRK\n')
    assert contdat.fields['A'].spws[25].flags == ['LOWBANDWIDTH']
    problem, = contdat.problems
    assert problem.line == 3 and 'unknown flag "SPARKLY"' in problem.message


@pytest.mark.parametrize('text, line, fragment', [
    ('# my edits\nField: A\nSpectralWindow: 25\n1~2GHz LSRK\n', 1, 'starts with "#", but cont.dat has no comments'),
    ('Field: A\nSpectralWindow: 25\n1~2GHz LSRK\n#1~2GHz LSRK\n', 4, 'would read the line as a field name'),
    ('Field: A\nSpectralWindw: 25\n', 2, '"SpectralWindw: 25" is not a cont.dat line'),
    ('Field: A\nSpectralWindow: 25\n230.0~230.1GHz\n', 3, 'has no frame — add LSRK'),
    ('Field: A\nSpectralWindow: 25\n230.0~230.1ghz LSRK\n', 3, 'unit "ghz"'),
    ('Field: A\nSpectralWindow: 25\n230.0~230.1GHz REST\n', 3, 'REST frame'),
    ('Field: A\nSpectralWindow: 25\n230.0~230.1GHz lsrk\n', 3, 'unknown frame "lsrk"'),
    ('Field: A\nSpectralWindow: 25\n230.1~230.0GHz LSRK\n', 3, 'is reversed — write the lower frequency first'),
    ('Field: A\nSpectralWindow: 25\n2.3e2~2.31e2GHz LSRK\n', 3, 'plain decimals'),
    ('Field: A\nSpectralWindow: 25\n230.0~230.1GHz LSRK; 231GHz LSRK\n', 3, 'cannot read the range "231GHz LSRK"'),
    ('SpectralWindow: 25\n1~2GHz LSRK\n', 1, 'before any field — add a "Field: NAME" line'),
    ('Field: A\n1~2GHz LSRK\n', 2, 'a frequency range comes before any spectral window'),
    ('Field: A\nFlags: ALLCONT\n', 2, 'a Flags: line comes before any spectral window'),
    ('Field: A\nNONE\n', 2, 'NONE comes before any spectral window'),
    ('Field: A\nSpectralWindow: twentyfive\n', 2, 'is not "SpectralWindow: ID"'),
    ('Field: A\nSpectralWindow: 25 NAME EXTRA\n', 2, 'is not "SpectralWindow: ID"'),
    ('Field:\nSpectralWindow: 25\n', 1, '"Field:" has no field name'),
], ids=['comment-first', 'comment-later', 'typo', 'no-frame', 'unit-case', 'rest', 'frame-case', 'reversed',
        'exponent', 'joined-bad', 'spw-first', 'range-first', 'flags-first', 'none-first', 'spw-not-a-number',
        'spw-too-many-words', 'empty-field'])
def test_every_error_names_the_line_and_what_to_do(text, line, fragment):
    message = error_of(text)
    assert message.startswith('caltables/cont.dat:%d: error: ' % line)
    assert fragment in message


def test_reading_goes_on_after_an_error_and_reports_every_one_in_file_order():
    text = ('Field: A\n'
            'SpectralWindow: 25\n'
            '230.1~230.0GHz LSRK; 230.2~230.3GHz lsrk\n'  # two errors on one line
            '# an edit\n'
            'SpectralWindw: 27\n'
            'field: B\n'                                   # the block under it reads without follow-on errors
            'SpectralWindow: 25\n'
            '231.0~231.1GHz LSRK\n'
            'SpectralWindow: x\n'
            '231.0~231.1GHz\n')                            # under a bad spw line: still read, its own error
    lines = errors_of(text)
    assert [line.split(': error: ')[0] for line in lines] == ['caltables/cont.dat:%d' % n for n in (3, 3, 4, 5, 6, 9, 10)]
    assert 'reversed' in lines[0] and 'unknown frame "lsrk"' in lines[1] and 'has no frame' in lines[6]


def test_a_range_whose_ends_are_equal_is_read_as_one_frequency():
    contdat = parse('Field: A\nSpectralWindow: 25\n232.68979128767543~232.68979128767543GHz LSRK\n'
                    '232.1~232.2GHz LSRK\n')
    first, second = contdat.fields['A'].spws[25].ranges
    assert first.lo_hz == first.hi_hz == float("232.68979128767543") * 1e9 and second.lo_hz < second.hi_hz
    assert not contdat.problems


def test_a_typo_in_a_v1_file_becomes_a_field_name_that_the_checker_reports():
    contdat = parse('IRAS\nSPW25\n1~2GHz\nIRASS\nSPW25\n1~2GHz\n')
    assert list(contdat.fields) == ['IRAS', 'IRASS']


def test_read_contdat_names_a_missing_file(tmp_path):
    with pytest.raises(sfr.ReprocessingError, match='cannot read .*cont.dat .* restore cont.dat'):
        sfr.read_contdat(tmp_path / 'cont.dat')


def test_every_file_the_simulator_writes_reads_back(tmp_path):
    text = V3.replace('X1189462395', 'X1')
    path = tmp_path / 'cont.dat'
    path.write_text(text)
    assert sfr.read_contdat(path).version == 3
    assert sfr.read_contdat(path).display == str(path)


# -- from the file to what is fitted (pure parts) ------------------------------------------------------

def layout(path, spws, fields=None, pairs=None):
    fields = fields or {'A': [0]}
    spw_infos = dict((spw_id, sfr.SpwInfo(spw_id, name, 64)) for spw_id, name in spws.items())
    pairs = pairs if pairs is not None else {(f, s) for ids in fields.values() for f in ids for s in spws}
    return sfr.MsLayout(path=path, start=0.0, fields=fields, spws=spw_infos, pairs=pairs, rows=10)


def spw_block(virtual_id, name=None):
    return sfr.ContDatSpw(virtual_id=virtual_id, name=name, line=1)


def test_a_spw_number_is_the_first_eb_s_id_and_other_ebs_are_matched_by_name():
    first = layout('/d/uid___A_X1_X1_targets.ms', {25: 'BB_1#FULL_RES', 27: 'BB_2#FULL_RES'})
    renumbered = layout('/d/uid___A_X2_X2_targets.ms', {17: 'BB_1#FULL_RES', 19: 'BB_2#FULL_RES'})
    unnamed = layout('/d/uid___A_X3_X3_targets.ms', {25: '', 27: ''})
    virtual = sfr.virtual_spws([first, renumbered])
    assert list(virtual) == [25, 27], 'the same windows renumbered: no new virtual ids'
    assert sfr.map_spw(spw_block(25), first, virtual) == 25
    assert sfr.map_spw(spw_block(27), renumbered, virtual) == 19
    assert sfr.map_spw(spw_block(19), renumbered, virtual) is None, 'numbers are those of the first EB'
    assert sfr.map_spw(spw_block(33), first, virtual) is None
    assert sfr.map_spw(spw_block(25, 'BB_1#FULL_RES'), renumbered, virtual) == 17, 'a v3 name decides'
    assert sfr.map_spw(spw_block(25, 'BB_9#FULL_RES'), first, virtual) is None
    first_unnamed = layout('/d/uid___A_X0_X0_targets.ms', {25: '', 27: ''})
    assert sfr.map_spw(spw_block(27), unnamed, sfr.virtual_spws([first_unnamed, unnamed])) == 27, \
        'without names, by number'


def test_windows_only_a_later_eb_has_data_in_get_their_own_virtual_ids():
    # a multi-source SB: target A in spws 25, 27; B in 29, 31; the first EB did not observe B
    only_a = layout('/d/uid___A_X1_X1_targets.ms', {25: 'BB_1#FULL_RES', 27: 'BB_2#FULL_RES'})
    both = layout('/d/uid___A_X2_X2_targets.ms', {25: 'BB_1#FULL_RES', 27: 'BB_2#FULL_RES',
                                                   29: 'BB_3#FULL_RES', 31: 'BB_4#FULL_RES'})
    only_b = layout('/d/uid___A_X3_X3_targets.ms', {29: 'BB_3#FULL_RES', 31: 'BB_4#FULL_RES'})
    virtual = sfr.virtual_spws([only_a, both, only_b])
    assert list(virtual) == [25, 27, 29, 31]
    assert virtual[29][0] is both, 'defined by the first EB that has the window'
    assert sfr.map_spw(spw_block(29), only_b, virtual) == 29
    assert sfr.map_spw(spw_block(31), both, virtual) == 31
    assert sfr.map_spw(spw_block(29), only_a, virtual) is None
    # a new window of a later EB under an id that is taken (its window renumbered): the next id above all
    first = layout('/d/uid___A_X1_X1_targets.ms', {25: 'BB_1#FULL_RES'})
    clash = layout('/d/uid___A_X4_X4_targets.ms', {25: 'BB_3#FULL_RES', 27: 'BB_1#FULL_RES'})
    virtual = sfr.virtual_spws([first, clash])
    assert list(virtual) == [25, 26] and virtual[26][1].name == 'BB_3#FULL_RES'
    assert sfr.map_spw(spw_block(25), clash, virtual) == 27
    assert sfr.map_spw(spw_block(26), clash, virtual) == 25


def test_channel_ranges_are_merged_and_sorted_whatever_the_sideband():
    assert sfr.merge_channel_ranges([(48, 60), (0, 13)]) == [(0, 13), (48, 60)]
    assert sfr.merge_channel_ranges([(10, 20), (15, 30), (31, 35), (40, 41)]) == [(10, 35), (40, 41)]
    assert sfr.merge_channel_ranges([(60, 48)]) == [(48, 60)]
    assert sfr.channel_string([(0, 13), (48, 60)]) == '0~13;48~60'


def selection(field_ids, spw_id, chan, fitorder=1, name='A'):
    return sfr.FitSelection(name, field_ids, spw_id, spw_id, chan, 10, 64, fitorder, 1, 'ranges')


def test_fitspec_is_per_field_ids_and_spw_like_the_pipeline_with_an_overridable_fit_order():
    selections = [selection([0], 25, '0~13;48~60'), selection([0], 27, '', fitorder=0),
                  selection([1, 2], 25, '3~9', name='Mosaic')]
    field, spw, fitspec = sfr.build_fitspec(selections)
    assert (field, spw) == ('0,1,2', '25,27')
    assert fitspec == {'0': {'25': {'chan': '0~13;48~60', 'fitorder': 1}, '27': {'chan': '', 'fitorder': 0}},
                       '1,2': {'25': {'chan': '3~9', 'fitorder': 1}}}
    _, _, overridden = sfr.build_fitspec(selections, fitorder=2)
    assert {entry['fitorder'] for spws in overridden.values() for entry in spws.values()} == {2}


def test_casa_6_4_fits_the_same_selection_with_mstransform_or_says_why_it_cannot():
    # CASA 6.4 has no fitspec uvcontsub: mstransform's douvcontsub takes one fitspw for every field
    # and one fit order (measured on 6.4.4.31: the line MS equals 6.5.5.21's uvcontsub one exactly)
    _, _, fitspec = sfr.build_fitspec([selection([0], 27, '2~20;40~60'), selection([0], 25, ''),
                                       selection([1, 2], 27, '2~20;40~60', name='B')])
    assert sfr.mstransform_fit_of(fitspec, ms_name='x.ms', casa_version='6.4.4.31') == ['25,27:2~20;40~60', 1]
    _, _, per_field = sfr.build_fitspec([selection([0], 25, '0~13'), selection([1], 25, '3~9', name='B')])
    with pytest.raises(sfr.ReprocessingError, match='CASA 6.4.4.31 fits one channel selection per spw for every '
                                                    'field.* spw 25 — use CASA 6.5 or later, or --contsub'):
        sfr.mstransform_fit_of(per_field, ms_name='x.ms', casa_version='6.4.4.31')
    _, _, two_orders = sfr.build_fitspec([selection([0], 25, '0~13'), selection([0], 27, '', fitorder=0)])
    with pytest.raises(sfr.ReprocessingError, match='needs orders 0 and 1 .* give --fitorder N'):
        sfr.mstransform_fit_of(two_orders, ms_name='x.ms', casa_version='6.4.4.31')


def test_jobs_default_to_the_cores_for_large_data_and_never_exceed_the_execution_blocks(monkeypatch):
    monkeypatch.setattr(sfr, 'available_cores', lambda: 8)
    big = 10 * sfr.PARALLEL_MIN_BYTES
    assert sfr.resolve_jobs(None, 4, total_bytes=big) == 4
    assert sfr.resolve_jobs(None, 16, total_bytes=big) == 8
    assert sfr.resolve_jobs(None, 4, total_bytes=1000) == 1, 'small data: starting workers costs more'
    assert sfr.resolve_jobs(3, 4, total_bytes=1000) == 3, '--jobs is obeyed'
    assert sfr.resolve_jobs(6, 2, total_bytes=big) == 2


# -- which --contsub_fast method, from files and flags alone -------------------------------------------

def make_delivery(root, *, tables=(), contdat_age=None):
    (root / 'measurement_sets').mkdir(parents=True)
    (root / 'caltables').mkdir()
    for uid in ('uid___A002_X1_X1', 'uid___A002_X2_X2'):
        (root / 'measurement_sets' / (uid + '_targets.ms')).mkdir()
    for uid in tables:
        table = root / 'caltables' / ('%s_targets.ms.hif_uvcontfit.s10_1.uvcont.tbl' % uid)
        table.mkdir()
        (table / 'table.dat').write_text('x')
    contdat = root / 'caltables' / 'cont.dat'
    contdat.write_text('Field: A\nSpectralWindow: 25\n230.0~230.1GHz LSRK\n')
    if contdat_age is not None:
        then = time.time() + contdat_age
        os.utime(str(contdat), (then, then))
    return sfr.Delivery(root)


def method_for(delivery, *flags):
    options = sfr.build_parser().parse_args(['--contsub_fast'] + list(flags))
    return sfr.choose_contsub_fast_method(sfr.run_request(options, delivery.root).contsub, delivery, delivery.targets)


def test_cycle10_deliveries_are_fitted_from_cont_dat(tmp_path):
    method, why = method_for(make_delivery(tmp_path))
    assert method == 'uvcontsub' and 'holds no *uvcont.tbl' in why


def test_cycle9_tables_are_applied_unless_cont_dat_changed_or_a_refit_is_asked_for(tmp_path):
    both = ('uid___A002_X1_X1', 'uid___A002_X2_X2')
    delivery = make_delivery(tmp_path / 'a', tables=both)
    method, why = method_for(delivery)
    assert method == 'tables' and 'add --refit' in why
    assert method_for(delivery, '--refit') == ('uvcontsub', method_for(delivery, '--refit')[1])
    assert '--refit was given' in method_for(delivery, '--refit')[1]
    assert '--fitorder was given' in method_for(delivery, '--fitorder', '0')[1]
    edited = make_delivery(tmp_path / 'b', tables=both, contdat_age=3600)
    method, why = method_for(edited)
    assert method == 'uvcontsub' and 'is newer than the delivered continuum tables' in why
    partial = make_delivery(tmp_path / 'c', tables=both[:1])
    method, why = method_for(partial)
    assert method == 'uvcontsub' and 'only 1 of the 2 execution blocks (none for uid___A002_X2_X2)' in why


# -- the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize('argv, fragment', [
    (['--refit', '--image'], '--refit only applies to --contsub_fast'),
    (['--jobs', '2', '--contsub'], '--jobs only applies to --contsub_fast'),
    (['--contsub_fast', '--jobs', '0'], 'not a number of jobs'),
    (['--contsub_fast', '--fitorder', 'one'], 'not a fit order'),
])
def test_contsub_options_are_checked_before_anything_else(argv, fragment, capsys):
    assert sfr.main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_a_cont_dat_syntax_error_stops_even_a_dry_run_without_starting_casa(tmp_path):
    make_delivery(tmp_path)
    (tmp_path / 'caltables' / 'cont.dat').write_text('Field: A\nSpectralWindow: 25\n# was 230.0~230.2GHz\n')
    probe = ('import sys; sys.path.insert(0, %r); import scriptForReprocessing as s\n'
             'code = s.main(["--delivery", %r, "--dry-run", "--contsub_fast"])\n'
             'print(code, [m for m in sys.modules if m.startswith("casa")])' % (str(SCRIPT.parent), str(tmp_path)))
    done = subprocess.run([sys.executable, '-c', probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    assert done.stdout.strip().splitlines()[-1] == '1 []'
    assert '  caltables/cont.dat:3: error: "# was 230.0~230.2GHz" starts with "#"' in done.stdout
    assert done.stderr.strip() == ('ERROR: caltables/cont.dat has 1 error (listed above) — correct it and run again; '
                                   'nothing was written')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['caltables', 'measurement_sets']


def test_check_is_an_action_of_its_own_listed_in_help(capsys):
    assert sfr.main(['--help']) == 0
    text = capsys.readouterr().out
    for flag in ('--check', '--refit', '--fitorder', '--jobs'):
        assert flag in text


def test_check_plans_one_step_that_reads_cont_dat(tmp_path):
    delivery = make_delivery(tmp_path)
    options = sfr.build_parser().parse_args(['--check'])
    sfr.check_combinations(options)
    plan = sfr.make_plan(sfr.run_request(options, delivery.root), delivery)
    assert [step.name for step in plan.steps] == ['check']
    assert plan.contdat.fields['A'].spws[25].ranges[0].frame == 'LSRK'


# -- files as editors and careless hands write them ---------------------------------------------------

V2_TEXT = 'Field: IRAS_16293-2422\n\nSpectralWindow: 25\n216.0~216.1GHz LSRK\n'


def test_a_byte_order_mark_is_what_editors_write_and_is_read(tmp_path):
    path = tmp_path / 'cont.dat'
    path.write_bytes(b'\xef\xbb\xbf' + V2_TEXT.replace('\n', '\r\n').encode('utf-8'))
    contdat = sfr.read_contdat(path)
    assert list(contdat.fields) == ['IRAS_16293-2422'] and list(contdat.fields['IRAS_16293-2422'].spws) == [25]


@pytest.mark.parametrize('number, line, proper, replaces', [
    (1, 'field: IRAS_16293-2422', 'Field:', True), (3, 'spectralwindow: 25', 'SpectralWindow:', True),
    (4, 'FLAGS: LOWBANDWIDTH', 'Flags:', False)])
def test_lower_case_keywords_are_named_at_their_line(tmp_path, number, line, proper, replaces):
    lines = V2_TEXT.splitlines()
    lines[number - 1:number - 1 + replaces] = [line]
    path = tmp_path / 'cont.dat'
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(sfr.ContDatErrors) as raised:
        sfr.read_contdat(path, display='caltables/cont.dat')
    message, = raised.value.lines()
    assert message.startswith('caltables/cont.dat:%d: error: "%s": cont.dat keywords are case-sensitive'
                              % (number, line))
    assert message.endswith('write "%s"' % proper)


def test_a_binary_file_is_described_not_echoed(tmp_path):
    path = tmp_path / 'cont.dat'
    path.write_bytes(b'\x00' * 2366 + b'\x89PNG')
    with pytest.raises(sfr.ReprocessingError) as raised:
        sfr.read_contdat(path, display='caltables/cont.dat')
    assert str(raised.value) == ('caltables/cont.dat is not a text file (it holds 2366 NUL bytes) — restore cont.dat '
                                 'from the delivery')
    path.write_bytes(V2_TEXT.encode('utf-8') + b'\xff\xfe junk\n')
    with pytest.raises(sfr.ReprocessingError, match=r'is not UTF-8 text \(byte \d+ is 0xff\)'):
        sfr.read_contdat(path, display='caltables/cont.dat')
