"""--image: science-ready images, with the ALMA pipeline or with CASA alone.

What a user sees, proven on real CASA with simulated deliveries:
  * without the pipeline, --image makes mfs, cont and cube images with tclean; the continuum
    source is where and as bright as injected, the line is at its LSRK frequency with its peak;
  * cell and image size follow the pipeline's heuristics; a two-pointing mosaic images both;
  * the images folder holds the final products as FITS (archive names) beside the CASA images,
    nothing else, nothing stale; the user's measurement sets are byte-identical;
  * every imaging option is checked before anything runs;
  * the pipeline path's task calls carry exactly the parameters the user set (tested without
    the pipeline), and the real pipeline run is tested when "import pipeline" works.
"""
import math
import re
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import pipeline_available, read_image, requires_pipeline, truth_of, user_ms_digests

# 25 antennas: fewer give PSF sidelobes so high that automasking finds nothing in a single channel.
COMMON = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2)
CENTRED = dict(COMMON, n_ebs=2, with_line_ms=True)
OFFSET = dict(COMMON, n_ebs=1, offset_arcsec=(4.0, -3.0))
# two pointings half a primary beam apart; the source sits on the second one
MOSAIC = dict(COMMON, n_ebs=1, offset_arcsec=(14.0, 0.0), mosaic_offsets_arcsec=((0.0, 0.0), (14.0, 0.0)))


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def source_pixel(coordinates, ra_deg, dec_deg):
    world = coordinates.referencevalue(format='n')['numeric']
    world[0], world[1] = math.radians(ra_deg), math.radians(dec_deg)
    pixel = coordinates.topixel(list(world))['numeric']
    return float(pixel[0]), float(pixel[1])


def peak_position(plane):
    """Sub-pixel position (x, y) of the brightest pixel: intensity-weighted over its 3x3 neighbours."""
    import numpy
    x, y = numpy.unravel_index(numpy.nanargmax(plane), plane.shape)
    box = plane[x - 1:x + 2, y - 1:y + 2]
    box = numpy.clip(box, 0, None)
    xs, ys = numpy.mgrid[x - 1:x + 2, y - 1:y + 2]
    return float((box * xs).sum() / box.sum()), float((box * ys).sum() / box.sum()), float(plane[x, y])


def cell_arcsec(coordinates):
    return abs(float(coordinates.increment(format='n')['numeric'][0])) * 180 / math.pi * 3600


def run_image(run_script, delivery, *flags):
    return run_script('--delivery', delivery, '--image', *flags, timeout=900)


def fits_named(images, pattern):
    found = sorted(p for p in Path(images).iterdir() if re.search(pattern, p.name))
    assert len(found) == 1, 'expected one %s in %s, found %s' % (pattern, images, [p.name for p in found])
    return found[0]


# ---------------------------------------------------------------------------------------------
# one full pipeline-free run on a centred source, shared by the tests that look at its products
# ---------------------------------------------------------------------------------------------

LEFTOVER = 'oussid.IRAS_16293-2422_sci.spw25.mfs.I.iter1.image.pbcor'
KILLED_RUN_LEFTOVER = 'oussid.s12_0.IRAS_16293-2422_sci.spw27.cube.I.iter0.image'


@pytest.fixture(scope='module')
def imaged(delivery_cache, tmp_path_factory, casa):
    """A centred-source delivery imaged with the defaults (all four specmodes), with stale images of
    an earlier, killed run left in working_reprocess/imaging/."""
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('imaged') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **CENTRED), delivery)
    stale = delivery / sfr.WORK_DIR_NAME / 'imaging'
    for name in (LEFTOVER, KILLED_RUN_LEFTOVER):
        (stale / name).mkdir(parents=True)
        (stale / name / 'table.info').write_text('Type = Image\n')
    before = user_ms_digests(delivery)
    # progress lines every half second instead of 15 s, so that the small cubes' short phases show
    result = run_command([sys.executable, str(SCRIPT), '--image'], cwd=delivery, timeout=900,
                         env={sfr.PROGRESS_SECONDS_ENV: '0.5'})
    return {'delivery': delivery, 'result': result, 'before': before, 'after': user_ms_digests(delivery),
            'truth': truth_of(delivery), 'images': delivery / 'images'}


def test_image_makes_mfs_cont_and_cube_images_without_the_pipeline(imaged):
    result = imaged['result']
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'CASA tclean (no pipeline)' in result.stdout
    assert 'repBW skipped: the measurement sets record no representative bandwidth' in result.stdout
    # the table of what was made: 2 mfs, 1 cont, 2 cubes
    rows = [line for line in result.stdout.splitlines() if re.match(r'\s+oussid\.IRAS', line)]
    assert [line.split()[1] for line in rows] == ['mfs', 'mfs', 'cont', 'cube', 'cube'], result.stdout
    assert re.search(r'5 images: 15 FITS files and 15 CASA images, [0-9.]+ [kM]B, in images', result.stdout)


