"""Real delivery shapes end to end: --check, --contsub_fast, --calibrated_final(_line) and --image.

Two small deliveries stand for the shapes real ALMA data have and the default ones do not:
  * MULTI: 4 execution blocks, two science targets observed in different spws (a multi-source
    SB), full polarization (XX XY YX YY, the continuum 5 % polarized in XY/YX, the line not), and
    128-channel TDM windows beside 1920- and 3840-channel FDM windows;
  * MOSAIC_7M: ACA 7 m antennas, a 50-pointing hexagonal Nyquist mosaic under one source name,
    the source between pointings;
  * EPHEMERIS: a solar-system target (FIELD with an ephemeris table, radial velocity -20 km/s),
    its line fixed in the SOURCE frame and cont.dat in SOURCE: a tool reading the ranges as LSRK
    would be ~40 channels off, fitting the line.
What must hold: in every (EB, field, spw, correlation) the continuum is gone and the line kept;
the mosaic's image has the injected flux at the injected position (within 10 %); the user's
measurement sets are byte-identical.
"""
import json
import math
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import user_ms_digests
from simulate_delivery import hexagonal_mosaic_offsets

MULTI = dict(n_ebs=4, n_antennas=4, n_fields=2, spw_ids=(25, 27, 29, 31), field_spw_ids=[[25, 27], [29, 31]],
             spw_nchan=(128, 1920, 3840, 128), full_polarization=True, integrations_per_scan=2)
# 10 antennas (all the ACA pads of the configuration); a high noise keeps tclean's automasking short
MOSAIC_7M = dict(array='7m', n_antennas=10, n_ebs=1, spw_ids=(25,), nchan=16, integrations_per_scan=1,
                 mosaic_offsets_arcsec=hexagonal_mosaic_offsets(50, freq_ghz=217.0, dish_m=7.0),
                 offset_arcsec=(11.0, 9.5), noise_jy=0.1, line_fwhm_kms=2.0)
# line_fwhm_kms: a 5 km/s line filled so much of the 16-channel (21 km/s) spw that the simulated cont.dat
# kept channels 1 FWHM from its centre, and the mfs image held 6% of the 0.2 Jy line: the continuum came out
# 10-15% bright (imfit 57.4 mJy for 50; single pointings imaged on line-free channels gave 49-52 mJy)

EPHEMERIS = dict(n_ebs=2, n_antennas=12, nchan=64, ephemeris_radvel_kms=-20.0, noise_jy=0.05)


def truth_of(delivery):
    return json.loads((Path(delivery) / 'truth.json').read_text())


def channel_list(fitspw, spw_id):
    for part in fitspw.split(','):
        spw, ranges = part.split(':')
        if int(spw) == spw_id:
            return [c for r in ranges.split(';') for c in range(int(r.split('~')[0]), int(r.split('~')[1]) + 1)]
    raise AssertionError('spw %d not in %s' % (spw_id, fitspw))


def correlation_spectra(casa, ms, field_id, spw_id):
    """Mean DATA per correlation and channel over the rows of one field and spw, and the row count."""
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        dd_ids = [i for i, s in enumerate(table.getcol('SPECTRAL_WINDOW_ID')) if s == spw_id]
    finally:
        table.close()
    table.open(str(ms))
    try:
        rows = table.query('FIELD_ID==%d AND DATA_DESC_ID IN [%s]' % (field_id, ','.join(map(str, dd_ids))))
        try:
            data = rows.getcol('DATA') if rows.nrows() else None
        finally:
            rows.close()
    finally:
        table.close()
    if data is None:
        return None, 0
    return data.mean(axis=2), data.shape[2]


def assert_continuum_gone_and_line_kept(casa, delivery, truth, *, field_ids=None):
    """Every EB, field (each mosaic pointing), spw of that field and correlation."""
    noise = truth['noise_jy']
    checked = 0
    for eb in truth['ebs']:
        targets = Path(delivery) / eb['ms']
        line_ms = sfr.line_ms_path(targets)
        for field in truth['fields']:
            if field_ids is not None and field['field_id'] not in field_ids:
                continue
            for spw_id in field['spw_ids']:
                before, rows = correlation_spectra(casa, targets, field['field_id'], spw_id)
                after, after_rows = correlation_spectra(casa, line_ms, field['field_id'], spw_id)
                assert rows and after_rows == rows, (eb['uid'], field['name'], spw_id)
                assert before.shape[0] == len(truth['correlations'])
                free = channel_list(eb['fitspw'][field['name']], spw_id)
                sigma_free = noise / math.sqrt(rows * len(free))
                spw_truth = [s for s in eb['spws'] if s['id'] == spw_id][0]
                line_channels = spw_truth['line_topo_channel_by_field'].get(field['name'], [])
                for corr, name in enumerate(truth['correlations']):
                    where = (eb['uid'][-6:], field['field_id'], spw_id, name)
                    # continuum gone: no mean left in the cont.dat channels, nor at the band edges
                    assert abs(after[corr, free].mean()) < 4 * math.sqrt(2) * sigma_free, where
                    edges = list(range(3)) + list(range(after.shape[1] - 3, after.shape[1]))
                    assert abs(after[corr, edges].mean()) < 4 * noise / math.sqrt(rows * 6) + 0.05 * abs(
                        before[corr, free].mean()), where
                    for channel in line_channels:
                        # the line kept: before minus its continuum, to the fit's accuracy
                        peak = int(round(channel))
                        expected = before[corr, peak] - before[corr, free].mean()
                        assert abs(after[corr, peak] - expected) < 6 * sigma_free + 0.02 * abs(expected), where
                        if name in ('XX', 'YY') and not truth['pb_attenuation_applied']:
                            assert after[corr, peak].real > 0.5 * truth['line_peak_jy'], where
                    checked += 1
    return checked


