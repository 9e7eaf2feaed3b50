"""Joint imaging of several deliveries of one science goal (12 m + 7 m) with tclean's mosaic gridder, feathering
with a total-power image, and the flux each product recovers.

Heuristics (issue 29, measured on tools/simulate_combine.py's goal):
* gridder='mosaic' over every delivery's MS: CASA picks each antenna's primary beam from its dish (HetArrayConvFunc:
  Airy 10.7 m for 12 m dishes, 6.25 m for 7 m); the weights are the MSes' own (WEIGHT = 1/sigma^2, as delivered:
  no statwt, so the 7 m's higher noise per visibility weighs it down as it should).
* cell: 0.15 lambda / B_max at the highest frequency (about a fifth of the beam); image out to the 0.2 level of the
  largest primary beam (1.22 lambda / D at the lowest frequency, the smallest dish) with 10 % margin.
* continuum: each delivery's own cont.dat channels (its spw ids); multiscale clean inside the primary beam above 0.3,
  to nsigma 3, with scales 0 and 1 beam and then 3, 9, 27, ... beams up to half the largest angular scale (LAS,
  0.983 lambda / L5) of the most compact array in the image (multiscale_beams).  Why: with (0, 1, 3) beams (4" at
  most) the joint 12m7m image of the test goal's 8" Gaussian (0.4 Jy) stopped at 3 sigma after 609 iterations with
  0.286 Jy in its model within 12" (76 % in the restored image): the joint PSF, weighted to the 12 m, answers broad
  structure weakly (its integral within 12" is 0.05 of the clean beam's), so the missing broad flux left a residual
  at the noise, below any point-scale threshold, while the 7 m's shortest spacings (V = 0.29 Jy at 6-8 klambda) were
  not fitted.  Adding a 9-10 beam (12-13.5") scale, inside the 7 m's LAS (30"), the model held 0.362 Jy within 12"
  and the image 97 %.  The 7 m alone stopped the same way (63 iterations, 63 %).  A scale is kept under half the
  LAS because larger components are not constrained by any measured baseline: on the 12 m alone (LAS 6.7") the
  3-beam (4") scale carried its unrecovered Gaussian's bowl next to the point source, 15.6" out: the point came out
  at 0.0475 Jy (-5.0 %) with it, 0.0482 without.  Natural weighting instead of briggs 0.5 changed nothing that
  matters (77 %, 5 times slower).
* feather: the TP image (Jy/beam, FITS or CASA) put on the interferometric image's grid and feathered with the
  pb-corrected image (domain='sky').  The CASA guide's recipe (TP x .pb feathered with the flat-noise .image, then
  divided by .pb: domain='apparent') loses flux on a single pointing, where the primary beam (27" FWHM at 12 m) is
  no wider than the TP beam (28.6"): TP x pb held 0.196 Jy where the sky x pb holds ~0.35 Jy, and the feather added
  nothing (0.2448 Jy before, 0.2421 Jy after, over the whole image).
* pblimit 0.1: the joint .pb follows the 12 m (its visibilities weigh 8.6 times more), so at 0.2 the image ended
  at 21" where the 7 m still sees 0.7 of the sky.
"""

import math
import re
import shutil
from pathlib import Path

from ..core.messages import ReprocessingError

C_M_S = 299792458.0
ARCSEC = math.pi / 180.0 / 3600.0
GOOD_SIZES = sorted(2 ** a * 3 ** b * 5 ** c for a in range(1, 13) for b in range(0, 4) for c in range(0, 3)
                    if 2 ** a * 3 ** b * 5 ** c <= 8192)


def array_order(label):
    """Sort key of array labels, larger dishes first: '12m', '12mB', '7m'."""
    digits = re.match(r'\d+', label)
    return (-int(digits.group()) if digits else 0, label)


def distinct_label(label, taken):
    """label itself, or with a letter when another delivery of the same dishes took it ('12m', '12mB', '12mC'):
    two 12 m configurations of one goal get names of their own (with one, the second's selections replaced the
    first's, and its MSes were left out of the joint image)."""
    if label not in taken:
        return label
    for letter in 'BCDEFGHIJKLMNOPQRSTUVWXYZ':
        if label + letter not in taken:
            return label + letter
    raise ReprocessingError('--combine: more than 26 deliveries of %s dishes — combine fewer' % label)


