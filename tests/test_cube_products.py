"""The products users reprocess for (issue 27): cubes cleaned, on their own grid, moment maps, beams.

Physics on small simulated deliveries, the script run as a user runs it (pipeline-free engine):
  * the demo's bright line cube (12 antennas: PSF sidelobes at half the peak, so automasking masks nothing)
    is cleaned: its integrated line flux over a few beams is the injected one within 5 %;
  * a cube on the grid asked for (--start -20km/s --width=2km/s --nchan 20): first channel, width, count, frame
    and the SOURCE table's rest frequency as asked; the line's centre within a quarter channel of its velocity;
  * --moments: moment 0 over a few beams within 5 % of the injected line integral, moment 1 at the injected
    velocity, moment 2 the line's dispersion; FITS named <cube>.mom0.fits ... beside the cube;
  * --beam round: the source in the cube is round to 1 %; --beam common: one beam, the same width in every plane;
  * the spectral grid options are parsed and checked (pure): out of range, finer than a channel, mixed kinds.
"""
import math
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import read_image, spectral_axis, truth_of

# The demo's delivery (tools/demo.py), one spw: the cube automasking cannot mask.
DEMO_LIKE = dict(n_ebs=2, spw_ids=(25,), nchan=64, n_antennas=12)
GAUSSIAN_AREA = math.sqrt(math.pi / (4.0 * math.log(2.0)))  # integral of a Gaussian of peak 1 and FWHM 1
SPEED_OF_LIGHT_KMS = 299792.458


def injected_line_integral(truth):
    """Jy km/s of the simulator's Gaussian line (peak line_peak_jy, FWHM line_fwhm_kms)."""
    return truth['line_peak_jy'] * truth['line_fwhm_kms'] * GAUSSIAN_AREA


def aperture_line_integral(casa, image_path, *, radius_beams=2.0):
    """Jy km/s inside a circle of radius_beams major axes around the image centre (where the simulator puts the
    source): the sum of each channel's pixels over the beam area in pixels, times the channel's width in
    radio velocity at the image's rest frequency.  Reads the cube plane by plane."""
    import numpy
    image = casa.casatools.image()
    image.open(str(image_path))
    try:
        shape = [int(n) for n in image.shape()]
        coordinates = image.coordsys()
        cell = abs(coordinates.increment(type='direction')['numeric'][0]) * 180 / math.pi * 3600
        spectral = coordinates.increment(type='spectral')['numeric'][0]
        restfreq = coordinates.restfrequency()['value'][0]
        coordinates.done()
        total = 0.0
        for channel in range(shape[3]):
            beam = image.restoringbeam(channel=channel, polarization=0)
            major, minor = (casa.casatools.quanta().convert(beam[k], 'arcsec')['value'] for k in ('major', 'minor'))
            plane = image.getchunk(blc=[0, 0, 0, channel], trc=[shape[0] - 1, shape[1] - 1, 0, channel],
                                   dropdeg=True)
            y, x = numpy.mgrid[0:shape[0], 0:shape[1]]
            inside = numpy.hypot(y - shape[0] // 2, x - shape[1] // 2) <= radius_beams * major / cell
            beam_pixels = math.pi / (4.0 * math.log(2.0)) * major * minor / cell ** 2
            total += float(numpy.nansum(plane[inside])) / beam_pixels * abs(spectral) / restfreq * SPEED_OF_LIGHT_KMS
    finally:
        image.close()
    return total


@pytest.fixture(scope='module')
def demo_cube(delivery_cache, tmp_path_factory):
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('demo_cube') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **DEMO_LIKE), delivery)
    result = run_command([sys.executable, str(SCRIPT), '--contsub_fast', '--image', '--specmodes', 'cube',
                          '--engine', 'casa', '--beam', 'common'], cwd=delivery, timeout=900)
    return {'delivery': delivery, 'result': result, 'truth': truth_of(delivery), 'images': delivery / 'images'}


