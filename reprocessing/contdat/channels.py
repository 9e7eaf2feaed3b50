"""Frequency ranges to channels: CASA's advisechansel, per MS, field and spw (cached)."""

from .grammar import HZ_PER_UNIT
from ..casa.ms_tables import ms_metadata


# -- from cont.dat ranges to each MS's channels ------------------------------------------------------

class ChannelConverter(object):
    """cont.dat frequency ranges -> TOPO channels of one MS, with synthesisutils.advisechansel.

    Called exactly as the pipeline's contfilehandler does (freqstep=100., LSRK; SOURCE with
    ephemtable='TRACKFIELD' for ephemeris targets), so the channels match what hif_uvcontsub
    would fit; no Doppler arithmetic of our own.  Each answer is kept with the MS's other metadata
    (ms_metadata): a spw's coverage is asked once for all the ranges of its block.
    """

    def __init__(self, casa):
        self.tool = casa.casatools.synthesisutils()
        self._coverage = {}

    def channels(self, ms, field_id, spw_id, cont_range):
        """(first, last) channel of the range in this MS/field/spw, or None when it selects nothing.

        The ends go to advisechansel as the pipeline's to_ms_frame passes them: written '%.10f' in GHz
        (get_merged_selection) and read back.  A range whose ends are equal selects the channel holding
        that frequency (both channels at the edge between two), as there.
        """
        arguments = dict(msname=str(ms), fieldid=int(field_id), spwselection=str(spw_id),
                         freqstart=_as_the_pipeline_writes(cont_range.lo_hz),
                         freqend=_as_the_pipeline_writes(cont_range.hi_hz), freqstep=100.,
                         freqframe=cont_range.frame)
        if cont_range.frame == 'SOURCE':
            arguments['ephemtable'] = 'TRACKFIELD'
        result = self._advise(ms, arguments)
        spws = [int(spw) for spw in result.get('spw', [])]
        if spw_id not in spws:
            return None
        index = spws.index(spw_id)
        count = int(result['nchan'][index])
        first = int(result['start'][index])
        return (first, first + count - 1) if count > 0 else None

    def coverage(self, ms, field_id, spw_id, frame):
        """(low, high) Hz that the spw covers in frame, over the whole observation (asked once per MS,
        field, spw and frame: advisechansel reads the MS's times at every call, ~50 ms for 20 MB)."""
        key = (str(ms), int(field_id), int(spw_id), frame)
        if key not in self._coverage:
            self._coverage[key] = self._ask_coverage(ms, field_id, spw_id, frame)
        return self._coverage[key]

    def _ask_coverage(self, ms, field_id, spw_id, frame):
        arguments = dict(msname=str(ms), fieldid=int(field_id), spwselection=str(spw_id),
                         freqframe=frame, getfreqrange=True)
        if frame == 'SOURCE':
            arguments['ephemtable'] = 'TRACKFIELD'
        result = self._advise(ms, arguments)
        return _hz(result['freqstart']), _hz(result['freqend'])

    def _advise(self, ms, arguments):
        def read():
            try:
                return self.tool.advisechansel(**arguments)
            finally:
                self.tool.done()
        return ms_metadata(ms, ('advisechansel',) + tuple(sorted(arguments.items())), read)


def _as_the_pipeline_writes(hz):
    return float('%.10f' % (hz / 1e9)) * 1e9


def _hz(quantity):
    value = quantity['value'] if isinstance(quantity, dict) else quantity
    try:
        value = list(value)[0]
    except TypeError:
        pass
    scale = HZ_PER_UNIT.get(quantity.get('unit', 'Hz'), 1.0) if isinstance(quantity, dict) else 1.0
    return float(value) * scale


def merge_channel_ranges(ranges):
    """Sorted union of (first, last) channel ranges; touching ranges join."""
    merged = []
    for first, last in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def channel_string(ranges):
    return ';'.join('%d~%d' % pair for pair in ranges)
