"""Give a simulated measurement set the metadata the ALMA pipeline needs to accept it.

A plain ``casatools.simulator`` MS is refused by ``hifa_importdata`` and, once accepted,
makes poor products.  ``make_pipeline_ready`` adds, in place, what an ALMA delivery's MS
carries and the pipeline reads (each item is a failure or a missing product seen on the
real pipeline without it):

* FIELD: integer ``PhaseDir_Ref``/``DelayDir_Ref``/``RefDir_Ref`` columns (ICRS) and the
  direction columns' MEASINFO turned into a variable reference, as ``importasdm`` writes
  them (``TableProxy::getColumn: column PhaseDir_Ref does not exist``); SOURCE.DIRECTION
  in ICRS.
* SPECTRAL_WINDOW: ``BBC_NO`` (the baseband, from ``#BB_n#`` in the ALMA spw name).
* OBSERVATION: ``SCHEDULE`` (scheduling block and execution block uids), ``PROJECT``,
  ``LOG`` (the pipeline reads array cells that the simulator leaves undefined).
* STATE: ``OBS_MODE`` written with ALMA's ``#`` separator (``OBSERVE_TARGET#ON_SOURCE``).
* PROCESSOR: one ALMA correlator row (else a warning for every MS).
* ASDM_SBSUMMARY (science goals: representative frequency, bandwidth, source and window,
  angular-resolution range, sensitivity) and ASDM_EXECBLOCK subtables, linked as keywords
  of the main table so that ``mstransform``/``uvcontsub`` carry them into derived MSes;
  without the representative bandwidth no repBW cube is made.
* HISTORY: the pipeline's 'Datatype Handler' rows declaring what the DATA column holds,
  else the pipeline types the data RAW.

Only ``casatools`` is used (tables, the ms tool for HISTORY); no pipeline is needed.  The
function is idempotent: running it twice leaves the same metadata.

Usage::

    from pipeline_ready import make_pipeline_ready
    make_pipeline_ready('uid___A002_X1_X2_targets.ms', casa=casatools, ous_uid='uid://A001/X1/X3')
"""
from __future__ import absolute_import, division, print_function

import math
import os
import re
import shutil

import numpy as np

__all__ = ['make_pipeline_ready', 'make_delivery_pipeline_ready', 'pipeline_ready_report', 'DATA_TYPES', 'ICRS']

# casacore MDirection::Types numbering, as importasdm writes it into TabRefTypes/TabRefCodes
# (AZELNE/AZELNEGEO are aliases without codes of their own; planets start at 32).
_DIRECTION_REFERENCES = (
    ('J2000', 0), ('JMEAN', 1), ('JTRUE', 2), ('APP', 3), ('B1950', 4), ('B1950_VLA', 5), ('BMEAN', 6),
    ('BTRUE', 7), ('GALACTIC', 8), ('HADEC', 9), ('AZEL', 10), ('AZELSW', 11), ('AZELGEO', 12),
    ('AZELSWGEO', 13), ('JNAT', 14), ('ECLIPTIC', 15), ('MECLIPTIC', 16), ('TECLIPTIC', 17),
    ('SUPERGAL', 18), ('ITRF', 19), ('TOPO', 20), ('ICRS', 21), ('MERCURY', 32), ('VENUS', 33),
    ('MARS', 34), ('JUPITER', 35), ('SATURN', 36), ('URANUS', 37), ('NEPTUNE', 38), ('PLUTO', 39),
    ('SUN', 40), ('MOON', 41), ('COMET', 42))
ICRS = 21
_FIELD_DIRECTION_COLUMNS = (('PHASE_DIR', 'PhaseDir_Ref'), ('DELAY_DIR', 'DelayDir_Ref'),
                            ('REFERENCE_DIR', 'RefDir_Ref'))

# The pipeline's DataType names (pipeline.domain.datatype) that a delivered MS's DATA can hold.
DATA_TYPES = ('RAW', 'REGCAL_CONTLINE_ALL', 'REGCAL_CONTLINE_SCIENCE', 'SELFCAL_CONTLINE_SCIENCE',
              'REGCAL_LINE_SCIENCE', 'SELFCAL_LINE_SCIENCE')
_DATATYPE_ORIGIN = 'Datatype Handler'

_ALMA_BAND_RANGES_GHZ = ((1, 35, 52), (2, 67, 116), (3, 84, 116), (4, 125, 163), (5, 163, 211), (6, 211, 275),
                         (7, 275, 373), (8, 385, 500), (9, 602, 720), (10, 787, 950))
