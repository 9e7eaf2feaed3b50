"""Channel frequencies of an MS's spectral windows in LSRK: the one place that converts them for display
and for comparing windows (the spectra's axis, a combination's overlapping windows).

A change of frame multiplies every frequency of a window by the same Doppler factor, so a window's
channels are its CHAN_FREQ times one factor that the measures tool computes for the field's direction,
the observatory and the time, from the metadata the MS's layout already holds (read_ms_layout).
Measured on the bench delivery (4 MSes x 4 spws x 240 channels, 2026-12-07): the ms tool's cvelfreqs
took 0.22-0.31 s for the 16 windows of a --contsub_fast run (it opens the MS and all its subtables, and
its measures start afresh at each MS's epoch), this 14-17 ms; the frequencies within 0.01 Hz of
cvelfreqs' at the same time.  Fields with an ephemeris move against the stars during the observation:
their frequencies come from cvelfreqs.

Not for choosing the channels that a fit or the pipeline uses: those go through advisechansel
(contdat/channels.py), as the pipeline's contfilehandler does.
"""

import datetime
from pathlib import Path

from .casa_engine import opened_table, opened_tool
from .ms_tables import read_ms_layout


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
        longitude, latitude = frames.directions[field_id]
        measures.doframe(measures.direction(frames.direction_frame, quanta.quantity(longitude, 'rad'),
                                            quanta.quantity(latitude, 'rad')))
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
