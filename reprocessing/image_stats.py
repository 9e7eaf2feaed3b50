"""The one definition of an image's peak and noise, used by the image table, the thumbnails and tclean checks.

rms is robust: 1.4826 x the median absolute deviation from the median, over every plane of the
image, where the primary beam is above PB_STATISTICS_LEVEL when the pb image is given (a pbcor
image's edges are noise divided by a small beam response; measured on a cube: 27 mJy/beam over the
brightest whole plane against 0.066 mJy/beam inside pb > 0.5).  The peak is taken over the same
pixels, and its position is returned, so that a picture marks the pixel the table's peak is.
"""

from pathlib import Path

from .casa_engine import opened_tool

PB_STATISTICS_LEVEL = 0.5
MAD_TO_RMS = 1.4826  # for Gaussian noise, rms = 1.4826 x the median absolute deviation


def pb_mask_expression(pb):
    """The LEL mask of the pixels the statistics use: where the primary beam is above PB_STATISTICS_LEVEL."""
    return '"%s" > %s' % (str(pb).replace('"', '\\"'), PB_STATISTICS_LEVEL)


def image_statistics(casa, image, *, pb=None):
    """{'peak', 'min', 'rms', 'peak_position'} of a CASA image (its unit, e.g. Jy/beam); NaN (position None)
    where it holds no valid pixel.  peak_position is the pixel [x, y, ...] of the peak."""
    mask = ''
    if pb is not None and Path(pb).exists():
        mask = pb_mask_expression(pb)
    with opened_tool(casa.casatools.image(), image) as tool:
        stats = tool.statistics(robust=True, mask=mask, verbose=False, list=False)
    if not len(stats.get('max', [])):
        return {'peak': float('nan'), 'min': float('nan'), 'rms': float('nan'), 'peak_position': None}
    return {'peak': float(stats['max'][0]), 'min': float(stats['min'][0]),
            'rms': MAD_TO_RMS * float(stats['medabsdevmed'][0]),
            'peak_position': [int(i) for i in stats['maxpos']]}


def flux_text(value, unit='Jy/beam'):
    """A peak or rms as the report and the thumbnails print it: '%.3g mJy/beam' (one format, one reading)."""
    if value is None or value != value:
        return '—'
    if unit == 'Jy/beam':
        return '%.3g mJy/beam' % (value * 1e3)
    return '%.3g %s' % (value, unit)
