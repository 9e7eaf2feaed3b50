"""Whether auto-multithresh can find any mask in a dirty cube, read from its PSF and residual before tclean tries.

When automasking finds nothing (tclean stops with "zero mask"), the cube is cleaned again in the primary-beam
mask (tclean_run).  The automasking pass that finds nothing costs as much as the rest of the tool's own work: on
bench/bench_grid.py's cube (20 channels of 144 x 144) 2.7 s of a 26.5 s run, its per-channel robust statistics
and smoothing (CASA: "17 of 20 channels had all regions removed by pruning").  Its first pass (the only one that
matters: with no mask yet nothing grows) is per channel:

    threshold = max(sidelobethreshold x the PSF's largest sidelobe x the channel's peak, noisethreshold x rms)

inside the primary beam above pbmask, then every region of fewer pixels than minbeamfrac x the beam's area is
pruned; when negativethreshold > 0, every pixel below -max(sidelobe term, negativethreshold x rms) is masked too,
without pruning (CASA's documentation of auto-multithresh: "the negative mask is not pruned or expanded").  No
region outlives the pruning when every 8-connected region of pixels beyond the threshold is smaller than the
pruning size (CASA's regions, 4- or 8-connected, are never larger), and no negative pixel may lie beyond its
threshold: that is what is checked here, with each number taken on the side that finds MORE pixels than CASA can
(so "nothing" is only said when CASA certainly finds nothing); with fastnoise (a MAD over pixels not documented)
no forecast is made.  (Counting the pixels beyond the threshold in the whole plane instead of per region said
"may find" for 4 of 6 chunks of noise of 128 channels: noise peaks are a beam wide, and one plane of 128 held a
few of them; tclean's pass then took 7 s a chunk for nothing.)  The margins:
  * the sidelobe level: the smallest over the first, middle and last planes, and 0.99 of it (CASA logs its own:
    0.383259 on the bench cube, 0.382963 here);
  * the peak: the largest pixel inside 1.01 x pbmask (CASA's is at least that);
  * the rms: 0.9 x the smallest of the MAD (about the median) before and after Chauvenet clipping and the clipped
    standard deviation (CASA's robust rms is one of these);
  * the pruning size: 0.95 x minbeamfrac x the smallest plane's beam in pixels (CASA: 10.79, here 10.76);
  * the primary-beam edge: pixels down to 0.99 x pbmask.
Measured on the bench cube: at most 10 pixels beyond those thresholds in a channel against a pruning size of
10.2 (CASA's own thresholds leave 9); the first channel with a region that large ends the reading.
"""

import math
from pathlib import Path

from ..casa.casa_engine import opened_tool
from .image_stats import MAD_TO_RMS

SIDELOBE_MARGIN = 0.99
RMS_MARGIN = 0.9
PRUNE_MARGIN = 0.95
PB_EDGE_MARGIN = 0.99


