"""Pipeline-ready simulated MSes: the metadata the ALMA pipeline reads is there (no pipeline needed).

What is checked is what the real pipeline was seen to need (see tests/support/pipeline_ready.py):
hifa_importdata refuses an MS without the FIELD reference columns, BBC_NO or an OBSERVATION
schedule; hif_makeimlist makes no repBW cube without a representative bandwidth in
ASDM_SBSUMMARY; without the 'Datatype Handler' HISTORY rows the pipeline types the data RAW.
"""
import shutil
from pathlib import Path

import pytest

from pipeline_ready import ICRS, make_delivery_pipeline_ready, make_pipeline_ready, pipeline_ready_report
from simulate_delivery import cached_delivery, copy_delivery

SIMULATION = dict(n_ebs=1, n_antennas=8, nchan=64, with_line_ms=True)


@pytest.fixture(scope='module')
def ready_delivery(delivery_cache, tmp_path_factory, casa):
    """A simulated delivery, its MSes made pipeline-ready once for the whole module (read-only)."""
    delivery = Path(copy_delivery(cached_delivery(delivery_cache, **SIMULATION),
                                  tmp_path_factory.mktemp('ready') / 'delivery'))
    made = make_delivery_pipeline_ready(delivery / 'measurement_sets', casa=casa)
    assert sorted(made) == sorted(ms.name for ms in (delivery / 'measurement_sets').glob('uid*.ms'))
    return delivery


def targets_ms(delivery):
    return next((Path(delivery) / 'measurement_sets').glob('uid*_targets.ms'))


def line_ms(delivery):
    return next((Path(delivery) / 'measurement_sets').glob('uid*_targets_line.ms'))


def goal(report, keyword):
    for item in report['science_goals']:
        key, value = item.split('=', 1)
        if key.strip() == keyword:
            return value.strip()
    raise AssertionError('no science goal %s in %s' % (keyword, report['science_goals']))


def test_field_directions_have_per_row_icrs_references_like_importasdm_writes(ready_delivery, casa):
    report = pipeline_ready_report(targets_ms(ready_delivery), casa=casa)
    assert set(report['field_reference_columns']) == {'PhaseDir_Ref', 'DelayDir_Ref', 'RefDir_Ref'}
    for codes in report['field_reference_columns'].values():
        assert codes and set(codes) == {ICRS}
    for column, reference_column in (('PHASE_DIR', 'PhaseDir_Ref'), ('DELAY_DIR', 'DelayDir_Ref'),
                                     ('REFERENCE_DIR', 'RefDir_Ref')):
        measinfo = report['field_measinfo'][column]
        assert measinfo['VarRefCol'] == reference_column
        types = list(measinfo['TabRefTypes'])
        assert int(measinfo['TabRefCodes'][types.index('ICRS')]) == ICRS
        assert int(measinfo['TabRefCodes'][types.index('J2000')]) == 0
    assert report['source_direction_reference'] == 'ICRS'


def test_phase_centre_reads_back_in_icrs_at_the_simulated_position(ready_delivery, casa, delivery_cache):
    original = targets_ms(cached_delivery(delivery_cache, **SIMULATION))
    msmd = casa.casatools.msmetadata()
    try:
        msmd.open(str(original))
        before = msmd.phasecenter(0)
        msmd.close()
        msmd.open(str(targets_ms(ready_delivery)))
        after = msmd.phasecenter(0)
        msmd.close()
    finally:
        msmd.done()
    assert before['refer'] == 'J2000' and after['refer'] == 'ICRS'
    assert after['m0']['value'] == pytest.approx(before['m0']['value'], abs=1e-12)
    assert after['m1']['value'] == pytest.approx(before['m1']['value'], abs=1e-12)


def test_every_spw_has_the_baseband_its_alma_name_says(ready_delivery, casa):
    report = pipeline_ready_report(targets_ms(ready_delivery), casa=casa)
    assert report['bbc_no'] is not None and len(report['bbc_no']) == len(report['spw_names'])
    for name, baseband in zip(report['spw_names'], report['bbc_no']):
        if '#BB_' in name:
            assert '#BB_%d#' % baseband in name


