"""Real ALMA inputs: a real importasdm measurement set made into a delivery, and cont.dat files in the
shapes the pipeline's findcont writes, read against simulated MSes that cover their ranges.

The real MS (tests/data/real/README.md: origin and licence) is pyuvdata 3.2.3's
X5707_1spw_1scan_10chan_1time_1bl_noatm.ms: ExecBlock uid://A002/Xca5b1c/X5707, 3 fields of which
only the target GAMA567624 has rows (the calibrators J1337-1257 and J1410+0203 are FIELD rows
without data, as importasdm leaves them), one 11-channel TOPO spw 0 named
X1068667655#ALMA_RB_03#BB_1#SW-01#FULL_RES, 2 antennas (one baseline), 40 rows, DATA only.

Real cont.dat files: tests/data/real/contdat/README.md says why none is committed; set
REAL_CONTDAT_DIR to a directory of them (e.g. a checkout of ALMA-IMF/reduction's reduction/contdat)
to run the same checks on each.  The shapes they have (many ranges per window, ranges whose ends are
equal, v3 names and Flags) are made here as text.
"""
import math
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import REPO, md5_tree, one_error_line, requires_pipeline, user_ms_digests

REAL = REPO / 'tests' / 'data' / 'real'
TARBALL = REAL / 'X5707_1spw_1scan_10chan_1time_1bl_noatm.ms.tar.gz'
EB = 'uid___A002_Xca5b1c_X5707'
TARGET = 'GAMA567624'
CALIBRATOR = 'J1337-1257'  # in FIELD, no rows
SPW_NAME = 'X1068667655#ALMA_RB_03#BB_1#SW-01#FULL_RES'
CONT_CHANNELS = [(0, 2), (7, 9)]  # the channels the test cont.dat selects


# -- the real MS --------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def real_ms(tmp_path_factory):
    """The MS exactly as the tarball holds it (read-only: copy it)."""
    where = tmp_path_factory.mktemp('real_ms')
    with tarfile.open(str(TARBALL)) as tar:
        tar.extractall(str(where))
    return where / 'X5707_1spw_1scan_10chan_1time_1bl_noatm.ms'


def lsrk_edges(casa, ms, first, last):
    """(low, high) Hz LSRK that channels first..last of the target's spw 0 cover (advisechansel)."""
    tool = casa.casatools.synthesisutils()
    try:
        result = tool.advisechansel(msname=str(ms), fieldid=2, spwselection='0:%d~%d' % (first, last),
                                    freqframe='LSRK', getfreqrange=True)
    finally:
        tool.done()
    return result['freqstart']['value'], result['freqend']['value']


def contdat_for(casa, ms, blocks):
    """A v3 cont.dat; blocks: [(field, [(first, last) channel ranges or a frequency (Hz) for lo == hi])].
    A channel range is written a quarter channel inside its LSRK edges, so it selects exactly those
    channels in the MS it was made from."""
    lines = []
    for field, ranges in blocks:
        lines += ['Field: %s' % field, '', 'SpectralWindow: 0 %s' % SPW_NAME]
        for item in ranges:
            if isinstance(item, tuple):
                low, high = lsrk_edges(casa, ms, *item)
                quarter = (high - low) / (item[1] - item[0] + 1) / 4.0
                low, high = low + quarter, high - quarter
            else:
                low = high = item
            lines.append('%.10f~%.10fGHz LSRK' % (low / 1e9, high / 1e9))
        lines.append('')
    return '\n'.join(lines) + '\n'


def remove_dangling_subtable_keyword(casa, ms):
    """pyuvdata's "noatm" copy deleted ASDM_CALATMOSPHERE but left the main table's keyword naming it;
    CASA's mstransform (split, uvcontsub) then fails.  What a user with the subtable gone would do."""
    table = casa.casatools.table()
    table.open(str(ms), nomodify=False)
    try:
        table.removekeyword('ASDM_CALATMOSPHERE')
    finally:
        table.close()


