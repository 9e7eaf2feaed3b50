"""--combine (issue 29): 12 m + 7 m deliveries of one science goal imaged jointly, and feathered with total power.

The goal is tests/support/simulate_combine.py's: a 0.4 Jy Gaussian of 8" FWHM (larger than the 12 m sample's largest
angular scale, 7.2", smaller than the 7 m's, 30.5") at the pointing centre, a 50 mJy point source 15.6" away with a
line, seen through CASA's 12 m and 7 m primary beams; a TP cube of the true sky at 28.6" resolution.
"""
import collections
import math
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import one_error_line, truth_of, user_ms_digests

ARCSEC = math.pi / 180.0 / 3600.0


@pytest.fixture(scope='module')
def goal_source(tmp_path_factory):
    import os
    from simulate_combine import cached_goal
    cache = os.environ.get('SIMULATION_CACHE') or str(tmp_path_factory.mktemp('goal-cache'))
    return Path(cached_goal(cache))


@pytest.fixture
def goal(goal_source, tmp_path):
    destination = tmp_path / 'goal'
    shutil.copytree(str(goal_source), str(destination), symlinks=True)
    return destination


def _fits_fluxes(casa, fits, truth):
    """(Jy within 12" of the pointing centre: the Gaussian's 99.8 %, Jy within 24": the Gaussian and the point, point source Jy: peak within a beam minus the median of an
    annulus 2.5-4 beams out) of a pb-corrected FITS image — measured here, independently of the tool."""
    import numpy
    image = casa.casatools.image()
    image.open(str(fits))
    try:
        pixels = numpy.nan_to_num(numpy.array(image.getchunk(dropdeg=True), dtype=float))
        coords = image.coordsys()
        increment = coords.increment(type='direction')['numeric']
        reference = coords.referencepixel(type='direction')['numeric']
        centre = coords.referencevalue(type='direction')['numeric']
        beam = image.restoringbeam()
    finally:
        image.close()
    qa = casa.casatools.quanta()
    major = qa.convert(beam['major'], 'arcsec')['value']
    minor = qa.convert(beam['minor'], 'arcsec')['value']
    cell = abs(increment[0]) / ARCSEC
    east = (numpy.arange(pixels.shape[0]) - reference[0]) * increment[0] / ARCSEC
    north = (numpy.arange(pixels.shape[1]) - reference[1]) * increment[1] / ARCSEC
    field = truth['arrays']['12m']['truth']['fields'][0]['direction']
    dx = (math.radians(field['ra_deg']) - centre[0]) * math.cos(centre[1]) / ARCSEC
    dy = (math.radians(field['dec_deg']) - centre[1]) / ARCSEC
    ee, nn = numpy.meshgrid(east - dx, north - dy, indexing='ij')
    beam_pixels = math.pi / (4 * math.log(2)) * major * minor / cell ** 2
    inner = pixels[numpy.hypot(ee, nn) < 12.0].sum() / beam_pixels
    total = pixels[numpy.hypot(ee, nn) < 24.0].sum() / beam_pixels
    px, py = truth['sky']['point_offset_arcsec']
    r = numpy.hypot(ee - px, nn - py)
    point = _peak_of_beam(pixels, r < major, numpy.median(pixels[(r > 2.5 * major) & (r < 4 * major)]))
    return float(inner), float(total), float(point), (major, minor)


def _peak_of_beam(pixels, near, background):
    from reprocessing.imaging.combine_flux import fitted_peak
    return fitted_peak(pixels, near, background)[0]


def test_fitted_peak_finds_a_beam_between_pixels():
    """A Gaussian beam of 1 Jy centred 0.44 pixel off a pixel centre in x and 0.3 in y, on a 0.1 Jy background: the
    fitted peak is 1 Jy (the brightest pixel is a few % low), and a peak with a negative neighbour falls back to the
    brightest pixel."""
    import numpy
    from reprocessing.imaging.combine_flux import fitted_peak
    x, y = numpy.meshgrid(numpy.arange(40.0), numpy.arange(40.0), indexing='ij')
    sigma = 4.0 / 2.3548  # a 4-pixel FWHM beam
    pixels = 0.1 + numpy.exp(-((x - 20.44) ** 2 + (y - 19.7) ** 2) / (2 * sigma ** 2))
    near = numpy.hypot(x - 20, y - 20) < 4
    peak, (i, j) = fitted_peak(pixels, near, 0.1)
    assert (i, j) == (20, 20)
    assert pixels[i, j] - 0.1 < 0.96 and abs(peak - 1.0) < 1e-6, (pixels[i, j], peak)
    pixels[21, 20] = -1.0
    assert fitted_peak(pixels, near, 0.1)[0] == pytest.approx(pixels[20, 20] - 0.1)