# '  [image] cleaning, automask 2: 11 of 26 channels in 2 s, about 3 s left of it' (tclean_progress.py)
CHANNEL_PROGRESS = re.compile(r'^  \[(?P<image>[^\]]+)\] (?P<call>dirty image|cleaning|tclean), (?P<phase>[a-z -]+[0-9]*): '
                              r'(?P<done>\d+) of (?P<total>\d+) channels in (?P<elapsed>[0-9]+ s|[0-9]+ min [0-9]+ s)'
                              r'(?P<left>, about ([0-9]+ s|[0-9]+ min [0-9]+ s) left of it)?$')


def test_cubes_report_channels_done_and_time_left_while_tclean_runs(imaged, casa):
    """Each cube's worker follows its own CASA log: lines with channels done of the cube's channels,
    counts that never go back within a phase, a time left whenever part of a phase is done; none for
    the mfs/cont images."""
    result = imaged['result']
    assert result.returncode == 0, result.stdout + result.stderr
    matches = [CHANNEL_PROGRESS.match(line) for line in result.stdout.splitlines()]
    matches = [m for m in matches if m]
    by_image = {}
    for match in matches:
        by_image.setdefault(match.group('image'), []).append(match)
    cubes = ['oussid.IRAS_16293-2422_sci.spw25.cube.I.iter1', 'oussid.IRAS_16293-2422_sci.spw27.cube.I.iter1']
    assert sorted(by_image) == cubes, result.stdout
    for name, lines in by_image.items():
        pixels, _coordinates, _beam, _unit = read_image(casa, imaged['images'] / (name + '.image.pbcor'), dropdeg=False)
        nchan = pixels.shape[2]
        last = {}
        for match in lines:
            done, total = int(match.group('done')), int(match.group('total'))
            assert total == nchan and 0 <= done <= total, match.group(0)
            assert bool(match.group('left')) == (0 < done < total), match.group(0)
            phase = (match.group('call'), match.group('phase'))
            assert done >= last.get(phase, 0), match.group(0)  # a phase's count never goes back
            last[phase] = done
        assert any(0 < int(m.group('done')) < nchan for m in lines), [m.group(0) for m in lines]
    # the images' own lines: every image done, and how long it took
    assert len(re.findall(r'^  \[[^\]]+\] \d+ clean iterations, stopped by [^,]+, \d', result.stdout, re.M)) == 5
    assert re.search(r'^  5 of 5 images done in ', result.stdout, re.M), result.stdout


def test_images_folder_holds_the_final_products_as_fits_with_archive_names(imaged):
    names = sorted(p.name for p in imaged['images'].iterdir())
    stems = ['oussid.IRAS_16293-2422_sci.spw25.mfs.I', 'oussid.IRAS_16293-2422_sci.spw27.mfs.I',
             'oussid.IRAS_16293-2422_sci.spw25_27.cont.I', 'oussid.IRAS_16293-2422_sci.spw25.cube.I',
             'oussid.IRAS_16293-2422_sci.spw27.cube.I']
    expected = []
    for stem in stems:
        expected += [stem + '.pbcor.fits', stem + '.pb.fits', stem + '.mask.fits']
        working = stem + '.iter1'
        expected += [working + '.image.pbcor', working + '.pb', working + '.mask']
        expected += [stem + '.provenance.json']  # what the image was made from, for --update
    assert names == sorted(expected)
    assert not any('iter0' in n or n.endswith(('.psf', '.residual', '.model', '.sumwt')) for n in names)
    # leftovers of an earlier run are never collected, and nothing of this run is left behind
    assert KILLED_RUN_LEFTOVER not in names
    assert (imaged['images'] / LEFTOVER / 'table.dat').is_file(), 'the stale image was published'
    assert 'removing working_reprocess/imaging/ left by an earlier run' in imaged['result'].stdout
    assert not (imaged['delivery'] / sfr.WORK_DIR_NAME / 'imaging').exists()
    assert not list(imaged['delivery'].glob('.*partial*'))
    assert not (imaged['delivery'] / sfr.WORK_DIR_NAME / 'staging' / 'image').exists()


def test_user_measurement_sets_are_byte_identical(imaged):
    assert imaged['after'] == imaged['before']


def test_continuum_peaks_at_the_injected_flux_and_position(imaged, casa):
    truth = imaged['truth']
    source = truth['fields'][0]['source_direction']
    flux = {s['id']: s['continuum_jy_at_centre'] for s in truth['spws']}
    for pattern, expected in ((r'spw25\.mfs\.I\.pbcor', flux[25]), (r'spw27\.mfs\.I\.pbcor', flux[27]),
                              (r'spw25_27\.cont\.I\.pbcor', (flux[25] + flux[27]) / 2)):
        pixels, coordinates, _beam, unit = read_image(casa, fits_named(imaged['images'], pattern), dropdeg=False)
        x, y, peak = peak_position(pixels[:, :, 0])
        sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
        assert abs(x - sx) <= 0.5 and abs(y - sy) <= 0.5, (pattern, (x, y), (sx, sy))
        assert peak == pytest.approx(expected, rel=0.10), pattern
        assert unit == 'Jy/beam'