def real_delivery(tmp_path, real_ms, casa, *, repaired=True, blocks=None):
    root = tmp_path / 'calibrated_final'
    (root / 'caltables').mkdir(parents=True)
    (root / 'measurement_sets').mkdir()
    ms = root / 'measurement_sets' / (EB + '_targets.ms')
    shutil.copytree(str(real_ms), str(ms))
    if repaired:
        remove_dangling_subtable_keyword(casa, ms)
    text = contdat_for(casa, ms, blocks if blocks is not None else [(TARGET, CONT_CHANNELS)])
    (root / 'caltables' / 'cont.dat').write_text(text)
    return root


def output_of(result):
    return result.stdout + result.stderr


def read_columns(casa, ms, *columns):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        return [table.getcol(column) for column in columns]
    finally:
        table.close()


@pytest.mark.parametrize('args', [['--check'], ['--dry-run', '--contsub_fast'], ['--contsub_fast'],
                                  ['--calibrated_final'], ['--image', '--specmodes', 'mfs']])
def test_the_real_ms_as_shipped_is_refused_in_one_line_naming_the_missing_subtable(
        tmp_path, real_ms, casa, run_script, args):
    delivery = real_delivery(tmp_path, real_ms, casa, repaired=False)
    before = user_ms_digests(delivery)
    error = one_error_line(run_script(*args, '--delivery', delivery), exit_code=1)
    assert 'ASDM_CALATMOSPHERE' in error and EB in error
    assert user_ms_digests(delivery) == before


def test_check_reads_the_real_ms_and_selects_the_channels_the_ranges_were_made_from(
        tmp_path, real_ms, casa, run_script):
    delivery = real_delivery(tmp_path, real_ms, casa)
    result = run_script('--check', '--delivery', delivery)
    text = output_of(result)
    assert result.returncode == 0, text
    assert '%s: field %s spw 0: channels 0~2;7~9 (6 of 11), fit order 1' % (EB, TARGET) in text
    assert 'no errors' in text


def test_dry_run_on_the_real_ms_plans_one_line_ms_and_changes_nothing(tmp_path, real_ms, casa, run_script):
    delivery = real_delivery(tmp_path, real_ms, casa)
    before = md5_tree(delivery)
    result = run_script('--dry-run', '--contsub_fast', '--calibrated_final', '--delivery', delivery)
    text = output_of(result)
    assert result.returncode == 0, text
    assert 'measurement_sets/%s_targets_line.ms' % EB in text and 'Dry run: nothing was changed.' in text
    assert md5_tree(delivery) == before


def test_contsub_fast_on_the_real_ms_subtracts_a_line_fitted_over_the_cont_dat_channels(
        tmp_path, real_ms, casa, run_script):
    import numpy
    delivery = real_delivery(tmp_path, real_ms, casa)
    ms = delivery / 'measurement_sets' / (EB + '_targets.ms')
    before = user_ms_digests(delivery)
    result = run_script('--contsub_fast', '--delivery', delivery)
    assert result.returncode == 0, output_of(result)
    assert user_ms_digests(delivery)[ms.name] == before[ms.name]  # the user's MS is untouched
    line = delivery / 'measurement_sets' / (EB + '_targets_line.ms')
    field, ddid, time_line, line_data = read_columns(casa, line, 'FIELD_ID', 'DATA_DESC_ID', 'TIME', 'DATA')
    time_in, data = read_columns(casa, ms, 'TIME', 'DATA')
    spw_ids, = read_columns(casa, line / 'DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')
    names, = read_columns(casa, line / 'SPECTRAL_WINDOW', 'NAME')
    assert line_data.shape == data.shape == (2, 11, 40)
    assert [names[spw_ids[d]] for d in set(ddid)] == [SPW_NAME]
    assert set(field) == {2} and numpy.allclose(numpy.sort(time_line), numpy.sort(time_in))
    order_in, order_line = numpy.argsort(time_in), numpy.argsort(time_line)
    data, line_data = data[:, :, order_in], line_data[:, :, order_line]
    # The physics: per row and correlation, a straight line fitted (least squares, equal weights) to
    # channels 0-2 and 7-9 of DATA, subtracted from every channel.
    chans = numpy.array([c for first, last in CONT_CHANNELS for c in range(first, last + 1)])
    x = numpy.arange(11)
    expected = numpy.empty_like(data)
    for corr in range(2):
        for row in range(40):
            for part in (numpy.real, numpy.imag):
                slope, offset = numpy.polyfit(chans, part(data[corr, chans, row]), 1)
                fitted = offset + slope * x
                if part is numpy.real:
                    expected[corr, :, row] = part(data[corr, :, row]) - fitted
                else:
                    expected[corr, :, row] += 1j * (part(data[corr, :, row]) - fitted)
    scale = numpy.abs(data).max()
    assert numpy.abs(line_data - expected).max() < 1e-5 * scale
    assert numpy.abs(data - line_data).max() > 1e-2 * scale  # something was subtracted