def test_the_demos_bright_cube_is_cleaned_and_holds_the_injected_line_flux(demo_cube, casa):
    """12 antennas, 2 short EBs: the PSF's largest sidelobe is 0.50 of its peak, so auto-multithresh's sidelobe
    threshold (2.0 x 0.50 x the peak) masks nothing and a cube left there is dirty: 1.74 Jy km/s over two
    beams against 2.13 injected (-18 %).  Cleaned inside the primary beam: within 5 %."""
    result = demo_cube['result']
    assert result.returncode == 0, result.stdout + result.stderr
    cube = next(Path(demo_cube['images']).glob('*spw25.cube.I.iter1.image.pbcor'))
    measured = aperture_line_integral(casa, cube)
    expected = injected_line_integral(demo_cube['truth'])
    assert measured == pytest.approx(expected, rel=0.05), (measured, expected)
    assert ' 0 clean iterations' not in result.stdout, result.stdout
    assert 'no automatic mask was found in any channel' in result.stdout, result.stdout
    assert 'largest sidelobe is 0.5' in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------
# a cube on its own grid, with moments and a round beam
# ---------------------------------------------------------------------------------------------

GRID = ['--start', '-20km/s', '--width=2km/s', '--nchan', '20']


@pytest.fixture(scope='module')
def grid_cube(delivery_cache, tmp_path_factory):
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('grid_cube') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **DEMO_LIKE), delivery)
    result = run_command([sys.executable, str(SCRIPT), '--contsub_fast', '--image', '--specmodes', 'cube',
                          '--engine', 'casa'] + GRID + ['--moments', '0,1,2,8', '--beam', 'round'],
                         cwd=delivery, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return {'delivery': delivery, 'result': result, 'truth': truth_of(delivery), 'images': delivery / 'images'}


def injected_velocity(truth, restfreq, spw=25):
    return (1.0 - truth['line_lsrk_freq_ghz'][str(spw)][0] * 1e9 / restfreq) * SPEED_OF_LIGHT_KMS


def fits_in(images, suffix):
    found = sorted(Path(images).glob('*spw25.cube.I.' + suffix))
    assert len(found) == 1, (suffix, sorted(p.name for p in Path(images).iterdir()))
    return found[0]


def test_the_cube_has_the_grid_asked_for_and_the_line_at_its_velocity(grid_cube, casa):
    import numpy
    cube = fits_in(grid_cube['images'], 'pbcor.fits')
    velocities, restfreq, frame = spectral_axis(casa, cube)
    truth = grid_cube['truth']
    assert frame == 'LSRK'
    assert len(velocities) == 20
    assert velocities[0] == pytest.approx(-20.0, abs=1e-3)
    assert numpy.diff(velocities) == pytest.approx([2.0] * 19, abs=1e-3)
    # the rest frequency the PI set up: the SOURCE table's (the simulator writes the line's frequency there)
    assert restfreq == pytest.approx(truth['line_lsrk_freq_ghz']['25'][0] * 1e9, rel=1e-9)
    assert 'rest frequency from the SOURCE table' in grid_cube['result'].stdout
    pixels, _c, _b, _u = read_image(casa, cube, dropdeg=False)
    spectrum = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2, :]
    strong = spectrum > 0.1 * spectrum.max()
    centre = float((spectrum[strong] * numpy.array(velocities)[strong]).sum() / spectrum[strong].sum())
    assert abs(centre - injected_velocity(truth, restfreq)) <= 0.25 * 2.0, (centre, injected_velocity(truth, restfreq))