def test_observation_names_the_scheduling_and_execution_blocks_and_the_project(ready_delivery, casa):
    ms = targets_ms(ready_delivery)
    report = pipeline_ready_report(ms, casa=casa)
    eb_uid = 'uid://' + ms.name[len('uid___'):-len('_targets.ms')].replace('_', '/')
    assert report['schedule'] == [['SchedulingBlock uid://A001/X3570/X10f', 'ExecBlock %s' % eb_uid]]
    assert report['project'] and all(report['project'])


def test_states_processor_and_history_look_like_an_alma_delivery(ready_delivery, casa):
    report = pipeline_ready_report(targets_ms(ready_delivery), casa=casa)
    assert report['obs_modes'] == ['OBSERVE_TARGET#ON_SOURCE']
    assert report['processor'] == [('CORRELATOR', 'ALMA_BASELINE')]
    assert report['datatype_history'][-2] == "data_type_per_column = {'REGCAL_CONTLINE_SCIENCE': 'DATA'}"
    per_source = report['datatype_history'][-1]
    assert per_source.startswith('data_types_per_source_and_spw = {(')
    assert "('IRAS_16293-2422', 25): ['REGCAL_CONTLINE_SCIENCE']" in per_source


def test_a_line_ms_is_declared_as_continuum_subtracted_data(ready_delivery, casa):
    report = pipeline_ready_report(line_ms(ready_delivery), casa=casa)
    assert report['datatype_history'][-2] == "data_type_per_column = {'REGCAL_LINE_SCIENCE': 'DATA'}"


def test_a_cycle8_target_ms_declares_its_corrected_column_as_line_data(tmp_path, delivery_cache, casa):
    delivery = Path(copy_delivery(cached_delivery(delivery_cache, n_ebs=1, n_antennas=4, nchan=16,
                                                  layout='cycle8'), tmp_path / 'delivery'))
    made = make_delivery_pipeline_ready(delivery / 'measurement_sets', casa=casa)
    (name,) = made
    assert name.endswith('_target.ms')
    history = pipeline_ready_report(delivery / 'measurement_sets' / name, casa=casa)['datatype_history']
    assert history[-2] == ("data_type_per_column = {'REGCAL_CONTLINE_SCIENCE': 'DATA', "
                           "'REGCAL_LINE_SCIENCE': 'CORRECTED_DATA'}")


def test_science_goals_ask_for_a_repbw_cube_and_bracket_the_beam(ready_delivery, casa):
    report = pipeline_ready_report(targets_ms(ready_delivery), casa=casa)
    assert report['subtable_keywords'] == ['ASDM_EXECBLOCK', 'ASDM_SBSUMMARY']
    assert report['observing_modes'] == ['Standard Interferometry']
    assert report['num_science_goal'] == len(report['science_goals'])
    assert goal(report, 'representativeSource') == 'IRAS_16293-2422'
    assert goal(report, 'representativeWindow') == 'X1189462395#ALMA_RB_06#BB_1#SW-01#FULL_RES'
    assert goal(report, 'representativeFrequency') == '216.950000 GHz'
    # The pipeline makes a repBW cube only when 4 channels < bandwidth <= 1/5 of the spw.
    channel_mhz, spw_mhz = 0.9765625, 64 * 0.9765625
    bandwidth_mhz = float(goal(report, 'representativeBandwidth').split()[0])
    assert 4 * channel_mhz < bandwidth_mhz <= 0.2 * spw_mhz
    # A compact array at 217 GHz: a beam of an arcsecond or two lies inside the range.
    low = float(goal(report, 'minAcceptableAngResolution').split()[0])
    high = float(goal(report, 'maxAcceptableAngResolution').split()[0])
    assert 0 < low < 1.0 < 3.0 < high