def test_calibrated_final_of_the_real_ms_holds_every_row_and_the_same_data(tmp_path, real_ms, casa, run_script):
    import numpy
    delivery = real_delivery(tmp_path, real_ms, casa)
    result = run_script('--calibrated_final', '--delivery', delivery)
    assert result.returncode == 0, output_of(result)
    concat = delivery / 'measurement_sets' / 'calibrated_final.ms'
    time_out, data_out = read_columns(casa, concat, 'TIME', 'DATA')
    time_in, data_in = read_columns(casa, delivery / 'measurement_sets' / (EB + '_targets.ms'), 'TIME', 'DATA')
    assert len(time_out) == len(time_in) == 40
    assert numpy.array_equal(data_out[:, :, numpy.argsort(time_out)], data_in[:, :, numpy.argsort(time_in)])


def test_image_of_one_baseline_is_refused_in_one_line(tmp_path, real_ms, casa, run_script):
    delivery = real_delivery(tmp_path, real_ms, casa)
    result = run_script('--image', '--specmodes', 'mfs', '--delivery', delivery)
    error = one_error_line(result, exit_code=1)
    assert 'on 1 baseline' in error and 'three antennas' in error
    assert not (delivery / 'images').exists() or not any((delivery / 'images').iterdir())


def test_a_calibrator_in_the_field_table_without_rows_is_not_said_to_be_in_no_ms(
        tmp_path, real_ms, casa, run_script):
    delivery = real_delivery(tmp_path, real_ms, casa, blocks=[(CALIBRATOR, [(1, 9)]), (TARGET, CONT_CHANNELS)])
    result = run_script('--check', '--delivery', delivery)
    text = output_of(result)
    assert result.returncode == 0, text
    assert 'none of the measurement sets' not in text
    assert re.search(r'cont\.dat:1: note: field "%s" .*no data' % CALIBRATOR, text), text
    assert '%s: field %s spw 0: channels 0~2;7~9 (6 of 11)' % (EB, TARGET) in text


def test_a_range_with_equal_ends_selects_the_one_channel_holding_that_frequency(
        tmp_path, real_ms, casa, run_script):
    delivery = real_delivery(tmp_path, real_ms, casa)
    ms = delivery / 'measurement_sets' / (EB + '_targets.ms')
    low, high = lsrk_edges(casa, ms, 8, 8)
    text = contdat_for(casa, ms, [(TARGET, [(0, 2), (low + high) / 2.0])])
    (delivery / 'caltables' / 'cont.dat').write_text(text)
    result = run_script('--check', '--delivery', delivery)
    assert result.returncode == 0, output_of(result)
    assert '%s: field %s spw 0: channels 0~2;8~8 (4 of 11), fit order 1' % (EB, TARGET) in output_of(result)


# -- cont.dat files in the shapes findcont writes, against simulated MSes covering their ranges --------

RANGE = re.compile(r'([\d.]+)\s*~\s*([\d.]+)\s*(GHz|MHz|kHz|Hz)\s*([A-Z]*)')
SCALE_GHZ = {'GHz': 1.0, 'MHz': 1e-3, 'kHz': 1e-6, 'Hz': 1e-9}


