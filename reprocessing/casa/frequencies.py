"""Channel frequencies of an MS's spectral windows in another frame, from the MS's metadata and CASA's measures
tool: the spectra's LSRK axis, and the factors with which contdat/channels works out advisechansel's answers.

A change of frame multiplies every frequency of a window by the same Doppler factor, so a window's
channels are its CHAN_FREQ times one factor that the measures tool computes for the field's direction,
the observatory and the time, from the metadata the MS's layout already holds (read_ms_layout).
Measured on the bench delivery (4 MSes x 4 spws x 240 channels, 2026-12-07): the ms tool's cvelfreqs
took 0.22-0.31 s for the 16 windows of a --contsub_fast run (it opens the MS and all its subtables, and
its measures start afresh at each MS's epoch), this 14-17 ms; the frequencies within 0.01 Hz of
cvelfreqs' at the same time.  Fields with an ephemeris move against the stars during the observation:
their frequencies come from cvelfreqs.

The channels a fit uses follow advisechansel's rule exactly (contdat/channels.py decides only where a
hundredth of a Hz cannot change the answer).  Frequency ranges that a cube's channel count is computed
from stay CASA's own numbers (advisechansel's coverage for imaging, cvelfreqs for a combination): their
quotient by a channel width is often a whole number, which a hundredth of a Hz can round the other way.
"""

import collections
import datetime
from pathlib import Path

from .casa_engine import opened_table, opened_tool
from .ms_tables import ROWS_PER_CHUNK, dd_ids_by_spw, ms_metadata, read_ms_layout


def lsrk_channel_frequencies(casa, ms, pairs, *, seconds=None):
    """For each (field id, spw id) of pairs: the channel frequencies (Hz) in LSRK, in channel order, at the
    time seconds (MJD seconds; default: the observation's start, OBSERVATION's TIME_RANGE)."""
    if not pairs:
        return []
    layout = read_ms_layout(casa, ms)
    frames = layout.frames
    seconds = layout.start if seconds is None else seconds
    if seconds <= 0 or any(frames.ephemeris[field_id] for field_id, _spw_id in pairs):
        return _cvelfreqs(casa, ms, pairs, seconds)
    measures, quanta = _measures_tool(casa), casa.casatools.quanta()
    measures.doframe(measures.epoch('UTC', quanta.quantity(seconds, 's')))
    measures.doframe(_observatory(casa, ms, measures, frames.telescope))
    answers = []
    for field_id, spw_id in pairs:
        _point_at(measures, quanta, frames, field_id)
        channels = frames.chan_freq[spw_id]
        reference = float(channels[0]) or 1e11
        converted = measures.measure(measures.frequency(frames.spw_frames[spw_id],
                                                        quanta.quantity(reference, 'Hz')), 'LSRK')
        answers.append([float(value) for value in channels * (converted['m0']['value'] / reference)])
    return answers


# One measures tool per process, never done(): done() lets its tables go, and the next tool's first
# conversion at an epoch an hour or more from the last one read them again (measured: 60 ms each time,
# against 0.2 ms for a conversion with the tool kept; ~50 ms for the first one of the process).
_MEASURES = {}


def _measures_tool(casa):
    key = id(casa.casatools)
    if key not in _MEASURES:
        _MEASURES[key] = casa.casatools.measures()
    return _MEASURES[key]


def to_topo_factors(casa, ms, field_id, spw_id, frame):
    """(smallest, largest) of f_TOPO / f_frame over the distinct times of the rows of field_id and spw_id, as
    CASA's advisechansel takes them (MSUtil::getSpwInFreqRange: each range end is converted at every distinct
    time of the field, the lowest start and the highest end kept); (1.0, 1.0) for a TOPO window and a TOPO range.

    None where this cannot be CASA's answer for sure, and advisechansel must be asked: a field with an
    ephemeris or a polynomial direction, windows in different frames, OBSERVATION rows of different
    telescopes or one the measures do not know, a time shared by two fields, or a field whose times differ
    between windows (CASA's choice of rows then depends on its selection).
    """
    layout = read_ms_layout(casa, ms)
    frames = layout.frames
    if frames is None or frames.ephemeris[field_id] or frames.polynomial[field_id]:
        return None
    data_frames = {frames.spw_frames[spw] for spw in layout.spws}
    if data_frames != {frames.spw_frames[spw_id]} or not frames.telescope:
        return None
    if frame == frames.spw_frames[spw_id]:
        return 1.0, 1.0
    times = distinct_times(casa, ms)
    if times is None or (field_id, spw_id) not in times.by_pair:
        return None
    mine = times.by_pair[field_id, spw_id]
    if any(len(other) != len(mine) or (other != mine).any()
           for (other_field, _spw), other in times.by_pair.items() if other_field == field_id):
        return None
    key = ('factors', field_id, frames.spw_frames[spw_id], frame)
    if key not in times.factors:
        times.factors[key] = _factors(casa, frames, field_id, frames.spw_frames[spw_id], frame, mine, times.reference)
    return times.factors[key]


