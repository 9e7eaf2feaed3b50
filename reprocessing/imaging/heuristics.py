"""The pipeline's imaging heuristics as pure functions: primary beam, beam, cell, image size, automasking."""

from ..core.units import SPEED_OF_LIGHT



# --- Pipeline-free engine: what the measurement sets hold -----------------------

ARCSEC_PER_RADIAN = 180.0 * 3600.0 / 3.141592653589793


# --- Pipeline-free engine: the pipeline's imaging heuristics (pure) -------------

def primary_beam_radius_arcsec(frequency_hz, diameter_m):
    """Radius to the first null, 1.22 lambda / D, as the pipeline's primary_beam_size."""
    return 1.22 * SPEED_OF_LIGHT / frequency_hz / diameter_m * ARCSEC_PER_RADIAN


def synthesized_beam_arcsec(frequency_hz, l80_m):
    """Briggs robust 0.5 beam from the 80th-percentile baseline: 0.574 lambda / L80 (ALMA Technical Handbook)."""
    return 0.574 * SPEED_OF_LIGHT / frequency_hz / l80_m * ARCSEC_PER_RADIAN


def baseline_percentile(infos, percentile):
    """The pipeline's representative baseline: the median over the MSes of each one's percentile."""
    import numpy
    return float(numpy.median([numpy.percentile(info.baselines_m, percentile) for info in infos]))


def heuristic_cell_arcsec(beam_arcsec, pixels_per_beam=5.0):
    """The beam's minor axis over pixels_per_beam, to two significant digits.

    pipeline/hif/heuristics/imageparams_base.py cell(): '%.2garcsec' % (minor / pixperbeam), the
    minor axis being the makePSF beam rounded to three digits (synthesized_beam(), CAS-11193).
    """
    return float('%.2g' % (beam_arcsec / pixels_per_beam))


def round_beam_arcsec(value):
    """The PSF beam axes to three significant digits, as synthesized_beam() keeps them (CAS-11193)."""
    return float('%.3g' % value)


def psf_imaging_cell_arcsec(advised_cell_arcsec, pixels_per_beam=5.0):
    """The cell of the pipeline's makePSF image: imager.advise's largest cell / (0.5 ppb), two digits.

    synthesized_beam(): cellv = advise cell / (0.5 * pixperbeam), used as '%.2g%s'.
    """
    return float('%.2g' % (advised_cell_arcsec / (0.5 * pixels_per_beam)))


def psf_imaging_pixels(pb_radius_arcsec, cell_arcsec):
    """Pixels across the pipeline's makePSF image of one pointing: 1.5 primary-beam radii (imsize(), centreonly,
    no sfpblimit), before getOptimumSize."""
    return int(1.5 * pb_radius_arcsec / cell_arcsec)


def single_field_pixels(pb_radius_arcsec, cell_arcsec, pb_level=0.2):
    """Pixels across a single field out to pb_level of the primary beam, with the pipeline's 10% margin."""
    import math
    fwhp = 1.12 / 1.22 * pb_radius_arcsec
    return int(math.floor(1.1 * fwhp * math.sqrt(-math.log(pb_level) / math.log(2.0)) / cell_arcsec + 0.5))


# mosaicoverlap.py calls primaryBeamArcsec(fwhmfactor=1.13): its taper search on a 0.01 dB grid gives
# 1.1299 lambda/D for 12 m and 1.1301 for 7 m dishes (computed with the pipeline's own functions): 1.13.
MOSAIC_OVERLAP_FWHM_FACTOR = 1.13


def mosaic_overlap_factor(offsets_arcsec, frequency_hz, diameter_m):
    """The pipeline's mosaic sensitivity gain (hif/heuristics/mosaicoverlap.py, mosaicOverlapFactorMS).

    At each pointing, the root of the summed squared responses of every pointing's Gaussian primary beam
    (FWHM 1.13 lambda / D, cut at one FWHM from its centre, standing in for the first null); the largest
    of these.  The pipeline divides the centre pointing's sensitivity by it.  offsets_arcsec: (x, y) of
    each distinct pointing on the sky (small angles).
    """
    import math
    fwhm = MOSAIC_OVERLAP_FWHM_FACTOR * SPEED_OF_LIGHT / frequency_hz / diameter_m * ARCSEC_PER_RADIAN
    sigma = fwhm / 2.3548
    best = 0.0
    for x0, y0 in offsets_arcsec:
        total = 0.0
        for x, y in offsets_arcsec:
            separation = math.hypot(x - x0, y - y0)
            if separation < fwhm:
                total += math.exp(-(separation / sigma) ** 2)  # the response squared
        best = max(best, total)
    return math.sqrt(best)


def mosaic_pixels(pb_radius_arcsec, spread_arcsec, cell_arcsec, n_pointings):
    """The pipeline's mosaic size: the pointings' spread plus a primary-beam border (wider for 2-3 pointings)."""
    border = 1.65 if n_pointings <= 3 else 1.5
    return int((border * pb_radius_arcsec + spread_arcsec) / cell_arcsec)