def test_moment_maps_hold_the_injected_flux_velocity_and_width(grid_cube, casa):
    import numpy
    images, truth = grid_cube['images'], grid_cube['truth']
    for moment in (0, 1, 2, 8):
        assert fits_in(images, 'mom%d.fits' % moment).is_file()
    assert fits_in(images, 'mom0.error.fits').is_file()
    assert 'moments 0,1,2,8 from a signal mask' in grid_cube['result'].stdout
    moment0 = fits_in(images, 'mom0.fits')
    pixels, coordinates, beam, unit = read_image(casa, moment0, dropdeg=False)
    assert unit == 'Jy/beam.km/s'
    quanta = casa.casatools.quanta()
    cell = abs(coordinates.increment(type='direction')['numeric'][0]) * 180 / math.pi * 3600
    major, minor = (quanta.convert(beam[k], 'arcsec')['value'] for k in ('major', 'minor'))
    plane = pixels[:, :, 0]
    y, x = numpy.mgrid[0:plane.shape[0], 0:plane.shape[1]]
    inside = numpy.hypot(y - plane.shape[0] // 2, x - plane.shape[1] // 2) <= 2.0 * major / cell
    flux = float(numpy.nansum(plane[inside])) / (math.pi / (4 * math.log(2)) * major * minor / cell ** 2)
    expected = injected_line_integral(truth)
    assert flux == pytest.approx(expected, rel=0.05), (flux, expected)
    _velocities, restfreq, _frame = spectral_axis(casa, fits_in(images, 'pbcor.fits'))
    centre = (plane.shape[0] // 2, plane.shape[1] // 2)
    moment1 = read_image(casa, fits_in(images, 'mom1.fits'), dropdeg=False)[0][:, :, 0]
    assert abs(moment1[centre] - injected_velocity(truth, restfreq)) <= 0.25 * 2.0, moment1[centre]
    moment2 = read_image(casa, fits_in(images, 'mom2.fits'), dropdeg=False)[0][:, :, 0]
    sigma = truth['line_fwhm_kms'] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    assert moment2[centre] == pytest.approx(sigma, rel=0.1), moment2[centre]
    error = read_image(casa, fits_in(images, 'mom0.error.fits'), dropdeg=False)[0][:, :, 0]
    assert 0 < error[centre] < 0.01 * plane[centre], (error[centre], plane[centre])


def fitted_shape(casa, path, channel):
    """(major, minor) arcsec of a Gaussian fitted to the source in one plane of a cube."""
    image = casa.casatools.image()
    image.open(str(path))
    try:
        shape = [int(n) for n in image.shape()]
        half = 20
        box = '%d,%d,%d,%d' % (shape[0] // 2 - half, shape[1] // 2 - half, shape[0] // 2 + half, shape[1] // 2 + half)
        fitted = image.fitcomponents(box=box, chans=str(channel))['results']['component0']['shape']
    finally:
        image.close()
    return fitted['majoraxis']['value'], fitted['minoraxis']['value']


def test_round_beam_makes_the_source_round(grid_cube, casa):
    """CASA convolves planes accurately only with kernels over a pixel wide: the round beam is widened to that
    (with the plain largest major axis the source came out 2.03 x 1.83 arcsec under a header saying 2.04 round)."""
    cube = fits_in(grid_cube['images'], 'pbcor.fits')
    _pixels, _coordinates, beam, _unit = read_image(casa, cube, dropdeg=False)
    assert 'beams' not in beam and beam['major']['value'] == pytest.approx(beam['minor']['value'], rel=1e-6)
    major, minor = fitted_shape(casa, cube, 10)  # the line's peak channel
    assert minor == pytest.approx(major, rel=0.01), (major, minor)
    assert major == pytest.approx(beam['major']['value'], rel=0.02), (major, beam)


def test_common_beam_is_the_same_in_every_plane(demo_cube, casa):
    import numpy
    cube = next(Path(demo_cube['images']).glob('*spw25.cube.I.iter1.image.pbcor'))
    _pixels, _coordinates, beam, _unit = read_image(casa, cube, dropdeg=False)
    assert 'beams' not in beam, beam  # one beam for the cube
    image = casa.casatools.image()
    image.open(str(cube))
    try:
        spectrum = image.getchunk(blc=[image.shape()[0] // 2, image.shape()[1] // 2, 0, 0],
                                  trc=[image.shape()[0] // 2, image.shape()[1] // 2, 0, image.shape()[3] - 1]).ravel()
    finally:
        image.close()
    bright = [int(k) for k in numpy.argsort(spectrum)[-5:]]  # the line's five brightest planes
    shapes = [fitted_shape(casa, cube, k) for k in bright]
    for major, minor in shapes:
        assert major == pytest.approx(shapes[0][0], rel=0.01) and minor == pytest.approx(shapes[0][1], rel=0.01), shapes


# ---------------------------------------------------------------------------------------------
# cube health: a channel left dirty by a bad mask is found, cleaned again alone and spliced back
# ---------------------------------------------------------------------------------------------

def test_channel_problems_names_diverged_uncleaned_and_outlying_channels():
    channel_problems = sfr.channel_problems
    peaks = [0.001] * 10
    fluxes = [0.0, 0.0, 0.1, 0.2, 0.0, 0.2, 0.1, 0.0, 0.0, 0.0]
    peaks[4] = 0.05  # no component, far above the threshold, others cleaned
    peaks[8] = 0.02  # cleaned (it has components) but 20 x its neighbours
    fluxes[8] = 0.01
    histories = {6: [0.1, 0.01, 0.05]}  # grew 5x from the lowest it reached
    problems = dict(channel_problems(residual_peaks=peaks, model_fluxes=fluxes, threshold_jy=0.002,
                                     peak_histories=histories))
    assert sorted(problems) == [4, 6, 8], problems
    assert 'uncleaned' in problems[4] and 'diverged' in problems[6] and 'neighbours' in problems[8]
    assert channel_problems(residual_peaks=[0.001] * 10, model_fluxes=fluxes, threshold_jy=0.002) == []


def test_a_channel_left_dirty_by_a_bad_mask_is_cleaned_again_and_spliced_back(demo_cube, casa, tmp_path, monkeypatch):
    """The demo's line cube cleaned with a user mask around the source in every channel but the line's
    brightest: that channel keeps the dirty source (residual ~0.2 Jy/beam, no component); check_and_repair finds
    it, cleans it alone inside the primary beam and splices it back: its residual falls below 3 x the threshold
    and the cube's line integral comes back to the injected one."""
    import numpy
    check_and_repair = sfr.check_and_repair
    monkeypatch.chdir(tmp_path)  # tclean writes scratch tables (IMAGING_WEIGHT_*) where it runs
    delivery = demo_cube['delivery']
    lines = sorted(str(p) for p in (delivery / 'measurement_sets').glob('*_targets_line.ms'))
    name = str(tmp_path / 'cube')
    arguments = dict(vis=lines, field=['0'] * len(lines), spw=['25'] * len(lines), datacolumn='data',
                     imagename=name, imsize=[150, 150], cell=['0.3arcsec'], specmode='cube', nchan=20,
                     start='-20km/s', width='2km/s', outframe='LSRK', veltype='radio',
                     restfreq=['%.3fHz' % (demo_cube['truth']['line_lsrk_freq_ghz']['25'][0] * 1e9)],
                     gridder='standard', pblimit=0.2, deconvolver='hogbom', weighting='briggsbwtaper', robust=0.5,
                     perchanweightdensity=True, niter=0, threshold='0.00263Jy', savemodel='none', interactive=False,
                     restoration=False, pbcor=False, parallel=False)
    casa.casatasks.tclean(**arguments)
    image = casa.casatools.image()
    image.open(name + '.residual')
    mask = image.subimage(outfile=name + '.usermask', overwrite=True)
    image.close()
    shape = [int(n) for n in mask.shape()]
    y, x = numpy.mgrid[0:shape[0], 0:shape[1]]
    disk = (numpy.hypot(x - shape[0] // 2, y - shape[1] // 2) <= 8).astype(float)
    planes = numpy.repeat(disk[:, :, numpy.newaxis, numpy.newaxis], shape[3], axis=3)
    bad = 10  # the line's brightest channel: 0 km/s
    planes[:, :, :, bad] = 0.0
    mask.putchunk(planes)
    mask.close()
    clean = dict(arguments, niter=100000, usemask='user', mask=name + '.usermask', restoration=True, pbcor=True,
                 calcpsf=False, calcres=False, restart=True)
    summary = casa.casatasks.tclean(**clean)
    lines_said = []
    redone = check_and_repair(casa, lines_said.append, arguments=clean, summary=summary, threshold_jy=0.00263)
    assert [channel for channel, _why in redone] == [bad], (redone, lines_said)
    assert 'uncleaned' in redone[0][1]
    image.open(name + '.residual')
    residual = image.getchunk(blc=[0, 0, 0, bad], trc=[shape[0] - 1, shape[1] - 1, 0, bad])
    image.close()
    assert numpy.abs(residual).max() < 3 * 0.00263, numpy.abs(residual).max()
    measured = aperture_line_integral(casa, name + '.image.pbcor')
    assert measured == pytest.approx(injected_line_integral(demo_cube['truth']), rel=0.05), measured


def test_the_automask_forecast_agrees_with_tcleans_automasking_both_ways(demo_cube, casa, tmp_path, monkeypatch):
    """The demo's dirty line cube (12 antennas: PSF sidelobe 0.50): with the pipeline's automasking settings
    (sidelobethreshold 2.0, minbeamfrac 0.3) the forecast says automasking finds nothing, and tclean's
    automasking pass from that dirty cube indeed stops with "zero mask" (stop code 7); with sidelobethreshold
    1.0 (masks above half the peak: a core of ln 2 = 0.69 beam, over the pruning size) the forecast says it may
    find something, and tclean does find a mask and cleans.  And the tool skipped the pass it foresaw."""
    monkeypatch.chdir(tmp_path)
    assert 'foreseen from the dirty cube' in demo_cube['result'].stdout, demo_cube['result'].stdout
    delivery = demo_cube['delivery']
    lines = sorted(str(p) for p in (delivery / 'measurement_sets').glob('*_targets_line.ms'))
    outcomes = {}
    for sidelobe in (2.0, 1.0):
        name = str(tmp_path / ('cube%g' % sidelobe))
        arguments = dict(vis=lines, field=['0'] * len(lines), spw=['25'] * len(lines), datacolumn='data',
                         imagename=name, imsize=[150, 150], cell=['0.3arcsec'], specmode='cube', nchan=20,
                         start='-20km/s', width='2km/s', outframe='LSRK', veltype='radio',
                         restfreq=['%.3fHz' % (demo_cube['truth']['line_lsrk_freq_ghz']['25'][0] * 1e9)],
                         gridder='standard', pblimit=0.2, deconvolver='hogbom', weighting='briggsbwtaper',
                         robust=0.5, perchanweightdensity=True, niter=0, threshold='0.00263Jy', nsigma=0.0,
                         savemodel='none', interactive=False, restoration=False, pbcor=False, parallel=False,
                         usemask='auto-multithresh', pbmask=0.3, sidelobethreshold=sidelobe, noisethreshold=4.25,
                         lownoisethreshold=1.5, negativethreshold=15.0, minbeamfrac=0.3, growiterations=50)
        casa.casatasks.tclean(**arguments)
        foreseen = sfr.automask_finds_nothing(casa, arguments, psf=name + '.psf', residual=name + '.residual',
                                              pb=name + '.pb')
        summary = casa.casatasks.tclean(**dict(arguments, niter=100000, calcpsf=False, calcres=False,
                                                restart=True, restoration=True, pbcor=True))
        outcomes[sidelobe] = (foreseen, summary['stopcode'], int(summary['iterdone']))
    assert outcomes[2.0][:2] == (True, 7), outcomes
    assert outcomes[1.0][0] is False and outcomes[1.0][1] != 7 and outcomes[1.0][2] > 0, outcomes


@pytest.mark.parametrize('layout, finds', [('scattered', False), ('block', True)])
def test_the_automask_forecast_counts_regions_not_pixels(layout, finds, demo_cube, casa, tmp_path, monkeypatch):
    """25 pixels at 8 sigma put into one plane of a dirty cube of noise, scattered (each alone, 6 pixels apart: every
    region under the pruning size of 0.3 beam, about 10 pixels) or as one 5 x 5 block: tclean's automasking masks
    nothing in the first (zero mask, stop code 7, nothing cleaned) and the block in the second, and the forecast
    says so both ways.  (Counting the pixels beyond the threshold in the whole plane, as it did before, said "may
    find" for the scattered ones.)  sidelobethreshold 0.5: the 12-antenna PSF's sidelobe term would otherwise hide
    the pixels."""
    import numpy
    monkeypatch.chdir(tmp_path)
    delivery = demo_cube['delivery']
    lines = sorted(str(p) for p in (delivery / 'measurement_sets').glob('*_targets_line.ms'))
    name = str(tmp_path / 'cube')
    arguments = dict(vis=lines, field=['0'] * len(lines), spw=['25'] * len(lines), datacolumn='data', imagename=name,
                     imsize=[150, 150], cell=['0.3arcsec'], specmode='cube', nchan=8, start='24km/s', width='2km/s',
                     outframe='LSRK', veltype='radio', gridder='standard', pblimit=0.2, deconvolver='hogbom',
                     weighting='briggsbwtaper', robust=0.5, perchanweightdensity=True, niter=0, threshold='0Jy',
                     nsigma=3.0, savemodel='none', interactive=False, restoration=False, pbcor=False,
                     parallel=False, usemask='auto-multithresh', pbmask=0.3, sidelobethreshold=0.5,
                     noisethreshold=4.25, lownoisethreshold=1.5, negativethreshold=15.0, minbeamfrac=0.3,
                     growiterations=50)
    casa.casatasks.tclean(**arguments)
    image = casa.casatools.image()
    image.open(name + '.residual')
    try:
        plane = image.getchunk(blc=[0, 0, 0, 3], trc=[149, 149, 0, 3])
        sigma = sfr.MAD_TO_RMS * float(numpy.median(numpy.abs(plane - numpy.median(plane))))
        if layout == 'scattered':
            for x in range(60, 90, 6):
                for y in range(60, 90, 6):
                    plane[x, y] = 8 * sigma
        else:
            plane[72:77, 72:77] = 8 * sigma
        image.putchunk(plane, blc=[0, 0, 0, 3])
    finally:
        image.close()
    foreseen = sfr.automask_finds_nothing(casa, arguments, psf=name + '.psf', residual=name + '.residual',
                                          pb=name + '.pb')
    summary = casa.casatasks.tclean(**dict(arguments, niter=100000, calcpsf=False, calcres=False, restart=True))
    found = not (summary['stopcode'] == 7 and int(summary['iterdone']) == 0)
    assert (found, foreseen) == (finds, not finds), (summary['stopcode'], summary['iterdone'], foreseen)


def test_a_cube_of_noise_skips_automasking_and_holds_what_tcleans_own_pass_makes(demo_cube, casa, tmp_path):
    """A cube of channels far from the line (over twice its FWHM away: noise only, as most chunks of a split long
    cube): automasking certainly finds nothing and its peak is under 10x the noise, so the tool makes no cleaning
    call (no tclean with niter > 0) and makes the images by tclean's restoration alone and a mask of zeros.  The
    pass it skipped, run here from the same dirty image with the tool's arguments, stops with "zero mask" (code
    7, nothing cleaned: the forecast was right) and makes the same restored cube and mask, pixel for pixel."""
    import re
    import sys
    import numpy
    from casa_log import task_calls_in_log
    from conftest import run_command, SCRIPT
    truth, delivery = demo_cube['truth'], demo_cube['delivery']
    first = 24.0  # km/s: the spw reaches 40 km/s on either side of the line at 0 km/s (the rest frequency's)
    assert first - 1.0 > 2 * truth['line_fwhm_kms'], truth['line_fwhm_kms']
    result = run_command([sys.executable, str(SCRIPT), '--image', 'noise_images', '--specmodes', 'cube', '--engine',
                          'casa', '--spw', '25', '--start=%.1fkm/s' % first, '--width', '2km/s', '--nchan', '8'],
                         cwd=delivery, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'nothing to clean' in result.stdout, result.stdout
    log = re.search(r'CASA log: (\S+)', result.stdout).group(1)
    calls = [c for c in task_calls_in_log(log, 'tclean') if c.get('specmode') == 'cube']
    assert calls and not any(c['niter'] > 0 for c in calls), [(c['niter'], c.get('usemask')) for c in calls]
    restoring = [c for c in calls if c.get('restoration') and not c.get('calcres')]
    assert len(restoring) == 1, calls
    name = str(tmp_path / 'cube')
    user_ms = [str(delivery / 'measurement_sets' / Path(v).name) for v in calls[0]['vis']]  # not the tool's links
    casa.casatasks.tclean(**dict(calls[0], vis=user_ms, imagename=name))
    skipped = dict(restoring[0], vis=user_ms, imagename=name, niter=1000000)
    summary = casa.casatasks.tclean(**skipped)
    assert (summary['stopcode'], int(summary['iterdone'])) == (7, 0), summary
    made = Path(delivery / 'noise_images')
    for suffix in ('.image.pbcor', '.mask'):
        tool_image = next(made.glob('*spw25.cube.I.iter1' + suffix))
        ours, theirs = (read_image(casa, path, dropdeg=False) for path in (tool_image, name + suffix))
        assert ours.pixels.shape == theirs.pixels.shape, suffix
        assert numpy.array_equal(ours.pixels, theirs.pixels, equal_nan=True), suffix
        assert (ours.beam, ours.unit) == (theirs.beam, theirs.unit), suffix
    assert not numpy.any(read_image(casa, next(made.glob('*spw25.cube.I.iter1.mask')), dropdeg=False).pixels)


# ---------------------------------------------------------------------------------------------
# the grid options: parsed before anything runs, checked against the spw at plan time
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('flags, message', [
    (['--start', '-20'], 'the unit must be a velocity (km/s, m/s) or a frequency'),
    (['--start', '25:-20km/s,25:-10km/s'], 'gives spw 25 twice'),
    (['--start', '-20km/s,10km/s'], 'each needs its spw'),
    (['--width', '-2km/s'], 'must be positive'),
    (['--width', '1.5'], 'a number of channels must be a whole number'),
    (['--nchan', '0'], 'at least 1'),
    (['--restfreq', '-230GHz'], 'must be positive'),
    (['--restfreq', '230km/s'], 'the unit must be a frequency'),
    (['--outframe', 'LSRD'], 'choose from LSRK, BARY, TOPO, SOURCE'),
    (['--veltype', 'relativistic'], 'choose from radio, optical'),
    (['--moments', '0,3'], '3 is not one of 0,1,2,8'),
    (['--beam', 'wide'], 'must be common, round or a resolution'),
])
def test_grid_moment_and_beam_values_are_checked_before_anything_runs(flags, message, capsys, tmp_path):
    status = sfr.main(['--delivery', str(tmp_path), '--image'] + flags)
    error = capsys.readouterr().err
    assert status == sfr.EXIT_USAGE and message in error, error
    assert error.count('\n') == 1 and error.startswith('ERROR: ')
    assert list(tmp_path.iterdir()) == []


def test_negative_velocities_are_taken_both_ways():
    for args in (['--start', '-20km/s'], ['--start=-20km/s'], ['--start', '25:-20km/s']):
        options = sfr.build_parser().parse_args(['--image'] + args)
        assert options.start in ('*:-20km/s', '25:-20km/s'), options.start


def test_grid_parts_are_filled_in_and_checked_against_the_spw():
    """The default grid is the pipeline's; a velocity start fills width and count to the band's edge; out of range,
    finer than a channel, mixed kinds and a grid in another spw are refused with what to do."""
    low, high, native, rest = 216.8974e9, 216.9593e9, 976562.5, 216.92670766e9
    kinds = ('velocity', 'frequency', 'channels')

    def value(text):
        return sfr.parse_spectral_value(text, kinds=kinds, option='--x')

    def grid(**asked):
        return sfr.cube_grid(spw_id=25, low_hz=low, high_hz=high, native_hz=native, restfreq_hz=rest,
                             other_spws={25: (low, high), 27: (230.49e9, 230.56e9)}, **asked)
    pipeline = grid()
    assert (pipeline.start, pipeline.width, pipeline.nchan) == sfr.cube_channel_grid(low, high, native, None)
    velocity = grid(start=value('-20km/s'))
    assert velocity.start == '-20km/s' and velocity.channel_hz == pytest.approx(native)
    assert velocity.last_hz >= low - native / 2.0  # runs to the band's low-frequency edge
    assert velocity.last_hz - velocity.channel_hz < low + native / 2.0
    assert grid(start=value('-20km/s'), width=value('2')).width == '%gkm/s' % float('%.6g' % (2 * native / rest * 299792.458))
    for asked, message in ((dict(start=value('-200km/s')), 'leaves no channel inside'),
                           (dict(start=value('-20km/s'), width=value('2km/s'), nchan=40), 'outside the frequencies'),
                           (dict(width=value('1km/s')), 'finer than the spw\'s channels'),
                           (dict(start=value('-20km/s'), width=value('2MHz')), 'both as velocities'),
                           (dict(start=value('230.5GHz')), 'it lies in spw 27'),
                           (dict(width=value('2'), nbin=2), '--width and --nbins')):
        with pytest.raises(ValueError) as error:
            grid(**asked)
        assert message in str(error.value) and ' — ' in str(error.value), str(error.value)


def test_a_grid_outside_the_spw_stops_the_run_at_plan_time(delivery_factory, run_script, md5_tree):
    delivery = delivery_factory(**DEMO_LIKE)
    before = md5_tree(delivery / 'measurement_sets')
    result = run_script('--delivery', delivery, '--contsub_fast', '--image', '--specmodes', 'cube', '--engine', 'casa',
                        '--start', '-200km/s', '--dry-run')
    assert result.returncode == sfr.EXIT_USAGE, result.stdout + result.stderr
    assert result.stderr.startswith('ERROR: spw 25: --start -200km/s leaves no channel inside'), result.stderr
    assert result.stderr.count('\n') == 1
    assert md5_tree(delivery / 'measurement_sets') == before
    ok = run_script('--delivery', delivery, '--contsub_fast', '--image', '--specmodes', 'cube', '--engine', 'casa',
                    '--start', '-20km/s', '--width', '2km/s', '--nchan', '20', '--dry-run')
    assert ok.returncode == 0, ok.stdout + ok.stderr
