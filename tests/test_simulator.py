"""Tests of tests/support/simulate_delivery.py with real CASA (no mocks)."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import simulate_delivery as sd   # tests/support/, on the path from conftest.py
from conftest import REPO

C_KMS = 299792.458
RANGE_RE = re.compile(r'^\d+\.\d{10}~\d+\.\d{10}GHz LSRK$')


@pytest.fixture(scope='module')
def default(casa, tmp_path_factory):
    """The default delivery plus the _line.ms and the uvcont tables."""
    out = tmp_path_factory.mktemp('sim') / 'default'
    truth = sd.simulate_delivery(str(out), with_line_ms=True, with_uvcont=True)
    return str(out), truth


@pytest.fixture(scope='module')
def cycle8(casa, tmp_path_factory):
    out = tmp_path_factory.mktemp('sim') / 'cycle8'
    truth = sd.simulate_delivery(str(out), layout='cycle8', contdat_version=1, n_ebs=1)
    return str(out), truth


def _tb(casa, path, what):
    tb = casa.casatools.table()
    tb.open(path)
    try:
        return what(tb)
    finally:
        tb.close()


def _cols(casa, path, *names):
    return _tb(casa, path, lambda tb: [tb.getcol(n) for n in names])


def _parse_contdat(path):
    """{field: {spw: [line, ...]}} plus the raw lines (pipeline format, any version)."""
    out = {}
    field = spw = None
    for line in open(path).read().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith('Field:'):
            field = line.split(':', 1)[1].strip()
            out[field] = {}
        elif line.startswith('SpectralWindow:'):
            spw = line.split()[1]
            out[field][spw] = []
        elif line.startswith('SPW'):
            spw = line[3:]
            out[field][spw] = []
        elif '~' in line or line == 'NONE':
            out[field][spw].append(line)
        else:
            field = line
            out[field] = {}
    return out


def _ghz_ranges(items):
    res = []
    for it in items:
        lo, hi = it.split('GHz')[0].split('~')
        res.append((float(lo), float(hi)))
    return res


def test_spw_ids_names_and_negative_width(casa, default):
    out, truth = default
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    spwtab = ms + '/SPECTRAL_WINDOW'
    names, nchan, tbw = _cols(casa, spwtab, 'NAME', 'NUM_CHAN', 'TOTAL_BANDWIDTH')
    chan_freq = _tb(casa, spwtab, lambda tb: [tb.getcell('CHAN_FREQ', i) for i in (25, 27)])
    chan_width = _tb(casa, spwtab, lambda tb: [tb.getcell('CHAN_WIDTH', i) for i in (25, 27)])
    assert re.match(r'^X\d+#ALMA_RB_06#BB_1#SW-01#FULL_RES$', names[25])
    assert re.match(r'^X\d+#ALMA_RB_06#BB_2#SW-01#FULL_RES$', names[27])
    assert names[0] == 'WVR#NOMINAL' and names[26].endswith('#BB_1#SW-01#CH_AVG')
    assert nchan[25] == nchan[27] == 64
    assert (tbw > 0).all()
    # spw 25 is lower sideband: negative widths, descending frequencies
    assert (chan_width[0] < 0).all() and (np.diff(chan_freq[0]) < 0).all()
    assert (chan_width[1] > 0).all() and (np.diff(chan_freq[1]) > 0).all()
    assert 2.1e11 < chan_freq[0].mean() < 2.4e11 and abs(abs(chan_width[0][0]) - 976562.5) < 1
    # only the science spws carry data, under their own ids
    ddid, = _cols(casa, ms, 'DATA_DESC_ID')
    ddspw, = _cols(casa, ms + '/DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')
    assert sorted(set(ddspw[np.unique(ddid)].tolist())) == [25, 27]
    msmd = casa.casatools.msmetadata()
    msmd.open(ms)
    try:
        assert sorted(msmd.spwsforfield('IRAS_16293-2422').tolist()) == [25, 27]
        assert msmd.intents() == ['OBSERVE_TARGET#ON_SOURCE']
    finally:
        msmd.close()


def test_alma_metadata(casa, default):
    out, truth = default
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    obs_mode, = _cols(casa, ms + '/STATE', 'OBS_MODE')
    assert list(obs_mode) == ['OBSERVE_TARGET#ON_SOURCE']
    tel, = _cols(casa, ms + '/OBSERVATION', 'TELESCOPE_NAME')
    assert list(tel) == ['ALMA']
    names, stations, diam = _cols(casa, ms + '/ANTENNA', 'NAME', 'STATION', 'DISH_DIAMETER')
    assert len(names) == 12 and all(re.match(r'^D[AV]\d\d$', n) for n in names)
    assert all(re.match(r'^A\d\d\d$', s) for s in stations) and (diam == 12).all()
    corr, = _cols(casa, ms + '/POLARIZATION', 'CORR_TYPE')
    assert corr.shape[0] == 2          # XX YY
    uids = [e['uid'] for e in truth['ebs']]
    assert all(re.match(r'^uid___A002_X[0-9a-f]+_X[0-9a-f]+$', u) for u in uids)
    assert sorted(uids) == uids and len(set(uids)) == len(uids)
    assert truth['ebs'][0]['date'] < truth['ebs'][1]['date']


def test_data_columns(casa, default, cycle8):
    out, truth = default
    for key in ('ms', 'line_ms'):
        cols = _tb(casa, os.path.join(out, truth['ebs'][0][key]), lambda tb: tb.colnames())
        assert 'DATA' in cols and 'MODEL_DATA' not in cols and 'CORRECTED_DATA' not in cols
    out8, truth8 = cycle8
    ms8 = os.path.join(out8, truth8['ebs'][0]['ms'])
    assert ms8.endswith('_target.ms') and '/measurement_sets/' in ms8
    cols = _tb(casa, ms8, lambda tb: tb.colnames())
    assert 'CORRECTED_DATA' in cols and 'MODEL_DATA' not in cols
    data, corr = _cols(casa, ms8, 'DATA', 'CORRECTED_DATA')
    # CORRECTED = DATA - continuum exactly: a constant 50 mJy for a source at the centre
    assert np.allclose(data - corr, truth8['continuum_jy'], atol=1e-6)


def test_weights_sigma_flags_noise(casa, default):
    out, truth = default
    sigma = truth['noise_jy']
    for eb in truth['ebs']:
        for key in ('ms', 'line_ms'):
            w, s, f = _cols(casa, os.path.join(out, eb[key]), 'WEIGHT', 'SIGMA', 'FLAG')
            assert np.allclose(w, 1.0 / sigma ** 2, rtol=1e-6) and np.allclose(s, sigma, rtol=1e-6)
            assert not f.any()
    # noise level in the line-free edge channels of the continuum-subtracted MS
    data, = _cols(casa, os.path.join(out, truth['ebs'][0]['line_ms']), 'DATA')
    edge = data[:, :4, :]
    assert abs(edge.real.std() / sigma - 1) < 0.1 and abs(edge.imag.std() / sigma - 1) < 0.1


def _line_peak_channel(casa, ms, spw):
    data, ddid = _cols(casa, ms, 'DATA', 'DATA_DESC_ID')
    spec = data[:, :, ddid == spw].real.mean(axis=(0, 2))
    top = spec > 0.5 * spec.max()
    chans = np.arange(len(spec))
    return float((spec[top] * chans[top]).sum() / spec[top].sum())


def test_line_moves_two_channels_between_ebs(casa, default):
    out, truth = default
    for j, spw in enumerate(truth['spws']):
        expected = [eb['spws'][j]['line_topo_channel'] for eb in truth['ebs']]
        assert 1.5 < abs(expected[1] - expected[0]) < 2.5
        measured = [_line_peak_channel(casa, os.path.join(out, eb['line_ms']), spw['id']) for eb in truth['ebs']]
        assert np.allclose(measured, expected, atol=0.25), (measured, expected)
        # the line is centred in the spw on average
        assert abs(np.mean(expected) - (spw['nchan'] - 1) / 2.0) < 1.5


def test_continuum_amplitude_short_baselines(casa, default):
    out, truth = default
    eb = truth['ebs'][0]
    data, uvw, ddid = _cols(casa, os.path.join(out, eb['ms']), 'DATA', 'UVW', 'DATA_DESC_ID')
    short = np.hypot(uvw[0], uvw[1]) < np.percentile(np.hypot(uvw[0], uvw[1]), 25)
    for spw in truth['spws']:
        sel = short & (ddid == spw['id'])
        vis = data[:, :8, sel].mean()          # channels 0-7: far from the line
        assert abs(abs(vis) / spw['continuum_jy_at_centre'] - 1) < 0.02
        assert abs(np.angle(vis)) < 0.05


def test_contdat_ranges_avoid_line(casa, default):
    out, truth = default
    path = os.path.join(out, truth['contdat'])
    assert path.endswith(os.path.join('caltables', 'cont.dat'))
    text = open(path).read()
    assert text.startswith('Field: IRAS_16293-2422\n\nSpectralWindow: 25\n')
    parsed = _parse_contdat(path)
    assert list(parsed) == ['IRAS_16293-2422']
    fwhm = truth['line_fwhm_kms']
    assert fwhm == 10.0
    for j, spw in enumerate(truth['spws']):
        items = parsed['IRAS_16293-2422'][str(spw['id'])]
        assert items and all(RANGE_RE.match(it) for it in items), items
        ranges = _ghz_ranges(items)
        band = spw['nchan'] * abs(spw['chan_width_hz']) / 1e9
        assert sum(hi - lo for lo, hi in ranges) >= 0.4 * band
        nu_line = spw['line_lsrk_freq_ghz'][0]
        for lo, hi in ranges:
            # 1.5 FWHM clear of the line centre (3 FWHM window): the default band allows it
            assert min(abs(lo - nu_line), abs(hi - nu_line)) >= 1.499 * fwhm / C_KMS * nu_line
            assert not lo < nu_line < hi
            for eb in truth['ebs']:
                cov = eb['spws'][j]['lsrk_freq_range_ghz']
                assert cov[0] <= lo < hi <= cov[1]
                # in this EB's TOPO channels the range misses the line channel
                ratio = eb['lsrk_over_topo']['IRAS_16293-2422']
                f0 = spw['chan0_freq_ghz']
                width = spw['chan_width_hz'] / 1e9
                c_lo, c_hi = sorted(((lo / ratio - f0) / width, (hi / ratio - f0) / width))
                line_chan = eb['spws'][j]['line_topo_channel']
                assert not c_lo - 1 <= line_chan <= c_hi + 1


def test_contdat_versions(casa, default, cycle8, tmp_path):
    out8, truth8 = cycle8
    lines = open(os.path.join(out8, truth8['contdat'])).read().splitlines()
    assert lines[0] == 'IRAS_16293-2422' and lines[2] == 'SPW25'
    assert re.match(r'^\d+\.\d{10}~\d+\.\d{10}GHz$', lines[3])       # v1: TOPO, no frame
    truth3 = sd.simulate_delivery(str(tmp_path / 'v3'), n_ebs=1, contdat_version=3, nchan=32,
                                  layout='working')
    lines = open(str(tmp_path / 'v3' / truth3['contdat'])).read().splitlines()
    assert lines[0] == 'Field: IRAS_16293-2422'
    assert lines[2] == 'SpectralWindow: 25 %s' % truth3['spws'][0]['name']
    assert truth3['contdat'] == os.path.join('working', 'cont.dat')


def test_uvcont_table_removes_continuum(casa, default, tmp_path):
    out, truth = default
    eb = truth['ebs'][0]
    table = os.path.join(out, eb['uvcont_table'])
    assert os.path.basename(table).startswith(os.path.basename(eb['ms']))
    assert table.endswith('uvcont.tbl') and '/caltables/' in table
    scratch = str(tmp_path / os.path.basename(eb['ms']))
    shutil.copytree(os.path.join(out, eb['ms']), scratch)
    casa.casatasks.applycal(vis=scratch, gaintable=[table], calwt=False)
    corr, ddid = _cols(casa, scratch, 'CORRECTED_DATA', 'DATA_DESC_ID')
    line, = _cols(casa, os.path.join(out, eb['line_ms']), 'DATA')
    for spw in truth['spws']:
        sel = ddid == spw['id']
        spec = corr[:, :, sel].mean(axis=(0, 2))
        ref = line[:, :, sel].mean(axis=(0, 2))
        cont_chans = [int(c) for c in re.findall(r'(\d+)~(\d+)', eb['fitspw']['IRAS_16293-2422'].split(
            '%d:' % spw['id'])[1].split(',')[0])[0]]
        assert np.abs(spec[cont_chans[0]:cont_chans[1] + 1]).max() < 0.001     # continuum gone
        peak = int(round(eb['spws'][truth['spws'].index(spw)]['line_topo_channel']))
        assert abs(spec[peak].real - ref[peak].real) < 0.001                    # line intact
        assert ref[peak].real > 0.15


def test_working_layout_and_concat(casa, default, tmp_path):
    out = str(tmp_path / 'w')
    truth = sd.simulate_delivery(out, layout='working', with_line_ms=True, with_uvcont=True, nchan=16,
                                 n_antennas=4)
    assert truth['line_fwhm_kms'] < 3.0          # default narrows with the band: 2 channels here
    assert 'NONE' not in open(os.path.join(out, truth['contdat'])).read()
    names = sorted(os.listdir(os.path.join(out, 'working')))
    uid0, uid1 = [e['uid'] for e in truth['ebs']]
    for expected in (uid0 + '_targets.ms', uid0 + '_targets_line.ms', uid0 + '.ms',
                     uid1 + '_targets.ms.hif_uvcontfit.s10_1.uvcont.tbl',
                     uid0 + '.ms.flagversions', 'cont.dat', 'casa-20240101-000000.log',
                     'pipeline-20240101T000000'):
        assert expected in names
    assert os.path.isfile(os.path.join(out, 'working', 'pipeline-20240101T000000', 'html', 'index.html'))
    # the two EBs of the default delivery concatenate (no scratch-column trouble)
    dout, dtruth = default
    cc = str(tmp_path / 'concat.ms')
    casa.casatasks.concat(vis=[os.path.join(dout, e['ms']) for e in dtruth['ebs']], concatvis=cc)
    nrows = _tb(casa, cc, lambda tb: tb.nrows())
    assert nrows == sum(e['rows'] for e in dtruth['ebs'])


def test_offset_source_images_at_offset(casa, tmp_path):
    out = str(tmp_path / 'off')
    truth = sd.simulate_delivery(out, n_ebs=1, nchan=8, offset_arcsec=(2.0, -1.0),
                                 line_peak_jy=0.0, continuum_jy=1.0)
    img = str(tmp_path / 'img')
    casa.casatasks.tclean(vis=os.path.join(out, truth['ebs'][0]['ms']), imagename=img, specmode='mfs',
                          imsize=64, cell='0.2arcsec', niter=0)
    ia = casa.casatools.image()
    ia.open(img + '.image')
    try:
        stats = ia.statistics()
        x, y = stats['maxpos'][:2]
        ref = ia.coordsys().referencepixel()['numeric'][:2]
    finally:
        ia.close()
    assert (x - ref[0], y - ref[1]) == (-10, -5)   # RA increases to the left
    assert abs(stats['max'][0] - 1.0) < 0.02


def test_cache_copy_and_cli(casa, tmp_path):
    kwargs = dict(n_ebs=1, nchan=8, line_peak_jy=0.0)
    first = sd.cached_delivery(str(tmp_path / 'cache'), **kwargs)
    assert sd.cached_delivery(str(tmp_path / 'cache'), **kwargs) == first
    assert os.listdir(str(tmp_path / 'cache')) == [os.path.basename(first)]
    dst = sd.copy_delivery(first, str(tmp_path / 'copy'))
    assert json.load(open(os.path.join(dst, 'truth.json')))['params']['nchan'] == 8
    assert sd.main([str(tmp_path / 'cli'), '--n-ebs', '1', '--nchan', '8', '--layout', 'cycle8_working']) == 0
    assert os.path.isdir(str(tmp_path / 'cli' / 'working'))
    assert sd.main([str(tmp_path / 'cli')]) == 2          # not empty
    with pytest.raises(ValueError):
        sd.simulate_delivery(str(tmp_path / 'bad'), layout='nope')


def test_the_command_line_runs_from_anywhere(tmp_path):
    """python tests/support/simulate_delivery.py, as the README and the docstring say (no CASA for --help)."""
    done = subprocess.run([sys.executable, sd.__file__, '--help'], cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage: simulate_delivery.py ')
    assert '--pipeline-ready' in done.stdout and done.stderr == ''
    assert Path(sd.__file__).resolve() == REPO / 'tests' / 'support' / 'simulate_delivery.py'


# --------------------------------------------------------------------------- real delivery shapes

def test_full_polarization_puts_the_polarized_continuum_in_xy_and_yx(casa, tmp_path):
    out = str(tmp_path / 'pol')
    truth = sd.simulate_delivery(out, n_ebs=1, n_antennas=4, nchan=16, full_polarization=True,
                                 line_peak_jy=0.0, continuum_jy=1.0, integrations_per_scan=2)
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    corr, = _cols(casa, ms + '/POLARIZATION', 'CORR_TYPE')
    assert corr[:, 0].tolist() == [9, 10, 11, 12]           # XX XY YX YY
    assert truth['correlations'] == ['XX', 'XY', 'YX', 'YY'] and truth['continuum_pol_fraction'] == 0.05
    data, weight = _cols(casa, ms, 'DATA', 'WEIGHT')
    assert data.shape[0] == 4 and weight.shape[0] == 4
    mean = data.mean(axis=(1, 2))                            # source at the phase centre: real visibilities
    assert np.allclose(mean.real, [1.0, 0.05, 0.05, 1.0], atol=0.005) and np.abs(mean.imag).max() < 0.005


def test_aca_7m_antennas(casa, tmp_path):
    out = str(tmp_path / 'aca')
    truth = sd.simulate_delivery(out, n_ebs=1, n_antennas=6, nchan=8, array='7m', integrations_per_scan=1)
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    names, diam, stations = _cols(casa, ms + '/ANTENNA', 'NAME', 'DISH_DIAMETER', 'STATION')
    assert all(re.match(r'^CM\d\d$', n) for n in names) and (diam == 7).all()
    assert all(re.match(r'^[NJ]\d\d\d$', s) for s in stations)
    tel, = _cols(casa, ms + '/OBSERVATION', 'TELESCOPE_NAME')
    assert list(tel) == ['ALMA'] and truth['antenna_config'] == 'aca.cycle10.cfg'
    uvw, = _cols(casa, ms, 'UVW')
    assert np.hypot(uvw[0], uvw[1]).max() < 60          # the compact ACA: baselines of tens of metres
    with pytest.raises(ValueError):
        sd.simulate_delivery(str(tmp_path / 'too-many'), array='7m', n_antennas=11)


def test_wide_and_tdm_spws_side_by_side(casa, tmp_path):
    out = str(tmp_path / 'wide')
    truth = sd.simulate_delivery(out, n_ebs=1, n_antennas=3, spw_ids=(25, 27, 29, 31),
                                 spw_nchan=(128, 1920, 3840, 128), integrations_per_scan=1)
    spws = dict((s['id'], s) for s in truth['spws'])
    assert [spws[i]['nchan'] for i in (25, 27, 29, 31)] == [128, 1920, 3840, 128]
    assert [abs(spws[i]['chan_width_hz']) for i in (25, 27, 29, 31)] == [15.625e6, 976562.5, 488281.25, 15.625e6]
    # the TDM windows are continuum windows: the lines are in the FDM ones
    assert sorted(truth['line_lsrk_freq_ghz']) == ['27', '29']
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    nchan, = _cols(casa, ms + '/SPECTRAL_WINDOW', 'NUM_CHAN')
    assert [nchan[i] for i in (25, 27, 29, 31)] == [128, 1920, 3840, 128]
    # one spw at a time: getcol of DATA over windows of different shapes crashes CASA
    data = _tb(casa, ms, lambda tb: tb.query('DATA_DESC_ID==29').getcol('DATA'))
    spec = data.real.mean(axis=(0, 2))
    top = spec > 0.5 * spec.max()
    peak = (spec[top] * np.nonzero(top)[0]).sum() / spec[top].sum() - truth['ebs'][0]['spws'][2]['line_topo_channel']
    assert abs(peak) < 0.5 and truth['line_fwhm_kms'] == 10.0


def test_two_targets_with_their_own_spws(casa, tmp_path):
    out = str(tmp_path / 'two')
    truth = sd.simulate_delivery(out, n_ebs=1, n_antennas=3, nchan=16, n_fields=2, spw_ids=(25, 27, 29, 31),
                                 field_spw_ids=[[25, 27], [29, 31]], integrations_per_scan=1)
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    msmd = casa.casatools.msmetadata()
    msmd.open(ms)
    try:
        assert sorted(msmd.spwsforfield('IRAS_16293-2422').tolist()) == [25, 27]
        assert sorted(msmd.spwsforfield('Elias_2-27').tolist()) == [29, 31]
    finally:
        msmd.close()
    parsed = _parse_contdat(os.path.join(out, truth['contdat']))
    assert sorted(parsed['IRAS_16293-2422']) == ['25', '27'] and sorted(parsed['Elias_2-27']) == ['29', '31']
    assert [f['spw_ids'] for f in truth['fields']] == [[25, 27], [29, 31]]
    assert truth['ebs'][0]['fitspw']['Elias_2-27'].startswith('29:')
    with pytest.raises(ValueError):
        sd.simulate_delivery(str(tmp_path / 'bad'), n_fields=2, spw_ids=(25, 27), field_spw_ids=[[25], [29]])


def test_an_execution_block_that_left_a_target_out_has_no_field_row_for_it(casa, tmp_path):
    out = str(tmp_path / 'left_out')
    truth = sd.simulate_delivery(out, n_ebs=2, n_antennas=3, nchan=16, n_fields=2, eb_fields=[[0, 1], [1]],
                                 integrations_per_scan=1)
    assert [eb['fields'] for eb in truth['ebs']] == [
        [{'name': 'IRAS_16293-2422', 'field_id': 0}, {'name': 'Elias_2-27', 'field_id': 1}],
        [{'name': 'Elias_2-27', 'field_id': 0}]]
    second = os.path.join(out, truth['ebs'][1]['ms'])
    tb = casa.casatools.table()
    for subtable, column in (('FIELD', 'NAME'), ('SOURCE', 'NAME')):
        tb.open(os.path.join(second, subtable))
        try:
            assert set(tb.getcol(column).tolist()) == {'Elias_2-27'}, subtable
        finally:
            tb.close()
    tb.open(second)
    try:
        assert set(tb.getcol('FIELD_ID').tolist()) == {0} and tb.nrows() == truth['ebs'][1]['rows']
    finally:
        tb.close()
    assert truth['ebs'][0]['rows'] == 2 * truth['ebs'][1]['rows']
    assert sorted(truth['ebs'][1]['fitspw']) == ['Elias_2-27']
    # cont.dat is per source for the whole SB: a block for every target
    assert sorted(_parse_contdat(os.path.join(out, truth['contdat']))) == ['Elias_2-27', 'IRAS_16293-2422']
    for wrong in ([[0, 1]], [[0], [0]], [[1, 0], [1]], [[0, 1], []]):
        with pytest.raises(ValueError, match='eb_fields'):
            sd.simulate_delivery(str(tmp_path / 'bad'), n_ebs=2, n_fields=2, eb_fields=wrong)


def test_hexagonal_mosaic_is_nyquist_spaced():
    offsets = sd.hexagonal_mosaic_offsets(61, freq_ghz=230.0, dish_m=12.0)
    assert len(offsets) == 61 and (0.0, 0.0) in offsets
    spacing = C_KMS * 1e3 / 230e9 / (math.sqrt(3) * 12.0) * 180 / math.pi * 3600      # lambda / (sqrt 3 D)
    assert 12.8 < spacing < 13.0
    points = np.array(offsets)
    distances = np.hypot(points[:, None, 0] - points[None, :, 0], points[:, None, 1] - points[None, :, 1])
    nearest = np.sort(distances, axis=1)[:, 1]
    assert np.allclose(nearest, spacing, rtol=1e-6)
    # every inner pointing has 6 neighbours at that spacing: a hexagonal grid
    assert (np.isclose(distances, spacing, rtol=1e-6).sum(axis=1) == 6).sum() == 37
    assert len(sd.hexagonal_mosaic_offsets(50, 100.0, 7.0)) == 50


def test_four_execution_blocks_each_move_the_line(casa, tmp_path):
    truth = sd.simulate_delivery(str(tmp_path / 'four'), n_ebs=4, n_antennas=2, nchan=64, integrations_per_scan=1)
    channels = [eb['spws'][0]['line_topo_channel'] for eb in truth['ebs']]
    dates = [eb['date'] for eb in truth['ebs']]
    assert sorted(dates) == dates and len(set(dates)) == 4
    assert np.allclose(np.abs(np.array(channels) - channels[0]), [0, 2, 4, 6], atol=0.5), channels


def test_ephemeris_target_has_an_ephemeris_table_and_source_frame_cont_dat(casa, tmp_path):
    out = str(tmp_path / 'eph')
    truth = sd.simulate_delivery(out, n_ebs=1, n_antennas=3, nchan=64, ephemeris_radvel_kms=-20.0,
                                 integrations_per_scan=1)
    ms = os.path.join(out, truth['ebs'][0]['ms'])
    ids, names = _cols(casa, ms + '/FIELD', 'EPHEMERIS_ID', 'NAME')
    assert list(ids) == [0] and list(names) == ['Ceres']
    assert 'EPHEM0_Ceres.tab' in os.listdir(ms + '/FIELD')
    text = open(os.path.join(out, truth['contdat'])).read()
    assert text.startswith('Field: Ceres\n') and 'GHz SOURCE' in text and 'LSRK' not in text
    # the track is the field's direction (ICRS), and the body recedes at -20 km/s (+ the Earth's rotation)
    times, = _cols(casa, ms, 'TIME')
    msmd, me, qa = casa.casatools.msmetadata(), casa.casatools.measures(), casa.casatools.quanta()
    msmd.open(ms)
    try:
        centre = msmd.phasecenter(0, me.epoch('UTC', qa.quantity(times.min(), 's')))
    finally:
        msmd.close()
    assert centre['refer'] == 'ICRS'
    assert abs(math.degrees(centre['m0']['value']) % 360 - truth['fields'][0]['direction']['ra_deg']) < 1e-6
    velocity = (truth['ephemeris']['source_over_topo'][0] - 1) * C_KMS
    assert -20.6 < velocity < -19.4
    # the line sits where the SOURCE frame puts it
    channel = truth['ebs'][0]['spws'][0]['line_topo_channel']
    assert abs(_line_peak_channel(casa, ms, 25) - channel) < 0.3


# --------------------------------------------------------------------------- eras and lines

def _grouping_and_spectral_spec(name):
    """What precedes the ALMA_RB part of an ALMA spw name: (GroupingID, SpectralSpec) from Cycle 12,
    (None, SpectralSpec) before (the split the pipeline's PIPE-2697 describes)."""
    parts = name.split('#')
    before = parts[:[i for i, part in enumerate(parts) if part.startswith('ALMA')][0]]
    return tuple(before) if len(before) == 2 else (None,) + tuple(before)


def test_cycle_11_and_12_name_spws_date_the_ebs_and_write_a_v3_contdat_with_flags_as_the_pipeline(casa, tmp_path):
    flags = {'Elias_2-27': {27: ['LOWBANDWIDTH', 'LOWSPREAD']}}
    for cycle, project in ((11, '2024.1.01234.S'), (12, '2025.1.01234.S')):
        out = tmp_path / ('cycle%d' % cycle)
        truth = sd.simulate_delivery(str(out), n_ebs=1, n_fields=2, nchan=16, n_antennas=4, alma_cycle=cycle,
                                     contdat_version=3, contdat_flags=flags)
        ms = str(out / truth['ebs'][0]['ms'])
        names, = _cols(casa, ms + '/SPECTRAL_WINDOW', 'NAME')
        assert names[0] == 'WVR#NOMINAL'
        for name in names[1:]:      # every ALMA window, science, calibration and channel-average alike
            grouping, spec = _grouping_and_spectral_spec(name)
            assert grouping == ('X100001' if cycle >= 12 else None) and re.match(r'^X\d+$', spec), name
        if cycle >= 12:
            assert names[25] == 'X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES'
        else:
            assert re.match(r'^X\d+#ALMA_RB_06#BB_1#SW-01#FULL_RES$', names[25]), names[25]
        assert [s['name'] for s in truth['spws']] == [names[25], names[27]]
        assert list(_cols(casa, ms + '/OBSERVATION', 'PROJECT')[0]) == [project] == [truth['project']]
        # Cycle N observes from October of 2013 + N to September of the next year
        assert '%d-10-01' % (2013 + cycle) <= truth['ebs'][0]['date'] < '%d-10-01' % (2014 + cycle)
        # cont.dat v3 as the pipeline's contfilehandler writes it: window names, a Flags: line under the window
        # header where asked, a blank line after each block
        text = open(os.path.join(str(out), truth['contdat'])).read()
        lines = text.split('\n')
        assert text.endswith('\n\n') and text.count('Flags:') == 1
        second = lines.index('Field: Elias_2-27')
        assert lines[0] == 'Field: IRAS_16293-2422' and lines[1] == '' and lines[second + 1] == ''
        for start in (0, second):
            assert lines[start + 2] == 'SpectralWindow: 25 %s' % names[25]
        header = lines.index('SpectralWindow: 27 %s' % names[27], second)
        assert lines[header + 1] == 'Flags: LOWBANDWIDTH LOWSPREAD'
        assert RANGE_RE.match(lines[header + 2]) and RANGE_RE.match(lines[lines.index(
            'SpectralWindow: 27 %s' % names[27]) + 1]), 'no Flags: line where none was asked'
        assert truth['contdat_flags'] == {'Elias_2-27': {'27': ['LOWBANDWIDTH', 'LOWSPREAD']}}
        assert truth['alma_cycle'] == cycle
    with pytest.raises(ValueError, match='v3 only'):
        sd.simulate_delivery(str(tmp_path / 'v2'), contdat_version=2, contdat_flags=flags)
    with pytest.raises(ValueError, match='Cycle 8 or earlier'):
        sd.simulate_delivery(str(tmp_path / 'c8'), layout='cycle8', alma_cycle=12)


LINES = [dict(spw=25, velocity_kms=12.0, fwhm_kms=6.0, flux_jykms=1.5, rest_ghz=216.9466, transition='CO_v_0_2_1(ID=0)'),
         dict(spw=27, velocity_kms=-5.0, fwhm_kms=10.0, flux_jykms=0.8)]


def test_lines_of_known_velocity_width_and_flux_with_their_rest_frequency_and_transition(casa, tmp_path):
    out = tmp_path / 'lines'
    # noise 0.2 mJy: the line moments, summed over 3 FWHM on each side, are then signal (2 mJy: ~4 % on a width)
    truth = sd.simulate_delivery(str(out), n_ebs=2, nchan=128, n_antennas=4, lines=LINES, noise_jy=0.0002)
    recorded = dict((line['spw'], line) for line in truth['lines'])
    assert sorted(recorded) == [25, 27] and len(truth['lines']) == 2
    for asked in LINES:
        line = recorded[asked['spw']]
        rest_hz = asked.get('rest_ghz', [s for s in truth['spws'] if s['id'] == asked['spw']][0]['centre_freq_ghz']) * 1e9
        assert (line['velocity_kms'], line['fwhm_kms'], line['flux_jykms'], line['frame']) == (
            asked['velocity_kms'], asked['fwhm_kms'], asked['flux_jykms'], 'LSRK')
        assert line['rest_freq_ghz'] * 1e9 == pytest.approx(rest_hz, abs=1.0)
        assert line['transition'] == asked.get('transition', 'simulated_line')
        for eb in truth['ebs']:
            ms = str(out / eb['ms'])
            # the SOURCE table, read as the pipeline reads it (msmd.transitions, msmd.restfreqs)
            msmd = casa.casatools.msmetadata()
            msmd.open(ms)
            try:
                assert list(msmd.transitions(sourceid=0, spw=asked['spw'])) == [line['transition']]
                rest = msmd.restfreqs(sourceid=0, spw=asked['spw'])
            finally:
                msmd.close()
            assert len(rest) == 1 and rest['0']['m0']['value'] == pytest.approx(rest_hz, abs=1.0)
            # the line in the data: a point source at the phase centre, so every baseline sees the spectrum
            data, ddid = _cols(casa, ms, 'DATA', 'DATA_DESC_ID')
            spectrum = data[:, :, ddid == asked['spw']].real.mean(axis=(0, 2)) - truth['continuum_jy']
            f_topo = _tb(casa, ms + '/SPECTRAL_WINDOW', lambda tb, spw=asked['spw']: tb.getcell('CHAN_FREQ', spw))
            f_lsrk = f_topo * eb['lsrk_over_topo']['IRAS_16293-2422']
            velocity = C_KMS * (1.0 - f_lsrk / rest_hz)                     # radio convention
            near = np.abs(velocity - asked['velocity_kms']) < 3 * asked['fwhm_kms']
            step = abs(velocity[1] - velocity[0])
            flux = spectrum[near].sum() * step
            centre = (spectrum[near] * velocity[near]).sum() / spectrum[near].sum()
            sigma = math.sqrt((spectrum[near] * (velocity[near] - centre) ** 2).sum() / spectrum[near].sum())
            assert flux == pytest.approx(asked['flux_jykms'], rel=0.02), (eb['uid'], flux)
            assert centre == pytest.approx(asked['velocity_kms'], abs=0.1 * step), (eb['uid'], centre)
            assert 2 * math.sqrt(2 * math.log(2)) * sigma == pytest.approx(asked['fwhm_kms'], rel=0.03)
    with pytest.raises(ValueError, match='does not lie inside spw 25'):
        sd.simulate_delivery(str(tmp_path / 'outside'), n_ebs=1, nchan=16, n_antennas=4,
                             lines=[dict(LINES[0], velocity_kms=300.0)])
