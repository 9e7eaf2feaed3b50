"""A cube's spectral grid as the user asks for it: --start, --width, --nchan, --restfreq, --outframe, --veltype.

Pure parsing and checking (no CASA): the values per spw in the --nbins style ('25:-20km/s,27:230.5GHz', '*:...'
or one value for every spw), then, for one spw, the grid tclean gets, checked against the frequencies every
execution block covers in the output frame.  A grid that leaves the spw, a width finer than a channel, or a
start and width of different kinds (a velocity start with a frequency width) is refused with one line.
"""

import collections
import re

from ..core.units import SPEED_OF_LIGHT_KMS
from .heuristics import cube_channel_grid

OUTFRAMES = ('LSRK', 'BARY', 'TOPO', 'SOURCE')
VELTYPES = ('radio', 'optical')
_SIGNED_NUMBER = r'[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?'
_FREQUENCY_UNITS = {'hz': 1.0, 'khz': 1e3, 'mhz': 1e6, 'ghz': 1e9, 'thz': 1e12}
_VELOCITY_UNITS = {'m/s': 1e-3, 'km/s': 1.0}
# A width this close to the native channel counts as one channel (users round 1.3496 km/s to 1.35 km/s or 1.349).
WIDTH_TOLERANCE = 1e-3
# A grid edge this far (in channels) beyond the common coverage still counts as inside (frame conversions).
EDGE_TOLERANCE_CHANNELS = 0.01

SpectralValue = collections.namedtuple('SpectralValue', 'kind value text')  # kind: velocity (km/s) / frequency (Hz) / channels


def parse_spectral_value(text, *, kinds, option):
    """'-20km/s' -> SpectralValue('velocity', -20.0, '-20km/s'); '230.5GHz' -> ('frequency', 2.305e11, ...);
    '2' -> ('channels', 2, ...) where kinds allows it."""
    text = str(text).strip().replace(' ', '')
    match = re.match(r'^(%s)([A-Za-z/]*)$' % _SIGNED_NUMBER, text)
    if not match:
        raise ValueError('%s "%s" is not a number with a unit — e.g. %s' % (option, text, _examples(kinds)))
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit in _FREQUENCY_UNITS and 'frequency' in kinds:
        return SpectralValue('frequency', number * _FREQUENCY_UNITS[unit], text)
    if unit in _VELOCITY_UNITS and 'velocity' in kinds:
        return SpectralValue('velocity', number * _VELOCITY_UNITS[unit], text)
    if unit == '' and 'channels' in kinds:
        if number != int(number):
            raise ValueError('%s "%s": a number of channels must be a whole number' % (option, text))
        return SpectralValue('channels', int(number), text)
    raise ValueError('%s "%s": the unit must be %s — e.g. %s' % (
        option, text, ' or '.join(_unit_names(kinds)), _examples(kinds)))


def _unit_names(kinds):
    names = []
    if 'velocity' in kinds:
        names.append('a velocity (km/s, m/s)')
    if 'frequency' in kinds:
        names.append('a frequency (GHz, MHz, kHz, Hz)')
    if 'channels' in kinds:
        names.append('a number of channels')
    return names


def _examples(kinds):
    return {('velocity', 'frequency'): '-20km/s or 230.5GHz', ('velocity', 'frequency', 'channels'): '0.5km/s, 1.2MHz or 2',
            ('frequency',): '230.538GHz'}.get(tuple(kinds), '-20km/s')


def _per_spw(value, option, parse_one):
    """'25:A,27:B', '*:A' or 'A' (every spw) -> OrderedDict {25: parsed, '*': parsed}."""
    text = str(value).strip()
    if not text:
        raise ValueError('%s is empty — give a value, or SPW:VALUE pairs separated by commas' % option)
    items = [item.strip() for item in text.split(',')]
    chosen = collections.OrderedDict()
    for item in items:
        spw, separator, rest = item.partition(':')
        if separator and (spw.strip() == '*' or spw.strip().isdigit()):
            key = '*' if spw.strip() == '*' else int(spw)
            single = rest
        elif separator:
            raise ValueError('%s "%s": "%s" is not SPW:VALUE — e.g. %s' % (option, text, item, '25:-20km/s,27:10km/s'))
        elif len(items) == 1:
            key, single = '*', item
        else:
            raise ValueError('%s "%s": with several values each needs its spw, SPW:VALUE — e.g. 25:-20km/s,27:10km/s'
                             % (option, text))
        if key in chosen:
            raise ValueError('%s "%s" gives spw %s twice — give each spw once' % (option, text, key))
        chosen[key] = parse_one(single.strip())
    return chosen


