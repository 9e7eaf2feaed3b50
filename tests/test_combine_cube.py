"""--combine cubes (issue 29): each delivery's continuum subtracted with the merged cont.dat (--contdat merge), the
12 m + 7 m cube on one common LSRK grid (the coarsest native channel), feathered with the TP cube.

The goal is tests/support/simulate_combine.py's (see test_combine.py): 12 m spw 25 has 64 x 976.5625 kHz, 7 m spw 16
32 x 1953.125 kHz over the same band; a line of 0.2 Jy peak, 10 km/s FWHM at 216.93 GHz LSRK (the SOURCE table's rest
frequency: 0 km/s) on a 50 mJy point source 15.6" from the centre, and a 0.4 Jy Gaussian of continuum at the centre.
Everything is measured here from the FITS products and the delivered files, independently of the tool's code.
"""
import math
import re
import shutil
from pathlib import Path

import pytest

from conftest import SCRIPT, run_command, truth_of, user_ms_digests

ARCSEC = math.pi / 180.0 / 3600.0
C_KMS = 299792.458


@pytest.fixture(scope='module')
def cube_run(tmp_path_factory):
    import os
    import sys
    from conftest import skip_without_casa
    skip_without_casa()
    from simulate_combine import cached_goal
    cache = os.environ.get('SIMULATION_CACHE') or str(tmp_path_factory.mktemp('goal-cache'))
    goal = tmp_path_factory.mktemp('cube') / 'goal'
    shutil.copytree(cached_goal(cache), str(goal), symlinks=True)
    twelve, seven = goal / '12m', goal / '7m'
    before = (user_ms_digests(twelve), user_ms_digests(seven))
    result = run_command([sys.executable, str(SCRIPT), '--combine', str(seven), '--delivery', str(twelve),
                          '--specmodes', 'cube', '--contdat', 'merge', '--feather', str(goal / 'tp.fits')],
                         cwd=twelve, timeout=1800)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return goal, result, before


def _ranges(path):
    """{spw id: [(low GHz, high GHz)]} of a one-field cont.dat (LSRK ranges), read with a regex of its own."""
    ranges, spw = {}, None
    for line in Path(path).read_text().splitlines():
        match = re.match(r'SpectralWindow: (\d+)', line)
        if match:
            spw = int(match.group(1))
            ranges[spw] = []
        match = re.match(r'([0-9.]+)~([0-9.]+)GHz LSRK', line)
        if match:
            ranges[spw].append((float(match.group(1)), float(match.group(2))))
    return ranges


def test_merged_contdat_written_is_the_intersection(cube_run):
    goal, result, _before = cube_run
    twelve, seven = _ranges(goal / '12m/caltables/cont.dat'), _ranges(goal / '7m/caltables/cont.dat')
    merged = _ranges(goal / '12m/working_reprocess/combined_cont.dat')
    told = _ranges(goal / '12m/working_reprocess/combined_cont.1-7m.dat')
    assert 'working_reprocess/combined_cont.dat' in result.stdout
    for mine, theirs in ((25, 16), (27, 18)):
        expected = [(max(a, c), min(b, d)) for a, b in twelve[mine] for c, d in seven[theirs] if min(b, d) > max(a, c)]
        assert [f for r in merged[mine] for f in r] == pytest.approx([f for r in expected for f in r], abs=1e-9), (
            mine, merged, expected)
        assert told[theirs] == merged[mine]
        # narrower than either delivery's own: both cont.dat lose something to the merge here
        width = sum(b - a for a, b in merged[mine])
        assert width < sum(b - a for a, b in twelve[mine]) and width < sum(b - a for a, b in seven[theirs])


def _cube(casa, fits):
    """(pixels [x, y, chan], channel frequencies Hz, rest frequency Hz, offsets east/north arcsec of x and y from the
    goal's field centre, beam major arcsec) of a FITS cube."""
    import numpy
    image = casa.casatools.image()
    image.open(str(fits))
    try:
        pixels = numpy.array(image.getchunk(dropdeg=True), dtype=float)
        coords = image.coordsys()
        names = coords.names()
        nchan = image.shape()[names.index('Frequency')]
        freqs = numpy.array([coords.toworld([0, 0, 0, k] if names[3] == 'Frequency' else [0, 0, k, 0],
                                            'n')['numeric'][names.index('Frequency')] for k in range(nchan)])
        restfreq = coords.restfrequency()['value'][0]
        frame = coords.referencecode('spectral')[0]
        increment = coords.increment(type='direction')['numeric']
        reference = coords.referencepixel(type='direction')['numeric']
        centre = coords.referencevalue(type='direction')['numeric']
        beam = image.restoringbeam()
        coords.done()
    finally:
        image.close()
    beam = beam['beams']['*0']['*0'] if 'beams' in beam else beam
    east = (numpy.arange(pixels.shape[0]) - reference[0]) * increment[0] / ARCSEC
    north = (numpy.arange(pixels.shape[1]) - reference[1]) * increment[1] / ARCSEC
    return numpy.nan_to_num(pixels), freqs, restfreq, frame, (east, north, centre), beam['major']['value']