# The simulated project's uids (any well-formed ALMA uids do; these match simulate_delivery's).
_PROJECT_UID = 'uid://A001/X3570/X10c'
_DEFAULT_OUS_UID = 'uid://A001/X3570/X111'
_DEFAULT_SB_UID = 'uid://A001/X3570/X10f'
_SPEED_OF_LIGHT = 299792458.0
_RADIAN_IN_ARCSEC = 180.0 / math.pi * 3600.0


def make_pipeline_ready(ms_path, *, casa, ous_uid=_DEFAULT_OUS_UID, eb_uid=None, sb_uid=None,
                        project_code=None, representative_frequency_hz=None, representative_bandwidth_hz=None,
                        representative_source=None, representative_window=None, min_resolution_arcsec=None,
                        max_resolution_arcsec=None, sensitivity_goal='1 mJy', spw_names=None,
                        data_type='REGCAL_CONTLINE_SCIENCE', corrected_data_type=None, config_name='C-3'):
    """Add the ALMA metadata the pipeline reads to the MS at ``ms_path`` (modified in place).

    ``casa``: the ``casatools`` module, or anything with a ``.casatools`` attribute (the
    reprocessing script's ``load_casa()`` result).
    ``eb_uid``/``sb_uid``/``project_code``: default to what the MS says (OBSERVATION.SCHEDULE
    and PROJECT; the execution block uid from a ``uid___A002_X.._X..`` file name).
    ``representative_*``: the science goal; by default the first science spw (the first
    one with data) at its centre frequency, and a bandwidth of 8 of its channels, which is
    what makes the pipeline build a repBW cube (it needs 4 channels < bandwidth <= 1/5 spw).
    ``min/max_resolution_arcsec``: the acceptable beam range; by default 0.3 to 4 times
    lambda / longest baseline, which brackets what tclean gets from the array.
    ``spw_names``: {spw id: ALMA name} to rename windows (``X..#ALMA_RB_06#BB_1#SW-01#FULL_RES``);
    the baseband number in BBC_NO is read from the final names.
    ``data_type``: what DATA holds, a pipeline DataType name (``REGCAL_LINE_SCIENCE`` for a
    continuum-subtracted ``*_targets_line.ms``); ``corrected_data_type``: what CORRECTED_DATA
    holds, if anything (a Cycle 8 ``*_target.ms``: ``REGCAL_LINE_SCIENCE``).
    Returns a dict of what was written (for logs and tests).
    """
    casatools = getattr(casa, 'casatools', casa)
    ms_path = os.path.abspath(str(ms_path))
    column_types = [(data_type, 'DATA')]
    if corrected_data_type is not None:
        column_types.append((corrected_data_type, 'CORRECTED_DATA'))
    for declared_type, _column in column_types:
        if declared_type not in DATA_TYPES:
            raise ValueError('data_type must be one of %s, not %r' % (', '.join(DATA_TYPES), declared_type))
    if not os.path.isdir(os.path.join(ms_path, 'SPECTRAL_WINDOW')):
        raise ValueError('%s is not a measurement set' % ms_path)
    table = casatools.table()
    try:
        _set_field_references_to_icrs(table, ms_path)
        _set_source_direction_to_icrs(table, ms_path)
        windows = _name_windows_and_basebands(table, ms_path, spw_names or {})
        observation = _fill_observation(table, ms_path, eb_uid=eb_uid, sb_uid=sb_uid, project_code=project_code)
        _use_alma_state_separator(table, ms_path)
        _add_correlator_processor(table, ms_path)
        science_spw = _first_science_spw(table, ms_path)
        window = windows[science_spw]
        sources = _source_names(table, ms_path)
        goals = _science_goals(
            representative_frequency_hz=(window['centre_hz'] if representative_frequency_hz is None
                                         else float(representative_frequency_hz)),
            representative_bandwidth_hz=(8 * window['channel_width_hz'] if representative_bandwidth_hz is None
                                         else float(representative_bandwidth_hz)),
            representative_source=representative_source or sources[0],
            representative_window=representative_window or window['name'],
            resolution_arcsec=_resolution_range(table, ms_path, frequency_hz=window['centre_hz'],
                                                min_arcsec=min_resolution_arcsec, max_arcsec=max_resolution_arcsec),
            sensitivity_goal=sensitivity_goal)
        sbsummary = _write_sbsummary(table, ms_path, goals=goals, sb_uid=observation['sb_uid'],
                                     project_uid=_PROJECT_UID, ous_uid=ous_uid,
                                     frequency_ghz=window['centre_hz'] / 1e9)
        _write_execblock(table, ms_path, eb_uid=observation['eb_uid'], sb_uid=observation['sb_uid'],
                         config_name=config_name)
    finally:
        table.close()
        table.done()
    declared = _declare_data_type(casatools, ms_path, column_types=column_types, sources=sources,
                                  spw_ids=sorted(windows))
    return dict(ms=ms_path, science_goals=goals, sbsummary=sbsummary, observation=observation,
                data_types=dict(column_types), data_type_history=declared,
                basebands=dict((spw, w['baseband']) for spw, w in windows.items()))


