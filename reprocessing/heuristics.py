"""The pipeline's imaging heuristics as pure functions: primary beam, beam, cell, image size, automasking."""



# --- Pipeline-free engine: what the measurement sets hold -----------------------

SPEED_OF_LIGHT = 299792458.0
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
    """A fifth of the beam, to two significant digits, as the pipeline's cell heuristic."""
    return float('%.2g' % (beam_arcsec / pixels_per_beam))


def single_field_pixels(pb_radius_arcsec, cell_arcsec, pb_level=0.2):
    """Pixels across a single field out to pb_level of the primary beam, with the pipeline's 10% margin."""
    import math
    fwhp = 1.12 / 1.22 * pb_radius_arcsec
    return int(math.floor(1.1 * fwhp * math.sqrt(-math.log(pb_level) / math.log(2.0)) / cell_arcsec + 0.5))


def mosaic_pixels(pb_radius_arcsec, spread_arcsec, cell_arcsec, n_pointings):
    """The pipeline's mosaic size: the pointings' spread plus a primary-beam border (wider for 2-3 pointings)."""
    border = 1.65 if n_pointings <= 3 else 1.5
    return int((border * pb_radius_arcsec + spread_arcsec) / cell_arcsec)


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