def joint_grid(combination, pb_level=0.2):
    """(cell arcsec, imsize) for a joint image of the combination's science spws."""
    freqs = [s for p in combination.parts for m in p.mses for s in m.spws]
    highest = max(s.lsrk_hi for s in freqs)
    lowest = min(s.lsrk_lo for s in freqs)
    longest = max(m.max_baseline_m for p in combination.parts for m in p.mses)
    smallest = min(m.dish_m for p in combination.parts for m in p.mses)
    cell = 0.15 * C_M_S / highest / longest / ARCSEC
    cell = float('%.2g' % cell)
    radius = 1.22 * C_M_S / lowest / smallest / ARCSEC * (1.0 if pb_level == 0.2 else 1.0)
    wanted = int(math.ceil(2.0 * 1.1 * radius / cell))
    size = next((n for n in GOOD_SIZES if n >= wanted), wanted)
    return cell, size


def largest_angular_scale_arcsec(combination, selections=None):
    """LAS (0.983 lambda / L5, ALMA Technical Handbook; L5 the 5th percentile of the baselines, at the highest
    frequency) of the most compact array among the MSes of selections ([(ms path, spw)], matched by MS name: the
    step may pass stand-ins named '<n>-<ms name>'), or of the whole combination."""
    import numpy
    mses = [m for p in combination.parts for m in p.mses]
    if selections:
        names = [Path(str(ms)).name for ms, _sel in selections]
        chosen = [m for m in mses if any(n == m.path.name or n.endswith('-' + m.path.name) for n in names)]
        mses = chosen or mses
    highest = max(s.lsrk_hi for m in mses for s in m.spws)
    l5 = min(float(numpy.percentile(m.imaging.baselines_m, 5)) for m in mses)
    return 0.983 * C_M_S / highest / l5 / ARCSEC


def multiscale_beams(base_beams, beam_arcsec, las_arcsec):
    """base_beams, then 3 times the largest again while the scale stays within half the LAS (the base is the
    point and the beam: scales smaller than the beam are constrained by every array)."""
    scales = list(base_beams)
    while max(scales) > 0 and 3 * max(scales) * beam_arcsec <= las_arcsec / 2.0:
        scales.append(3 * max(scales))
    return tuple(scales)


def joint_tclean_parameters(combination, field, selections, imagename, *, phasecenter, weighting='briggs',
                            robust=0.5, deconvolver='multiscale', scales_beams=(0, 1), nsigma=3.0,
                            niter=5000, pbmask=0.3):
    """tclean keywords for the joint continuum image of field; selections: [(ms path, spw selection)].  The
    multiscale scales are scales_beams extended up to half the LAS of the most compact array selected."""
    cell, size = joint_grid(combination)
    beam_cells = 5.0
    if deconvolver == 'multiscale':
        scales_beams = multiscale_beams(scales_beams, beam_cells * cell,
                                        largest_angular_scale_arcsec(combination, selections))
    parameters = dict(vis=[str(ms) for ms, _sel in selections], spw=[sel for _ms, sel in selections],
                      field=field, imagename=str(imagename), specmode='mfs', gridder='mosaic',
                      imsize=[size, size], cell='%garcsec' % cell, phasecenter=phasecenter, weighting=weighting,
                      robust=robust, niter=niter, nsigma=nsigma, usemask='pb', pbmask=pbmask,
                      deconvolver=deconvolver, pbcor=True, pblimit=0.1, savemodel='none', restoringbeam='common')
    if deconvolver == 'multiscale':
        parameters['scales'] = [int(round(s * beam_cells)) for s in scales_beams]
    return parameters


def run_joint_tclean(casa, parameters):
    for suffix in ('.image', '.pb', '.psf', '.residual', '.model', '.mask', '.sumwt', '.weight', '.image.pbcor'):
        shutil.rmtree(parameters['imagename'] + suffix, ignore_errors=True)
    summary = casa.casatasks.tclean(**parameters)
    return summary if isinstance(summary, dict) else {}


def tp_beam_and_unit(casa, tp_image):
    """(beam major arcsec, beam minor arcsec, unit) of a TP image; refuses one without a beam or not in Jy/beam."""
    image = casa.casatools.image()
    image.open(str(tp_image))
    try:
        beam = image.restoringbeam()
        unit = image.brightnessunit()
    finally:
        image.close()
    if 'beams' in beam:
        beam = beam['beams']['*0']['*0']
    if 'major' not in beam:
        raise ReprocessingError('--feather %s has no beam in its header — give the TP image as delivered (Jy/beam)'
                                % tp_image)
    if unit.lower().replace(' ', '') != 'jy/beam':
        raise ReprocessingError('--feather %s is in %s, not Jy/beam — convert it (e.g. immath) and run again'
                                % (tp_image, unit))
    qa = casa.casatools.quanta()
    return qa.convert(beam['major'], 'arcsec')['value'], qa.convert(beam['minor'], 'arcsec')['value'], unit