def test_multiscale_scales_reach_half_the_compact_arrays_largest_angular_scale():
    """The joint and 7 m images get scales of 3 and 9 beams (4" and 12" at a 1.35" beam: the 8" Gaussian of the goal;
    the largest scale was 3 beams and the joint image recovered 76 %); the 12 m alone, whose LAS is 6.7", stops at 1
    beam (a 4" scale is not constrained by its baselines)."""
    import collections
    import numpy
    from reprocessing.imaging.combine_image import joint_tclean_parameters, largest_angular_scale_arcsec
    Spw = collections.namedtuple('Spw', 'lsrk_lo lsrk_hi')
    Ms = collections.namedtuple('Ms', 'path imaging spws dish_m max_baseline_m')
    Info = collections.namedtuple('Info', 'baselines_m')
    Part = collections.namedtuple('Part', 'mses')
    spws = [Spw(216.89e9, 216.96e9)]
    # L5 (the 5th percentile of the 45 baselines) 39 m and 9.3 m, as the simulated goal's arrays
    twelve = Ms(Path('/d/12m/uid_A_targets.ms'), Info([39.0] * 5 + list(numpy.linspace(50.0, 149.0, 40))), spws, 12.0,
                149.0)
    seven = Ms(Path('/d/7m/uid_B_targets.ms'), Info([9.3] * 5 + list(numpy.linspace(12.0, 45.0, 40))), spws, 7.0, 45.0)
    combination = collections.namedtuple('C', 'parts')([Part([twelve]), Part([seven])])
    assert 29.0 < largest_angular_scale_arcsec(combination, [('/w/1-uid_B_targets.ms', '16')]) < 31.0
    scales = {}
    for label, mses in (('12m7m', [twelve, seven]), ('12m', [twelve]), ('7m', [seven])):
        selections = [('/w/%d-%s' % (n, m.path.name), '25') for n, m in enumerate(mses)]
        scales[label] = joint_tclean_parameters(combination, 'f', selections, '/w/i', phasecenter='J2000 0 0')['scales']
    assert scales == {'12m7m': [0, 5, 15, 45], '12m': [0, 5], '7m': [0, 5, 15, 45]}, scales