def intersect_ranges_by_weight(ranges, delta, threshold):
    """pipeline/infrastructure/utils/imaging.py intersect_ranges_by_weight(): the part of a grid of step
    delta (from the lowest edge) covered by at least `threshold` of the ranges; () when none."""
    import numpy
    if len(ranges) == 0:
        return ()
    if len(ranges) == 1:
        return tuple(ranges[0])
    values = numpy.array(ranges, dtype=float).flatten()
    grid = numpy.arange(values.min(), values.max() + delta, delta)
    weights = numpy.zeros(grid.shape, 'd')
    for low, high in ranges:
        weights += numpy.where((grid >= low) & (grid <= high), 1.0, 0.0)
    weights /= len(ranges)
    valid = numpy.where(weights >= threshold)[0]
    return (float(grid[valid[0]]), float(grid[valid[-1]])) if valid.shape != (0,) else ()


def lsrk_intersection(per_eb_field_ranges, channel_widths):
    """(low, high) Hz of a cube: the LSRK frequencies every execution block covers, or None.

    pipeline/hif/heuristics/imageparams_base.py freq_intersection(): per EB the weighted intersection
    of its fields' edge-to-edge ranges (threshold 1.0), then over the EBs (threshold 0.6 for the
    unflagged ranges, 1.0 for the full ones; both the same here: channels are not flag-trimmed),
    intersected again, all on a grid of the widest channel.
    per_eb_field_ranges: [[(low, high) of each field] of each EB].
    """
    delta = max(channel_widths)
    per_eb = [intersect_ranges_by_weight(ranges, delta, 1.0) for ranges in per_eb_field_ranges if ranges]
    per_eb = [r for r in per_eb if r != ()]
    if not per_eb:
        return None
    flagged = intersect_ranges_by_weight(per_eb, delta, 0.6)
    full = intersect_ranges_by_weight(per_eb, delta, 1.0)
    if flagged == () or full == ():
        return None
    final = intersect_ranges_by_weight([flagged, full], delta, 1.0)
    return final if final != () else None


def round_half_up(value):
    import math
    return math.floor(value + 0.5)


def cube_channel_grid(low_hz, high_hz, channel_width_hz, nbin=None):
    """(start, width, nchan) of a cube as tclean strings: pipeline/hif/tasks/tclean/tclean.py (prepare, specmode
    cube): skip one channel at either edge of the intersection, nchan = round((f1 - f0) / width - 2), start at
    f0 + 1.5 native channels (the centre of the first channel kept, 'tclean interprets the start frequency as
    the center of the first channel'), width = native x nbin ('%.10fGHz', '%.7fMHz').  With nbin the start
    stays at 1.5 *native* channels, as the pipeline's: the first bin is centred on the second native channel.
    """
    binned = nbin not in (None, -1)
    width = channel_width_hz * (nbin if binned else 1)
    nchan = int(round_half_up((high_hz - low_hz) / width - 2))
    start = low_hz + 1.5 * width / (nbin if binned else 1)
    return '%.10fGHz' % (start / 1e9), '%.7fMHz' % (width / 1e6), nchan


def representative_nbin(representative_bandwidth_hz, channel_width_hz, default_nbin=1):
    """The repBW cube's binning, or None when the default cube already has it.

    pipeline/hif/tasks/makeimlist/makeimlist.py (specmode repBW): a PI cube only when the representative
    bandwidth is over 4 x the default cube's channel (native x nbins), binned int(bw / native + 0.5).
    """
    if representative_bandwidth_hz <= 4.0 * default_nbin * channel_width_hz:
        return None
    return int(representative_bandwidth_hz / channel_width_hz + 0.5)


def cube_weighting(specmode):
    """(weighting, perchanweightdensity): imageparams_base.py weighting() and perchanweightdensity():
    briggs for mfs/cont, briggsbwtaper with per-channel weight density for cubes (cube, repBW)."""
    return ('briggs', False) if specmode in ('mfs', 'cont') else ('briggsbwtaper', True)