def test_cube_line_peaks_at_its_lsrk_frequency(imaged, casa):
    import numpy
    truth = imaged['truth']
    source = truth['fields'][0]['source_direction']
    for spw in (25, 27):
        cube = fits_named(imaged['images'], r'spw%d\.cube\.I\.pbcor' % spw)
        pixels, coordinates, _beam, _unit = read_image(casa, cube, dropdeg=False)
        assert coordinates.referencecode('spectral')[0] == 'LSRK'
        sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
        spectrum = pixels[int(round(sx)), int(round(sy)), :]
        channel = int(numpy.argmax(spectrum))
        axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
        frequencies = []
        for k in range(len(spectrum)):
            pixel = [sx, sy, 0, 0]
            pixel[axis] = k
            frequencies.append(coordinates.toworld(pixel, 'n')['numeric'][axis])
        width = abs(frequencies[1] - frequencies[0])
        line_hz = truth['line_lsrk_freq_ghz'][str(spw)][0] * 1e9
        assert abs(frequencies[channel] - line_hz) <= width, (spw, frequencies[channel], line_hz)
        assert spectrum[channel] == pytest.approx(truth['line_peak_jy'], rel=0.10), spw


def test_cell_and_image_size_follow_the_pipeline_heuristics(imaged, casa):
    """As hif_makeimlist: every continuum image shares one cell, a fifth of the minor axis of the highest
    spw's PSF (two digits), and one size, out to the 0.2 level of the lowest spw's primary beam."""
    spws = sorted(imaged['truth']['spws'], key=lambda spw: spw['centre_freq_ghz'])
    lowest, highest = spws[0], spws[-1]
    geometry = []
    for pattern in (r'spw%d\.mfs\.I\.pbcor' % lowest['id'], r'spw%d\.mfs\.I\.pbcor' % highest['id'],
                    r'spw25_27\.cont\.I\.pbcor'):
        pixels, coordinates, beam, _unit = read_image(casa, fits_named(imaged['images'], pattern), dropdeg=False)
        geometry.append((round(cell_arcsec(coordinates), 6), pixels.shape[:2], beam))
    assert len({(cell, shape) for cell, shape, _beam in geometry}) == 1, geometry
    cell, shape, _beam = geometry[0]
    # the PSF of the whole spw has the beam of its mfs image (continuum channels) to a few percent
    minor = geometry[1][2]['minor']['value']
    assert abs(cell - minor / 5) <= 0.05 * cell + 0.005, (cell, minor)
    # the 0.2 level of the primary beam (FWHM ~1.13 lambda/D) fits, with the pipeline's 10% margin
    wavelength = 299792458.0 / (lowest['centre_freq_ghz'] * 1e9)
    fwhm = 1.12 * wavelength / 12.0 * 206264.806
    wanted = 1.1 * fwhm * math.sqrt(math.log(5) / math.log(2)) / cell
    assert wanted * 0.99 <= shape[0] <= wanted * 1.15 and shape[0] == shape[1], (wanted, shape)


def test_fits_files_match_the_casa_images(imaged, casa):
    import numpy
    for fits in sorted(imaged['images'].glob('*.fits')):
        extension = fits.name.split('.I.')[1][:-len('.fits')]
        casa_name = fits.name.replace('.I.' + extension + '.fits',
                                      '.I.iter1.' + {'pbcor': 'image.pbcor'}.get(extension, extension))
        from_fits, fits_coordinates, fits_beam, fits_unit = read_image(casa, fits, dropdeg=False)
        from_casa, casa_coordinates, casa_beam, casa_unit = read_image(casa, imaged['images'] / casa_name, dropdeg=False)
        assert numpy.array_equal(numpy.nan_to_num(from_fits), numpy.nan_to_num(from_casa)), fits.name
        assert fits_unit == casa_unit
        if extension == 'pbcor':
            assert fits_unit == 'Jy/beam'
            assert fits_beam and ('major' in fits_beam or 'beams' in fits_beam)
        assert fits_coordinates.referencecode('spectral') == casa_coordinates.referencecode('spectral')


def test_size_estimate_is_within_a_factor_1_5_of_what_was_written(imaged):
    match = re.search(r'about ([0-9.]+) (kB|MB|GB) of products', imaged['result'].stdout)
    estimate = float(match.group(1)) * {'kB': 1e3, 'MB': 1e6, 'GB': 1e9}[match.group(2)]
    written = sfr.directory_bytes(imaged['images'])
    assert written / 1.5 <= estimate <= written * 1.5, (estimate, written)