@pytest.fixture(scope='module')
def multi(delivery_cache, tmp_path_factory):
    from simulate_delivery import cached_delivery, copy_delivery
    delivery = tmp_path_factory.mktemp('multi') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **MULTI), delivery)
    return delivery


def test_multi_target_full_polarization_wide_spws_four_ebs_end_to_end(multi, run_script, casa):
    truth = truth_of(multi)
    before = user_ms_digests(multi)
    check = run_script('--check', delivery=multi)
    assert check.returncode == 0, check.stdout + check.stderr
    for field, spws in (('IRAS_16293-2422', (25, 27)), ('Elias_2-27', (29, 31))):
        for eb in truth['ebs']:
            for spw in spws:
                assert '%s: field %s spw %d: channels' % (eb['uid'], field, spw) in check.stdout
    assert 'field IRAS_16293-2422 spw 29' not in check.stdout and 'field Elias_2-27 spw 25' not in check.stdout
    done = run_script('--contsub_fast', '--jobs', '2', delivery=multi)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Traceback' not in done.stdout + done.stderr
    # 4 EBs x (2 spws of each of 2 fields) x 4 correlations
    assert assert_continuum_gone_and_line_kept(casa, multi, truth) == 4 * 4 * 4
    with_line = user_ms_digests(multi)
    assert {name: with_line[name] for name in before} == before
    concat = run_script('--calibrated_final', '--calibrated_final_line', delivery=multi)
    assert concat.returncode == 0, concat.stdout + concat.stderr
    # the TDM spw 25 has the frequencies of the calibration window 1: concat files EBs 2-4 there
    assert concat.stdout.count('rows of spw 25 under spw 1 (a calibration window') == 2
    msmd = casa.casatools.msmetadata()
    for name in ('calibrated_final.ms', 'calibrated_final_line.ms'):
        msmd.open(str(multi / 'measurement_sets' / name))
        try:
            assert msmd.nrows() == sum(eb['rows'] for eb in truth['ebs'])
            assert sorted(msmd.spwsforfield('IRAS_16293-2422').tolist()) == [25, 27]
            assert sorted(msmd.spwsforfield('Elias_2-27').tolist()) == [29, 31]
            assert msmd.ncorrforpol(-1).tolist() == [4]
        finally:
            msmd.close()
    assert user_ms_digests(multi) == with_line          # concat reads the targets and line MSes only


def test_spectra_plots_of_four_correlations_per_target(multi):
    pictures = sorted(p.name for p in (multi / sfr.WORK_DIR_NAME / 'report' / 'spectra').glob('*.png'))
    assert pictures == ['Elias_2-27_spw29.png', 'Elias_2-27_spw31.png', 'IRAS_16293-2422_spw25.png',
                        'IRAS_16293-2422_spw27.png']


@pytest.fixture(scope='module')
def mosaic(delivery_cache, tmp_path_factory, casa):
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('mosaic7m') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **MOSAIC_7M), delivery)
    before = user_ms_digests(delivery)
    runs = [run_command([sys.executable, str(SCRIPT)] + args, cwd=delivery, timeout=900)
            for args in (['--contsub_fast', '--jobs', '1'], ['--image', '--engine', 'casa', '--specmodes', 'mfs'])]
    return {'delivery': delivery, 'runs': runs, 'before': before, 'after': user_ms_digests(delivery),
            'truth': truth_of(delivery)}


def test_mosaic_of_50_pointings_every_pointing_fitted(mosaic, casa):
    contsub = mosaic['runs'][0]
    assert contsub.returncode == 0, contsub.stdout + contsub.stderr
    truth = mosaic['truth']
    assert len(truth['mosaic_pointings']) == 50 and {f['name'] for f in truth['fields']} == {'IRAS_16293-2422'}
    # one cont.dat block for the source, applied to all 50 field ids
    assert 'field ids %s,' % ','.join(str(i) for i in range(50)) in contsub.stdout
    # the pointings that see the source (the others see noise only, which tells nothing)
    seen = [p['field_id'] for p in truth['mosaic_pointings'] if p['source_separation_arcsec'] < 30]
    assert len(seen) >= 5
    assert assert_continuum_gone_and_line_kept(casa, mosaic['delivery'], truth, field_ids=seen) == 2 * len(seen)


