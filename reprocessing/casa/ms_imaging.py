"""What the measurement sets hold for imaging: fields, pointings, windows, dishes, baselines, science goals."""

import collections
import copy
from pathlib import Path

from ..core.messages import ReprocessingError
from .casa_engine import opened_table, opened_tool
from .data_columns import has_selfcal_column
from .ms_tables import ms_metadata, read_ms_layout, same_window, virtual_spws



TARGET_INTENT_PREFIX = 'OBSERVE_TARGET'

ImagingPointing = collections.namedtuple('ImagingPointing', 'field_id ra dec frame')
ImagingSpw = collections.namedtuple('ImagingSpw', 'spw_id name nchan freqs width centre ref_freq')
MsForImaging = collections.namedtuple(
    'MsForImaging', 'path name layout fields spws min_diameter baselines_m datacolumn science_goals')


def read_ms_for_imaging(casa, ms, at=None):
    """Science fields (with their pointings), science spws, dishes and baselines of one MS (read once a run).

    at: a shadow of ms (run/staging.make_shadow: ms's own files under another path), which tclean is given: ms's
    answer, with the shadow's path.  The plan's checks read ms already; reading the 4 shadows of the grid bench's
    delivery again took 0.1-0.2 s of every --image run.
    """
    info = ms_metadata(ms, 'imaging', lambda: _read_ms_for_imaging(casa, ms))
    if at is None:
        return info
    layout = copy.copy(info.layout)
    layout.path, layout.name = Path(at), Path(at).name
    return info._replace(path=Path(at), name=Path(at).name, layout=layout)


def _read_ms_for_imaging(casa, ms):
    import numpy
    layout = read_ms_layout(casa, ms)
    with opened_tool(casa.casatools.msmetadata(), ms) as msmd:
        target_ids = set()
        for intent in msmd.intents():
            if intent.startswith(TARGET_INTENT_PREFIX):
                target_ids.update(int(i) for i in msmd.fieldsforintent(intent))
        if not target_ids:  # a targets MS whose STATE table lost its intents: all fields with data
            target_ids = {int(i) for i in msmd.fieldsforscans(msmd.scannumbers())}
        names = msmd.fieldnames()
        fields = collections.OrderedDict()
        for field_id in sorted(target_ids):
            direction = msmd.phasecenter(field_id)
            fields.setdefault(names[field_id], []).append(ImagingPointing(
                field_id, float(direction['m0']['value']), float(direction['m1']['value']), direction['refer']))
        spws = collections.OrderedDict()
        for spw_id, spw in layout.spws.items():  # the spws with data
            if spw.nchan <= 4:  # channel-averaged and WVR windows are not imaged
                continue
            freqs = [float(f) for f in msmd.chanfreqs(spw_id)]
            width = abs(float(msmd.chanwidths(spw_id)[0]))
            ref_freq = float(msmd.reffreq(spw_id)['m0']['value'])  # the primary beam's frequency (primary_beam_size)
            spws[spw_id] = ImagingSpw(spw_id, spw.name, spw.nchan, freqs, width, (min(freqs) + max(freqs)) / 2.0,
                                      ref_freq)
        present = numpy.array(msmd.baselines(), dtype=bool)
    with opened_table(casa, Path(ms) / 'ANTENNA') as table:
        positions = numpy.array(table.getcol('POSITION')).T
        diameters = numpy.array(table.getcol('DISH_DIAMETER'))
    numpy.fill_diagonal(present, False)
    first, second = numpy.nonzero(numpy.triu(present))
    if len(first) == 0:
        raise ReprocessingError('%s has no cross-correlation data to image — check the MS' % ms)
    baselines = numpy.sqrt(((positions[first] - positions[second]) ** 2).sum(axis=1))
    used = sorted(set(first.tolist()) | set(second.tolist()))
    datacolumn = 'corrected' if has_selfcal_column(casa, ms) else 'data'
    return MsForImaging(Path(ms), Path(ms).name, layout, fields, spws,
                        float(diameters[used].min()), sorted(float(b) for b in baselines), datacolumn,
                        read_science_goals(casa, ms))


def require_baselines_to_image(infos):
    """Refuse to image data of fewer than three baselines (three antennas): tclean made a 0 x 0 beam out of the one
    baseline of a real ALMA MS (pyuvdata's X5707 test MS) and exited without an error."""
    counts = {info.name: len(info.baselines_m) for info in infos}
    if counts and max(counts.values()) < 3:
        name, count = max(counts.items(), key=lambda item: item[1])
        raise ReprocessingError(
            '%s holds data on %d baseline%s%s: an image needs at least three antennas (three baselines) — image a '
            'delivery with more antennas; --check, --contsub_fast and --calibrated_final work on this one'
            % (name, count, '' if count == 1 else 's',
               '' if len(counts) == 1 else ' (the most of its %d measurement sets)' % len(counts)))


def read_science_goals(casa, ms):
    """{'representativeFrequency': Hz, 'representativeBandwidth': Hz, ...} from ASDM_SBSUMMARY, or {}."""
    path = Path(ms) / 'ASDM_SBSUMMARY'
    if not path.is_dir():
        return {}
    quanta = casa.casatools.quanta()
    goals = {}
    try:
        with opened_table(casa, path) as table:
            entries = table.getcol('scienceGoal')
    except (ReprocessingError, RuntimeError):  # no such column, or a table that cannot be read: no goals
        return {}
    for entry in [str(e) for e in entries.flatten()]:
        if '=' not in entry:
            continue
        key, value = [part.strip() for part in entry.split('=', 1)]
        if key in ('representativeFrequency', 'representativeBandwidth'):
            try:
                hertz = quanta.convert(quanta.quantity(value.replace(' ', '')), 'Hz')['value']
            except Exception:  # a value without a frequency unit: not usable
                continue
            if hertz > 0:
                goals[key] = float(hertz)
        elif key in ('representativeSource', 'representativeWindow'):
            goals[key] = value
    return goals


def virtual_spw_map(infos):
    """{virtual spw id: {ms name: ImagingSpw}} of the imaged windows: the virtual ids (virtual_spws: the first
    MS's ids, then those of windows only later MSes have), matched in each MS by spw name."""
    mapping = collections.OrderedDict()
    for virtual_id, (_defining, window) in virtual_spws([info.layout for info in infos]).items():
        matches = [(info.name, info.spws.get(same_window(info.layout, name=window.name, spw_id=window.id)))
                   for info in infos]
        matches = [(name, match) for name, match in matches if match is not None]
        if matches:  # channel-averaged and WVR windows are not imaged
            mapping[virtual_id] = collections.OrderedDict(matches)
    return mapping