def fits_header(path):
    """{keyword: value} of a FITS file's primary header, read with the standard library (no astropy)."""
    header = {}
    with open(str(path), 'rb') as handle:
        while True:
            block = handle.read(2880)
            assert len(block) == 2880, '%s: the primary header has no END card' % path
            for start in range(0, 2880, 80):
                card = block[start:start + 80].decode('ascii')
                keyword = card[:8].strip()
                if keyword == 'END':
                    return header
                if card[8:10] != '= ':
                    continue
                value = card[10:].strip()
                if value.startswith("'"):
                    header[keyword] = value[1:].split("'")[0].rstrip()
                    continue
                value = value.split('/')[0].strip()
                try:
                    header[keyword] = {'T': True, 'F': False}[value]
                except KeyError:
                    try:
                        header[keyword] = float(value)
                    except ValueError:
                        header[keyword] = value


def casa_image_beside(fits):
    """The CASA image a FITS file was exported from (same folder, working name)."""
    extension = fits.name.split('.I.')[1][:-len('.fits')]
    return fits.with_name(fits.name.replace('.I.' + extension + '.fits',
                                            '.I.iter1.' + {'pbcor': 'image.pbcor'}.get(extension, extension)))


def beam_numbers(beam):
    """(major arcsec, minor arcsec, pa deg) of one restoring beam, or a list of them per channel."""
    if 'beams' in beam:
        channels = sorted(beam['beams'], key=lambda key: int(key[1:]))  # '*0', '*1', ...
        return [beam_numbers(beam['beams'][channel]['*0']) for channel in channels]
    arcsec = {'arcsec': 1.0, 'deg': 3600.0}

    def value(name):
        return beam[name]['value'] * arcsec[beam[name]['unit']]
    return value('major'), value('minor'), value('positionangle') / 3600.0


def test_fits_headers_carry_the_beam_a_frequency_axis_and_jy_per_beam(imaged, casa):
    """What CARTA, DS9 or astropy read: BUNIT, an LSRK FREQ axis, the restoring beam (per channel in a cube)."""
    for fits in sorted(imaged['images'].glob('*.pbcor.fits')):
        header = fits_header(fits)
        assert header['BUNIT'] == 'Jy/beam', fits.name
        axes = [header.get('CTYPE%d' % axis) for axis in range(1, int(header['NAXIS']) + 1)]
        assert axes[:2] == ['RA---SIN', 'DEC--SIN'] and 'FREQ' in axes, (fits.name, axes)
        assert header['SPECSYS'] == 'LSRK'
        casa_beam = beam_numbers(read_image(casa, casa_image_beside(fits), dropdeg=False).beam)
        fits_beam = beam_numbers(read_image(casa, fits, dropdeg=False).beam)
        if isinstance(casa_beam, list):  # a cube: one beam per channel, in the FITS BEAMS table
            assert header['CASAMBM'] is True and len(fits_beam) == len(casa_beam) == int(header['NAXIS3'])
        else:
            assert (header['BMAJ'] * 3600, header['BMIN'] * 3600, header['BPA']) == pytest.approx(casa_beam, rel=1e-6)
        assert numpy_close(fits_beam, casa_beam), fits.name


def numpy_close(a, b):
    import numpy
    return numpy.allclose(numpy.asarray(a, dtype=float), numpy.asarray(b, dtype=float), rtol=1e-6, atol=0)


def test_report_shows_every_image_with_a_thumbnail_beam_peak_and_rms(imaged):
    report = imaged['delivery'] / sfr.WORK_DIR_NAME / 'report'
    stems = sorted(p.name[:-len('.pbcor.fits')] for p in imaged['images'].glob('*.pbcor.fits'))
    thumbnails = sorted((report / 'images').iterdir())
    assert [p.name for p in thumbnails] == [stem + '.png' for stem in stems]
    assert all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in thumbnails)
    page = next(report.glob('run-*/index.html')).read_text()
    images = page.split('<h2>Images</h2>', 1)[1]
    for stem in stems:
        row = re.search(r'<tr><td[^>]*>%s</td>.*?</tr>' % re.escape(stem), images).group(0)
        assert re.search(r'<td>[0-9.]+&quot; × [0-9.]+&quot;, -?[0-9.]+°</td>', row), row  # the beam
        assert len(re.findall(r'<td>[0-9.]+ mJy/beam</td>', row)) == 2, row  # peak and rms
        assert '<img src="assets/%s.png"' % stem in images
        assert next(report.glob('run-*/assets/%s.png' % stem)).is_file()