def blocks_in(text, *, frames=False):
    """{field: {spw id: [(low GHz, high GHz)]}} read plainly (not with the reader under test); with
    frames, [(low GHz, high GHz, frame)] ('' when the range names none)."""
    fields, field, spw = {}, None, None
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith('Field:'):
            field = line.split(':', 1)[1].strip().strip('"')
            fields[field] = {}
        elif line.startswith('SpectralWindow:'):
            spw = int(line.split()[1])
            fields[field][spw] = []
        elif '~' in line:
            for low, high, unit, frame in RANGE.findall(line):
                low, high = float(low) * SCALE_GHZ[unit], float(high) * SCALE_GHZ[unit]
                fields[field][spw].append((low, high, frame) if frames else (low, high))
    return fields


def covering_simulation(text):
    """simulate_delivery keywords for one EB whose spws cover every range of the file (TOPO within
    3e-4 of LSRK: +-90 km/s), its fields named as the file's."""
    fields = blocks_in(text)
    spws = sorted({spw for blocks in fields.values() for spw in blocks})
    centres, nchans = [], []
    for spw in spws:
        ranges = [r for blocks in fields.values() for r in blocks.get(spw, [])]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        centre = (low + high) / 2.0
        width = high - low + 6e-4 * centre + 0.004
        centres.append(round(centre, 6))
        # 976.5625 kHz channels up to 1920 of them (1.875 GHz); wider: 128 TDM channels (2 GHz)
        nchans.append(max(8, int(math.ceil(width / 0.0009765625))) if width <= 1.875 else 128)
    return dict(n_ebs=1, n_fields=len(fields), field_names=list(fields), spw_ids=spws, spw_nchan=nchans,
                spw_centres_ghz=centres, n_antennas=3, integrations_per_scan=1, line_peak_jy=0.0,
                pipeline_ready=True)


def findcont_like(seed, *, nspw=4, nranges=40, equal_ends=0, v3=False, span=1.8):
    """A cont.dat as findcont writes it (full-precision floats, v2 or v3 with Flags): nspw windows
    of band 6, nranges ranges each over span GHz, the first `equal_ends` of each window with equal ends."""
    import random
    rng = random.Random(seed)
    lines = ['Field: G000.00+0.00', '']
    for k in range(nspw):
        spw, low = 25 + 2 * k, 216.2 + 1.9 * k
        name = ' X1189462395#ALMA_RB_06#BB_%d#SW-01#FULL_RES' % (k + 1) if v3 else ''
        lines.append('SpectralWindow: %d%s' % (spw, name))
        if v3 and k == 1:
            lines.append('Flags: LOWBANDWIDTH')
        edges = sorted(low + span * rng.random() for _ in range(2 * nranges))
        for i in range(nranges):
            a, b = edges[2 * i], edges[2 * i + 1]
            lines.append('%r~%rGHz LSRK' % (a, a if i < equal_ends else b))
        lines.append('')
    return '\n'.join(lines) + '\n'


SHAPES = {
    'many-ranges-v2': findcont_like(1, nranges=60),
    'equal-ends-v2': findcont_like(2, nranges=25, equal_ends=3),
    'named-flags-v3': findcont_like(3, nranges=12, v3=True),
    # gaps narrower and wider than a channel (976.5625 kHz in the covering MS), side by side
    'dense-v2': findcont_like(4, nspw=2, nranges=400, equal_ends=5, span=0.5),
}


def corpus():
    files = [(name, text) for name, text in sorted(SHAPES.items())]
    files += [(path.name, path.read_text()) for path in sorted((REAL / 'contdat').glob('*cont.dat'))]
    outside = os.environ.get('REAL_CONTDAT_DIR')
    if outside:
        files += [(path.name, path.read_text()) for path in sorted(Path(outside).glob('*cont.dat'))]
    return files


CORPUS = corpus()


