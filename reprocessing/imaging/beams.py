"""Beams users can compare (--beam common|round|<angle>): one beam for every plane of a cube, applied with CASA's
image tools (imsmooth / ia.convolve2d), never the whole cube in Python memory."""

import re

from ..casa.casa_engine import casa_task, opened_tool
from ..core.fileops import move_tree, remove_tree
from ..core.messages import ReprocessingError, UsageError
from ..core.units import SPEED_OF_LIGHT
from .heuristics import ARCSEC_PER_RADIAN

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


def plane_beams(casa, image_path):
    """[(major, minor, position angle) arcsec, arcsec, deg] of every plane of a cube (one entry for a single beam)."""
    quanta = casa.casatools.quanta()
    with opened_tool(casa.casatools.image(), image_path) as image:
        info = image.restoringbeam()
    beams = [b['*0'] for _k, b in sorted(info['beams'].items(), key=lambda kv: int(kv[0][1:]))] \
        if 'beams' in info else [info]
    return [(quanta.convert(b['major'], 'arcsec')['value'], quanta.convert(b['minor'], 'arcsec')['value'],
             quanta.convert(b['positionangle'], 'deg')['value']) for b in beams]


# A convolving kernel narrower than a pixel along one axis is not applied as asked (measured, CASA 6.7 imsmooth and
# ia.convolve2d, demo cube, 0.3" cells, beam 2.04 x 1.64": a round 2.04" target came out 2.03 x 1.83" while the
# header said 2.04 round, and the flux in 2 beams fell 9 %); 1.5 pixels along both axes give 2.072 x 2.068".
KERNEL_PIXELS = 1.5


def smallest_reachable(beams, cell_arcsec):
    """The smallest round beam every plane can be convolved to: its largest major axis, widened so that each
    plane's kernel is KERNEL_PIXELS pixels wide along the beam's major axis too."""
    import math
    return math.hypot(max(b[0] for b in beams), KERNEL_PIXELS * cell_arcsec)


def round_beam_for(beams, cell_arcsec):
    """--beam round: the smallest circle holding every plane's beam (the largest major axis), as wide as needed for
    an accurate convolution (smallest_reachable)."""
    return smallest_reachable(beams, cell_arcsec)


def check_target(beam_option, beams, *, cell_arcsec, what):
    """A target resolution finer than the data (or too close to it to convolve accurately) is refused (one line)."""
    target = target_arcsec(beam_option)
    reachable = smallest_reachable(beams, cell_arcsec)
    if target is not None and target < reachable:
        raise ReprocessingError('--beam %s is finer than %s\'s beam can be convolved to (largest major axis %.3g '
                                'arcsec, %.3g pixels) — choose at least %.3garcsec, or --beam round'
                                % (beam_option, what, max(b[0] for b in beams), KERNEL_PIXELS, reachable * 1.0005))
    return target


def convolve_cube(casa, image_path, beam_option, *, report, beams=None):
    """Convolve a cube in place (imsmooth into a new image, then swapped in) to one beam for every plane: the common
    beam (ia.commonbeam: the smallest ellipse holding every plane's), the round beam (round_beam_for) or a target
    resolution.  Returns (major, minor, pa) of the final beam."""
    import os
    beams = beams or plane_beams(casa, image_path)
    name = os.path.basename(str(image_path))
    if beam_option == 'common':
        with opened_tool(casa.casatools.image(), image_path) as image:
            common = image.commonbeam()
        quanta = casa.casatools.quanta()
        final = (quanta.convert(common['major'], 'arcsec')['value'] * 1.001,
                 quanta.convert(common['minor'], 'arcsec')['value'] * 1.001, quanta.convert(common['pa'], 'deg')['value'])
    else:
        import math
        with opened_tool(casa.casatools.image(), image_path) as image:
            coordinates = image.coordsys()
            cell = abs(coordinates.increment(type='direction')['numeric'][0]) * 180 / math.pi * 3600
            coordinates.done()
        size = round_beam_for(beams, cell) if beam_option == 'round' else \
            check_target(beam_option, beams, cell_arcsec=cell, what=name)
        final = (size, size, 0.0)
    out = str(image_path) + '.convolved'
    if os.path.exists(out):
        remove_tree(out)
    casa_task(casa, 'imsmooth', about=name, imagename=str(image_path), kernel='gauss', targetres=True,
              major='%.6farcsec' % final[0], minor='%.6farcsec' % final[1], pa='%.4fdeg' % final[2], outfile=out)
    remove_tree(image_path)
    move_tree(out, image_path)
    return final