def test_dry_run_estimates_the_images_size_and_changes_nothing(imaged, delivery_factory, run_script, md5_tree):
    import os
    delivery = delivery_factory(**CENTRED)
    every_path = sorted(os.path.join(root, name) for root, dirs, files in os.walk(str(delivery))
                        for name in dirs + files)
    before = md5_tree(delivery)
    result = run_script('--delivery', delivery, '--image', '--dry-run')
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r'\n  Images: 5 to make(?: in [0-9]+ process(?:es)?)?, about ([0-9.]+) (kB|MB|GB) of '
                      r'products \(([0-9.]+) (kB|MB|GB) on disk while imaging\), [0-9.]+ [kMGT]B free\n', result.stdout)
    assert match, result.stdout
    estimate = float(match.group(1)) * {'kB': 1e3, 'MB': 1e6, 'GB': 1e9}[match.group(2)]
    written = sfr.directory_bytes(imaged['images'])
    assert written / 1.5 <= estimate <= written * 1.5, (estimate, written)
    assert 'Dry run: nothing was changed.' in result.stdout and result.stderr == ''
    assert md5_tree(delivery) == before
    assert sorted(os.path.join(root, name) for root, dirs, files in os.walk(str(delivery))
                  for name in dirs + files) == every_path


def test_images_that_would_not_fit_stop_the_run_before_anything_is_written(delivery_factory, casa, capsys,
                                                                          monkeypatch):
    delivery = delivery_factory(**CENTRED)
    monkeypatch.setattr(sfr, 'free_bytes', lambda path: 5 * 10 ** 6)  # 5 MB free: less than the images need
    status = sfr.main(['--delivery', str(delivery), '--image', '--specmodes', 'mfs,cube'])
    error = capsys.readouterr().err
    assert status == sfr.EXIT_FAILED, error
    assert re.match(r'ERROR: not enough free disk in .* for the images: about [0-9.]+ MB needed, 5\.0 MB free', error)
    assert not (delivery / 'images').exists() and not (delivery / sfr.WORK_DIR_NAME).exists()


# ---------------------------------------------------------------------------------------------
# other geometries
# ---------------------------------------------------------------------------------------------

def test_offset_source_is_imaged_at_its_position(delivery_factory, run_script, casa):
    delivery = delivery_factory(**OFFSET)
    result = run_image(run_script, delivery, '--specmodes', 'mfs', '--spw', '25')
    assert result.returncode == 0, result.stdout + result.stderr
    truth = truth_of(delivery)
    source = truth['fields'][0]['source_direction']
    pbcor, coordinates, _beam, _unit = read_image(casa, fits_named(delivery / 'images', r'mfs\.I\.pbcor'), dropdeg=False)
    pb, _c, _b, _u = read_image(casa, fits_named(delivery / 'images', r'mfs\.I\.pb\.fits'), dropdeg=False)
    # the simulator applies no primary beam to a single pointing: compare the apparent (pbcor x pb) image
    apparent = pbcor[:, :, 0] * pb[:, :, 0]
    x, y, peak = peak_position(apparent)
    sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
    assert abs(sx - pbcor.shape[0] // 2) > 5, 'the source should be well off the image centre'
    assert abs(x - sx) <= 0.5 and abs(y - sy) <= 0.5, ((x, y), (sx, sy))
    assert peak == pytest.approx(truth['spws'][0]['continuum_jy_at_centre'], rel=0.10)


def test_mosaic_of_two_pointings_images_both(delivery_factory, run_script, casa):
    delivery = delivery_factory(**MOSAIC)
    result = run_image(run_script, delivery, '--specmodes', 'mfs', '--spw', '25')
    assert result.returncode == 0, result.stdout + result.stderr
    assert ', mosaic' in result.stdout
    # cleaned to the pipeline's threshold (not nsigma): the apparentsens of the pointing nearest the image's
    # centre over mosaicOverlapFactorMS's factor (its functions give 1.1050537 for these two pointings 14" apart
    # at spw 25's 216.95 GHz)
    assert re.search(r'theoretical sensitivity [0-9.]+ mJy/beam, dirty peak', result.stdout), result.stdout
    ms = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))[0]
    second = truth_of(delivery)['mosaic_pointings'][1]  # a phase centre on the second pointing picks that one
    with sfr.opened_tool(casa.casatools.msmetadata(), ms) as msmd:
        centre, overlap = sfr._mosaic_centre_and_overlap(
            casa, msmd, [0, 1], 'J2000 %.10fdeg %.10fdeg' % (second['ra_deg'], second['dec_deg']), 25)
    assert centre == 1 and overlap == pytest.approx(1.1050537, rel=2e-4)
    truth = truth_of(delivery)
    pbcor, coordinates, _beam, _unit = read_image(casa, fits_named(delivery / 'images', r'mfs\.I\.pbcor'), dropdeg=False)
    pb, _c, _b, _u = read_image(casa, fits_named(delivery / 'images', r'mfs\.I\.pb\.fits'), dropdeg=False)
    # both pointings are in the image, each where the mosaic's primary beam is high
    for pointing in truth['mosaic_pointings']:
        px, py = source_pixel(coordinates, pointing['ra_deg'], pointing['dec_deg'])
        assert 0 < px < pb.shape[0] - 1 and 0 < py < pb.shape[1] - 1
        assert pb[int(round(px)), int(round(py)), 0] > 0.85
    # wider than one pointing's image along the mosaic (east-west), as the pipeline sizes mosaics
    assert pbcor.shape[0] > pbcor.shape[1]
    source = truth['fields'][0]['source_direction']
    x, y, peak = peak_position(pbcor[:, :, 0])
    sx, sy = source_pixel(coordinates, source['ra_deg'], source['dec_deg'])
    assert abs(x - sx) <= 0.5 and abs(y - sy) <= 0.5, ((x, y), (sx, sy))
    assert peak == pytest.approx(truth['spws'][0]['continuum_jy_at_centre'], rel=0.10)