# Issue 29's goal, met since the multiscale scales reach half the 7 m's LAS (12m7m recovered 76 % before, 12m7mTP
# 62 % of the total within 24"; now 104 % and 102 %, the point -3 to -4 %).  It took ~8 min at a load of 11 on 2
# cores, 5 min at a load of 7-14 and 40 s for the same command on a quiet machine (bench_combine): it runs in CI
# since the suite runs in two processes (2026-12-07).
def test_combine_recovers_extended_flux_and_feather_the_total(goal, run_script, casa):
    truth = truth_of(goal)
    twelve, seven = goal / '12m', goal / '7m'
    before = (user_ms_digests(twelve), user_ms_digests(seven))
    started = time.time()
    result = run_script('--combine', seven, '--feather', goal / 'tp.fits', '--specmodes', 'mfs', '--delivery', twelve,
                        timeout=1500)
    elapsed = time.time() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    print('elapsed %.0f s' % elapsed)
    assert (user_ms_digests(twelve), user_ms_digests(seven)) == before
    products = dict((p.name.split('.mfs.')[0].rsplit('.', 1)[1], p) for p in (twelve / 'combined').glob('*.fits'))
    assert set(products) == {'12m', '7m', '12m7m', '12m7mTP'}, sorted(products)
    sky = truth['sky']
    true_total = sky['gauss_jy'] + sky['point_jy']
    measured = dict((label, _fits_fluxes(casa, path, truth)) for label, path in products.items())
    gauss = sky['gauss_jy'] * (1.0 - 2.0 ** (-4.0 * (12.0 / sky['gauss_fwhm_arcsec']) ** 2))
    for label, (inner, total, point, beam) in sorted(measured.items()):
        print('%-8s within 12" %.4f Jy (true %.3f), within 24" %.4f Jy (true %.3f), point %.4f Jy (true %.3f), '
              'beam %.2f" x %.2f"' % (label, inner, gauss, total, true_total, point, sky['point_jy'], beam[0], beam[1]))
    failures = []
    # the 12 m alone misses most of the extended source; 12 m + 7 m recovers it within 10 %
    if not measured['12m'][0] < 0.5 * gauss:
        failures.append('12m alone recovers %.3f of %.3f Jy' % (measured['12m'][0], gauss))
    if not abs(measured['12m7m'][0] / gauss - 1.0) < 0.10:
        failures.append('12m7m recovers %.3f of %.3f Jy' % (measured['12m7m'][0], gauss))
    # with total power, the total flux within 10 %
    if not abs(measured['12m7mTP'][1] / true_total - 1.0) < 0.10:
        failures.append('12m7mTP total %.3f of %.3f Jy' % (measured['12m7mTP'][1], true_total))
    # the point source within 5 % in every product at the 12 m's resolution (the 7 m's 6" beam: see the README)
    for label in ('12m', '12m7m', '12m7mTP'):
        if not abs(measured[label][2] / sky['point_jy'] - 1.0) < 0.05:
            failures.append('%s point %.4f of %.3f Jy' % (label, measured[label][2], sky['point_jy']))
    assert not failures, failures
    _check_flux_table(twelve / 'combined', truth, products)


def _check_flux_table(folder, truth, products):
    """The tool's own comparison (flux_recovered.json/.csv beside the products) says the same physics: within the
    12 m's half-power radius the 12 m alone misses most of the Gaussian, 12m7m recovers it within 10 % (more than
    twice the 12 m alone), with TP the total within the 7 m's radius (the Gaussian and the point) within 10 %; the
    point, found in the joint image at its true offset, within 5 % in every product at the 12 m's resolution."""
    import csv
    import json
    sky = truth['sky']
    table = json.loads((folder / 'flux_recovered.json').read_text())
    radii = table['radii_arcsec']
    # the primary beam's half power (1.13 lambda / D FWHM) at the highest science frequency: 12.6" and 21.7"
    highest = max(s['lsrk_freq_range_ghz'][1] for s in truth['arrays']['12m']['truth']['ebs'][0]['spws']) * 1e9
    assert sorted(radii) == ['12m', '7m'], radii
    for label, dish in (('12m', 12.0), ('7m', 7.0)):
        assert abs(radii[label] / (0.5 * 1.13 * 299792458.0 / highest / dish / ARCSEC) - 1.0) < 0.01, radii
    rows = dict((row['product'], row) for row in table['products'])
    assert set(rows) == set(products), sorted(rows)

    def gauss_within(radius):
        return sky['gauss_jy'] * (1.0 - 2.0 ** (-4.0 * (radius / sky['gauss_fwhm_arcsec']) ** 2))
    extended = gauss_within(radii['12m'])
    failures = []
    if not rows['12m']['within']['12m'] < 0.5 * extended:
        failures.append('12m alone: %.3f of %.3f Jy' % (rows['12m']['within']['12m'], extended))
    if not abs(rows['12m7m']['within']['12m'] / extended - 1.0) < 0.10:
        failures.append('12m7m: %.3f of %.3f Jy' % (rows['12m7m']['within']['12m'], extended))
    # what the 7 m adds to the 12 m alone: most of the extended source (more than twice the 12 m alone's flux, whose
    # -0.05 Jy here gives no ratio), and as much as the 7 m alone holds (ratio within 10 %)
    versus = rows['12m7m']['versus']
    ratio = versus['12m']['within']['12m']
    if not (versus['12m']['added_jy']['12m'] > 0.5 * extended and (ratio is None or ratio > 2.0)
            and abs(versus['7m']['within']['12m'] - 1.0) < 0.10):
        failures.append('12m7m against each array alone: %s' % versus)
    total = gauss_within(radii['7m']) + sky['point_jy']  # the point (15.6" out) inside the 7 m's radius
    if not abs(rows['12m7mTP']['within']['7m'] / total - 1.0) < 0.10:
        failures.append('12m7mTP within the 7m radius: %.3f of %.3f Jy' % (rows['12m7mTP']['within']['7m'], total))
    for label in ('12m', '12m7m', '12m7mTP'):
        point = rows[label]['point']
        offset = math.hypot(point['offset_arcsec'][0] - sky['point_offset_arcsec'][0],
                            point['offset_arcsec'][1] - sky['point_offset_arcsec'][1])
        if not (abs(point['peak_jy'] / sky['point_jy'] - 1.0) < 0.05 and offset < 0.5):
            failures.append('%s point %.4f Jy at %s' % (label, point['peak_jy'], point['offset_arcsec']))
    assert not failures, failures
    with open(str(folder / 'flux_recovered.csv')) as handle:
        lines = list(csv.DictReader(handle))
    assert [(line['product'], float(line['flux_within_12m_hp_jy'])) for line in lines] == \
        [(row['product'], pytest.approx(row['within']['12m'], rel=1e-4)) for row in table['products']]


