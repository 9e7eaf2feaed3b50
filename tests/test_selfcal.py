"""Self-calibrated deliveries (Cycle 11+, hif_selfcal): the self-calibration survives every path.

A delivery of that era holds DATA = regular calibration and CORRECTED_DATA = self-calibrated data
in each uid*_targets.ms (and uid*_targets_line.ms).  The simulator makes DATA with 60 deg rms
per-antenna phase errors (a vector-averaged line at ~1/3 of its flux) and CORRECTED_DATA without
them.  Proven on real CASA:
  * --contsub_fast (fresh, and with --overwrite-line) writes line MSes laid out as the pipeline
    delivers them: CORRECTED_DATA holds the self-calibrated line at its injected flux (within 5%),
    continuum gone; DATA holds the regular-calibration line, decohered;
  * a cube made by --image --engine casa from them has its line peak within 15% of the injected one;
  * --overwrite-line refuses to replace a self-calibrated line MS by one that would not be;
  * a mixed delivery (one EB without CORRECTED_DATA) works and is reported as such, and
    --calibrated_final keeps both columns;
  * the plan (--dry-run) says which data column each step reads;
  * the user's MSes stay byte-identical.
"""
import re
import shutil
from pathlib import Path

import pytest

from conftest import mean_spectrum, read_image, requires_pipeline, truth_of, user_ms_digests

PHASE_RMS_DEG = 60.0
# 25 antennas and a coarse spw: cubes with automasking that finds the line (as tests/test_image.py)
SELFCAL = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, line_peak_jy=0.5, n_ebs=2,
               selfcal_phase_rms_deg=PHASE_RMS_DEG)


def columns_of(casa, ms):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        return list(table.colnames())
    finally:
        table.close()


def differs_per_observation(casa, ms):
    """Per OBSERVATION_ID (one per concatenated EB): does CORRECTED_DATA differ from DATA anywhere?"""
    import numpy
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        answers = []
        for observation in sorted(set(int(v) for v in table.getcol('OBSERVATION_ID'))):
            rows = table.query('OBSERVATION_ID==%d' % observation)
            answers.append(bool(numpy.abs(rows.getcol('CORRECTED_DATA') - rows.getcol('DATA')).max() > 0))
            rows.close()
        return answers
    finally:
        table.close()


def line_ms_of(target):
    return Path(str(target).replace('_targets.ms', '_targets_line.ms'))


def assert_self_calibrated_line_ms(casa, delivery, truth, *, ebs=None):
    """In CORRECTED_DATA the line at its injected flux and no continuum; in DATA the decohered one."""
    import numpy
    peak, noise = truth['line_peak_jy'], truth['noise_jy']
    for eb in truth['ebs']:
        if ebs is not None and eb['uid'] not in ebs:
            continue
        line_ms = line_ms_of(Path(delivery) / eb['ms'])
        assert 'CORRECTED_DATA' in columns_of(casa, line_ms), line_ms.name
        for spw in eb['spws']:
            channel = int(round(spw['line_topo_channel']))
            selfcal, samples = mean_spectrum(casa, line_ms, spw['id'], column='CORRECTED_DATA')
            regcal, _ = mean_spectrum(casa, line_ms, spw['id'])
            # the line is sampled at its nearest channel: within 5% of the injected peak
            assert abs(selfcal[channel]) == pytest.approx(peak, rel=0.05), (eb['uid'], spw['id'])
            # line-free channels (far from the line): mean within 3 sigma of zero
            free = [k for k in range(len(selfcal)) if abs(k - spw['line_topo_channel']) > 10]
            sigma = noise / numpy.sqrt(samples * len(free))
            assert abs(selfcal[free].mean()) < 3 * sigma * numpy.sqrt(2), (eb['uid'], spw['id'])
            # the regular calibration: the same line, decohered by the phase errors
            assert abs(regcal[channel]) < 0.6 * peak, (eb['uid'], spw['id'], abs(regcal[channel]))
            assert abs(regcal[channel]) > 0.1 * peak, (eb['uid'], spw['id'], abs(regcal[channel]))