# ---------------------------------------------------------------------------------------------
# refused before anything runs
# ---------------------------------------------------------------------------------------------

def test_cubes_from_continuum_data_are_refused_unless_asked(delivery_factory, run_script):
    delivery = delivery_factory(**OFFSET)  # no uid*_targets_line.ms
    result = run_image(run_script, delivery)
    assert result.returncode == 1
    assert 'cube/repBW images would contain the continuum' in result.stderr
    assert '--allow-cubes-with-continuum' in result.stderr
    assert not (delivery / 'images').exists() and not (delivery / sfr.WORK_DIR_NAME).exists()


def test_existing_images_folder_is_refused_before_any_work(delivery_factory, run_script):
    delivery = delivery_factory(**OFFSET)
    images = delivery / 'images'
    images.mkdir()
    (images / 'notes.txt').write_text('mine')
    result = run_image(run_script, delivery, '--specmodes', 'mfs')
    assert result.returncode == 1 and 'exists and is not empty' in result.stderr
    assert '--reuse-images' in result.stderr
    (images / 'uid___A001_X1_X2.IRAS_16293-2422_sci.spw25.mfs.I.pbcor.fits').write_text('an older image')
    result = run_image(run_script, delivery, '--specmodes', 'mfs', '--reuse-images')
    assert result.returncode == 1 and 'already holds mfs images' in result.stderr
    assert (images / 'notes.txt').read_text() == 'mine'
    assert not (delivery / sfr.WORK_DIR_NAME).exists()


@pytest.mark.parametrize('flags, message', [
    (['--robust', '2.5'], 'robust must be between -2 and 2'),
    (['--robust', 'high'], 'robust must be a number'),
    (['--specmodes', 'mfs,cubes'], 'unknown specmode "cubes"'),
    (['--nbins', '25:2,*:x'], 'must be SPW:N pairs'),
    (['--nbins', '25:0'], 'at least 1'),
    (['--imsize', '1.5pb'], 'between 0 and 1'),
    (['--imsize', '512,512,3'], 'one or two positive pixel counts'),
    (['--cell', '0.5'], 'must be an angle'),
    (['--cell', '0ppb'], 'pixels per beam must be positive'),
    (['--uvtaper', '0.5'], 'is not a size with a unit'),
    (['--uvrange', 'long'], 'is not CASA uv-range syntax'),
    (['--phasecenter', 'somewhere'], 'must look like'),
    (['--spw', '25;27'], 'spw ids separated by commas'),
    (['--maxcubesize', '-1'], 'must be positive'),
    (['--engine', 'fast'], "invalid choice: 'fast'"),
    (['--no-mitigation', '--maxcubesize', '20'], 'use one or the other'),
])
def test_imaging_values_are_checked_before_anything_runs(flags, message, capsys, tmp_path):
    status = sfr.main(['--delivery', str(tmp_path), '--image'] + flags)
    error = capsys.readouterr().err
    assert status == sfr.EXIT_USAGE and message in error, error
    assert error.count('\n') == 1 and error.startswith('ERROR: ')
    assert list(tmp_path.iterdir()) == []


def test_imaging_options_need_image(capsys, tmp_path):
    status = sfr.main(['--delivery', str(tmp_path), '--cleanup', '--robust', '0', '--all-products'])
    error = capsys.readouterr().err
    assert status == sfr.EXIT_USAGE and '--robust, --all-products only apply to --image' in error


def test_the_editable_defaults_are_checked_too(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sfr, 'NBINS', '25:two')
    status = sfr.main(['--delivery', str(tmp_path), '--image'])
    error = capsys.readouterr().err
    assert status == sfr.EXIT_USAGE and "NBINS = '25:two' at the top of scriptForReprocessing.py" in error


