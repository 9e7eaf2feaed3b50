"""The cube grid (--start/--width/--nchan/--restfreq/--outframe/--veltype) with the pipeline engine (issue 27).

  * hif_makeimlist takes start, width and nchan (one value for every spw of a call) in every release read
    (2024.1.0.8, 2025.1.0.35, the development head), no restfreq, and an outframe it does not use: the tool gives it
    each spw's grid as frequencies (a radio-velocity grid is a frequency grid), one call per spw, and writes the rest
    frequency into the cubes; BARY/TOPO and optical velocities are refused at plan time with one line naming the release;
  * pure: the grid in frequency, the calls per spw and field, the refusals;
  * the real pipeline (marked pipeline): a line spw imaged on a velocity grid has that grid (first channel, width,
    count, LSRK, the SOURCE table's rest frequency), the line at its injected velocity, and --moments / --beam applied.
"""
import re
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import one_error_line, read_image, requires_pipeline, spectral_axis, truth_of, user_ms_digests

C_KMS = 299792.458


def request(*flags):
    options = sfr.build_parser().parse_args(['--image'] + list(flags))
    return sfr.imaging_request(options, '.')


def support(outframe_used=False, parameters=('spw', 'field', 'specmode', 'start', 'width', 'nchan', 'nbins')):
    return sfr.PipelineGridSupport('PL2025 (2025.1.0.35)', list(parameters), outframe_used)


# ---------------------------------------------------------------------------------------------
# pure
# ---------------------------------------------------------------------------------------------

def test_a_velocity_grid_becomes_the_same_channels_in_frequency():
    restfreq = 230.538e9
    spectral = {'nchan': 20, 'start': '-20km/s', 'width': '2km/s', 'restfreq': ['%.3fHz' % restfreq]}
    grid, rest = sfr.makeimlist_grid(spectral, native_hz=976562.5)
    assert rest == restfreq and grid['nchan'] == 20
    start_hz = float(grid['start'][:-3]) * 1e9
    width_hz = float(grid['width'][:-3]) * 1e6
    assert (1 - start_hz / restfreq) * C_KMS == pytest.approx(-20.0, abs=1e-6)
    # up in velocity is down in frequency; channel k's radio velocity is -20 + 2k (to 0.1 Hz)
    assert width_hz < 0
    for k in (1, 19):
        assert (1 - (start_hz + k * width_hz) / restfreq) * C_KMS == pytest.approx(-20.0 + 2.0 * k, abs=1e-5)
    # a frequency grid stays as asked; a width a hair under the native channel becomes the native channel
    grid, _ = sfr.makeimlist_grid({'nchan': 5, 'start': '230.5000000000GHz', 'width': '0.9760000MHz',
                                   'restfreq': ['230538000000.000Hz']}, native_hz=976562.5)
    assert grid == {'start': '230.5000000000GHz', 'width': '0.9765625MHz', 'nchan': 5}


def test_one_makeimlist_call_per_spw_and_per_field_where_grids_differ():
    a, b = {'start': '1GHz', 'width': '1MHz', 'nchan': 2}, {'start': '2GHz', 'width': '1MHz', 'nchan': 2}
    calls = sfr.group_cube_grids([('A', 25, a), ('B', 25, a), ('A', 27, None), ('B', 27, None), ('A', 29, a),
                                  ('B', 29, b), ('A', 31, None)], ['A', 'B'])
    assert calls == [{'spw': '27,31'}, dict(a, spw='25'), dict(a, spw='29', field='A'), dict(b, spw='29', field='B')]
    made = sfr.pipeline_task_calls(request('--specmodes', 'mfs,cube', '--nbins', '*:2', '--robust', '0.5'),
                                   targets=['x_targets.ms'], cube_calls=calls)
    imlists = [c.arguments for c in made if c.task == 'hif_makeimlist']
    assert [c.task for c in made].count('hif_makeimages') == 5
    assert imlists[0] == {'specmode': 'mfs', 'robust': 0.5}
    assert imlists[1] == {'specmode': 'cube', 'robust': 0.5, 'nbins': '*:2', 'spw': '27,31'}
    # a width is the binning: that spw gets none ('25:-1', also over a size mitigation's; tclean refuses both)
    assert imlists[2] == dict(a, specmode='cube', robust=0.5, spw='25', nbins='25:-1')


def test_grid_options_the_release_cannot_take_are_refused_naming_it():
    assert sfr.pipeline_grid_refusal(request('--start', '-20km/s', '--nchan', '10'), support()) is None
    assert sfr.pipeline_grid_refusal(request('--restfreq', '230.5GHz', '--outframe', 'LSRK'), support()) is None
    refusal = sfr.pipeline_grid_refusal(request('--outframe', '25:BARY'), support())
    assert 'PL2025 (2025.1.0.35)' in refusal and 'LSRK' in refusal and '--engine casa' in refusal
    assert sfr.pipeline_grid_refusal(request('--outframe', 'BARY'), support(outframe_used=True)) is None
    refusal = sfr.pipeline_grid_refusal(request('--veltype', 'optical'), support())
    assert 'radio velocity only' in refusal and '--engine casa' in refusal
    refusal = sfr.pipeline_grid_refusal(request('--width', '2km/s'), support(parameters=('spw', 'nbins')))
    assert 'takes no start/width/nchan' in refusal
    # a grid for specmodes without a cube asks nothing of the pipeline
    assert sfr.pipeline_grid_refusal(request('--outframe', 'BARY', '--specmodes', 'mfs'), support()) is None