def _spectrum_at(cube, truth, offset):
    import numpy
    pixels, _f, _r, _frame, (east, north, centre), _beam = cube
    field = truth['arrays']['12m']['truth']['fields'][0]['direction']
    dx = (math.radians(field['ra_deg']) - centre[0]) * math.cos(centre[1]) / ARCSEC
    dy = (math.radians(field['dec_deg']) - centre[1]) / ARCSEC
    i = int(numpy.argmin(abs(east - dx - offset[0])))
    j = int(numpy.argmin(abs(north - dy - offset[1])))
    return pixels[i, j, :]


def test_cube_grid_line_and_continuum(cube_run, casa):
    import numpy
    goal, result, before = cube_run
    truth = truth_of(goal)
    twelve = goal / '12m'
    assert (user_ms_digests(twelve), user_ms_digests(goal / '7m')) == before
    products = sorted(p.name for p in (twelve / 'combined').glob('*.fits'))
    assert [re.sub(r'^.*_sci\.', '', p) for p in products] == [
        'spw25.12m7m.cube.I.pbcor.fits', 'spw25.12m7mTP.cube.I.pbcor.fits', 'spw27.12m7m.cube.I.pbcor.fits'], products
    # the simulated TP cube covers the first spw's band only: the other is not feathered, and the run says why
    assert re.search(r'spw 27 is not feathered: the TP cube covers 216\.\d+-216\.\d+ GHz', result.stdout), result.stdout
    sky = truth['sky']
    line_hz = truth['arrays']['12m']['truth']['line_lsrk_freq_ghz']['25'][0] * 1e9
    seven_width = 1953125.0
    # every delivery's LSRK coverage of the spw pair
    low = max(truth['arrays'][a]['truth']['ebs'][0]['spws'][0]['lsrk_freq_range_ghz'][0] for a in ('12m', '7m')) * 1e9
    high = min(truth['arrays'][a]['truth']['ebs'][0]['spws'][0]['lsrk_freq_range_ghz'][1] for a in ('12m', '7m')) * 1e9
    for label in ('12m7m', '12m7mTP'):
        cube = _cube(casa, next((twelve / 'combined').glob('*spw25.%s.cube*' % label)))
        _pixels, freqs, restfreq, frame, _axes, beam = cube
        width = numpy.diff(freqs)
        # the grid: LSRK, the 7 m's (coarsest) channel width, inside what both arrays cover, as many as fit
        assert frame == 'LSRK'
        assert numpy.allclose(width, seven_width, rtol=1e-6), width[:3]
        assert freqs[0] - seven_width / 2 >= low - 0.02 * seven_width and freqs[-1] + seven_width / 2 <= high + 0.02 * seven_width
        assert len(freqs) >= int((high - low) / seven_width) - 2, (len(freqs), (high - low) / seven_width)
        spectrum = _spectrum_at(cube, truth, sky['point_offset_arcsec'])
        peak = int(numpy.argmax(spectrum))
        near = abs(freqs - freqs[peak]) < 8e6
        centroid = float((spectrum[near] * freqs[near]).sum() / spectrum[near].sum())
        velocity = C_KMS * (1.0 - centroid / restfreq)
        free = abs(freqs - line_hz) > 2.5 * 10.0 / C_KMS * line_hz       # 2.5 FWHM from the line: continuum only
        centre = _spectrum_at(cube, truth, (0.0, 0.0))
        print('%s: %d x %.4g kHz from %.6f GHz; line at %.6f GHz (true %.6f), %.2f km/s (rest %.6f GHz), peak %.3f Jy; '
              'line-free mean %.4f Jy at the point source, %.4f at the centre; beam %.2f"' % (
                  label, len(freqs), width[0] / 1e3, freqs[0] / 1e9, centroid / 1e9, line_hz / 1e9, velocity,
                  restfreq / 1e9, spectrum[peak], spectrum[free].mean(), centre[free].mean(), beam))
        # the line where it was injected: within a quarter of a channel (0.67 km/s); at 0 km/s of the SOURCE's rest
        assert abs(centroid - line_hz) < 0.25 * seven_width
        assert abs(velocity) < 0.25 * seven_width / line_hz * C_KMS
        assert abs(spectrum[peak] / sky['line_peak_jy'] - 1.0) < 0.2
        # the continuum gone: the line-free channels' mean within 5 sigma of zero, sigma their rms (within 20" of the
        # centre) / sqrt(their number).  Measured: < 0.05 mJy (limit 0.11 mJy); 0.6 and 1.1 mJy with the TP cube's
        # continuum left in (12m7mTP); 46 and 9.4 mJy from the MSes before continuum subtraction.
        pixels, _f, _r, _frame, (east, north, _c), _beam = cube
        inner = numpy.hypot(*numpy.meshgrid(east, north, indexing='ij')) < 20.0
        limit = 5.0 * pixels[inner][:, free].std() / math.sqrt(free.sum())
        print('%s: continuum limit %.5f Jy' % (label, limit))
        assert abs(spectrum[free].mean()) < limit and abs(centre[free].mean()) < limit
    # the window without a line: nothing left anywhere within 20" of the centre once the continuum is gone
    cube = _cube(casa, next((twelve / 'combined').glob('*spw27.12m7m.cube*')))
    pixels, _f, _r, _frame, (east, north, _c), _beam = cube
    inner = numpy.hypot(*numpy.meshgrid(east, north, indexing='ij')) < 20.0
    mean_map = pixels.mean(axis=2)
    print('spw 27: largest |channel mean| within 20": %.4f Jy' % abs(mean_map[inner]).max())
    assert abs(mean_map[inner]).max() < 0.1 * sky['point_jy']