def test_documented_forms_are_accepted():
    assert sfr.parse_nbins('25:2,*:4') == '25:2,*:4'
    assert sfr.nbins_for_spw('25:2,*:4', 25) == 2 and sfr.nbins_for_spw('25:2,*:4', 27) == 4
    assert sfr.parse_imsize('[512,400]') == [512, 400] and sfr.parse_imsize('300') == [300, 300]
    assert sfr.parse_imsize([256, 256]) == [256, 256] and sfr.parse_imsize('0.3pb') == '0.3pb'
    assert sfr.parse_cell('3ppb') == '3ppb' and sfr.parse_cell('0.05arcsec') == ['0.05arcsec']
    assert sfr.parse_robust('0') == 0.0 and sfr.parse_specmodes('repbw,MFS') == ['mfs', 'repBW']
    assert sfr.parse_uvrange('>20klambda') == '>20klambda' and sfr.parse_uvrange('0~300m') == '0~300m'
    assert sfr.parse_uvtaper('0.5arcsec') == ['0.5arcsec']


@pytest.mark.skipif(pipeline_available(), reason='the pipeline is installed here')
def test_engine_pipeline_without_the_pipeline_says_what_to_do(delivery_factory, run_script):
    delivery = delivery_factory(**OFFSET)
    result = run_image(run_script, delivery, '--engine', 'pipeline', '--specmodes', 'mfs')
    assert result.returncode == 1
    assert 'the ALMA pipeline cannot be imported' in result.stderr and '--engine casa' in result.stderr


# ---------------------------------------------------------------------------------------------
# the pipeline path: its calls, without the pipeline
# ---------------------------------------------------------------------------------------------

def request(**values):
    options = sfr.build_parser().parse_args(['--image'] + [a for k, v in values.items()
                                                          for a in ('--' + k.replace('_', '-'), v)])
    return sfr.imaging_request(options, '.')


def calls_by_task(calls):
    found = {}
    for call in calls:
        found.setdefault(call.task, []).append(call.arguments)
    return found


def test_pipeline_calls_carry_every_parameter_the_user_set_and_nothing_else():
    user = request(specmodes='cont,cube', robust='0.0', cell='3ppb', imsize='0.3pb', nbins='25:2,*:4',
                   field='IRAS_16293-2422', maxcubesize='30')
    calls = sfr.pipeline_task_calls(user, targets=['a_targets.ms', 'b_targets.ms'],
                                    targets_line=['a_targets_line.ms'], selfcal=['b_targets.ms'])
    assert [c.task for c in calls] == ['h_init', 'hifa_importdata', 'hifa_importdata', 'hifa_importdata',
                                       'hifa_imageprecheck', 'hif_checkproductsize', 'hif_makeimlist',
                                       'hif_makeimages', 'hif_makeimlist', 'hif_makeimages']
    imports = calls_by_task(calls)['hifa_importdata']
    assert imports[0] == {'vis': ['a_targets.ms'], 'dbservice': False, 'datacolumns': {'data': 'regcal_contline'}}
    assert imports[1] == {'vis': ['b_targets.ms'], 'dbservice': False,
                          'datacolumns': {'data': 'regcal_contline', 'corrected': 'selfcal_contline'}}
    assert imports[2] == {'vis': ['a_targets_line.ms'], 'dbservice': False, 'datacolumns': {'data': 'regcal_line'}}
    assert calls_by_task(calls)['hif_checkproductsize'] == [{'maxcubesize': 30.0}]
    cont, cube = calls_by_task(calls)['hif_makeimlist']
    assert cont == {'specmode': 'cont', 'robust': 0.0, 'hm_cell': '3ppb', 'hm_imsize': '0.3pb',
                    'field': 'IRAS_16293-2422'}
    assert cube == dict(cont, specmode='cube', nbins='25:2,*:4')
    assert all('parallel' not in arguments for c in calls for arguments in [c.arguments])


def test_pipeline_calls_leave_unset_parameters_to_the_pipeline_and_run_in_parallel_under_mpi():
    calls = sfr.pipeline_task_calls(request(), targets=['a_targets.ms'], parallel=True)
    makeimlist = calls_by_task(calls)['hif_makeimlist']
    assert [a['specmode'] for a in makeimlist] == ['mfs', 'cont', 'cube', 'repBW']
    assert all(a == {'specmode': a['specmode'], 'parallel': 'automatic'} for a in makeimlist)
    assert calls_by_task(calls)['hif_makeimages'] == [{'parallel': 'automatic'}] * 4
    assert calls_by_task(calls)['hif_checkproductsize'] == [{'parallel': 'automatic'}]
    options = sfr.build_parser().parse_args(['--image', '--no-mitigation'])
    assert 'hif_checkproductsize' not in calls_by_task(sfr.pipeline_task_calls(
        sfr.imaging_request(options, '.'), targets=['a_targets.ms']))


def test_arguments_a_release_does_not_take_are_dropped_or_stop_the_run():
    def old_makeimlist(vis=None, specmode=None, hm_cell=None, hm_imsize=None):  # no robust, no parallel
        pass
    accepted = sfr.task_parameter_names(old_makeimlist)
    call = sfr.PipelineCall('hif_makeimlist', {'specmode': 'cube', 'parallel': 'automatic'}, ('parallel',))
    assert sfr.fit_call_to_release(call, accepted) == {'specmode': 'cube'}
    call = sfr.PipelineCall('hif_makeimlist', {'specmode': 'cube', 'robust': 0.0}, ('parallel',))
    with pytest.raises(sfr.ReprocessingError, match='does not take "robust"'):
        sfr.fit_call_to_release(call, accepted)