def make_delivery_pipeline_ready(ms_dir, *, casa, ous_uid=_DEFAULT_OUS_UID, selfcal=False):
    """Make every delivered MS in ``ms_dir`` pipeline-ready, each declared with what it holds:
    ``*_targets.ms`` continuum + line, ``*_targets_line.ms`` line only, a Cycle 8 ``*_target.ms``
    continuum + line in DATA and line only in CORRECTED_DATA.  ``selfcal``: a Cycle 11+ delivery
    whose CORRECTED_DATA holds hif_selfcal's self-calibrated data (SELFCAL_* types).  Other MSes (a
    working directory's full ``uid*.ms``) are left alone.  Returns {MS name: make_pipeline_ready result}.
    """
    kinds = (('_targets_line.ms', 'REGCAL_LINE_SCIENCE', 'SELFCAL_LINE_SCIENCE' if selfcal else None),
             ('_targets.ms', 'REGCAL_CONTLINE_SCIENCE', 'SELFCAL_CONTLINE_SCIENCE' if selfcal else None),
             ('_target.ms', 'REGCAL_CONTLINE_SCIENCE', 'REGCAL_LINE_SCIENCE'))
    results = {}
    for name in sorted(os.listdir(str(ms_dir))):
        for suffix, data_type, corrected_data_type in kinds:
            if name.startswith('uid') and name.endswith(suffix):
                results[name] = make_pipeline_ready(
                    os.path.join(str(ms_dir), name), casa=casa, ous_uid=ous_uid, data_type=data_type,
                    corrected_data_type=corrected_data_type)
                break
    return results


def pipeline_ready_report(ms_path, *, casa):
    """What the pipeline will read from ``ms_path``: a dict (for tests and for checking an MS by eye)."""
    casatools = getattr(casa, 'casatools', casa)
    ms_path = os.path.abspath(str(ms_path))
    table = casatools.table()
    report = {}
    try:
        table.open(os.path.join(ms_path, 'FIELD'))
        try:
            report['field_reference_columns'] = dict(
                (ref, table.getcol(ref).tolist() if ref in table.colnames() else None)
                for _, ref in _FIELD_DIRECTION_COLUMNS)
            report['field_measinfo'] = dict((col, _plain(table.getcolkeyword(col, 'MEASINFO')))
                                            for col, _ in _FIELD_DIRECTION_COLUMNS)
        finally:
            table.close()
        table.open(os.path.join(ms_path, 'SOURCE'))
        try:
            report['source_direction_reference'] = table.getcolkeyword('DIRECTION', 'MEASINFO').get('Ref')
        finally:
            table.close()
        table.open(os.path.join(ms_path, 'SPECTRAL_WINDOW'))
        try:
            report['spw_names'] = table.getcol('NAME').tolist()
            report['bbc_no'] = table.getcol('BBC_NO').tolist() if 'BBC_NO' in table.colnames() else None
        finally:
            table.close()
        table.open(os.path.join(ms_path, 'OBSERVATION'))
        try:
            report['schedule'] = [list(table.getcell('SCHEDULE', row)) if table.iscelldefined('SCHEDULE', row)
                                  else None for row in range(table.nrows())]
            report['project'] = table.getcol('PROJECT').tolist()
        finally:
            table.close()
        table.open(os.path.join(ms_path, 'STATE'))
        try:
            report['obs_modes'] = table.getcol('OBS_MODE').tolist() if table.nrows() else []
        finally:
            table.close()
        table.open(os.path.join(ms_path, 'PROCESSOR'))
        try:
            report['processor'] = [(table.getcell('TYPE', row), table.getcell('SUB_TYPE', row))
                                   for row in range(table.nrows())]
        finally:
            table.close()
        table.open(ms_path)
        try:
            keywords = table.keywordnames()
            report['subtable_keywords'] = sorted(k for k in keywords if k.startswith('ASDM_'))
        finally:
            table.close()
        sbsummary = os.path.join(ms_path, 'ASDM_SBSUMMARY')
        if os.path.isdir(sbsummary):
            table.open(sbsummary)
            try:
                report['science_goals'] = [str(goal) for goal in table.getcell('scienceGoal', 0)]
                report['num_science_goal'] = int(table.getcell('numScienceGoal', 0))
                report['observing_modes'] = [str(mode) for mode in table.getcell('observingMode', 0)]
            finally:
                table.close()
        table.open(os.path.join(ms_path, 'HISTORY'))
        try:
            if table.nrows():
                origins = table.getcol('ORIGIN')
                messages = table.getcol('MESSAGE')
                report['datatype_history'] = [str(m) for o, m in zip(origins, messages) if o == _DATATYPE_ORIGIN]
            else:
                report['datatype_history'] = []
        finally:
            table.close()
    finally:
        table.done()
    return report