def _factors(casa, frames, field_id, data_frame, frame, seconds, reference):
    measures, quanta = _measures_tool(casa), casa.casatools.quanta()
    observatory = measures.observatory(frames.telescope)
    if not observatory:
        return None
    measures.doframe(observatory)
    _point_at(measures, quanta, frames, field_id)
    reference_hz = 1e11
    values = []
    for moment in seconds:
        measures.doframe(measures.epoch(reference, quanta.quantity(float(moment), 's')))
        converted = measures.measure(measures.frequency(frame, quanta.quantity(reference_hz, 'Hz')), data_frame)
        values.append(converted['m0']['value'] / reference_hz)
    return (min(values), max(values)) if values else None


DistinctTimes = collections.namedtuple('DistinctTimes', 'by_pair reference factors')


def distinct_times(casa, ms):
    """DistinctTimes of an MS: by_pair {(field id, spw id): sorted distinct TIME values (numpy)}, the TIME
    column's reference (UTC), and a dict of the factors computed from them; None when a time is shared
    by two fields.  Read once per MS (three columns, a chunk of rows at a time)."""
    return ms_metadata(ms, 'distinct times', lambda: _read_distinct_times(casa, ms))


def _read_distinct_times(casa, ms):
    import numpy
    spw_of_dd = dict((dd_id, spw_id) for spw_id, dd_ids in dd_ids_by_spw(casa, ms).items() for dd_id in dd_ids)
    triples = set()  # (field id, data description id, time): a few per integration, whatever the baselines
    with opened_table(casa, ms) as table:
        reference = table.getcolkeyword('TIME', 'MEASINFO').get('Ref', 'UTC')
        for start in range(0, table.nrows(), ROWS_PER_CHUNK):
            chunk = numpy.rec.fromarrays([table.getcol(name, startrow=start, nrow=ROWS_PER_CHUNK)
                                          for name in ('FIELD_ID', 'DATA_DESC_ID', 'TIME')])
            triples.update((int(field), int(dd), float(moment)) for field, dd, moment in numpy.unique(chunk))
    field_of_time, times = {}, collections.defaultdict(set)
    for field_id, dd_id, moment in triples:
        if field_of_time.setdefault(moment, field_id) != field_id:
            return None
        times[field_id, spw_of_dd[dd_id]].add(moment)
    return DistinctTimes(dict((key, numpy.array(sorted(values))) for key, values in times.items()), str(reference), {})


def _point_at(measures, quanta, frames, field_id):
    """The measures frame's direction: the field's PHASE_DIR, in its own frame."""
    longitude, latitude = frames.directions[field_id]
    measures.doframe(measures.direction(frames.direction_frames[field_id], quanta.quantity(longitude, 'rad'),
                                        quanta.quantity(latitude, 'rad')))


def _observatory(casa, ms, measures, telescope):
    """Where the telescope is, as CASA's MS tools take it: the observatory of that name, else the first
    antenna's position."""
    known = measures.observatory(telescope) if telescope else {}
    if known:
        return known
    with opened_table(casa, Path(ms) / 'ANTENNA') as table:
        x, y, z = (float(value) for value in table.getcell('POSITION', 0))
    return measures.position('ITRF', '%.6fm' % x, '%.6fm' % y, '%.6fm' % z)


def casa_time_text(seconds):
    """MJD seconds as CASA's tools read a time ('2026/12/07/01:02:03.000000')."""
    return (datetime.datetime(1858, 11, 17) + datetime.timedelta(seconds=seconds)).strftime('%Y/%m/%d/%H:%M:%S.%f')


def _cvelfreqs(casa, ms, pairs, seconds):
    """The ms tool's conversion, for fields with an ephemeris (and an MS that gives no time)."""
    obstime = casa_time_text(seconds) if seconds > 0 else ''
    with opened_tool(casa.casatools.ms(), ms) as tool:
        return [[float(v) for v in tool.cvelfreqs(spwids=[int(spw_id)], fieldids=[int(field_id)], obstime=obstime,
                                                  mode='channel', outframe='LSRK')] for field_id, spw_id in pairs]
