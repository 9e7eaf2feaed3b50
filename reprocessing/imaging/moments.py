"""Moment maps of a cube (--moments 0,1,2,8) from a signal mask made of the cube's own noise, with CASA's
image tools plane by plane (never the whole cube in Python memory).

The signal mask (written beside the cube as <cube>.signalmask, kept with --all-products):
  1. the flat-noise cube (tclean's .image, before the primary-beam correction) smoothed to twice its beam
     (ia.convolve2d) and over 3 channels (Hanning, 1/4 1/2 1/4): faint, extended emission stands out;
  2. each channel's noise of the smoothed cube: 1.4826 x the median absolute deviation of the plane;
  3. per channel, "core" pixels are at >= 4 sigma in this channel and one next to it, "wing" pixels at >= 2 sigma;
     the mask is the wing regions that hold a core pixel (of this or a neighbouring channel), grown by half a
     beam FWHM (PHANGS-ALMA's two-threshold mask, Leroy et al. 2021, in one plane at a time).
Moments 0, 1, 2 are those of the primary-beam corrected cube inside the mask (immoments); moment 8, the peak of
each spectrum, uses every channel (no mask), so it shows emission the mask missed.  The error of moment 0 is
sqrt(sum over the masked channels of (rms_k / pb_k)^2) x the channel width (<cube>.mom0.error).
"""

from ..casa.casa_engine import casa_task, opened_tool
from ..core.fileops import remove_tree
from ..core.units import SPEED_OF_LIGHT_KMS

MOMENT_CHOICES = (0, 1, 2, 8)
CORE_SIGMA = 4.0
WING_SIGMA = 2.0
SMOOTHING_BEAMS = 2.0
MAD_TO_SIGMA = 1.4826


def parse_moments(value):
    """'0,1,2,8' or [0, 8] -> sorted moments among 0, 1, 2, 8."""
    items = str(value).replace(' ', '').strip('[]').split(',') if not isinstance(value, (list, tuple)) else value
    chosen = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in MOMENT_CHOICES:
            raise ValueError('moments "%s": %s is not one of %s' % (value, text, ','.join(str(m) for m in MOMENT_CHOICES)))
        chosen.add(int(text))
    if not chosen:
        raise ValueError('moments "%s": give one or more of %s' % (value, ','.join(str(m) for m in MOMENT_CHOICES)))
    return sorted(chosen)


def grow(seed, allowed, steps=None):
    """seed grown over 4-connected neighbours inside allowed (until it stops, or `steps` times) — pure numpy."""
    region = seed & allowed if allowed is not None else seed.copy()
    count = 0
    while steps is None or count < steps:
        grown = region.copy()
        grown[1:, :] |= region[:-1, :]
        grown[:-1, :] |= region[1:, :]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        if allowed is not None:
            grown &= allowed
        count += 1
        if (grown == region).all():
            break
        region = grown
    return region


def plane_mask(snr_before, snr, snr_after, *, dilation_pixels):
    """The signal mask of one channel from the smoothed S/N of it and its neighbours (None at the cube's ends)."""
    import numpy
    neighbours = [s for s in (snr_before, snr_after) if s is not None]
    core = (snr >= CORE_SIGMA) & numpy.any([s >= CORE_SIGMA for s in neighbours], axis=0) if neighbours \
        else snr >= CORE_SIGMA
    for other in neighbours:  # a core next door counts where this channel is above the wing level
        core |= (other >= CORE_SIGMA) & (snr >= CORE_SIGMA)
    mask = grow(core, snr >= WING_SIGMA)
    return grow(mask, None, steps=int(round(dilation_pixels))) if dilation_pixels >= 1 else mask


def _beam_arcsec(casa, image, channel):
    quanta = casa.casatools.quanta()
    beam = image.restoringbeam(channel=channel, polarization=0) if 'beams' in image.restoringbeam() \
        else image.restoringbeam()
    return (quanta.convert(beam['major'], 'arcsec')['value'], quanta.convert(beam['minor'], 'arcsec')['value'],
            quanta.convert(beam['positionangle'], 'deg')['value'])