def _rewrite(casa, ms, subtable, column, change):
    table = casa.casatools.table()
    table.open(str(Path(ms) / subtable), nomodify=False)
    try:
        for row in range(table.nrows()):
            table.putcell(column, row, change(table.getcell(column, row)))
    finally:
        table.close()


def test_uv_coverage_per_array_and_the_report_section(goal, casa, tmp_path, capsys):
    """The combination's account for the report: each array's uv sample (a bounded share of its rows) spans its
    projected baselines as the simulator measured them from every row (longest within 5 %, 5th percentile within
    10 %); the 7 m's sample is the compact one; the SVG is drawn (a path of dots per array) and the report's section lists both arrays, the
    picture and the flux table."""
    import numpy
    from reprocessing.casa.ms_combine import sample_uvw
    from reprocessing.core.layout import Delivery
    from reprocessing.plan.combine_plan import plan_combination
    from reprocessing.report.combination import combination_section
    from reprocessing.steps.combine import describe_combination
    truth = truth_of(goal)
    combination = plan_combination(casa, Delivery(goal / '12m'), [goal / '7m'])
    flux = [dict(field='IRAS_16293-2422', product='12m7m', fits='x.fits', beam=[1.6, 1.3],
                 within={'12m': 0.41, '7m': 0.47}, radii={'12m': 13.4, '7m': 23.0},
                 point=dict(peak_jy=0.0486, offset_arcsec=[12.0, 10.0]),
                 versus={'12m': dict(within={'12m': 7.1, '7m': 3.3}, added_jy={'12m': 0.35, '7m': 0.33}, point=1.01)}),
                 {'field': 'IRAS_16293-2422', 'product': '7m', 'fits': 'y.fits', 'beam': [6.4, 4.6],
                  'within': {'12m': 0.41, '7m': 0.47}, 'radii': {'12m': 13.4, '7m': 23.0},
                  'point': dict(peak_jy=0.0502, offset_arcsec=[12.0, 10.0]),
                  'versus': {'12m': dict(within={'12m': None, '7m': None}, added_jy={'12m': 0.464, '7m': 0.539},
                                         point=1.04)}}]
    summary = describe_combination(casa, combination, Delivery(goal / '12m'), tmp_path, tmp_path, flux, [])
    picture = Path(summary['uv_picture']).read_text()
    dots = re.findall(r'<path fill="[^"]+" d="([^"]*)"', picture)  # one path of dots per array, 12 m first
    assert len(dots) == 2 and all(d.count('M') > 100 for d in dots), [d.count('M') for d in dots]
    assert '12m: ' in picture and '7m: ' in picture and picture.rstrip().endswith('</svg>')
    parts = dict((part['label'], part) for part in summary['parts'])
    assert set(parts) == {'12m', '7m'}
    for label, part in parts.items():
        measured = truth['arrays'][label]['ebs'][0]['baselines']
        metres = [k * 1e3 * 299792458.0 / part['uv_frequency_hz'] for k in part['uv_klambda']]
        assert 0 < part['uv_rows_read'] <= part['uv_rows'], part
        assert abs(metres[2] / measured['max_m'] - 1.0) < 0.05, (label, metres, measured)
        assert abs(metres[1] / measured['l5_m'] - 1.0) < 0.10, (label, metres, measured)
        # a budget of a tenth of the rows: a tenth is read, and it still spans the baselines
        ms = goal / label / 'measurement_sets' / part['mses'][0]
        u, v, rows = sample_uvw(casa, ms, [0], budget=part['uv_rows'] // 10)
        metres = numpy.hypot(u, v)
        assert rows == part['uv_rows'] and 0.05 * rows < len(u) <= 0.1 * rows, (len(u), rows)
        assert abs(metres.max() / measured['max_m'] - 1.0) < 0.05, (label, metres.max(), measured)
        assert abs(numpy.percentile(metres, 5) / measured['l5_m'] - 1.0) < 0.10, (label, measured)
    assert parts['7m']['uv_klambda'][2] < parts['12m']['uv_klambda'][1] * 1.5
    state = collections.namedtuple('State', 'results')([{'combination': summary}])

    class Assets(object):
        def link(self, source):
            return 'assets/' + Path(str(source)).name if Path(str(source)).is_file() else None
    html = '\n'.join(combination_section(state, Assets()))
    assert '<h2>Combination: 12m7m</h2>' in html and 'assets/uv_coverage.svg' in html, html
    assert '<td>12m7m</td>' in html and '0.4100' in html and '7.10/3.30 x; point 1.01 x' in html, html
    assert '+0.464/+0.539 Jy over; point 1.04 x' in html, html  # no ratio to a flux that is not positive
    # the picture cannot be written (its folder is a file): a warning, the account without it, the run goes on
    blocked = tmp_path / 'a-file'
    blocked.write_text('')
    summary = describe_combination(casa, combination, Delivery(goal / '12m'), blocked, tmp_path, flux, [])
    assert summary['uv_picture'] is None and [p['label'] for p in summary['parts']] == ['12m', '7m']
    assert 'WARNING: the uv-coverage picture could not be made' in capsys.readouterr().out


def test_combine_refuses_another_target(goal, run_script, casa):
    seven = goal / '7m'
    for ms in (seven / 'measurement_sets').glob('uid*_targets.ms'):
        _rewrite(casa, ms, 'FIELD', 'NAME', lambda name: 'Elias_2-27')
        _rewrite(casa, ms, 'FIELD', 'PHASE_DIR', lambda d: d + 0.01)
    result = run_script('--combine', seven, '--delivery', goal / '12m', '--dry-run')
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith('ERROR: --combine: nothing can be combined'), result.stderr
    assert 'no field shared' in errors[0] and 'Elias_2-27' in errors[0], errors


def test_combine_refuses_deliveries_without_overlapping_spws(goal, run_script, casa):
    seven = goal / '7m'
    for ms in (seven / 'measurement_sets').glob('uid*_targets.ms'):
        _rewrite(casa, ms, 'SPECTRAL_WINDOW', 'CHAN_FREQ', lambda f: f + 5e9)
        _rewrite(casa, ms, 'SPECTRAL_WINDOW', 'REF_FREQUENCY', lambda f: f + 5e9)
    result = run_script('--combine', seven, '--delivery', goal / '12m', '--dry-run')
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and 'no spectral window overlaps' in errors[0], result.stderr


def test_combine_plan_pairs_spws_by_lsrk_frequency(goal, run_script):
    result = run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7m: spws 16, 18 with this delivery's 25, 27" in result.stdout, result.stdout
    # the uv coverage per array: its largest angular scale against the simulator's (from projected baselines, at the
    # first spw's centre; the plan's is at the highest science frequency, from the antenna separations)
    truth = truth_of(goal)
    for label in ('12m', '7m'):
        found = re.search(r'combine: %s: .*5th percentile ([0-9.]+) m: largest angular scale about ([0-9.]+)"' % label,
                          result.stdout)
        assert found, result.stdout
        spws = truth['arrays'][label]['truth']['ebs'][0]['spws']
        expected = truth['arrays'][label]['las_arcsec'] * truth['arrays'][label]['ebs'][0]['baselines']['at_freq_ghz'] \
            / max(s['lsrk_freq_range_ghz'][1] for s in spws)
        assert abs(float(found.group(2)) / expected - 1.0) < 0.1, (label, found.group(0), expected)


def test_feather_needs_combine(goal, run_script):
    result = run_script('--check', '--feather', goal / 'tp.fits', '--delivery', goal / '12m', '--dry-run')
    assert result.returncode == 2 and 'ERROR: --feather adds total power' in result.stderr, result.stderr


def test_combine_cubes_refuse_a_delivery_without_contdat_for_a_shared_spw(goal, run_script):
    contdat = goal / '7m' / 'caltables' / 'cont.dat'
    contdat.write_text(contdat.read_text().split('SpectralWindow: 18')[0])
    result = run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run')
    error = one_error_line(result, exit_code=1)
    assert error.startswith('ERROR: --combine: 7m (') and \
        "cont.dat has no block for field IRAS_16293-2422 spw 18 (paired with this delivery's spw 27)" in error, error
    # the continuum image alone does without it; --contdat FILE covering every delivery too
    assert run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run', '--specmodes', 'mfs'
                      ).returncode == 0
    given = run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run',
                       '--contdat', goal / '12m' / 'caltables' / 'cont.dat')
    assert given.returncode == 0 and 'written to working_reprocess/combined_cont.dat' in given.stdout, given.stdout