def delivery_for(delivery_factory, text):
    delivery = delivery_factory(**covering_simulation(text))
    (delivery / 'caltables' / 'cont.dat').write_text(text)
    return delivery


def unreadable_lines(text):
    """Numbers of the lines holding a range without a unit and frame ("230.3~230.5", as a hand edit in
    ALMA-IMF's G328.25.B6.cont.dat has): the pipeline's reader raises on them ("not enough values to
    unpack"), so the tool must refuse them too, naming the line."""
    return [number for number, line in enumerate(text.splitlines(), 1) if '~' in line and any(
        not re.match(r'^\s*[\d.]+\s*~\s*[\d.]+\s*(GHz|MHz|kHz|Hz)\s+[A-Z]+\s*$', part)
        for part in line.split(';') if part.strip())]


@pytest.mark.parametrize('name, text', CORPUS, ids=[name for name, _text in CORPUS])
def test_check_reads_each_cont_dat_against_an_ms_covering_its_ranges(delivery_factory, casa, run_script, name,
                                                                      text):
    delivery = delivery_for(delivery_factory, text)
    result = run_script('--check', '--delivery', delivery)
    output = output_of(result)
    unreadable = unreadable_lines(text)
    if unreadable:
        one_error_line(result, exit_code=1)
        assert re.findall(r'cont\.dat:(\d+): error: ', output) == [str(n) for n in unreadable], output
        return
    assert result.returncode == 0, output
    assert ': error:' not in output and 'ERROR' not in output, output
    selected = re.findall(r': field (.+) spw (\d+): channels ', output)
    expected = [(field, str(spw)) for field, blocks in blocks_in(text).items() for spw, ranges in blocks.items()
                if ranges]
    assert sorted(selected) == sorted(expected), output
    # Which channels: checked against each channel's own LSRK span (TOPO edges times the Doppler factors
    # of the field's first and last integration, measures tool), not with advisechansel as the tool does.
    ms = next((delivery / 'measurement_sets').glob('*_targets.ms'))
    blocks = blocks_in(text, frames=True)
    for field, spw, chans in re.findall(r': field (.+) spw (\d+): channels ([\d~;]+) \(', output):
        ranges = blocks[field][int(spw)]
        if any(frame not in ('LSRK', 'TOPO') for _low, _high, frame in ranges):
            continue  # SOURCE (or a bare range): not modelled here
        spans = channel_spans_ghz(casa, ms, field, int(spw), [frame for _low, _high, frame in ranges])
        inside, outside = channels_inside_and_outside(spans, ranges)
        chosen = channel_set(chans)
        assert inside <= chosen, (field, spw, sorted(inside - chosen))
        assert not chosen & outside, (field, spw, sorted(chosen & outside))