def make_moments(casa, *, flat, pbcor, pb, moments, report):
    """The moment maps (CASA images <pbcor>.mom0 ... and <pbcor>.mom0.error) of a cube; returns their paths.

    flat: tclean's .image (flat noise), pbcor: its primary-beam corrected cube, pb: the .pb cube.
    """
    import math
    import os
    import numpy
    image_tool = casa.casatools.image
    smoothed, mask_path = pbcor + '.smoothed', pbcor + '.signalmask'
    for path in (smoothed, mask_path):
        if os.path.exists(path):
            remove_tree(path)
    with opened_tool(image_tool(), flat) as image:
        shape = [int(n) for n in image.shape()]
        major, minor, angle = _beam_arcsec(casa, image, shape[3] // 2)
        cell = abs(image.coordsys().increment(type='direction')['numeric'][0]) * 180 / math.pi * 3600
        kernel = SMOOTHING_BEAMS * major  # the beam convolved with this is ~2.2 beams: faint emission stands out
        image.convolve2d(outfile=smoothed, axes=[0, 1], type='gauss', major='%garcsec' % kernel,
                         minor='%garcsec' % kernel, pa='0deg', overwrite=True).done()
    with opened_tool(image_tool(), smoothed) as image:
        with opened_tool(image_tool(), flat) as template:
            mask_image = template.subimage(outfile=mask_path, overwrite=True)
        masked_channels, total, raw, smooth = 0, 0, {}, {}
        try:
            def raw_plane(channel):  # the spatially smoothed plane (a window of 5 planes is kept)
                channel = min(max(channel, 0), shape[3] - 1)
                if channel not in raw:
                    plane = image.getchunk(blc=[0, 0, 0, channel], trc=[shape[0] - 1, shape[1] - 1, 0, channel],
                                           dropdeg=True)
                    good = image.getchunk(blc=[0, 0, 0, channel], trc=[shape[0] - 1, shape[1] - 1, 0, channel],
                                          dropdeg=True, getmask=True)  # beyond the pb limit: masked, not data
                    plane = numpy.asarray(plane, dtype=float).reshape(shape[0], shape[1])
                    raw[channel] = numpy.where(numpy.asarray(good).reshape(shape[0], shape[1]), plane, numpy.nan)
                return raw[channel]

            def snr(channel):  # Hanning over 3 channels, over its own noise (1.4826 x MAD, finite pixels)
                if channel < 0 or channel >= shape[3]:
                    return None
                if channel not in smooth:
                    plane = 0.25 * raw_plane(channel - 1) + 0.5 * raw_plane(channel) + 0.25 * raw_plane(channel + 1)
                    finite = plane[numpy.isfinite(plane)]
                    sigma = MAD_TO_SIGMA * float(numpy.median(numpy.abs(finite - numpy.median(finite)))) \
                        if finite.size else 0.0
                    smooth[channel] = numpy.nan_to_num(plane / sigma) if sigma > 0 else numpy.zeros(plane.shape)
                return smooth[channel]
            before, current = None, snr(0)
            for channel in range(shape[3]):
                after = snr(channel + 1)
                plane = plane_mask(before, current, after, dilation_pixels=0.5 * major / cell)
                mask_image.putchunk(plane.astype(float).reshape(shape[0], shape[1], 1, 1), blc=[0, 0, 0, channel])
                masked_channels += int(plane.any())
                total += int(plane.sum())
                before, current = current, after
                for cache in (raw, smooth):  # keep the window only: never the whole cube
                    for old in [k for k in cache if k < channel - 2]:
                        del cache[old]
        finally:
            mask_image.close()
            mask_image.done()
    if os.path.exists(smoothed):
        remove_tree(smoothed)
    made = []
    masked = [m for m in moments if m != 8]
    lel_mask = '"%s" > 0.5' % mask_path.replace('"', '\\"')
    for moment in moments:
        out = '%s.mom%d' % (pbcor, moment)
        casa_task(casa, 'immoments', about=os.path.basename(pbcor), imagename=pbcor, moments=[moment], axis='spectral',
                  mask=lel_mask if moment in masked else '', outfile=out)
        made.append(out)
    if 0 in moments:
        made.append(_moment0_error(casa, pbcor=pbcor, pb=pb, mask_path=mask_path, shape=shape, flat=flat))
    report('moments %s from a signal mask of %d pixels in %d of %d channels (>= %g sigma cores grown into >= %g sigma '
           'wings, smoothed cube)' % (','.join(str(m) for m in moments), total, masked_channels, shape[3], CORE_SIGMA,
                                      WING_SIGMA))
    return made


def _moment0_error(casa, *, pbcor, pb, mask_path, shape, flat):
    """sqrt(sum over masked channels of (rms_k / pb_k)^2) x |channel width in km/s|, plane by plane."""
    import numpy
    image_tool = casa.casatools.image
    with opened_tool(image_tool(), flat) as image:
        stats = image.statistics(axes=[0, 1], robust=True, verbose=False, list=False)
        rms = [MAD_TO_SIGMA * float(v) for v in stats['medabsdevmed']]
        coordinates = image.coordsys()
        width_hz = abs(coordinates.increment(type='spectral')['numeric'][0])
        restfreq = coordinates.restfrequency()['value'][0]
        coordinates.done()
    width_kms = width_hz / restfreq * SPEED_OF_LIGHT_KMS
    variance = numpy.zeros((shape[0], shape[1]))
    with opened_tool(image_tool(), mask_path) as masks, opened_tool(image_tool(), pb) as beams:
        for channel in range(shape[3]):
            corner = dict(blc=[0, 0, 0, channel], trc=[shape[0] - 1, shape[1] - 1, 0, channel], dropdeg=True)
            inside = numpy.asarray(masks.getchunk(**corner), dtype=float).reshape(shape[0], shape[1]) > 0.5
            response = numpy.asarray(beams.getchunk(**corner), dtype=float).reshape(shape[0], shape[1])
            with numpy.errstate(divide='ignore', invalid='ignore'):
                variance += numpy.where(inside & (response > 0), (rms[channel] / response) ** 2, 0.0)
    out = pbcor + '.mom0.error'
    with opened_tool(image_tool(), pbcor + '.mom0') as moment0:
        error = moment0.subimage(outfile=out, overwrite=True)
    try:
        error.putchunk((numpy.sqrt(variance) * width_kms).reshape(error.shape()))
    finally:
        error.close()
        error.done()
    return out