def test_contdat_needs_combine(goal, run_script):
    result = run_script('--image', '--contdat', 'merge', '--delivery', goal / '12m', '--dry-run')
    assert one_error_line(result, exit_code=2).startswith('ERROR: --contdat gives the line-free ranges of the '
                                                          'deliveries of --combine'), result.stderr
    result = run_script('--combine', goal / '7m', '--contdat', goal / 'nothing.dat', '--delivery', goal / '12m')
    assert 'is not a file' in one_error_line(result, exit_code=2)
    result = run_script('--combine', goal / '7m', '--specmodes', 'cont', '--delivery', goal / '12m')
    assert '--combine makes mfs and cube images' in one_error_line(result, exit_code=2)


def test_combine_cube_grid_is_checked_at_plan_time(goal, run_script):
    # the default: the coarsest native channel (the 7 m's 1953.125 kHz) over what both arrays cover
    result = run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run')
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r'spw 25 cube of IRAS_16293-2422: 27 channels of 1\.9531250MHz .*native channels 12m 976\.6 kHz, '
                     r'7m 1953 kHz', result.stdout), result.stdout
    # finer than the 7 m's channels: refused before anything runs, in one line
    result = run_script('--combine', goal / '7m', '--delivery', goal / '12m', '--dry-run', '--width', '25:1MHz')
    assert one_error_line(result, exit_code=1).startswith("ERROR: --combine: spw 25: --width 1MHz is finer than the "
                                                          "spw's channels"), result.stderr


