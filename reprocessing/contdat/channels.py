"""Frequency ranges to channels as CASA's advisechansel chooses them, per MS, field and spw (cached)."""

from .grammar import HZ_PER_UNIT
from ..casa.frequencies import to_topo_factors
from ..casa.ms_tables import ms_metadata, read_ms_layout


# -- from cont.dat ranges to each MS's channels ------------------------------------------------------

class ChannelConverter(object):
    """cont.dat frequency ranges -> TOPO channels of one MS, as synthesisutils.advisechansel chooses them.

    Asked exactly as the pipeline's contfilehandler asks (freqstep=100., LSRK; SOURCE with
    ephemtable='TRACKFIELD' for ephemeris targets), so the channels match what hif_uvcontsub
    would fit.  advisechansel's rule is worked out here from the MS's metadata where that is sure to
    give its answer (channels_without_casa: compared with it on simulated and real MSes in
    test_contdat), and advisechansel itself is asked otherwise.  Each advisechansel answer is kept
    with the MS's other metadata (ms_metadata): a spw's coverage is asked once for all the ranges of
    its block.
    """

    def __init__(self, casa):
        self.casa = casa
        self.tool = casa.casatools.synthesisutils()
        self._coverage = {}
        self._windows = {}  # (ms, field id, spw id, frame) -> what channels_without_casa needs, or None

    def channels(self, ms, field_id, spw_id, cont_range):
        """(first, last) channel of the range in this MS/field/spw, or None when it selects nothing.

        The ends go to advisechansel as the pipeline's to_ms_frame passes them (pipeline_hz).  A range whose ends are equal selects the channel holding
        that frequency (both channels at the edge between two), as there.
        """
        arguments = dict(msname=str(ms), fieldid=int(field_id), spwselection=str(spw_id),
                         freqstart=self.pipeline_hz(cont_range.lo_hz),
                         freqend=self.pipeline_hz(cont_range.hi_hz), freqstep=FREQSTEP,
                         freqframe=cont_range.frame)
        if cont_range.frame == 'SOURCE':
            arguments['ephemtable'] = 'TRACKFIELD'
        else:
            worked_out = self.channels_without_casa(ms, field_id, spw_id, arguments['freqstart'],
                                                    arguments['freqend'], cont_range.frame)
            if worked_out is not UNDECIDED:
                return worked_out
        result = self._advise(ms, arguments)
        spws = [int(spw) for spw in result.get('spw', [])]
        if spw_id not in spws:
            return None
        index = spws.index(spw_id)
        count = int(result['nchan'][index])
        first = int(result['start'][index])
        return (first, first + count - 1) if count > 0 else None

    @staticmethod
    def pipeline_hz(hz):
        """A frequency as the pipeline passes it to advisechansel: written '%.10f' in GHz (get_merged_selection)
        and read back."""
        return float('%.10f' % (hz / 1e9)) * 1e9

    def channels_without_casa(self, ms, field_id, spw_id, freqstart, freqend, frame):
        """advisechansel's answer (channels(), for a range not in SOURCE) worked out from the MS's metadata,
        or UNDECIDED.

        advisechansel reads the MS's times at every call (7-12 ms on 12000 rows; 40 calls were 0.3-0.45 s
        of a 9 s --contsub_fast at 240 channels).  Its rule (CASA's MSUtil::getSpwInFreqRange and casacore's
        MSSpwIndex::matchFrequencyRange): each end is converted to the data's frame at every distinct time of
        the field, the lowest start and the highest end kept and widened by half of freqstep; the window
        matches when an end lies strictly between its lowest and highest channel frequency (then every channel
        whose span overlaps is chosen), or when the range holds it whole.  The conversion factors come from
        the measures tool (casa/frequencies.to_topo_factors), read once per MS and field.  UNDECIDED where
        to_topo_factors cannot stand for CASA, or a comparison is within DECIDED_HZ of its boundary (floating
        point could then differ); advisechansel is asked then.
        """
        import numpy
        window = self._window(ms, field_id, spw_id, frame)
        if window is None:
            return UNDECIDED
        factors, freqs, half_widths = window
        low = freqstart * factors[0] - 0.5 * FREQSTEP
        high = freqend * factors[1] + 0.5 * FREQSTEP
        lowest, highest = float(freqs.min()), float(freqs.max())
        if min(abs(low - lowest), abs(low - highest), abs(high - lowest), abs(high - highest)) < DECIDED_HZ:
            return UNDECIDED
        if lowest < low < highest or lowest < high < highest:
            tops, bottoms = freqs + half_widths, freqs - half_widths
            if numpy.min(numpy.abs(tops - low)) < DECIDED_HZ or numpy.min(numpy.abs(bottoms - high)) < DECIDED_HZ:
                return UNDECIDED
            chosen = numpy.nonzero((tops > low) & (bottoms < high))[0]
            return (int(chosen.min()), int(chosen.max())) if len(chosen) else None
        if low < lowest and high > highest:
            return 0, len(freqs) - 1
        return None

    def coverage(self, ms, field_id, spw_id, frame, *, casa_exact=True):
        """(low, high) Hz that the spw covers in frame, over the whole observation (once per MS, field, spw
        and frame), as advisechansel's getfreqrange gives it (CASA's MSUtil::getFreqRangeInSpw: the outer
        channel edges converted at every distinct time of the field, the extremes kept).

        casa_exact=False (for messages): worked out from to_topo_factors where it can stand for CASA, within
        0.02 Hz of advisechansel's on the test MSes.  Imaging asks advisechansel itself (which reads the MS's
        times at every call, ~50 ms for 20 MB), as the pipeline does: a cube's channel count is the quotient of
        these numbers, and 0.01 Hz less turned a cube of 30 channels into 29 (tests/test_cube_split.py).
        """
        key = (str(ms), int(field_id), int(spw_id), frame, casa_exact)
        if key not in self._coverage:
            window = None if casa_exact else self._window(ms, field_id, spw_id, frame)
            if window is None:
                self._coverage[key] = self._ask_coverage(ms, field_id, spw_id, frame)
            else:
                factors, freqs, half_widths = window
                self._coverage[key] = (float(min(freqs - half_widths)) / factors[1],
                                       float(max(freqs + half_widths)) / factors[0])
        return self._coverage[key]

    def _window(self, ms, field_id, spw_id, frame):
        """(to_topo_factors, channel frequencies, half channel widths) of a window, or None where advisechansel
        must be asked; once per MS, field, spw and frame."""
        import numpy
        key = (str(ms), int(field_id), int(spw_id), frame)
        if key not in self._windows:
            factors = to_topo_factors(self.casa, ms, field_id, spw_id, frame) if frame != 'SOURCE' else None
            frames = read_ms_layout(self.casa, ms).frames if factors is not None else None
            self._windows[key] = None if factors is None else (
                factors, frames.chan_freq[spw_id], 0.5 * numpy.abs(frames.chan_width[spw_id]))
        return self._windows[key]

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


# The pipeline's freqstep (contfilehandler.to_topo); a range's ends are widened by half of it.
FREQSTEP = 100.
# channels_without_casa decides only where every comparison is farther than this from equality: its
# conversions agree with CASA's to 0.01 Hz (test_contdat), floating point to far less.
DECIDED_HZ = 1.0
UNDECIDED = object()




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