def test_mosaic_image_has_the_flux_at_the_injected_position(mosaic, casa):
    image = mosaic['runs'][1]
    assert image.returncode == 0, image.stdout + image.stderr
    assert ', mosaic' in image.stdout
    truth = mosaic['truth']
    pbcor = sorted((mosaic['delivery'] / 'images').glob('*mfs.I.pbcor.fits'))
    assert len(pbcor) == 1
    tool = casa.casatools.image()
    tool.open(str(pbcor[0]))
    try:
        pixels = tool.getchunk(dropdeg=True)
        coordinates = tool.coordsys()
    finally:
        tool.close()
    source = truth['fields'][0]['source_direction']
    world = coordinates.referencevalue(format='n')['numeric']
    world[0], world[1] = math.radians(source['ra_deg']), math.radians(source['dec_deg'])
    sx, sy = coordinates.topixel(list(world))['numeric'][:2]
    x, y = numpy.unravel_index(numpy.nanargmax(pixels), pixels.shape)
    assert abs(x - sx) <= 1.0 and abs(y - sy) <= 1.0, ((x, y), (sx, sy))
    expected = truth['spws'][0]['continuum_jy_at_centre']
    assert pixels[int(round(sx)), int(round(sy))] == pytest.approx(expected, rel=0.10)
    # the image covers every pointing
    for pointing in truth['mosaic_pointings']:
        world[0], world[1] = math.radians(pointing['ra_deg']), math.radians(pointing['dec_deg'])
        px, py = coordinates.topixel(list(world))['numeric'][:2]
        assert 0 <= px < pixels.shape[0] and 0 <= py < pixels.shape[1]


def test_mosaic_user_measurement_sets_are_byte_identical(mosaic):
    before, after = mosaic['before'], mosaic['after']
    assert {name: after[name] for name in before} == before


def test_ephemeris_target_fits_source_frame_ranges_and_images_on_its_track(delivery_factory, run_script, casa):
    delivery = delivery_factory(**EPHEMERIS)
    truth = truth_of(delivery)
    before = user_ms_digests(delivery)
    check = run_script('--check', delivery=delivery)
    assert check.returncode == 0 and 'no errors, 0 warnings' in check.stdout, check.stdout + check.stderr
    done = run_script('--contsub_fast', '--jobs', '1', delivery=delivery)
    assert done.returncode == 0, done.stdout + done.stderr
    assert assert_continuum_gone_and_line_kept(casa, delivery, truth) == 2 * 2 * 2
    image = run_script('--image', '--engine', 'casa', '--specmodes', 'mfs,cube', '--spw', '25', delivery=delivery,
                       timeout=900)
    assert image.returncode == 0, image.stdout + image.stderr
    tool = casa.casatools.image()
    source = truth['fields'][0]['source_direction']
    for pattern in ('*mfs.I.pbcor.fits', '*cube.I.pbcor.fits'):
        found = sorted((delivery / 'images').glob(pattern))
        assert len(found) == 1, pattern
        tool.open(str(found[0]))
        try:
            pixels = tool.getchunk(dropdeg=True)
            coordinates = tool.coordsys()
            frame = coordinates.getconversiontype('spectral')
        finally:
            tool.close()
        world = coordinates.referencevalue(format='n')['numeric']
        world[0], world[1] = math.radians(source['ra_deg']), math.radians(source['dec_deg'])
        pixel = coordinates.topixel(list(world))['numeric']
        x, y = int(round(pixel[0])), int(round(pixel[1]))
        if pixels.ndim == 2:
            assert numpy.unravel_index(numpy.nanargmax(pixels), pixels.shape) in [(x + i, y + j) for i in (-1, 0, 1)
                                                                                    for j in (-1, 0, 1)]
            assert pixels[x, y] == pytest.approx(truth['spws'][0]['continuum_jy_at_centre'], rel=0.10)
            continue
        # the cube is in the body's rest frame (tclean cubesource): the line at its SOURCE frequency
        assert frame == 'REST', frame
        spectrum = pixels[x, y, :]
        peak = int(numpy.nanargmax(spectrum))
        axis = coordinates.findcoordinate('spectral')
        w, p = axis['world'][0], axis['pixel'][0]
        frequency = (coordinates.referencevalue(format='n')['numeric'][w] + (peak - coordinates.referencepixel()[
            'numeric'][p]) * coordinates.increment(format='n')['numeric'][w])
        width = abs(coordinates.increment(format='n')['numeric'][w])
        line = truth['spws'][0]['line_lsrk_freq_ghz'][0] * 1e9       # the SOURCE-frame line (truth)
        assert abs(frequency - line) <= width, (frequency, line, width)
        assert spectrum[peak] == pytest.approx(truth['line_peak_jy'], rel=0.10)
    after = user_ms_digests(delivery)
    assert {name: after[name] for name in before} == before