def tp_work_images(casa, tp_image, work, prefix, names):
    """({name: work/<prefix>.<name>}, the TP as a CASA image) for one feather: the work images of an earlier attempt
    removed, and tp_image itself or, a FITS file, imported as <prefix>.imported."""
    paths = dict((name, str(Path(work) / ('%s.%s' % (prefix, name)))) for name in ('imported',) + tuple(names))
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    source = str(tp_image)
    if source.lower().endswith(('.fits', '.fit')):
        casa.casatasks.importfits(fitsimage=source, imagename=paths['imported'], overwrite=True)
        source = paths['imported']
    return paths, source


def feather_with_tp(casa, image_base, tp_image, work, domain='sky'):
    """Feather image_base (.image and .pb) with tp_image; returns the feathered, pb-corrected CASA image path."""
    tk = casa.casatasks
    names, source = tp_work_images(casa, tp_image, work, 'tp', ('collapsed', 'regrid', 'apparent', 'feather'))
    image = casa.casatools.image()
    image.open(source)
    try:
        shape = image.shape()
        spectral = image.coordsys().findcoordinate('spectral')
    finally:
        image.close()
    if spectral['return'] and shape[spectral['pixel'][0]] > 1:
        # a continuum image: the TP cube's median over its channels (the interferometric image is one plane, made of
        # the line-free channels of cont.dat).  The mean put the line into the continuum: on the test goal the TP's
        # 15 channels hold the line on the point source in 4, and the feathered flux within 24" was 0.4454 Jy with
        # the mean against 0.4303 with the median (0.45 true; the point's peak the same, 0.0478): the median is the
        # continuum level as long as lines fill less than half the channels.
        tk.imcollapse(imagename=source, axes=[int(spectral['pixel'][0])], function='median',
                      outfile=names['collapsed'])
        source = names['collapsed']
    tk.imregrid(imagename=source, template=image_base + '.image', output=names['regrid'], overwrite=True,
                axes=[0, 1])
    # The TP on the interferometric image's own coordinates (its frequency and Stokes axes), beam and unit its own.
    import numpy
    shutil.copytree(image_base + '.pb', names['apparent'])
    image = casa.casatools.image()
    image.open(names['regrid'])
    try:
        tp = numpy.nan_to_num(numpy.array(image.getchunk(dropdeg=True), dtype=float))
        beam = image.restoringbeam()
    finally:
        image.close()
    image.open(names['apparent'])
    try:
        pb = numpy.array(image.getchunk(), dtype=float)
        factor = pb if domain == 'apparent' else numpy.ones_like(pb)
        image.putchunk((tp.reshape(tp.shape[:2] + (1,) * (pb.ndim - 2)) * factor).astype(numpy.float32))
        image.setbrightnessunit('Jy/beam')
        image.setrestoringbeam(beam=beam['beams']['*0']['*0'] if 'beams' in beam else beam)
    finally:
        image.close()
    output = image_base + '.feather.image.pbcor'
    shutil.rmtree(output, ignore_errors=True)
    if domain == 'apparent':
        tk.feather(imagename=names['feather'], highres=image_base + '.image', lowres=names['apparent'])
        tk.impbcor(imagename=names['feather'], pbimage=image_base + '.pb', outfile=output, cutoff=0.2)
    else:
        tk.feather(imagename=output, highres=image_base + '.image.pbcor', lowres=names['apparent'])
    return output


def describe_uv_coverage(mses):
    """The uv coverage of one delivery in a few numbers: its baselines (antenna separations, not projected) and the
    largest angular scale they recover, 0.983 lambda / L5 (L5: the 5th percentile of the baselines; ALMA's
    definition, at the highest science frequency)."""
    import numpy
    baselines = numpy.array([b for m in mses for b in m.imaging.baselines_m], dtype=float)
    if not len(baselines):
        return 'no baselines'
    wavelength = C_M_S / max(s.lsrk_hi for m in mses for s in m.spws)
    l5 = float(numpy.percentile(baselines, 5))
    return 'baselines %.0f-%.0f m (5th percentile %.1f m: largest angular scale about %.1f")' % (
        baselines.min(), baselines.max(), l5, 0.983 * wavelength / l5 / ARCSEC)
