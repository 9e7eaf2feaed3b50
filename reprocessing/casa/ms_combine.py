"""What one delivery's MSes offer to a combination (--combine): fields and positions, science spws with their
LSRK coverage, antennas and dish sizes, dates.  Read-only metadata reads."""

import collections
from pathlib import Path

from .casa_engine import opened_table, opened_tool
from .ms_imaging import read_ms_for_imaging

CombineSpw = collections.namedtuple('CombineSpw', 'spw_id name nchan width_hz lsrk_lo lsrk_hi')
CombineMs = collections.namedtuple('CombineMs', 'path imaging fields spws dish_m antennas date max_baseline_m')


def lsrk_edges(casa, ms, spw_id, field_id, width_hz):
    """(low, high) LSRK edge frequencies (Hz) of a spw of ms for a field (CASA's cvelfreqs at the field's first
    integration, channel centres widened by half a channel).  Not casa/frequencies' Doppler factor: the joint
    cube's channel count is the quotient of these numbers by a native width, and a hundredth of a Hz there
    turned a cube of 30 channels into 29 elsewhere (tests/test_cube_split.py)."""
    with opened_tool(casa.casatools.ms(), ms) as tool:
        freqs = tool.cvelfreqs(spwids=[int(spw_id)], fieldids=[int(field_id)], mode='channel', outframe='LSRK')
    return float(min(freqs)) - width_hz / 2.0, float(max(freqs)) + width_hz / 2.0


def read_ms_for_combination(casa, ms):
    """CombineMs of one targets MS."""
    import datetime
    info = read_ms_for_imaging(casa, ms)
    first_field = next(iter(info.fields.values()))[0].field_id
    fields = collections.OrderedDict((name, (pointings[0].ra, pointings[0].dec))
                                     for name, pointings in info.fields.items())
    spws = [CombineSpw(spw.spw_id, spw.name, spw.nchan, spw.width,
                       *lsrk_edges(casa, ms, spw.spw_id, first_field, spw.width)) for spw in info.spws.values()]
    with opened_table(casa, Path(ms) / 'ANTENNA') as table:
        names = list(table.getcol('NAME'))
    with opened_table(casa, Path(ms) / 'OBSERVATION') as table:
        start = float(table.getcol('TIME_RANGE')[0][0])
    date = (datetime.datetime(1858, 11, 17) + datetime.timedelta(seconds=start)).strftime('%Y-%m-%d')
    return CombineMs(Path(ms), info, fields, spws, info.min_diameter, names, date, max(info.baselines_m))


UV_POINTS = 20000  # baselines x integrations read per delivery for its uv-coverage plot


def sample_uvw(casa, ms, field_ids, *, budget=UV_POINTS):
    """(u, v) metres of about budget rows of ms's cross-correlations of field_ids, and the number of rows of the MS.
    Every p-th row, p the smallest prime at least rows / budget: one strided read each of UVW, FIELD_ID, ANTENNA1/2
    (about 40 bytes a row, a small share of what DATA holds); a prime step walks through every baseline instead of
    falling on the same few (45 baselines sampled every 9th row gave 5 of them)."""
    import numpy
    with opened_table(casa, ms) as table:
        rows = table.nrows()
        step = _prime_at_least(max(1, rows // max(1, budget)))
        uvw = numpy.asarray(table.getcol('UVW', 0, -1, step), dtype=float)
        fields = numpy.asarray(table.getcol('FIELD_ID', 0, -1, step))
        first = numpy.asarray(table.getcol('ANTENNA1', 0, -1, step))
        second = numpy.asarray(table.getcol('ANTENNA2', 0, -1, step))
    chosen = numpy.isin(fields, list(field_ids)) & (first != second)
    return uvw[0][chosen], uvw[1][chosen], rows


def _prime_at_least(n):
    """The smallest prime >= n (1 for n <= 1; pure)."""
    if n <= 2:
        return max(1, n)
    while any(n % k == 0 for k in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n
