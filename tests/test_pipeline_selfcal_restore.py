"""--contsub with the pipeline on a self-calibrated delivery that holds the pipeline's selfcal restore resources.

The delivery is made the pipeline's way (tests/support/selfcal_resources.py): per-antenna phase errors in DATA,
the installed pipeline's own hif_selfcal solves them and writes CORRECTED_DATA, its restore resources are packed
into the member's calibration/<ous>.hifa_calimage.auxproducts.tgz as hifa_exportdata does.  Then --contsub runs
twice on copies: with the tgz beside calibrated_final/ (hif_selfcal(restore_only=True) applies the tables to the
new line MSes) and without it (the tool fits the same cont.dat ranges in CORRECTED_DATA).  Both ways must give
the same line MS data within the noise, the user's MSes must stay byte-identical, and each run must say which
way it went.  Releases without restore_only (2024.1.0.8 and older) take the second way in both runs.

Run by hand with a pipeline's Python (skipped without one), e.g.
    xvfb-run -a /path/to/pipeline-python -m pytest -m pipeline tests/test_pipeline_selfcal_restore.py
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import mean_spectrum, pipeline_available, truth_of, user_ms_digests

pytestmark = [pytest.mark.pipeline,
              pytest.mark.skipif(not pipeline_available(), reason='the ALMA pipeline is not installed')]

SUPPORT = Path(__file__).resolve().parent / 'support'
# A delivery hif_selfcal can self-calibrate: 30 antennas (with 12 its automasking finds nothing to clean),
# a 1 Jy continuum, 30 deg rms per-antenna phase errors.
SIMULATION = dict(n_ebs=2, n_antennas=30, continuum_jy=1.0, pipeline_ready=True, contdat_version=3)
PHASE_RMS_DEG = 30.0


def restores(tasks):
    return 'restore_only' in (sfr.task_parameter_names(tasks['hif_selfcal']) or ()) if 'hif_selfcal' in tasks else False


@pytest.fixture(scope='module')
def selfcal_member(delivery_cache, tmp_path_factory):
    """member.uid___.../{calibrated_final, calibration/<ous>.hifa_calimage.auxproducts.tgz}, self-calibrated by
    the pipeline; and what the support script said."""
    from simulate_delivery import cached_delivery, copy_delivery
    member = tmp_path_factory.mktemp('selfcal') / 'member.uid___A001_X3570_X111'
    delivery = member / 'calibrated_final'
    copy_delivery(Path(cached_delivery(delivery_cache, **SIMULATION)), delivery)
    result = subprocess.run(
        [sys.executable, str(SUPPORT / 'selfcal_resources.py'), str(delivery), '--work', str(member / 'pipeline'),
         '--phase-rms-deg', str(PHASE_RMS_DEG), '--auxproducts', '../calibration'],
        cwd=str(member), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=3600)
    said = [line for line in result.stdout.splitlines() if line.startswith('SELFCAL_RESOURCES ')]
    assert result.returncode == 0 and said, result.stdout[-3000:]
    made = json.loads(said[-1][len('SELFCAL_RESOURCES '):])
    assert made['succeeded'], 'hif_selfcal did not self-calibrate the simulated target: %s' % result.stdout[-3000:]
    shutil.rmtree(str(member / 'pipeline'))
    return member, made


def copy_member(member, destination, *, with_resources):
    shutil.copytree(str(member / 'calibrated_final'), str(destination / 'calibrated_final'), symlinks=True)
    if with_resources:
        shutil.copytree(str(member / 'calibration'), str(destination / 'calibration'))
    return destination / 'calibrated_final'


def read_column(casa, ms, column):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        order = numpy.lexsort((table.getcol('ANTENNA2'), table.getcol('ANTENNA1'), table.getcol('TIME'),
                               table.getcol('DATA_DESC_ID')))
        return table.getcol(column)[:, :, order], table.getcol('FLAG')[:, :, order]
    finally:
        table.close()


def test_both_ways_give_the_same_self_calibrated_line_data(selfcal_member, tmp_path, run_script, casa):
    member, made = selfcal_member
    revision, tasks = sfr.load_pipeline_tasks()
    pipeline_restores = restores(tasks)
    runs = {}
    for way, with_resources in (('restored', True), ('fitted', False)):
        delivery = copy_member(member, tmp_path / way, with_resources=with_resources)
        before = user_ms_digests(delivery)
        result = run_script('--contsub', delivery=delivery, timeout=3600)
        print('\n'.join(line for line in result.stdout.splitlines()
                        if 'self-calibration' in line or 'CORRECTED' in line or 'hif_selfcal' in line))
        assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
        assert {name: digest for name, digest in user_ms_digests(delivery).items() if name in before} == before, \
            'a user MS changed'
        work_dir = delivery / 'working_reprocess'
        assert not list(work_dir.glob('sc_workdir*')) and not list(work_dir.glob('*.selfcal.json')), \
            'the extracted restore resources were left in working_reprocess/'
        runs[way] = (delivery, result.stdout)
    restored_out, fitted_out = runs['restored'][1], runs['fitted'][1]
    if pipeline_restores:
        assert "pipeline: hif_selfcal(restore_only=True" in restored_out
        assert 'applied by hif_selfcal(restore_only=True)' in restored_out
        assert 'fitting the same cont.dat ranges in CORRECTED_DATA' not in restored_out
    else:
        assert 'has no restore_only' in restored_out
        assert 'fitting the same cont.dat ranges in CORRECTED_DATA' in restored_out
    assert 'hif_selfcal(' not in fitted_out
    assert 'no *.auxproducts.tgz with self-calibration tables' in fitted_out
    assert 'fitting the same cont.dat ranges in CORRECTED_DATA' in fitted_out

    truth = truth_of(runs['restored'][0])
    noise = truth['noise_jy']
    for eb in truth['ebs']:
        lines = [sfr.line_ms_path(runs[way][0] / eb['ms']) for way in ('restored', 'fitted')]
        (restored, restored_flags), (fitted, fitted_flags) = [read_column(casa, line, 'CORRECTED_DATA')
                                                              for line in lines]
        regcal, _ = read_column(casa, lines[0], 'DATA')
        assert restored.shape == fitted.shape
        assert numpy.array_equal(restored_flags, fitted_flags)
        good = ~restored_flags
        difference = numpy.abs(restored - fitted)[good]
        print('%s: |restored - fitted| max %.3g Jy, rms %.3g Jy (noise per visibility %.3g Jy); '
              '|CORRECTED - DATA| rms %.3g Jy' % (eb['ms'], difference.max(), math.sqrt(numpy.mean(difference ** 2)),
                                                 noise, math.sqrt(numpy.mean(numpy.abs(restored - regcal)[good] ** 2))))
        assert difference.max() < 0.1 * noise, 'the two ways differ by more than a tenth of the noise'
        # the self-calibration did something: the phase errors (30 deg rms per antenna) move the line by far more
        assert math.sqrt(numpy.mean(numpy.abs(restored - regcal)[good] ** 2)) > 5 * noise / math.sqrt(len(difference))
        for spw in eb['spws']:
            spectrum = mean_spectrum(casa, lines[0], spw['id'], 'CORRECTED_DATA')[0]
            regcal_spectrum = mean_spectrum(casa, lines[0], spw['id'], 'DATA')[0]
            channel = int(round(spw['line_topo_channel']))
            print('  spw %d line %.4f Jy in CORRECTED_DATA, %.4f Jy in DATA (injected %.4f)'
                  % (spw['id'], spectrum[channel].real, regcal_spectrum[channel].real, truth['line_peak_jy']))
            assert abs(spectrum[channel].real - truth['line_peak_jy']) < 0.05 * truth['line_peak_jy']
            assert regcal_spectrum[channel].real < 0.95 * spectrum[channel].real