def channel_spans_ghz(casa, ms, field, spw, frames):
    """{frame: [(low GHz, high GHz)] per channel}: the frequencies each channel of the spw covers in that frame
    during the field's observation (TOPO: its edges; LSRK: its edges times the TOPO->LSRK factors at the
    field's first and last integration, read with the msmetadata and measures tools)."""
    tools = casa.casatools
    msmd, me, qa = tools.msmetadata(), tools.measures(), tools.quanta()
    msmd.open(str(ms))
    try:
        field_id = int(msmd.fieldsforname(field)[0])
        centres, widths = msmd.chanfreqs(spw), msmd.chanwidths(spw)
        times = msmd.timesforfield(field_id)
        direction = msmd.phasecenter(field_id)
        position = msmd.observatoryposition()
    finally:
        msmd.close()
    edges = [(c - abs(w) / 2.0, c + abs(w) / 2.0) for c, w in zip(centres, widths)]
    spans = {'TOPO': [(lo / 1e9, hi / 1e9) for lo, hi in edges]}
    if 'LSRK' in frames:
        me.doframe(position)
        me.doframe(direction)
        factors = []
        for time in (min(times), max(times)):
            me.doframe(me.epoch('UTC', qa.quantity(time, 's')))
            topo = float(centres[len(centres) // 2])
            lsrk = me.measure(me.frequency('TOPO', qa.quantity(topo, 'Hz')), 'LSRK')['m0']['value']
            factors.append(lsrk / topo)
        me.done()
        spans['LSRK'] = [(lo * min(factors) / 1e9, hi * max(factors) / 1e9) for lo, hi in edges]
    return spans


def channels_inside_and_outside(spans, ranges):
    """Channels every range-frame says must be fitted (wholly inside a range) and must not be (touching no
    range); the others (straddling a range's end) may go either way.  With ranges in both frames, a
    channel is inside when inside a range of either frame and outside when outside those of both."""
    nchan = len(next(iter(spans.values())))
    inside, touching = set(), set()
    for low, high, frame in ranges:
        for channel, (lo, hi) in enumerate(spans[frame]):
            if low <= lo and hi <= high:
                inside.add(channel)
            if lo <= high and low <= hi:
                touching.add(channel)
    return inside, set(range(nchan)) - touching


def channel_set(selection):
    """'0~3;7~9' -> {0, 1, 2, 3, 7, 8, 9}."""
    channels = set()
    for part in filter(None, selection.split(';')):
        first, last = (int(v) for v in part.split('~'))
        channels.update(range(min(first, last), max(first, last) + 1))
    return channels


@pytest.mark.pipeline
@requires_pipeline
@pytest.mark.parametrize('name, text', CORPUS, ids=[name for name, _text in CORPUS])
def test_channel_selections_equal_those_of_the_pipeline_s_own_reader(delivery_factory, casa, name, text):
    """The pipeline's ContFileHandler (get_merged_selection, then to_ms_frame, to_topo before the development
    head, as hif_uvcontsub's calc_ms_frame_ranges calls it) on a real ObservingRun of the MS, against the tool's
    analysis."""
    if unreadable_lines(text):
        pytest.skip('the pipeline\'s reader cannot read it either (lines %s)' % unreadable_lines(text))
    from pipeline.domain import ObservingRun
    from pipeline.infrastructure import contfilehandler, tablereader
    delivery = delivery_for(delivery_factory, text)
    ms = next((delivery / 'measurement_sets').glob('*_targets.ms'))
    contdat_path = delivery / 'caltables' / 'cont.dat'
    analysis = sfr.analyse_contdat(sfr.read_contdat(contdat_path), [ms], casa)
    assert not analysis.errors, [sfr.describe_problem(p) for p in analysis.errors]
    ours = {(s.field_name, s.virtual_id): channel_set(s.chan) if s.chan else 'all'
            for s in analysis.selections[str(ms)]}
    run = ObservingRun()
    run.add_measurement_set(tablereader.MeasurementSetReader.get_measurement_set(str(ms)))
    handler = contfilehandler.ContFileHandler(str(contdat_path))
    layout = analysis.layouts[0]
    theirs = {}
    for field, blocks in blocks_in(text).items():
        for spw in blocks:
            name_in_ms = run.virtual_science_spw_ids[spw]
            selection, _all, _low_bandwidth, _low_spread = handler.get_merged_selection(field, str(spw), name_in_ms)
            if selection in ('NONE', 'ALLCONT', ''):
                theirs[(field, spw)] = 'all'
                continue
            # to_ms_frame (4 values) since the development head (PIPE-3057); to_topo (3 values) up to PL2025
            to_ms_frame = getattr(handler, 'to_ms_frame', None) or handler.to_topo
            chans = to_ms_frame(selection, [str(ms)], [layout.fields[field][0]], spw, run, name_in_ms)[1]
            theirs[(field, spw)] = channel_set(chans[0].split()[0] if chans[0] else '')
    assert any(isinstance(channels, set) and channels for channels in theirs.values())
    assert ours == theirs


# -- advisechansel's answer worked out without it ---------------------------------------------------------

def advisechansel_channels(casa, ms, field_id, spw_id, low, high, frame):
    """(first, last) channels advisechansel itself gives for the range (the pipeline's call), or None."""
    tool = casa.casatools.synthesisutils()
    try:
        result = tool.advisechansel(msname=str(ms), fieldid=field_id, spwselection=str(spw_id), freqstart=low,
                                    freqend=high, freqstep=100., freqframe=frame)
    finally:
        tool.done()
    spws = [int(spw) for spw in result.get('spw', [])]
    if spw_id not in spws or int(result['nchan'][spws.index(spw_id)]) <= 0:
        return None
    first = int(result['start'][spws.index(spw_id)])
    return first, first + int(result['nchan'][spws.index(spw_id)]) - 1


def ranges_around(spw, rng, count):
    """Ranges of every kind around a window: equal ends, a few channels, wide, reaching beyond either edge,
    wholly outside; in LSRK and some in TOPO (ends as the pipeline writes them)."""
    span = spw.high_hz - spw.low_hz
    width = span / max(1, spw.nchan - 1)
    for _ in range(count):
        low = spw.low_hz + rng.uniform(-0.2, 1.2) * span
        kind = rng.random()
        high = low if kind < 0.2 else low + rng.uniform(0, 3) * width if kind < 0.4 else low + rng.uniform(0, 0.6) * span
        yield (sfr.ChannelConverter.pipeline_hz(low), sfr.ChannelConverter.pipeline_hz(high),
               'TOPO' if rng.random() < 0.15 else 'LSRK')


@pytest.mark.parametrize('which', ['simulated mosaic, 2 EBs', 'real MS'])
def test_channels_worked_out_without_casa_are_advisechansels_own(tmp_path, delivery_factory, real_ms, casa, which):
    """channels_without_casa (CASA's rule applied to the MS's metadata) against advisechansel on every field and
    spw: equal wherever it decides, and it decides nearly always (else the run would ask CASA every time)."""
    import random
    if which == 'real MS':
        mses = [real_ms]
    else:
        delivery = delivery_factory(n_ebs=2, n_fields=3, spw_ids=(17, 19), nchan=128)
        mses = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))
    rng = random.Random(7)
    converter = sfr.ChannelConverter(casa)
    decided = compared = 0
    for ms in mses:
        layout = sfr.read_ms_layout(casa, ms)
        for field_ids in layout.fields.values():
            for spw in layout.spws.values():
                for low, high, frame in ranges_around(spw, rng, 25):
                    ours = converter.channels_without_casa(ms, field_ids[0], spw.id, low, high, frame)
                    compared += 1
                    if ours is sfr.UNDECIDED:
                        continue
                    decided += 1
                    assert ours == advisechansel_channels(casa, ms, field_ids[0], spw.id, low, high, frame), (
                        ms.name, field_ids[0], spw.id, low, high, frame)
    assert decided >= 0.95 * compared, (decided, compared)