@pytest.fixture(scope='module')
def selfcal_run(delivery_cache, tmp_path_factory, casa):
    """A self-calibrated delivery, --contsub_fast --image (cubes, CASA engine), run once."""
    import subprocess
    import sys
    from conftest import SCRIPT
    from simulate_delivery import cached_delivery, copy_delivery
    delivery = tmp_path_factory.mktemp('selfcal') / 'delivery'
    copy_delivery(Path(cached_delivery(delivery_cache, **SELFCAL)), delivery)
    before = user_ms_digests(delivery)
    dry = subprocess.run([sys.executable, str(SCRIPT), '--contsub_fast', '--image', 'imgs', '--engine', 'casa',
                          '--specmodes', 'cube', '--dry-run'], cwd=str(delivery), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    result = subprocess.run([sys.executable, str(SCRIPT), '--contsub_fast', '--image', 'imgs', '--engine', 'casa',
                             '--specmodes', 'cube'], cwd=str(delivery), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=900)
    return dict(delivery=delivery, truth=truth_of(delivery), before=before, dry=dry, result=result)


def test_contsub_fast_keeps_the_self_calibration_in_corrected_data(selfcal_run, casa):
    result = selfcal_run['result']
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'DATA = regular calibration, CORRECTED_DATA = self-calibrated' in result.stdout
    assert_self_calibrated_line_ms(casa, selfcal_run['delivery'], selfcal_run['truth'])


def test_user_measurement_sets_stay_byte_identical(selfcal_run):
    after = user_ms_digests(selfcal_run['delivery'])
    for name, digests in selfcal_run['before'].items():
        assert after[name] == digests, name


def test_dry_run_says_which_column_is_read(selfcal_run):
    dry = selfcal_run['dry']
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert 'self-calibrated data (CORRECTED_DATA) in 2 of 2 execution blocks' in dry.stdout
    assert 'imaging reads CORRECTED_DATA' in dry.stdout
    assert '--contsub_fast fits both columns and each line MS keeps both' in dry.stdout


def test_spectra_show_the_self_calibrated_column(selfcal_run):
    report = selfcal_run['delivery'] / 'working_reprocess' / 'report' / 'spectra'
    charts = sorted(report.glob('*.svg'))
    assert charts, 'no spectra drawn'
    for chart in charts:  # the panels' titles name the column the curves show
        text = chart.read_text()
        assert 'before: uid*_targets.ms, CORRECTED_DATA (self-calibrated)' in text, chart.name
        assert 'DATA, ' not in text and 'shown: DATA' not in text, chart.name


def test_cube_from_the_new_line_mses_has_the_self_calibrated_line_flux(selfcal_run, casa):
    import numpy
    from test_image import fits_named, source_pixel
    truth = selfcal_run['truth']
    source = truth['fields'][0]['source_direction']
    for spw in (25, 27):
        cube = fits_named(selfcal_run['delivery'] / 'imgs', r'spw%d\.cube\.I\.pbcor' % spw)
        pixels, coordinates, _beam, _unit = read_image(casa, cube, dropdeg=False)
        sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
        spectrum = pixels[int(round(sx)), int(round(sy)), :]
        # a cube of the regular calibration peaks at ~1/3 of this (exp(-rms^2) for 60 deg)
        assert float(numpy.nanmax(spectrum)) == pytest.approx(truth['line_peak_jy'], rel=0.15), spw


@pytest.fixture
def selfcal_with_line_ms(delivery_factory):
    return delivery_factory(**dict(SELFCAL, nchan=64, n_antennas=12, noise_jy=0.02, with_line_ms=True))


def test_overwrite_line_replaces_self_calibrated_line_mses_with_self_calibrated_ones(selfcal_with_line_ms, run_script,
                                                                                      casa):
    delivery = selfcal_with_line_ms
    targets = {name: digests for name, digests in user_ms_digests(delivery).items() if '_line' not in name}
    result = run_script('--contsub_fast', '--overwrite-line', delivery=delivery)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count('it replaced the earlier line MS (--overwrite-line)') == 2, result.stdout
    assert_self_calibrated_line_ms(casa, delivery, truth_of(delivery))
    after = user_ms_digests(delivery)
    for name, digests in targets.items():
        assert after[name] == digests, name


def test_overwrite_line_never_replaces_self_calibrated_data_with_regular_calibration(selfcal_with_line_ms,
                                                                                       run_script, casa):
    delivery = selfcal_with_line_ms
    truth = truth_of(delivery)
    target = delivery / truth['ebs'][0]['ms']
    table = casa.casatools.table()
    table.open(str(target), nomodify=False)  # this EB's targets MS as a non-self-calibrated delivery has it
    try:
        table.removecols('CORRECTED_DATA')
    finally:
        table.close()
    before = user_ms_digests(delivery)
    result = run_script('--contsub_fast', '--overwrite-line', delivery=delivery)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR:')]
    assert len(errors) == 1 and 'never replaces self-calibrated data' in errors[0], result.stderr
    assert line_ms_of(target).name in errors[0]
    assert 'Traceback' not in result.stderr
    assert user_ms_digests(delivery) == before


def test_mixed_delivery_is_reported_and_concat_keeps_both_columns(delivery_factory, run_script, casa):
    delivery = delivery_factory(**dict(SELFCAL, nchan=64, n_antennas=12, noise_jy=0.02))
    truth = truth_of(delivery)
    plain = delivery / truth['ebs'][1]['ms']
    # the second EB as delivered without self-calibration: its DATA is its best data, no CORRECTED_DATA
    scratch = delivery / 'plain.ms'
    casa.casatasks.mstransform(vis=str(plain), outputvis=str(scratch), datacolumn='corrected', reindex=False)
    shutil.rmtree(str(plain))
    scratch.rename(plain)
    before = user_ms_digests(delivery)
    result = run_script('--contsub_fast', '--calibrated_final', '--calibrated_final_line', delivery=delivery)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '%s has no CORRECTED_DATA (not self-calibrated)' % plain.name in result.stdout
    assert 'DATA only of the other 1' in result.stdout
    assert 'CORRECTED_DATA' not in columns_of(casa, line_ms_of(plain))
    assert_self_calibrated_line_ms(casa, delivery, truth, ebs=[truth['ebs'][0]['uid']])
    for name in ('calibrated_final.ms', 'calibrated_final_line.ms'):
        assert 'CORRECTED_DATA' in columns_of(casa, delivery / 'measurement_sets' / name), name
    assert re.search(r'data columns: DATA \(regular calibration\) and CORRECTED_DATA \(self-calibrated\), both kept',
                     result.stdout)
    # concat fills the CORRECTED_DATA of the EB that had none with its DATA
    assert sorted(differs_per_observation(casa, delivery / 'measurement_sets' / 'calibrated_final.ms')) == [False, True]
    after = user_ms_digests(delivery)
    for name, digests in before.items():
        assert after[name] == digests, name


@pytest.mark.pipeline
@requires_pipeline
def test_pipeline_contsub_and_image_keep_the_self_calibration(delivery_factory, run_script, casa):
    delivery = delivery_factory(**dict(SELFCAL, pipeline_ready=True))
    result = run_script('--contsub', '--image', 'imgs', '--specmodes', 'cube', delivery=delivery, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # what the pipeline did with the self-calibrated data, for the record (pytest -s shows it)
    print('\n'.join(line for line in result.stdout.splitlines() if 'CORRECTED' in line or 'pipeline' in line))
    assert_self_calibrated_line_ms(casa, delivery, truth_of(delivery))
    import numpy
    from test_image import fits_named, source_pixel
    truth = truth_of(delivery)
    source = truth['fields'][0]['source_direction']
    # the pipeline may name products of self-calibrated data .selfcal (products.py reads both)
    cube = fits_named(delivery / 'imgs', r'spw25\.cube(\.selfcal)?\.I\.pbcor')
    print('pipeline cube: %s' % cube.name)
    pixels, coordinates, _beam, _unit = read_image(casa, cube, dropdeg=False)
    sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
    peak = float(numpy.nanmax(pixels[int(round(sx)), int(round(sy)), :]))
    print('pipeline cube spw25 peak %.3f Jy/beam (injected %.3f)' % (peak, truth['line_peak_jy']))
    assert peak == pytest.approx(truth['line_peak_jy'], rel=0.15)