def _plain(record):
    """A table record with numpy arrays turned into lists (comparable with ==)."""
    return dict((key, value.tolist() if hasattr(value, 'tolist') else value) for key, value in record.items())


# --------------------------------------------------------------------------- subtables

def _open(table, path, *, writable):
    table.open(path, nomodify=not writable)
    return table


def _set_field_references_to_icrs(table, ms_path):
    """Per-row direction references, as importasdm writes them, all ICRS."""
    _open(table, os.path.join(ms_path, 'FIELD'), writable=True)
    try:
        present = table.colnames()
        nrows = table.nrows()
        for column, reference_column in _FIELD_DIRECTION_COLUMNS:
            if reference_column not in present:
                table.addcols({reference_column: {
                    'valueType': 'int', 'dataManagerType': 'StandardStMan', 'dataManagerGroup': 'StandardStMan',
                    'option': 0, 'maxlen': 0, 'comment': 'Direction reference code', 'keywords': {}}})
            if nrows:
                table.putcol(reference_column, np.full(nrows, ICRS, dtype=np.int32))
            table.putcolkeyword(column, 'MEASINFO', {
                'type': 'direction', 'VarRefCol': reference_column,
                'TabRefTypes': np.array([name for name, _ in _DIRECTION_REFERENCES]),
                'TabRefCodes': np.array([code for _, code in _DIRECTION_REFERENCES], dtype=np.uint64)})
    finally:
        table.close()


def _set_source_direction_to_icrs(table, ms_path):
    # The coordinates stay as they are: J2000 and ICRS differ by ~20 mas, far below a pixel here.
    _open(table, os.path.join(ms_path, 'SOURCE'), writable=True)
    try:
        measinfo = table.getcolkeyword('DIRECTION', 'MEASINFO')
        measinfo['Ref'] = 'ICRS'
        table.putcolkeyword('DIRECTION', 'MEASINFO', measinfo)
    finally:
        table.close()


def _name_windows_and_basebands(table, ms_path, spw_names):
    """Rename windows when asked, add BBC_NO from '#BB_n#' (else FREQ_GROUP); {spw: facts}."""
    _open(table, os.path.join(ms_path, 'SPECTRAL_WINDOW'), writable=True)
    try:
        nrows = table.nrows()
        unknown = sorted(set(int(spw) for spw in spw_names) - set(range(nrows)))
        if unknown:
            raise ValueError('spw_names names spectral windows %s that %s does not have' % (unknown, ms_path))
        for spw, name in spw_names.items():
            table.putcell('NAME', int(spw), str(name))
        names = [str(name) for name in table.getcol('NAME')]
        freq_groups = table.getcol('FREQ_GROUP').tolist()
        basebands = []
        for name, freq_group in zip(names, freq_groups):
            match = re.search(r'#BB_(\d+)#', name)
            basebands.append(int(match.group(1)) if match else max(int(freq_group), 0))
        if 'BBC_NO' not in table.colnames():
            table.addcols({'BBC_NO': {
                'valueType': 'int', 'dataManagerType': 'StandardStMan', 'dataManagerGroup': 'StandardStMan',
                'option': 0, 'maxlen': 0, 'comment': 'Baseband converter number', 'keywords': {}}})
        table.putcol('BBC_NO', np.array(basebands, dtype=np.int32))
        windows = {}
        for spw in range(nrows):
            frequencies = table.getcell('CHAN_FREQ', spw)
            widths = table.getcell('CHAN_WIDTH', spw)
            windows[spw] = dict(name=names[spw], baseband=basebands[spw],
                                centre_hz=float(np.mean(frequencies)),
                                channel_width_hz=float(np.abs(widths).mean()),
                                bandwidth_hz=float(np.abs(widths).sum()))
        return windows
    finally:
        table.close()