def _canonical(chosen, show):
    return ','.join('%s:%s' % (key, show(value)) for key, value in chosen.items())


def parse_start(value):
    """--start: the first channel's centre, a velocity or a frequency, per spw ('25:-20km/s,*:230.5GHz')."""
    chosen = _per_spw(value, '--start', lambda t: parse_spectral_value(t, kinds=('velocity', 'frequency'),
                                                                       option='--start'))
    return _canonical(chosen, lambda v: v.text)


def parse_width(value):
    """--width: the channel width, a velocity, a frequency or a number of native channels; positive."""
    def one(text):
        width = parse_spectral_value(text, kinds=('velocity', 'frequency', 'channels'), option='--width')
        if not width.value > 0:
            raise ValueError('--width "%s" must be positive (channels go up in velocity from --start for a '
                             'velocity width, up in frequency for a frequency width)' % text)
        return width
    return _canonical(_per_spw(value, '--width', one), lambda v: v.text)


def parse_nchan(value):
    def one(text):
        if not re.match(r'^[0-9]+$', text) or int(text) < 1:
            raise ValueError('--nchan "%s" must be a whole number of channels, at least 1' % text)
        return int(text)
    return _canonical(_per_spw(value, '--nchan', one), str)


def parse_restfreq(value):
    def one(text):
        frequency = parse_spectral_value(text, kinds=('frequency',), option='--restfreq')
        if not frequency.value > 0:
            raise ValueError('--restfreq "%s" must be positive' % text)
        return frequency
    return _canonical(_per_spw(value, '--restfreq', one), lambda v: v.text)


def parse_outframe(value):
    def one(text):
        frame = text.upper()
        if frame not in OUTFRAMES:
            raise ValueError('--outframe "%s" — choose from %s' % (text, ', '.join(OUTFRAMES)))
        return frame
    return _canonical(_per_spw(value, '--outframe', one), str)


def parse_veltype(value):
    def one(text):
        kind = text.lower()
        if kind not in VELTYPES:
            raise ValueError('--veltype "%s" — choose from %s' % (text, ', '.join(VELTYPES)))
        return kind
    return _canonical(_per_spw(value, '--veltype', one), str)


GRID_NAMES = ('start', 'width', 'nchan', 'restfreq', 'outframe', 'veltype')
GRID_OPTIONS = (('start', parse_start), ('width', parse_width), ('nchan', parse_nchan), ('restfreq', parse_restfreq),
                ('outframe', parse_outframe), ('veltype', parse_veltype))


def value_for_spw(canonical, spw_id):
    """The text a canonical per-spw value (parse_*) gives spw_id, or None."""
    if not canonical:
        return None
    pairs = collections.OrderedDict(item.split(':', 1) for item in canonical.split(','))
    return pairs.get(str(spw_id), pairs.get('*'))


def spws_named(canonical):
    """The spw ids a canonical value names explicitly (not '*')."""
    if not canonical:
        return []
    return [int(item.split(':', 1)[0]) for item in canonical.split(',') if not item.startswith('*:')]


# --- One spw's grid ---------------------------------------------------------------------------------------------

def velocity_to_frequency(velocity_kms, restfreq_hz, veltype='radio'):
    if veltype == 'optical':
        return restfreq_hz / (1.0 + velocity_kms / SPEED_OF_LIGHT_KMS)
    return restfreq_hz * (1.0 - velocity_kms / SPEED_OF_LIGHT_KMS)


def frequency_to_velocity(frequency_hz, restfreq_hz, veltype='radio'):
    if veltype == 'optical':
        return (restfreq_hz / frequency_hz - 1.0) * SPEED_OF_LIGHT_KMS
    return (1.0 - frequency_hz / restfreq_hz) * SPEED_OF_LIGHT_KMS