# --- --beam <angle> finer than the data: refused at plan time, from metadata alone ---------------------------
# The smallest beam tclean can give a cube, as a factor of lambda / B at the spw's highest frequency and the
# longest baseline with data, by robust (linear in between).  Measured with bench/bench_beam_estimate.py (CASA 6.7,
# PSF-only cubes, briggsbwtaper, perchanweightdensity) on 12 m arrays of 12, 25 and 40 antennas (C-1 pads, 143-161 m
# baselines, 217 and 231 GHz) and a 10-antenna 7 m array: the largest major axis of a cube's planes was at least
# 0.959 lambda/B at robust -2..0 (40 antennas), 0.986 at 0.5, 1.028 at 1, 1.041 at 2 (25 antennas); 7 m: 1.089+.
# The factors are those / 1.2: a 20 % margin.  The compact configuration is the worst case: a numpy model of
# uniformly weighted PSFs of casadata's Cycle 10 configurations (1 h at dec -24 deg, 230 GHz) gave 0.95 lambda/B for
# C-1 (tclean above: 0.959) and 1.14-1.28 for C-3 to C-10, whose longest baselines are sparse.  A target between
# this floor and the real beam is refused after tclean (check_target).
BEAM_FLOOR_FACTORS = ((-2.0, 0.80), (0.0, 0.80), (0.5, 0.82), (1.0, 0.86), (2.0, 0.87))


def diffraction_arcsec(frequency_hz, baseline_m):
    """lambda / B in arcsec."""
    return SPEED_OF_LIGHT / frequency_hz / baseline_m * ARCSEC_PER_RADIAN


def beam_floor_factor(robust):
    """BEAM_FLOOR_FACTORS at robust (linear between the measured points, the ends beyond them)."""
    points = sorted(BEAM_FLOOR_FACTORS)
    if robust <= points[0][0]:
        return points[0][1]
    for (low, low_factor), (high, high_factor) in zip(points, points[1:]):
        if robust <= high:
            return low_factor + (high_factor - low_factor) * (robust - low) / (high - low)
    return points[-1][1]


def estimated_beam_floor(infos, *, highest_hz, robust):
    """arcsec below which no plane's major axis can be: BEAM_FLOOR_FACTORS x lambda / B at highest_hz, B the longest
    baseline with data in any of the MSes (infos: MsForImaging)."""
    longest = max(max(info.baselines_m) for info in infos)
    return beam_floor_factor(0.5 if robust is None else robust) * diffraction_arcsec(highest_hz, longest)


def check_target_before_tclean(beam_option, jobs, *, targets, spw_map, robust, uvrange):
    """--beam <angle> finer than any cube's estimated_beam_floor: refused in one line while planning (nothing made).
    Not checked with --uvrange (leaving out short baselines makes the beam smaller than all baselines' estimate);
    the check after tclean covers what is not refused here."""
    target = target_arcsec(beam_option)
    if target is None or uvrange:
        return
    for job in jobs:
        if not job.spectral or job.spw_ids[0] not in spw_map:
            continue
        highest = max(max(s.freqs) + s.width / 2.0 for s in spw_map[job.spw_ids[0]].values())
        floor = estimated_beam_floor(targets, highest_hz=highest, robust=robust)
        if target < floor:
            longest = max(max(info.baselines_m) for info in targets)
            raise UsageError('--beam %s is finer than the data: the spw %d cube of %s cannot have a beam under about '
                             '%.3g arcsec (%.4g GHz, longest baseline %.0f m, robust %g) — choose a larger '
                             'resolution, or --beam round for the smallest round beam the cube allows'
                             % (beam_option, job.spw_ids[0], job.field, floor, highest / 1e9, longest,
                                0.5 if robust is None else robust))