def test_given_science_goals_and_names_are_written_as_given(tmp_path, ready_delivery, casa):
    ms = tmp_path / targets_ms(ready_delivery).name
    shutil.copytree(str(targets_ms(ready_delivery)), str(ms), symlinks=True)
    result = make_pipeline_ready(ms, casa=casa, ous_uid='uid://A001/X1/X2', eb_uid='uid://A002/X9/X8',
                                 sb_uid='uid://A001/X1/X3', project_code='2099.1.00001.S',
                                 representative_frequency_hz=231.75e9, representative_bandwidth_hz=62.5e6,
                                 min_resolution_arcsec=0.2, max_resolution_arcsec=0.8,
                                 spw_names={27: 'X42#ALMA_RB_06#BB_3#SW-01#FULL_RES'})
    report = pipeline_ready_report(ms, casa=casa)
    assert result['observation'] == dict(eb_uid='uid://A002/X9/X8', sb_uid='uid://A001/X1/X3',
                                         project='2099.1.00001.S')
    assert report['schedule'] == [['SchedulingBlock uid://A001/X1/X3', 'ExecBlock uid://A002/X9/X8']]
    assert goal(report, 'representativeFrequency') == '231.750000 GHz'
    assert goal(report, 'representativeBandwidth') == '62.500000 MHz'
    assert goal(report, 'minAcceptableAngResolution') == '0.200 arcsec'
    assert report['spw_names'][27] == 'X42#ALMA_RB_06#BB_3#SW-01#FULL_RES' and report['bbc_no'][27] == 3


def test_running_it_again_changes_nothing(tmp_path, ready_delivery, casa):
    ms = tmp_path / targets_ms(ready_delivery).name
    shutil.copytree(str(targets_ms(ready_delivery)), str(ms), symlinks=True)
    before = pipeline_ready_report(ms, casa=casa)
    make_pipeline_ready(ms, casa=casa, ous_uid='uid://A001/X3570/X111')
    assert pipeline_ready_report(ms, casa=casa) == before


def test_the_sbsummary_travels_into_mses_derived_with_mstransform(tmp_path, ready_delivery, casa):
    # uvcontsub/hif_uvcontsub write the line MS through the same MS copier: what it keeps, they keep.
    derived = tmp_path / 'derived.ms'
    casa.casatasks.mstransform(vis=str(line_ms(ready_delivery)), outputvis=str(derived), datacolumn='data',
                               spw='25')
    moved = tmp_path / 'elsewhere' / 'moved.ms'
    moved.parent.mkdir()
    shutil.move(str(derived), str(moved))
    report = pipeline_ready_report(moved, casa=casa)
    assert 'ASDM_SBSUMMARY' in report['subtable_keywords']
    assert goal(report, 'representativeSource') == 'IRAS_16293-2422'


def test_nonsense_is_refused_before_anything_is_written(tmp_path, casa):
    with pytest.raises(ValueError, match='not a measurement set'):
        make_pipeline_ready(tmp_path, casa=casa)
    with pytest.raises(ValueError, match='data_type must be one of'):
        make_pipeline_ready(tmp_path, casa=casa, data_type='CALIBRATED')


def test_the_simulator_makes_pipeline_ready_deliveries_when_asked(delivery_factory, casa):
    delivery = delivery_factory(n_ebs=1, n_antennas=4, nchan=16, with_line_ms=True, pipeline_ready=True)
    for ms in sorted((delivery / 'measurement_sets').glob('uid*.ms')):
        report = pipeline_ready_report(ms, casa=casa)
        assert set(report['field_reference_columns']['PhaseDir_Ref']) == {ICRS}
        assert report['subtable_keywords'] == ['ASDM_EXECBLOCK', 'ASDM_SBSUMMARY']
        expected = 'REGCAL_LINE_SCIENCE' if ms.name.endswith('_line.ms') else 'REGCAL_CONTLINE_SCIENCE'
        assert report['datatype_history'][-2] == "data_type_per_column = {'%s': 'DATA'}" % expected


def test_a_default_simulation_is_left_as_casa_simulated_it(delivery_factory, casa):
    delivery = delivery_factory(n_ebs=1, n_antennas=4, nchan=16)
    report = pipeline_ready_report(targets_ms(delivery), casa=casa)
    assert report['field_reference_columns']['PhaseDir_Ref'] is None
    assert report['subtable_keywords'] == []