CubeGrid = collections.namedtuple('CubeGrid', 'start width nchan restfreq outframe veltype first_hz last_hz '
                                              'channel_hz description')


def _show(kind, value):
    if kind == 'velocity':
        return '%.6gkm/s' % value
    return '%.10fGHz' % (value / 1e9) if abs(value) >= 1e8 else '%.7fMHz' % (value / 1e6)


def cube_grid(*, spw_id, low_hz, high_hz, native_hz, restfreq_hz, start=None, width=None, nchan=None, nbin=None,
              outframe='LSRK', veltype='radio', other_spws=None):
    """The tclean grid of one spw's cube (a CubeGrid), or ValueError with one line saying what to change.

    low_hz, high_hz: the edge-to-edge frequencies every execution block covers in the output frame (lsrk_intersection);
    native_hz: the widest native channel there; start / width: SpectralValue or None; nchan: int or None;
    nbin: --nbins for the spw (refused beside a width).  other_spws: {spw id: (low, high)} to say where a grid that
    left this spw lies.  Without start, width and nchan this is the pipeline's grid (heuristics.cube_channel_grid).
    With a velocity start or width the channels are equally spaced in that velocity (veltype); tclean is given
    start and width in the same unit (a width in channels becomes that many native channels of the start's kind).
    """
    if width is not None and nbin not in (None, 1):
        raise ValueError('spw %d: --width and --nbins both set the channel width — give one of them' % spw_id)
    step_channels = 1 if nbin in (None, -1) else nbin
    kind = start.kind if start is not None else width.kind if width is not None and width.kind != 'channels' \
        else 'frequency'
    if start is not None and width is not None and width.kind != 'channels' and width.kind != start.kind:
        raise ValueError('spw %d: --start %s is a %s but --width %s is a %s — give both as velocities or both as '
                         'frequencies (or the width in channels)' % (spw_id, start.text, start.kind, width.text,
                                                                     width.kind))
    native_kms = native_hz / restfreq_hz * SPEED_OF_LIGHT_KMS
    if width is None:
        step = native_hz * step_channels if kind == 'frequency' else native_kms * step_channels
    elif width.kind == 'channels':
        step = native_hz * width.value if kind == 'frequency' else native_kms * width.value
    else:
        step = width.value
    # the channel width in frequency (for a velocity grid: at the rest frequency; radio velocities are linear)
    step_hz = step if kind == 'frequency' else step / SPEED_OF_LIGHT_KMS * restfreq_hz
    if step_hz < native_hz * (1.0 - WIDTH_TOLERANCE):
        raise ValueError('spw %d: --width %s is finer than the spw\'s channels (%s = %.4g MHz) — choose at least '
                         'one channel' % (spw_id, width.text, _show('velocity', native_kms)
                                          if kind == 'velocity' else '%.6gMHz' % (native_hz / 1e6), native_hz / 1e6))

    def frequency_of(value):  # a channel coordinate (velocity or frequency) -> Hz
        return velocity_to_frequency(value, restfreq_hz, veltype) if kind == 'velocity' else value

    def coordinate_of(frequency_hz):
        return frequency_to_velocity(frequency_hz, restfreq_hz, veltype) if kind == 'velocity' else frequency_hz
    # In a frequency grid the channels go up in frequency; in a velocity grid up in velocity, down in frequency.
    # The far edge: where the channels run out of the common coverage.
    far_edge = high_hz if kind == 'frequency' else low_hz
    if start is None:
        # the pipeline's first channel: one native channel skipped, then the centre of the first (binned) channel
        if kind == 'frequency':
            first = low_hz + native_hz + step / 2.0 if width is not None else low_hz + 1.5 * native_hz
        else:
            first = coordinate_of(high_hz - native_hz) + step / 2.0
    else:
        first = start.value
    tolerance = EDGE_TOLERANCE_CHANNELS * native_hz
    span_hz = high_hz - low_hz
    if start is None and width is None and nchan is None and kind == 'frequency':  # exactly the pipeline's grid
        start_text, width_text, nchan = cube_channel_grid(low_hz, high_hz, native_hz, nbin)
        first_hz = float(start_text[:-len('GHz')]) * 1e9
        return CubeGrid(start_text, width_text, nchan, '%.3fHz' % restfreq_hz, outframe, veltype, first_hz,
                        first_hz + (nchan - 1) * step_hz, step_hz, '%d channels of %s from %s (%s, the pipeline\'s grid)'
                        % (nchan, width_text, start_text, outframe))
    if nchan is None:
        if start is None and width is None:
            nchan = int(_round_half_up(span_hz / step_hz - 2))
        else:
            lower = first - step / 2.0  # the first channel's edge on the near side
            if start is None:  # leave one native channel at the far end too, as the pipeline
                far_edge += -native_hz if kind == 'frequency' else native_hz
            room = abs(coordinate_of(far_edge) - lower) if _inside(frequency_of(lower), low_hz, high_hz, tolerance) \
                else 0.0
            nchan = int(room / step + 1e-6)
    edges = [first - step / 2.0, first + (nchan - 0.5) * step]
    edges_hz = sorted(frequency_of(e) for e in edges)
    if nchan < 1 or not (_inside(edges_hz[0], low_hz, high_hz, tolerance)
                         and _inside(edges_hz[1], low_hz, high_hz, tolerance)):
        raise ValueError(_outside_message(spw_id, start, width, nchan, edges_hz, low_hz, high_hz, kind, restfreq_hz,
                                          veltype, other_spws, outframe))
    first_hz = frequency_of(first)
    last_hz = frequency_of(first + (nchan - 1) * step)
    start_text, width_text = _show(kind, first), _show(kind, step)
    description = '%d channels of %s from %s (%s, %s velocity, rest frequency %.6f GHz)' % (
        nchan, width_text, start_text, outframe, veltype, restfreq_hz / 1e9)
    return CubeGrid(start_text, width_text, nchan, '%.3fHz' % restfreq_hz, outframe, veltype, first_hz, last_hz,
                    step_hz, description)