def test_two_deliveries_of_the_same_dishes_keep_names_of_their_own_and_an_execution_block_counts_once(goal, casa):
    """Two 12 m configurations of one goal: the second gets its own label (12mB), so its MSes keep a selection of
    their own in the joint image (with one label the second's selections replaced the first's); the same execution
    block given twice (the same delivery again) is refused in one line, as its data would count twice."""
    from reprocessing.core.layout import Delivery
    from reprocessing.plan.combine_plan import plan_combination
    from reprocessing.core.messages import ReprocessingError
    again = goal / '12m_again'
    shutil.copytree(str(goal / '12m'), str(again), symlinks=True)
    with pytest.raises(ReprocessingError) as refused:
        plan_combination(casa, Delivery(goal / '12m'), [again, goal / '7m'])
    assert 'holds the execution block uid___' in str(refused.value) and 'already in this delivery' in str(
        refused.value)
    for ms in (again / 'measurement_sets').glob('uid*'):  # another execution block of the same array
        ms.rename(ms.with_name(ms.name.replace('uid___A002_', 'uid___A002_X1', 1)))
    combination = plan_combination(casa, Delivery(goal / '12m'), [again, goal / '7m'])
    assert [part.label for part in combination.parts] == ['12m', '12mB', '7m']
    assert combination.label == '12m12mB7m'
    assert any(note.startswith('12mB: 1 MS, 10 antennas (12m dishes)') for note in combination.notes), \
        combination.notes
