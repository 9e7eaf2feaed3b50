"""Beams users can compare (--beam common|round|<angle>): one beam for every plane of a cube, applied with CASA's
image tools (imsmooth / ia.convolve2d), never the whole cube in Python memory."""

import re

BEAM_CHOICES = ('common', 'round')
_ANGLE = r'^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(arcsec|mas|arcmin|deg)$'
_ARCSEC_PER = {'arcsec': 1.0, 'mas': 1e-3, 'arcmin': 60.0, 'deg': 3600.0}


def parse_beam(value):
    """'common', 'round' or a round target resolution like '0.5arcsec' -> the same text (validated)."""
    text = str(value).strip().replace(' ', '')
    if text.lower() in BEAM_CHOICES:
        return text.lower()
    match = re.match(_ANGLE, text)
    if not match or not float(match.group(1)) > 0:
        raise ValueError('beam "%s" must be common, round or a resolution like 0.5arcsec' % value)
    return text


def target_arcsec(beam_option):
    """The resolution a '0.5arcsec' option asks for, in arcsec (None for common/round)."""
    match = re.match(_ANGLE, beam_option or '')
    return float(match.group(1)) * _ARCSEC_PER[match.group(2)] if match else None