def _round_half_up(value):
    import math
    return math.floor(value + 0.5)


def _inside(frequency_hz, low_hz, high_hz, tolerance):
    return low_hz - tolerance <= frequency_hz <= high_hz + tolerance


def _outside_message(spw_id, start, width, nchan, edges_hz, low_hz, high_hz, kind, restfreq_hz, veltype, other_spws,
                     outframe):
    asked = ', '.join(t for t in ('--start %s' % start.text if start else '', '--width %s' % width.text if width else '',
                                  '--nchan %d' % nchan if nchan else '') if t) or 'the grid'
    if kind == 'velocity':
        velocities = sorted(frequency_to_velocity(f, restfreq_hz, veltype) for f in (low_hz, high_hz))
        covered = '%.4g to %.4g km/s (%s, rest frequency %.6f GHz)' % (velocities[0], velocities[1], outframe,
                                                                       restfreq_hz / 1e9)
    else:
        covered = '%.6f to %.6f GHz (%s)' % (low_hz / 1e9, high_hz / 1e9, outframe)
    where = ''
    for other, (low, high) in sorted((other_spws or {}).items()):
        if other != spw_id and (low <= edges_hz[0] <= high or low <= edges_hz[1] <= high):
            where = '; it lies in spw %d: a cube is made of one spw, so ask for it there (%d:...)' % (other, other)
            break
    if nchan is not None and nchan < 1:
        return 'spw %d: %s leaves no channel inside the frequencies every execution block covers, %s%s — choose a ' \
               'start inside that range' % (spw_id, asked, covered, where)
    return 'spw %d: %s reaches %.6f–%.6f GHz, outside the frequencies every execution block covers, %s%s — choose a ' \
           'grid inside that range' % (spw_id, asked, edges_hz[0] / 1e9, edges_hz[1] / 1e9, covered, where)


# --- The rest frequency -------------------------------------------------------------------------------------------