def _uid_from_ms_name(ms_path):
    match = re.match(r'uid___(A\d+)_(X[0-9a-fA-F]+)_(X[0-9a-fA-F]+)', os.path.basename(ms_path))
    return 'uid://%s/%s/%s' % match.groups() if match else None


def _fill_observation(table, ms_path, *, eb_uid, sb_uid, project_code):
    _open(table, os.path.join(ms_path, 'OBSERVATION'), writable=True)
    try:
        schedule = []
        if table.nrows() and table.iscelldefined('SCHEDULE', 0):
            schedule = [str(item) for item in table.getcell('SCHEDULE', 0)]
        known = dict(item.split(' ', 1) for item in schedule if ' ' in item)
        eb_uid = eb_uid or known.get('ExecBlock') or _uid_from_ms_name(ms_path) or 'uid://A002/X0/X1'
        sb_uid = sb_uid or known.get('SchedulingBlock') or _DEFAULT_SB_UID
        existing_project = str(table.getcell('PROJECT', 0)) if table.nrows() else ''
        project_code = project_code or existing_project or '2022.1.01234.S'
        for row in range(table.nrows()):
            table.putcell('SCHEDULE', row, np.array(['SchedulingBlock %s' % sb_uid, 'ExecBlock %s' % eb_uid]))
            table.putcell('PROJECT', row, project_code)
            if not table.iscelldefined('LOG', row):
                table.putcell('LOG', row, np.array(['']))
            if not str(table.getcell('SCHEDULE_TYPE', row)):
                table.putcell('SCHEDULE_TYPE', row, 'ALMA')
        return dict(eb_uid=eb_uid, sb_uid=sb_uid, project=project_code)
    finally:
        table.close()


def _use_alma_state_separator(table, ms_path):
    """'OBSERVE_TARGET.ON_SOURCE' (simulator) -> 'OBSERVE_TARGET#ON_SOURCE' (ALMA); an empty
    STATE table gets one on-source row that every main-table row points to."""
    _open(table, os.path.join(ms_path, 'STATE'), writable=True)
    try:
        if table.nrows() == 0:
            table.addrows(1)
            table.putcell('OBS_MODE', 0, 'OBSERVE_TARGET#ON_SOURCE')
            table.putcell('SIG', 0, True)
            added_row = True
        else:
            modes = [','.join(part.replace('.', '#', 1) if '#' not in part else part
                              for part in str(mode).split(','))
                     for mode in table.getcol('OBS_MODE')]
            table.putcol('OBS_MODE', np.array(modes))
            added_row = False
    finally:
        table.close()
    if added_row:
        _open(table, ms_path, writable=True)
        try:
            table.putcol('STATE_ID', np.zeros(table.nrows(), dtype=np.int32))
        finally:
            table.close()


def _add_correlator_processor(table, ms_path):
    _open(table, os.path.join(ms_path, 'PROCESSOR'), writable=True)
    try:
        if table.nrows() == 0:
            table.addrows(1)
        table.putcell('TYPE', 0, 'CORRELATOR')
        table.putcell('SUB_TYPE', 0, 'ALMA_BASELINE')
        table.putcell('TYPE_ID', 0, 0)
        table.putcell('MODE_ID', 0, 0)
        table.putcell('FLAG_ROW', 0, False)
    finally:
        table.close()
    _open(table, ms_path, writable=True)
    try:
        processor_ids = table.getcol('PROCESSOR_ID')
        if (processor_ids < 0).any():
            table.putcol('PROCESSOR_ID', np.zeros(len(processor_ids), dtype=np.int32))
    finally:
        table.close()