def automask_finds_nothing(casa, arguments, *, psf, residual, pb, first_channel=None):
    """True when auto-multithresh with these tclean arguments certainly masks nothing in any channel of the
    residual (its first pass, from no mask); False when it may find something or a number cannot be read.
    first_channel: the plane read first (the residual's peak: where a region is most likely, and the reading ends)."""
    import numpy
    if arguments.get('usemask') != 'auto-multithresh' or arguments.get('fastnoise') or \
            not all(Path(p).is_dir() for p in (psf, residual, pb)):
        return False
    sidelobe_factor = float(arguments.get('sidelobethreshold', 3.0))
    noise_factor = float(arguments.get('noisethreshold', 5.0))
    negative_factor = float(arguments.get('negativethreshold', 0.0))
    pb_level = PB_EDGE_MARGIN * float(arguments.get('pbmask', 0.0))
    with opened_tool(casa.casatools.image(), psf) as image:
        shape = [int(n) for n in image.shape()]
        planes = shape[3] if len(shape) > 3 else 1
        beam_pixels = _smallest_beam_pixels(casa, image, planes)
    sidelobe = min(psf_sidelobe_level(casa, psf, channel=c) for c in sorted({0, planes // 2, planes - 1}))
    if not (beam_pixels and sidelobe > 0):
        return False
    prune = PRUNE_MARGIN * float(arguments.get('minbeamfrac', 0.3)) * beam_pixels
    with opened_tool(casa.casatools.image(), residual) as image, opened_tool(casa.casatools.image(), pb) as beam:
        order = list(range(planes))
        if first_channel is not None and 0 <= first_channel < planes:
            order.insert(0, order.pop(first_channel))
        for channel in order:
            plane, response = _residual_plane(image, shape, channel), numpy.nan_to_num(_residual_plane(beam, shape, channel))
            finite = numpy.isfinite(plane)
            inner = plane[finite & (response >= pb_level / PB_EDGE_MARGIN ** 2)]
            inside = finite & (response >= pb_level)
            values = plane[inside]
            if not values.size:
                continue
            rms = RMS_MARGIN * _lowest_rms(values)
            peak = float(inner.max()) if inner.size else 0.0
            sidelobe_term = SIDELOBE_MARGIN * sidelobe_factor * sidelobe * peak
            beyond = inside & (numpy.where(finite, plane, 0.0) > max(sidelobe_term, noise_factor * rms))
            if int(beyond.sum()) >= prune and _largest_region(beyond) >= prune:
                return False
            if negative_factor > 0 and (values < -max(sidelobe_term, negative_factor * rms)).any():
                return False  # the negative mask is not pruned: one pixel is a mask
    return True


def _largest_region(beyond):
    """Pixels in the largest 8-connected region of a boolean plane: a region of CASA's pruning, 4- or 8-connected,
    is never larger (scipy comes with casatasks)."""
    import numpy
    from scipy import ndimage
    labels, count = ndimage.label(beyond, structure=numpy.ones((3, 3), dtype=int))
    return int(numpy.bincount(labels.ravel())[1:].max()) if count else 0


def _residual_plane(image, shape, channel):
    import numpy
    blc = [0, 0] + [0] * (len(shape) - 2)
    trc = [shape[0] - 1, shape[1] - 1] + [n - 1 for n in shape[2:]]
    if len(shape) > 3:
        blc[3] = trc[3] = channel
    chunk = image.getchunk(blc=blc, trc=trc, dropdeg=True)
    return numpy.asarray(chunk, dtype=float).reshape(shape[0], shape[1])


def _smallest_beam_pixels(casa, image, planes):
    """The smallest plane's beam area in pixels (0.0 when the image has no beam)."""
    quanta = casa.casatools.quanta()
    coordinates = image.coordsys()
    try:
        increment = coordinates.increment(type='direction')['numeric']
    finally:
        coordinates.done()
    pixel_arcsec2 = abs(increment[0] * increment[1]) * (180.0 * 3600.0 / math.pi) ** 2
    beams = image.restoringbeam()
    if 'beams' in beams:
        beams = [beams['beams']['*%d' % c]['*0'] for c in range(planes)]
    else:
        beams = [beams]
    areas = []
    for beam in beams:
        if not beam or 'major' not in beam:
            return 0.0
        major, minor = (quanta.convert(beam[k], 'arcsec')['value'] for k in ('major', 'minor'))
        areas.append(math.pi / (4.0 * math.log(2.0)) * major * minor / pixel_arcsec2)
    return min(areas) if areas else 0.0


def _lowest_rms(values):
    """The smallest of the plausible robust rms of a plane's pixels: the MAD about the median before and after
    Chauvenet's clipping (iterated: drop what lies beyond the z where fewer than half a pixel is expected) and
    the clipped standard deviation."""
    import numpy
    candidates = [MAD_TO_RMS * float(numpy.median(numpy.abs(values - numpy.median(values))))]
    kept = values
    for _round in range(100):
        if kept.size < 3:
            break
        z = math.sqrt(2.0) * _inverse_erfc(0.5 / kept.size)
        mean, deviation = float(kept.mean()), float(kept.std())
        if not deviation > 0:
            break
        clipped = kept[numpy.abs(kept - mean) <= z * deviation]
        if clipped.size == kept.size:
            break
        kept = clipped
    candidates.append(float(kept.std()))
    candidates.append(MAD_TO_RMS * float(numpy.median(numpy.abs(kept - numpy.median(kept)))))
    return min(candidates)


def _inverse_erfc(y):
    """x with erfc(x) = y, 0 < y < 1 (bisection; math has erfc but no inverse)."""
    low, high = 0.0, 40.0
    for _step in range(60):
        middle = 0.5 * (low + high)
        if math.erfc(middle) > y:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def psf_sidelobe_level(casa, psf, channel=None):
    """The largest PSF sidelobe over the peak in one plane (default the middle one): the largest |value| outside
    the main lobe (the positive pixels connected to the peak).  CASA's automasking logs the same number
    ("SidelobeLevel"; 0.5019 for the demo's cube, 0.5008 here).  0.0 when the PSF cannot be read."""
    import numpy
    if not Path(psf).is_dir():
        return 0.0
    with opened_tool(casa.casatools.image(), psf) as image:
        shape = [int(n) for n in image.shape()]
        middle = [n // 2 for n in shape]
        if channel is not None and len(shape) > 3:
            middle[3] = channel
        plane = image.getchunk(blc=[0, 0] + middle[2:], trc=[shape[0] - 1, shape[1] - 1] + middle[2:], dropdeg=True)
    plane = numpy.nan_to_num(numpy.asarray(plane, dtype=float).reshape(shape[0], shape[1]))
    peak = float(plane.max())
    if not peak > 0:
        return 0.0
    lobe = numpy.zeros(plane.shape, dtype=bool)
    lobe[numpy.unravel_index(int(numpy.argmax(plane)), plane.shape)] = True
    positive = plane > 0
    while True:  # grow the main lobe over positive neighbours until it stops
        grown = lobe.copy()
        grown[1:, :] |= lobe[:-1, :]
        grown[:-1, :] |= lobe[1:, :]
        grown[:, 1:] |= lobe[:, :-1]
        grown[:, :-1] |= lobe[:, 1:]
        grown &= positive
        if (grown == lobe).all():
            break
        lobe = grown
    outside = numpy.abs(plane[~lobe])
    return float(outside.max()) / peak if outside.size else 0.0