def rest_frequency(*, spw_id, field, asked=None, source_table=None, low_hz, high_hz):
    """(Hz, where it comes from): --restfreq, else the SOURCE table's REST_FREQUENCY of the field and spw (the
    PI's set-up; with its TRANSITION), else the centre of the cube's frequencies (what this tool did before).
    source_table: {(field name, spw id): [(Hz, transition), ...]} (read_source_rest_frequencies)."""
    if asked is not None:
        return asked.value, '--restfreq %s' % asked.text
    lines = (source_table or {}).get((field, spw_id)) or []
    inside = [(f, t) for f, t in lines if low_hz <= f <= high_hz]
    if inside or lines:
        frequency, transition = (inside or lines)[0]
        return frequency, 'the SOURCE table of the measurement set (REST_FREQUENCY%s)' % (
            ', transition %s' % transition if transition else '')
    return (low_hz + high_hz) / 2.0, 'the centre of the cube (the SOURCE table gives no rest frequency for spw %d)' \
        % spw_id


def read_source_rest_frequencies(casa, ms):
    """{(source name, spw id): [(REST_FREQUENCY Hz, TRANSITION), ...]} of an MS's SOURCE table ({} without those
    columns).  ALMA writes one row per source and spw; the frequencies are those the PI set up (lines of interest)."""
    from pathlib import Path
    table = casa.casatools.table()
    found = collections.OrderedDict()
    try:
        table.open(str(Path(ms) / 'SOURCE'))
    except RuntimeError:
        return found
    try:
        columns = table.colnames()
        if 'REST_FREQUENCY' not in columns:
            return found
        for row in range(table.nrows()):
            if not table.iscelldefined('REST_FREQUENCY', row):
                continue
            frequencies = [float(f) for f in table.getcell('REST_FREQUENCY', row)]
            transitions = []
            if 'TRANSITION' in columns and table.iscelldefined('TRANSITION', row):
                transitions = [str(t) for t in table.getcell('TRANSITION', row)]
            key = (str(table.getcell('NAME', row)), int(table.getcell('SPECTRAL_WINDOW_ID', row)))
            for i, frequency in enumerate(frequencies):
                if frequency > 0 and all(frequency != f for f, _t in found.get(key, [])):
                    found.setdefault(key, []).append((frequency, transitions[i] if i < len(transitions) else ''))
    finally:
        table.close()
    return found


# tclean's spectral parameters in a job's 'spectral' (the rest is for the plan's note and the sensitivity)
TCLEAN_SPECTRAL_KEYS = ('nchan', 'start', 'width', 'restfreq', 'outframe', 'veltype')


def cube_spectral(*, spw_id, field, low_hz, high_hz, native_hz, nbin, start=None, width=None, nchan=None,
                  restfreq=None, outframe=None, veltype=None, source_table=None, other_spws=None, frame='LSRK'):
    """(the job's 'spectral' dict, a note for the plan) of one spw's cube.

    start ... veltype: the canonical per-spw texts of the request (parse_*), or None; frame: the frame low_hz and
    high_hz are in (the output frame).  Without any of them: the pipeline's grid and, as before, the rest frequency
    at the centre of the cube unless the SOURCE table gives one.  ValueError (one line) for a grid that cannot be.
    """
    def one(canonical, kinds, option):
        text = value_for_spw(canonical, spw_id)
        return None if text is None else parse_spectral_value(text, kinds=kinds, option=option)
    start_value = one(start, ('velocity', 'frequency'), '--start')
    width_value = one(width, ('velocity', 'frequency', 'channels'), '--width')
    restfreq_value = one(restfreq, ('frequency',), '--restfreq')
    nchan_text = value_for_spw(nchan, spw_id)
    veltype_text = value_for_spw(veltype, spw_id) or 'radio'
    restfreq_hz, origin = rest_frequency(spw_id=spw_id, field=field, asked=restfreq_value, source_table=source_table,
                                         low_hz=low_hz, high_hz=high_hz)
    grid = cube_grid(spw_id=spw_id, low_hz=low_hz, high_hz=high_hz, native_hz=native_hz, restfreq_hz=restfreq_hz,
                     start=start_value, width=width_value, nchan=int(nchan_text) if nchan_text else None, nbin=nbin,
                     outframe=frame, veltype=veltype_text, other_spws=other_spws)
    spectral = {'nchan': grid.nchan, 'start': grid.start, 'width': grid.width, 'restfreq': [grid.restfreq],
                'outframe': frame, 'veltype': veltype_text, 'width_hz': grid.channel_hz, 'native_hz': native_hz}
    note = 'spw %d cube of %s: %s; rest frequency from %s' % (spw_id, field, grid.description, origin)
    return spectral, note
