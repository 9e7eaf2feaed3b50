"""The one definition of an image's peak and noise, used by the image table, the thumbnails and tclean checks.

The statistics use the pixels where the primary beam is above PB_STATISTICS_LEVEL when the pb image is
given (a pbcor image's edges are noise divided by a small beam response; measured on a cube: 27 mJy/beam
over the brightest whole plane against 0.066 mJy/beam inside pb > 0.5).  The peak is taken over those
pixels, and its position is returned, so that a picture marks the pixel the table's peak is.

rms is robust (1.4826 x the median absolute deviation from the median, over every plane) and, when the
clean mask is given, taken outside it, as the pipeline's image rms is (hif/heuristics/cleanbox.py,
analyse_clean_result: non-pbcor image, outside the clean mask, in the pb annulus 0.2-0.3).  Without that
exclusion the rms of a small image of a bright source measures the source's residual structure more than
the noise: measured on the test delivery (25 antennas, a 50 mJy point source, 96-pixel mfs images),
robust 0.5 -> 2 gave 0.354 -> 0.364 mJy/beam over all of pb > 0.5 but 0.315 -> 0.300 outside the mask,
while the noise far from the source dropped from 0.244 to 0.193 mJy/beam.  We keep pb > 0.5 instead of
the pipeline's annulus: our images need not reach pb 0.2 (a user's --imsize), and it is where the source is.
"""

from pathlib import Path

from ..casa.casa_engine import opened_tool

PB_STATISTICS_LEVEL = 0.5
MAD_TO_RMS = 1.4826  # for Gaussian noise, rms = 1.4826 x the median absolute deviation
# Fewer pixels than this outside the clean mask (a mask covering the image) and the rms uses all of pb >
# PB_STATISTICS_LEVEL instead, as the pipeline falls back to its full annulus (PIPE-541).
MIN_NOISE_PIXELS = 100


def _lel_name(path):
    return '"%s"' % str(path).replace('"', '\\"')


def pb_mask_expression(pb):
    """The LEL mask of the pixels the statistics use: where the primary beam is above PB_STATISTICS_LEVEL."""
    return '%s > %s' % (_lel_name(pb), PB_STATISTICS_LEVEL)


def noise_mask_expression(pb=None, clean_mask=None):
    """The LEL mask of the pixels the rms uses: pb_mask_expression's, and outside the clean mask if given."""
    parts = []
    if pb is not None and Path(str(pb)).exists():
        parts.append(pb_mask_expression(pb))
    if clean_mask is not None and Path(str(clean_mask)).exists():
        parts.append('%s < 0.5' % _lel_name(clean_mask))
    return ' && '.join(parts)


def image_statistics(casa, image, *, pb=None, clean_mask=None):
    """{'peak', 'min', 'rms', 'peak_position', 'rms_outside_mask'} of a CASA (or FITS) image, in its unit
    (e.g. Jy/beam); NaN (position None) where it holds no valid pixel.  peak_position is the pixel
    [x, y, ...] of the peak; rms_outside_mask says whether the clean mask was left out of the rms."""
    with_mask = clean_mask is not None and Path(str(clean_mask)).exists()
    with opened_tool(casa.casatools.image(), image) as tool:
        # the robust statistics (a median of every pixel) once: outside the clean mask when there is one, the
        # peak then from plain statistics (on a 200-plane cube 0.25 s instead of 0.34 s, the same numbers)
        stats = tool.statistics(robust=not with_mask, mask=noise_mask_expression(pb), verbose=False, list=False)
        if not len(stats.get('max', [])):
            return {'peak': float('nan'), 'min': float('nan'), 'rms': float('nan'), 'peak_position': None,
                    'rms_outside_mask': False}
        noise, outside = stats, False
        if with_mask:
            masked = tool.statistics(robust=True, mask=noise_mask_expression(pb, clean_mask), verbose=False,
                                     list=False)
            if len(masked.get('npts', [])) and masked['npts'][0] >= MIN_NOISE_PIXELS:
                noise, outside = masked, True
            else:
                noise = tool.statistics(robust=True, mask=noise_mask_expression(pb), verbose=False, list=False)
    return {'peak': float(stats['max'][0]), 'min': float(stats['min'][0]),
            'rms': MAD_TO_RMS * float(noise['medabsdevmed'][0]),
            'peak_position': [int(i) for i in stats['maxpos']], 'rms_outside_mask': outside}


def statistics_region_text(*, pb, outside_mask):
    """Where the rms was measured, as the pictures print it: ' (pb > 0.5, outside the clean mask)'."""
    parts = (['pb > %g' % PB_STATISTICS_LEVEL] if pb else []) + (['outside the clean mask'] if outside_mask else [])
    return ' (%s)' % ', '.join(parts) if parts else ''


def flux_text(value, unit='Jy/beam'):
    """A peak or rms as the report and the thumbnails print it: '%.3g mJy/beam' (one format, one reading)."""
    if value is None or value != value:
        return '—'
    if unit == 'Jy/beam':
        return '%.3g mJy/beam' % (value * 1e3)
    return '%.3g %s' % (value, unit)
