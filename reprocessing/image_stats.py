"""The one definition of an image's peak and noise, used by the image table, the thumbnails and tclean checks.

rms is robust: 1.4826 x the median absolute deviation from the median, over every plane of the
image, where the primary beam is above PB_STATISTICS_LEVEL when the pb image is given (a pbcor
image's edges are noise divided by a small beam response; measured on a cube: 27 mJy/beam over the
brightest whole plane against 0.066 mJy/beam inside pb > 0.5).
"""

from pathlib import Path

from .casa_engine import opened_tool

PB_STATISTICS_LEVEL = 0.5
MAD_TO_RMS = 1.4826  # for Gaussian noise, rms = 1.4826 x the median absolute deviation


def image_statistics(casa, image, *, pb=None):
    """{'peak', 'min', 'rms'} of a CASA image (its unit, e.g. Jy/beam); NaN where it holds no valid pixel."""
    mask = ''
    if pb is not None and Path(pb).exists():
        mask = '"%s" > %s' % (str(pb).replace('"', '\\"'), PB_STATISTICS_LEVEL)
    with opened_tool(casa.casatools.image(), image) as tool:
        stats = tool.statistics(robust=True, mask=mask, verbose=False, list=False)
    if not len(stats.get('max', [])):
        return {'peak': float('nan'), 'min': float('nan'), 'rms': float('nan')}
    return {'peak': float(stats['max'][0]), 'min': float(stats['min'][0]),
            'rms': MAD_TO_RMS * float(stats['medabsdevmed'][0])}