def test_products_get_archive_fits_names_and_only_final_ones_are_kept():
    made = ['uid___A001_X1_X2.s38_0.IRAS_16293-2422_sci.spw25_27.cont.I.iter%d.%s' % (i, ext)
            for i in (0, 1) for ext in ('image', 'image.tt0.pbcor', 'pb.tt0', 'mask', 'alpha', 'psf.tt0')]
    made += ['oussid.s40_0.Elias_2-27_sci.spw25.cube.selfcal.I.iter1.image.pbcor',
             'oussid.s40_0.Elias_2-27_sci.spw25.cube.selfcal.I.iter1.image.pbcor.mom8_fc']
    products = [sfr.ImageProduct.from_working_name(Path('/work') / name) for name in made]
    finals = sfr.final_products(products)
    names = sorted(p.fits_name('uid___A001_X9_X8') for p in finals)
    assert names == ['uid___A001_X1_X2.IRAS_16293-2422_sci.spw25_27.cont.I.alpha.fits',
                     'uid___A001_X1_X2.IRAS_16293-2422_sci.spw25_27.cont.I.mask.fits',
                     'uid___A001_X1_X2.IRAS_16293-2422_sci.spw25_27.cont.I.pb.tt0.fits',
                     'uid___A001_X1_X2.IRAS_16293-2422_sci.spw25_27.cont.I.tt0.pbcor.fits',
                     'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.selfcal.I.mom8_fc.fits',
                     'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.selfcal.I.pbcor.fits']
    assert all(p.iteration == 1 for p in finals)
    # the pipeline's own whole-cube moments of the flat cube never take the name of a --moments map
    cube = 'oussid.s40_0.Elias_2-27_sci.spw25.cube.I.iter1.'
    names = {ext: sfr.ImageProduct.from_working_name(Path('/work') / (cube + ext)).fits_name('uid___A001_X9_X8')
             for ext in ('image.mom8', 'image.mom0', 'image.pbcor.mom8', 'image.pbcor.mom0')}
    assert names == {'image.mom8': 'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.I.pipeline_mom8.fits',
                     'image.mom0': 'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.I.pipeline_mom0.fits',
                     'image.pbcor.mom8': 'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.I.mom8.fits',
                     'image.pbcor.mom0': 'uid___A001_X9_X8.Elias_2-27_sci.spw25.cube.I.mom0.fits'}
    assert sfr.ous_from_path('/data/2022.1.01234.S/science_goal.uid___A001_X1_X2/group.uid___A001_X1_X3/'
                             'member.uid___A001_X1_X4/calibrated_final') == 'uid___A001_X1_X4'


# ---------------------------------------------------------------------------------------------
# the real pipeline (skipped when "import pipeline" fails)
# ---------------------------------------------------------------------------------------------

@pytest.mark.pipeline
@requires_pipeline
def test_pipeline_image_collects_its_products_as_archive_fits(delivery_factory, run_script):
    delivery = delivery_factory(**dict(CENTRED, pipeline_ready=True))
    before = user_ms_digests(delivery)
    flags = ('--engine', 'pipeline', '--specmodes', 'mfs,cube', '--spw', '25', '--robust', '0.5')
    dry_run = run_image(run_script, delivery, *(flags + ('--dry-run',)))
    assert re.search(r'Images: 2 to make, about [0-9.]+ [kMG]B of products .*sized by the pipeline\'s heuristics',
                     dry_run.stdout), dry_run.stdout + dry_run.stderr
    # an image of an earlier, killed pipeline run, in the working directory
    stale = delivery / sfr.WORK_DIR_NAME / 'pipeline-image-20200101T000000' / (
        'oussid.s99_0.IRAS_16293-2422_sci.spw25.mfs.I.iter1.image.pbcor')
    stale.mkdir(parents=True)
    (stale / 'table.info').write_text('Type = Image\n')
    result = run_image(run_script, delivery, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(p.name for p in (delivery / 'images').iterdir())
    assert not any('s99_0' in n for n in names) and stale.is_dir()
    thumbnails = sorted((delivery / sfr.WORK_DIR_NAME / 'report' / 'images').glob('*.png'))
    assert len(thumbnails) == 2, thumbnails
    assert any(re.search(r'_sci\.spw25\.mfs(\.regcal|\.selfcal)?\.I\.pbcor\.fits$', n) for n in names), names
    assert any(re.search(r'_sci\.spw25\.cube(\.regcal|\.selfcal)?\.I\.pbcor\.fits$', n) for n in names), names
    assert not any('iter0' in n for n in names)
    assert user_ms_digests(delivery) == before