@pytest.mark.parametrize('which', ['simulated mosaic, 2 EBs', 'real MS'])
def test_a_window_s_coverage_worked_out_without_casa_is_advisechansels_own(delivery_factory, real_ms, casa, which):
    """ChannelConverter.coverage (CASA's rule on the MS's metadata) within 0.1 Hz of advisechansel's getfreqrange,
    in LSRK and TOPO, for every field and spw (a coverage without the Doppler shift would be ~MHz off)."""
    if which == 'real MS':
        mses = [real_ms]
    else:
        delivery = delivery_factory(n_ebs=2, n_fields=3, spw_ids=(17, 19), nchan=128)
        mses = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))
    converter = sfr.ChannelConverter(casa)
    for ms in mses:
        layout = sfr.read_ms_layout(casa, ms)
        for field_ids in layout.fields.values():
            for spw in layout.spws.values():
                for frame in ('LSRK', 'TOPO'):
                    assert sfr.to_topo_factors(casa, ms, field_ids[0], spw.id, frame) is not None
                    ours = converter.coverage(ms, field_ids[0], spw.id, frame, casa_exact=False)
                    theirs = converter._ask_coverage(ms, field_ids[0], spw.id, frame)
                    assert ours == pytest.approx(theirs, abs=0.1), (ms.name, field_ids[0], spw.id, frame)