def dynamic_range_threshold(threshold_jy, dirty_dynamic_range, residual_max_jy, *, diameter_m, n_ebs, tlimit=2.0):
    """The clean threshold (Jy) after the pipeline's dynamic-range correction for science targets.

    pipeline/hif/heuristics/imageparams_alma.py dr_correction() (intent TARGET): threshold_jy is tlimit x
    the theoretical sensitivity; a dirty image whose peak / sensitivity is high is cleaned less deep
    (12 m: x1 up to a dirty dynamic range of 20, x1.5 to 50, x2 to 100, x2.5 to 150, above that
    max(2.5 x, peak / 150 x tlimit); 7 m with its own steps and limits).  Returns '%.3g' of the new value.
    """
    if diameter_m == 12.0:
        if dirty_dynamic_range > 150.0:
            new = max(2.5 * threshold_jy, residual_max_jy / 150.0 * tlimit)
        else:
            n_dr = 2.5 if dirty_dynamic_range > 100.0 else 2.0 if dirty_dynamic_range > 50.0 else \
                1.5 if dirty_dynamic_range > 20.0 else 1.0
            new = threshold_jy * n_dr
    else:
        max_edr, dirty_limit, n_dr_max = (30.0, 30.0, 2.5) if n_ebs == 1 else (55.0, 75.0, 3.5)
        if dirty_dynamic_range > dirty_limit:
            new = max(n_dr_max * threshold_jy, residual_max_jy / max_edr * tlimit)
        else:
            n_dr = 3.0 if dirty_dynamic_range > 40.0 else 2.5 if dirty_dynamic_range > 20.0 else \
                2.0 if dirty_dynamic_range > 10.0 else 1.5 if dirty_dynamic_range > 4.0 else 1.0
            new = threshold_jy * n_dr
    return float('%.3g' % new)


def bandwidth_correction_factor(physical_width_hz, effective_width_hz, spw_nchan, nchan):
    """imageparams_base.py get_bw_corr_factor(): the sensitivity factor for online-smoothed channels
    (effective / physical channel width 2.667, 1.6, 1.231, 1.104, 1.049: Hanning-like smoothing by N)."""
    ratio = effective_width_hz / physical_width_hz
    smoothing = 0
    for value, n in ((2.667, 1), (1.600, 2), (1.231, 4), (1.104, 8), (1.049, 16)):
        if ratio > 1.0 and float('%.4g' % ratio) == value:
            smoothing = n
    if smoothing == 0 or nchan <= 1:
        return 1.0
    optimistic = nchan * effective_width_hz
    approximate = (nchan + 1.12 * (spw_nchan - nchan) / spw_nchan / smoothing) * physical_width_hz
    return (optimistic / approximate) ** 0.5


def autobox_parameters(specmode, *, l75_m, diameter_m):
    """auto-multithresh values of the ALMA pipeline for science targets (by array and baseline length)."""
    cube = specmode in ('cube', 'repBW')
    if diameter_m < 10.0:  # 7 m array
        values = dict(sidelobethreshold=1.25, noisethreshold=5.0, lownoisethreshold=2.0, minbeamfrac=0.1,
                      growiterations=75, negativethreshold=0.0)
    elif l75_m < 300.0:
        values = dict(sidelobethreshold=2.0, noisethreshold=4.25, lownoisethreshold=1.5, minbeamfrac=0.3,
                      negativethreshold=15.0 if cube else 0.0, growiterations=50 if cube else 75)
    else:
        values = dict(sidelobethreshold=2.0 if l75_m < 400.0 else 2.5, noisethreshold=5.0, lownoisethreshold=1.5,
                      minbeamfrac=0.3, negativethreshold=7.0 if cube else 0.0, growiterations=50 if cube else 75)
    values.update(dogrowprune=True, minpercentchange=1.0, fastnoise=diameter_m >= 10.0 and l75_m > 400.0)
    return values


def fractional_bandwidth(low_hz, high_hz):
    return 2.0 * (high_hz - low_hz) / (high_hz + low_hz)


def mtmfs_reffreq_hz(ranges_hz):
    """The pipeline's reference frequency for mtmfs: sum(f_hi^2 - f_lo^2) / (2 sum(f_hi - f_lo))."""
    numerator = sum(high ** 2 - low ** 2 for low, high in ranges_hz)
    denominator = 2.0 * sum(high - low for low, high in ranges_hz)
    return numerator / denominator


def pointing_geometry(pointings):
    """(centre ra, centre dec, x spread arcsec, y spread arcsec) of a field's pointings (small angles)."""
    import math
    ra0, dec0 = pointings[0].ra, pointings[0].dec
    xs = [(p.ra - ra0) * math.cos(dec0) * ARCSEC_PER_RADIAN for p in pointings]
    ys = [(p.dec - dec0) * ARCSEC_PER_RADIAN for p in pointings]
    x_centre, y_centre = (max(xs) + min(xs)) / 2.0, (max(ys) + min(ys)) / 2.0
    return (ra0 + x_centre / ARCSEC_PER_RADIAN / math.cos(dec0), dec0 + y_centre / ARCSEC_PER_RADIAN,
            max(xs) - min(xs), max(ys) - min(ys))


def distinct_pointings(pointings, tolerance_arcsec=0.01):
    """One pointing per direction: execution blocks repeat the same pointings."""
    distinct = []
    for pointing in pointings:
        if all(abs(pointing.ra - d.ra) * ARCSEC_PER_RADIAN > tolerance_arcsec
               or abs(pointing.dec - d.dec) * ARCSEC_PER_RADIAN > tolerance_arcsec for d in distinct):
            distinct.append(pointing)
    return distinct


def sanitize_name(text):
    """As the pipeline's file namer: characters other than letters, digits, _ . + - become _."""
    import re
    return re.sub(r'[^A-Za-z0-9_.+-]', '_', text)