def _order_one_fit(freqs_hz, values, low_hz, high_hz):
    """(a, b) of the least-squares line a + b (f - low) through values at the channels inside [low, high]."""
    import numpy
    inside = (freqs_hz >= low_hz) & (freqs_hz <= high_hz)
    design = numpy.stack([numpy.ones(inside.sum()), freqs_hz[inside] - low_hz], axis=1)
    return numpy.linalg.lstsq(design, values[inside], rcond=None)[0]


def test_one_contdat_file_drives_every_deliverys_continuum_fit(tmp_path, run_script, casa):
    """--contdat FILE in a real run: a file that calls the whole common band line-free (the line included) makes
    each delivery's uvcontsub fit the line too, so the cube's line-free channels at the point source go negative by
    the order-1 fit of the line over the file's range (about -28 mJy here), where the deliveries' own cont.dat leave
    them at zero (test_cube_grid_line_and_continuum: < 0.1 mJy).  Predicted from the simulator's line alone."""
    import numpy
    import os
    from simulate_combine import cached_goal
    goal = tmp_path / 'goal'
    shutil.copytree(cached_goal(os.environ.get('SIMULATION_CACHE') or str(tmp_path / 'cache')), str(goal),
                    symlinks=True)
    truth = truth_of(goal)
    twelve, seven = goal / '12m', goal / '7m'
    before = (user_ms_digests(twelve), user_ms_digests(seven))
    spws = dict((a, truth['arrays'][a]['truth']['ebs'][0]['spws']) for a in ('12m', '7m'))
    bands = [(max(spws[a][k]['lsrk_freq_range_ghz'][0] for a in spws) + 0.001,
              min(spws[a][k]['lsrk_freq_range_ghz'][1] for a in spws) - 0.001) for k in (0, 1)]
    contdat = tmp_path / 'all_line_free.dat'
    contdat.write_text('Field: IRAS_16293-2422\n\nSpectralWindow: 25\n%.10f~%.10fGHz LSRK\n\n'
                       'SpectralWindow: 27\n%.10f~%.10fGHz LSRK\n' % (bands[0] + bands[1]))
    # spw 27 (no line) on 3 channels only: it is not what this test measures, and its cube costs as much as spw 25's
    result = run_script('--combine', seven, '--delivery', twelve, '--specmodes', 'cube', '--contdat', contdat,
                        '--nchan', '27:3', timeout=1500)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (user_ms_digests(twelve), user_ms_digests(seven)) == before
    # the plan's notes once (the step printed them again)
    assert result.stdout.count("7m: spws 16, 18 with this delivery's 25, 27") == 1, result.stdout
    sky = truth['sky']
    line_hz = truth['arrays']['12m']['truth']['line_lsrk_freq_ghz']['25'][0] * 1e9
    sigma = 10.0 / C_KMS * line_hz / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    low, high = bands[0][0] * 1e9, bands[0][1] * 1e9
    cube = _cube(casa, next((twelve / 'combined').glob('*spw25.12m7m.cube*')))
    _pixels, freqs, _rest, _frame, _axes, _beam = cube
    free = abs(freqs - line_hz) > 2.5 * 10.0 / C_KMS * line_hz
    # each array's fit of the line over its own channels inside the file's range, at the cube's line-free channels
    predicted = {}
    for label, nchan in (('12m', 64), ('7m', 32)):
        lo, hi = (f * 1e9 for f in spws[label][0]['lsrk_freq_range_ghz'])
        channels = lo + (numpy.arange(nchan) + 0.5) * (hi - lo) / nchan
        a, b = _order_one_fit(channels, sky['line_peak_jy'] * numpy.exp(-0.5 * ((channels - line_hz) / sigma) ** 2),
                              low, high)
        predicted[label] = -float((a + b * (freqs[free] - low)).mean())
    spectrum = _spectrum_at(cube, truth, sky['point_offset_arcsec'])
    measured = float(spectrum[free].mean())
    print('line-free channels at the point: %.4f Jy (predicted %s)' % (measured, predicted))
    assert min(predicted.values()) < -0.02, predicted  # the test means something: the line's fit is large
    assert min(predicted.values()) * 1.15 < measured < max(predicted.values()) * 0.85, (measured, predicted)