def _first_science_spw(table, ms_path):
    """The lowest spw id that has visibilities (placeholder windows carry none)."""
    _open(table, ms_path, writable=False)
    try:
        data_descriptions = sorted(set(table.getcol('DATA_DESC_ID').tolist()))
    finally:
        table.close()
    _open(table, os.path.join(ms_path, 'DATA_DESCRIPTION'), writable=False)
    try:
        spw_of = table.getcol('SPECTRAL_WINDOW_ID').tolist()
    finally:
        table.close()
    if not data_descriptions:
        raise ValueError('%s has no visibilities' % ms_path)
    return min(spw_of[dd] for dd in data_descriptions)


def _source_names(table, ms_path):
    _open(table, os.path.join(ms_path, 'FIELD'), writable=False)
    try:
        names = [str(name) for name in table.getcol('NAME')]
    finally:
        table.close()
    _open(table, os.path.join(ms_path, 'SOURCE'), writable=False)
    try:
        if table.nrows():
            names = [str(name) for name in table.getcol('NAME')]
    finally:
        table.close()
    unique = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def _resolution_range(table, ms_path, *, frequency_hz, min_arcsec, max_arcsec):
    if min_arcsec is not None and max_arcsec is not None:
        return float(min_arcsec), float(max_arcsec)
    _open(table, os.path.join(ms_path, 'ANTENNA'), writable=False)
    try:
        positions = table.getcol('POSITION').T
    finally:
        table.close()
    longest = max(float(np.linalg.norm(a - b)) for a in positions for b in positions) if len(positions) > 1 else 0.0
    if longest <= 0.0:
        raise ValueError('%s: cannot estimate the beam (fewer than 2 antennas); give the resolution range' % ms_path)
    beam_arcsec = _SPEED_OF_LIGHT / frequency_hz / longest * _RADIAN_IN_ARCSEC
    return (float(min_arcsec) if min_arcsec is not None else round(0.3 * beam_arcsec, 3),
            float(max_arcsec) if max_arcsec is not None else round(4.0 * beam_arcsec, 3))


def _science_goals(*, representative_frequency_hz, representative_bandwidth_hz, representative_source,
                   representative_window, resolution_arcsec, sensitivity_goal):
    """The scienceGoal strings, in the 'keyword = value unit' form the pipeline parses."""
    low, high = resolution_arcsec
    return ['representativeFrequency = %.6f GHz' % (representative_frequency_hz / 1e9),
            'representativeBandwidth = %.6f MHz' % (representative_bandwidth_hz / 1e6),
            'representativeSource = %s' % representative_source,
            'representativeWindow = %s' % representative_window,
            'minAcceptableAngResolution = %.3f arcsec' % low,
            'maxAcceptableAngResolution = %.3f arcsec' % high,
            'maxAllowedBeamAxialRatio = 999',
            'sensitivityGoal = %s' % sensitivity_goal,
            'dynamicRange = 1',
            'spectralDynamicRangeBandWidth = None',
            'SBName = simulated_SB']


def _string_array_column(comment):
    return {'valueType': 'string', 'dataManagerType': 'StandardStMan', 'dataManagerGroup': 'StandardStMan',
            'option': 0, 'maxlen': 0, 'ndim': 1, 'comment': comment, 'keywords': {}}


def _scalar_column(value_type, comment):
    return {'valueType': value_type, 'dataManagerType': 'StandardStMan', 'dataManagerGroup': 'StandardStMan',
            'option': 0, 'maxlen': 0, 'comment': comment, 'keywords': {}}


def _alma_band(frequency_ghz):
    for band, low, high in _ALMA_BAND_RANGES_GHZ:
        if low <= frequency_ghz <= high:
            return 'ALMA_RB_%02d' % band
    return 'UNSPECIFIED'


def _create_linked_subtable(table, ms_path, name, description, rows):
    """(Re)create MS/<name> with one row per dict in ``rows`` and register it as a keyword of
    the main table, the way importasdm's ``asis`` tables are (so derived MSes inherit it)."""
    path = os.path.join(ms_path, name)
    _open(table, ms_path, writable=True)
    try:
        if name in table.keywordnames():
            table.removekeyword(name)
    finally:
        table.close()
    if os.path.isdir(path):
        shutil.rmtree(path)
    if not table.create(path, description, nrow=len(rows)):
        raise RuntimeError('could not create %s' % path)
    try:
        for row, values in enumerate(rows):
            for column, value in values.items():
                table.putcell(column, row, value)
    finally:
        table.close()
    _open(table, ms_path, writable=True)
    try:
        table.putkeyword(name, 'Table: %s' % path)
    finally:
        table.close()
    return path