# ---------------------------------------------------------------------------------------------
# the real pipeline (skipped when "import pipeline" fails)
# ---------------------------------------------------------------------------------------------

# one line spw, 2 EBs, 32 channels of 0.98 MHz (1.27 km/s), a 0.2 Jy line of 8 km/s at 0 km/s (the SOURCE table's
# rest frequency is the line's)
LINE_DELIVERY = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.05, n_ebs=2, with_line_ms=True,
                     pipeline_ready=True, spw_ids=(25,))
# a rest frequency 1 MHz above the SOURCE table's (the line's): the line sits at +1.37 km/s; hif_makeimlist takes no
# rest frequency, so this checks that the tool's grid and header use it
RESTFREQ_HZ = 216.927708e9
GRID = ['--start', '-10km/s', '--width=2km/s', '--nchan', '10', '--restfreq', '216.927708GHz']


def one_fits(images, suffix):
    found = sorted(p for p in Path(images).iterdir() if p.name.endswith(suffix) and '.spw25.cube.' in p.name)
    assert len(found) == 1, (suffix, sorted(p.name for p in Path(images).iterdir()))
    return found[0]


@pytest.mark.pipeline
@requires_pipeline
def test_pipeline_engine_makes_the_cube_on_the_grid_asked_for(delivery_factory, run_script, casa):
    import numpy
    delivery = delivery_factory(**LINE_DELIVERY)
    before = user_ms_digests(delivery)
    truth = truth_of(delivery)
    refused = run_script('--delivery', delivery, '--image', '--engine', 'pipeline', '--specmodes', 'cube',
                         '--outframe', 'BARY', '--dry-run')
    line = one_error_line(refused, exit_code=2)
    assert 'PL20' in line and 'makes every cube in LSRK' in line and '--engine casa' in line, line
    result = run_script('--delivery', delivery, '--image', '--engine', 'pipeline', '--specmodes', 'cube',
                        '--moments', '0,1', '--beam', 'common', *GRID, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    # passed to hif_makeimlist as frequencies: a velocity grid goes down in frequency
    assert re.search(r"hif_makeimlist\(nbins='25:-1', nchan=10, specmode='cube', spw='25', start='216\.9[0-9]+GHz', "
                     r"width='-1\.44[0-9]+MHz'\)", result.stdout), result.stdout
    assert 'rest frequency from --restfreq 216.927708GHz' in result.stdout, result.stdout
    assert 'rest frequency of the grid written into' in result.stdout, result.stdout
    images = delivery / 'images'
    cube = one_fits(images, '.pbcor.fits')
    velocities, restfreq, frame = spectral_axis(casa, cube)
    assert frame == 'LSRK'
    assert len(velocities) == 10, velocities
    assert velocities[0] == pytest.approx(-10.0, abs=1e-3), velocities
    assert numpy.diff(velocities) == pytest.approx([2.0] * 9, abs=1e-3), velocities
    assert restfreq == pytest.approx(RESTFREQ_HZ, rel=1e-12)
    injected = (1.0 - truth['line_lsrk_freq_ghz']['25'][0] * 1e9 / restfreq) * C_KMS
    assert injected == pytest.approx(1.38, abs=0.05)
    image = read_image(casa, cube, dropdeg=False)
    spectrum = image.pixels[image.pixels.shape[0] // 2, image.pixels.shape[1] // 2, :]
    strong = spectrum > 0.1 * spectrum.max()
    centre = float((spectrum[strong] * numpy.array(velocities)[strong]).sum() / spectrum[strong].sum())
    assert abs(centre - injected) <= 0.25 * 2.0, (centre, injected, list(spectrum))
    # --beam common: one beam for every plane; --moments: moment 1 at the line's velocity
    assert 'convolved to the common beam' in result.stdout, result.stdout
    moment1 = read_image(casa, one_fits(images, '.mom1.fits'), dropdeg=False).pixels
    assert abs(moment1[moment1.shape[0] // 2, moment1.shape[1] // 2, 0] - injected) <= 0.5
    assert one_fits(images, '.mom0.fits').is_file()
    # the pipeline's own whole-cube moment 8 (its weblog's picture) is published under a name that says so, never
    # as <cube>.mom8.fits: --moments did not ask for 8
    assert one_fits(images, '.pipeline_mom8.fits').is_file()
    assert not [p.name for p in images.iterdir() if p.name.endswith('.I.mom8.fits')]
    assert user_ms_digests(delivery) == before