def _write_sbsummary(table, ms_path, *, goals, sb_uid, project_uid, ous_uid, frequency_ghz):
    description = {
        'sBSummaryId': _scalar_column('string', 'SBSummary row id'),
        'sbSummaryUID': _scalar_column('string', 'scheduling block uid'),
        'projectUID': _scalar_column('string', 'project uid'),
        'obsUnitSetUID': _scalar_column('string', 'member observing unit set uid'),
        'frequency': _scalar_column('double', 'representative frequency [GHz]'),
        'frequencyBand': _scalar_column('string', 'receiver band'),
        'sbType': _scalar_column('string', 'scheduling block type'),
        'numObservingMode': _scalar_column('int', 'number of observing modes'),
        'observingMode': _string_array_column('observing modes'),
        'numberRepeats': _scalar_column('int', 'number of repeats'),
        'numScienceGoal': _scalar_column('int', 'number of science goals'),
        'scienceGoal': _string_array_column('science goals, "keyword = value unit"'),
        'numWeatherConstraint': _scalar_column('int', 'number of weather constraints'),
        'weatherConstraint': _string_array_column('weather constraints'),
    }
    row = {'sBSummaryId': 'SBSummary_0', 'sbSummaryUID': sb_uid, 'projectUID': project_uid,
           'obsUnitSetUID': ous_uid, 'frequency': float(frequency_ghz), 'frequencyBand': _alma_band(frequency_ghz),
           'sbType': 'OBSERVER', 'numObservingMode': 1, 'observingMode': np.array(['Standard Interferometry']),
           'numberRepeats': 1, 'numScienceGoal': len(goals), 'scienceGoal': np.array(goals),
           'numWeatherConstraint': 1, 'weatherConstraint': np.array(['maxPWVC = 2.0 mm'])}
    return _create_linked_subtable(table, ms_path, 'ASDM_SBSUMMARY', description, [row])


def _write_execblock(table, ms_path, *, eb_uid, sb_uid, config_name):
    description = {
        'execBlockId': _scalar_column('string', 'ExecBlock row id'),
        'execBlockUID': _scalar_column('string', 'execution block uid'),
        'sbSummaryUID': _scalar_column('string', 'scheduling block uid'),
        'telescopeName': _scalar_column('string', 'telescope'),
        'configName': _scalar_column('string', 'array configuration'),
        'observerName': _scalar_column('string', 'observer'),
    }
    row = {'execBlockId': 'ExecBlock_0', 'execBlockUID': eb_uid, 'sbSummaryUID': sb_uid, 'telescopeName': 'ALMA',
           'configName': config_name, 'observerName': 'jdoe'}
    return _create_linked_subtable(table, ms_path, 'ASDM_EXECBLOCK', description, [row])


# --------------------------------------------------------------------------- HISTORY

def _datatype_messages(*, column_types, sources, spw_ids):
    """The two HISTORY messages the pipeline itself writes (MeasurementSet.set_data_column)."""
    per_column = dict(column_types)
    types = [data_type for data_type, _column in column_types]
    per_source_and_spw = dict(((source, spw), list(types)) for source in sources for spw in spw_ids)
    return ['data_type_per_column = %r' % (per_column,),
            'data_types_per_source_and_spw = %r' % (per_source_and_spw,)]


def _declare_data_type(casatools, ms_path, *, column_types, sources, spw_ids):
    messages = _datatype_messages(column_types=column_types, sources=sources, spw_ids=spw_ids)
    table = casatools.table()
    try:
        _open(table, os.path.join(ms_path, 'HISTORY'), writable=False)
        try:
            declared = []
            if table.nrows():
                declared = [str(m) for o, m in zip(table.getcol('ORIGIN'), table.getcol('MESSAGE'))
                            if o == _DATATYPE_ORIGIN]
        finally:
            table.close()
    finally:
        table.done()
    # The pipeline believes the latest declaration: write ours unless it already is the latest.
    if declared[-len(messages):] == messages:
        return messages
    ms_tool = casatools.ms()
    ms_tool.open(ms_path, nomodify=False)
    try:
        for message in messages:
            ms_tool.writehistory(message=message, origin=_DATATYPE_ORIGIN)
    finally:
        ms_tool.close()
        ms_tool.done()
    return messages
