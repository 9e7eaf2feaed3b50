"""The pipeline path end to end on the real ALMA pipeline (skipped where "import pipeline" fails, as in CI).

Run by hand in a Python that has the pipeline (README: "Tests that need the ALMA pipeline"):

    make test-pipeline PYTHON=/path/to/pipeline-python      # or
    /path/to/pipeline-python -m pytest -m pipeline tests/test_pipeline_end_to_end.py

A user with a delivery of two execution blocks (pipeline-ready simulated MSes: 20 antennas,
spws 25 and 27 of 64 channels, a 50 mJy point source with a 0.2 Jy line in each spw) runs
``--contsub --image DIR --weblog`` and then ``--cleanup``; another user, whose delivery already
has line MSes, runs ``--image`` alone.  Each run takes a few minutes, so each is made once and
the tests read what it left.  Weblog plots need a display: an Xvfb is started when there is none.
"""
import collections
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy
import pytest

from conftest import SCRIPT, pipeline_available, read_image, run_command, truth_of, user_ms_digests

pytestmark = [pytest.mark.pipeline,
              pytest.mark.skipif(not pipeline_available(), reason='the ALMA pipeline is not installed')]

DELIVERY = dict(n_ebs=2, n_antennas=20, pipeline_ready=True)
IMAGES = 'new_images'
SPECMODES = ('mfs', 'cont', 'cube', 'repBW')
RUN_TIMEOUT_S = 3600

Run = collections.namedtuple('Run', 'delivery truth before returncode output url page')


# --------------------------------------------------------------------------- running the script

@pytest.fixture(scope='module')
def display():
    """Environment for the script: a display for plotms (an Xvfb of our own when there is none)."""
    if os.environ.get('DISPLAY') or not shutil.which('Xvfb'):
        yield {}
        return
    read_end, write_end = os.pipe()
    server = subprocess.Popen(['Xvfb', '-displayfd', str(write_end), '-screen', '0', '1280x1024x24', '-nolisten',
                               'tcp'], pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        number = handle.readline().strip()
    try:
        yield {'DISPLAY': ':%s' % number}
    finally:
        server.terminate()
        server.wait(30)


def fresh_delivery(delivery_cache, tmp_path_factory, **simulation):
    from simulate_delivery import cached_delivery, copy_delivery
    source = cached_delivery(delivery_cache, **simulation)
    return Path(copy_delivery(source, tmp_path_factory.mktemp('pipeline_e2e') / 'calibrated_final'))


def run_until_served(args, *, delivery, env):
    """Run the script; when it serves a weblog, fetch the page and stop it with Ctrl-C (SIGINT)."""
    environment = dict(os.environ)
    environment.update(env)
    process = subprocess.Popen([sys.executable, str(SCRIPT)] + list(args), cwd=str(delivery), env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    lines, served = [], threading.Event()
    url = []

    def follow():
        for line in process.stdout:
            lines.append(line)
            match = re.match(r'\s+open (http://127\.0\.0\.1:\d+/\S+)', line)
            if match and not url:
                url.append(match.group(1))
                served.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = time.time() + RUN_TIMEOUT_S
    while process.poll() is None and not served.is_set() and time.time() < deadline:
        served.wait(5)
    page = None
    if served.is_set():
        with urllib.request.urlopen(url[0], timeout=60) as response:
            page = response.read().decode('utf-8', 'replace')
        process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(30)
    return process.returncode, ''.join(lines), (url[0] if url else None), page


@pytest.fixture(scope='module')
def contsub_and_image(delivery_cache, tmp_path_factory, display):
    """--contsub --image new_images --weblog on a delivery without line MSes."""
    delivery = fresh_delivery(delivery_cache, tmp_path_factory, **DELIVERY)
    before = user_ms_digests(delivery)
    returncode, output, url, page = run_until_served(
        ['--contsub', '--image', IMAGES, '--weblog', '--no-browser'], delivery=delivery, env=display)
    truth = truth_of(delivery)
    return Run(delivery, truth, before, returncode, output, url, page)


@pytest.fixture(scope='module')
def image_only(delivery_cache, tmp_path_factory, display):
    """--image new_images on a delivery that already has line MSes."""
    delivery = fresh_delivery(delivery_cache, tmp_path_factory, with_line_ms=True, **DELIVERY)
    before = user_ms_digests(delivery)
    result = run_command([sys.executable, str(SCRIPT), '--image', IMAGES], cwd=delivery, env=display,
                         timeout=RUN_TIMEOUT_S)
    truth = truth_of(delivery)
    return Run(delivery, truth, before, result.returncode, result.stdout + result.stderr, None, None)


def succeeded(run):
    assert run.returncode == 0, run.output[-4000:]
    return run


# --------------------------------------------------------------------------- reading the products

Image = collections.namedtuple('Image', 'peak peak_pixel spectrum frequencies_hz channel_width_hz peak_direction '
                                        'cell_rad')


def brightest(casa, path):
    """The brightest pixel of a (FITS or CASA) image, its spectrum and where it is on the sky."""
    pixels, coordinates, _beam, _unit = read_image(casa, path, dropdeg=False)   # [x, y, channel]
    axes = list(coordinates.axiscoordinatetypes())
    spectral = axes.index('Spectral')
    x, y, channel = numpy.unravel_index(numpy.nanargmax(pixels), pixels.shape)
    pixel = [0] * len(axes)
    pixel[0], pixel[1] = int(x), int(y)
    frequencies = []
    for k in range(pixels.shape[-1]):
        pixel[spectral] = k
        frequencies.append(coordinates.toworld(pixel, 'n')['numeric'][spectral])
    pixel[spectral] = int(channel)
    world = coordinates.toworld(pixel, 'n')['numeric']
    cell = abs(coordinates.increment(type='direction')['numeric'][0])
    width = abs(coordinates.increment(type='spectral')['numeric'][0])
    return Image(float(pixels[x, y, channel]), (int(x), int(y), int(channel)), pixels[x, y, :],
                 numpy.array(frequencies), width, (world[0], world[1]), cell)


def products(run, specmode, kind='pbcor'):
    """The FITS products of a specmode in the images folder, e.g. kind 'pbcor', 'pb', 'mask', 'mom8_fc'."""
    folder = run.delivery / IMAGES
    return sorted(p for p in folder.glob('*.%s.*%s.fits' % (specmode, kind))
                  if p.name.endswith('.%s.fits' % kind))


def separation_rad(direction, ra_deg, dec_deg):
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    cos_angle = (math.sin(dec) * math.sin(direction[1])
                 + math.cos(dec) * math.cos(direction[1]) * math.cos(ra - direction[0]))
    return math.acos(min(1.0, cos_angle))


def spw_of(path):
    return re.search(r'\.spw([\d_]+)\.', path.name).group(1)


def line_sigma_hz(truth, spw):
    centre = truth['line_lsrk_freq_ghz'][spw][0] * 1e9
    return centre, truth['line_fwhm_kms'] / 299792.458 * centre / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def injected_line(truth, spw, frequencies_hz):
    """The injected Gaussian line (LSRK) at these frequencies (the simulator samples channel centres)."""
    centre, sigma = line_sigma_hz(truth, spw)
    return truth['line_peak_jy'] * numpy.exp(-0.5 * ((numpy.asarray(frequencies_hz) - centre) / sigma) ** 2)


def mean_line_over(truth, spw, low_hz, high_hz):
    """The injected Gaussian line (LSRK) averaged over [low, high] Hz: what a binned channel holds."""
    centre, sigma = line_sigma_hz(truth, spw)
    scale = math.sqrt(2.0) * sigma
    return (truth['line_peak_jy'] * math.sqrt(math.pi / 2.0) * sigma / (high_hz - low_hz)
            * (math.erf((high_hz - centre) / scale) - math.erf((low_hz - centre) / scale)))


def check_continuum_images(casa, run):
    source = run.truth['fields'][0]['source_direction']
    for specmode in ('mfs', 'cont'):
        for path in products(run, specmode):
            image = brightest(casa, path)
            assert image.peak == pytest.approx(run.truth['continuum_jy'], rel=0.10), path.name
            assert separation_rad(image.peak_direction, source['ra_deg'], source['dec_deg']) <= 1.5 * image.cell_rad


def check_cubes_hold_the_line_without_the_continuum(casa, run):
    truth = run.truth
    cubes = products(run, 'cube')
    assert sorted(spw_of(p) for p in cubes) == ['25', '27']
    for path in cubes:
        image = brightest(casa, path)
        spw = spw_of(path)
        line_hz = truth['line_lsrk_freq_ghz'][spw][0] * 1e9
        assert image.peak == pytest.approx(truth['line_peak_jy'], rel=0.10), path.name
        assert abs(image.frequencies_hz[image.peak_pixel[2]] - line_hz) <= 1.01 * image.channel_width_hz
        # Made from continuum + line data, every channel would hold 50 mJy more than the line.
        residual = image.spectrum - injected_line(truth, spw, image.frequencies_hz)
        assert abs(float(numpy.nanmean(residual))) < 0.1 * truth['continuum_jy'], path.name


def check_repbw_cube(casa, run):
    (path,) = products(run, 'repBW')
    image = brightest(casa, path)
    assert spw_of(path) == '25'
    channel_hz = abs(run.truth['spws'][0]['chan_width_hz'])
    assert image.channel_width_hz == pytest.approx(8 * channel_hz, rel=0.01)  # the representative bandwidth
    centre = image.frequencies_hz[image.peak_pixel[2]]
    expected = mean_line_over(run.truth, '25', centre - image.channel_width_hz / 2, centre + image.channel_width_hz / 2)
    assert image.peak == pytest.approx(expected, rel=0.10)


# --------------------------------------------------------------------------- --contsub --image --weblog

def test_contsub_image_weblog_succeeds_and_serves_the_newest_weblog(contsub_and_image):
    run = succeeded(contsub_and_image)
    assert run.url is not None and run.page is not None, run.output[-3000:]
    assert '<html' in run.page.lower()


def test_line_mses_appear_beside_the_targets(contsub_and_image):
    run = succeeded(contsub_and_image)
    ms_dir = run.delivery / 'measurement_sets'
    for eb in run.truth['ebs']:
        line = ms_dir / Path(eb['ms']).name.replace('_targets.ms', '_targets_line.ms')
        assert (line / 'table.dat').is_file(), sorted(p.name for p in ms_dir.iterdir())
    assert not [p.name for p in ms_dir.iterdir() if '.partial-' in p.name]


def test_the_users_targets_mses_are_byte_identical(contsub_and_image):
    run = succeeded(contsub_and_image)
    after = user_ms_digests(run.delivery)
    assert {name: after[name] for name in run.before} == run.before


def test_every_specmode_lands_in_the_images_folder(contsub_and_image):
    run = succeeded(contsub_and_image)
    for specmode in SPECMODES:
        for kind in ('pbcor', 'pb', 'mask'):
            assert products(run, specmode, kind), (specmode, kind, sorted(os.listdir(str(run.delivery / IMAGES))))
    for specmode in ('cube', 'repBW'):
        for kind in ('mom0_fc', 'mom8_fc'):
            assert products(run, specmode, kind), (specmode, kind)
    assert sorted(spw_of(p) for p in products(run, 'mfs')) == ['25', '27']
    assert [spw_of(p) for p in products(run, 'cont')] == ['25_27']


def test_continuum_images_show_the_injected_source(contsub_and_image, casa):
    check_continuum_images(casa, succeeded(contsub_and_image))


def test_cubes_show_the_injected_line_at_its_frequency_without_the_continuum(contsub_and_image, casa):
    check_cubes_hold_the_line_without_the_continuum(casa, succeeded(contsub_and_image))


def test_the_repbw_cube_is_binned_to_the_representative_bandwidth(contsub_and_image, casa):
    check_repbw_cube(casa, succeeded(contsub_and_image))


def test_the_pipeline_weblogs_are_under_working_reprocess_with_their_plots(contsub_and_image, display):
    run = succeeded(contsub_and_image)
    weblogs = sorted((run.delivery / 'working_reprocess').glob('**/pipeline-*/html/index.html'))
    assert len(weblogs) >= 2, 'one weblog for the continuum subtraction, one for the imaging'
    if not (display or os.environ.get('DISPLAY')):
        pytest.skip('no display for plotms: the weblogs have no plots')
    for index in weblogs:
        # hifa_importdata's plotms plots: missing when plotms cannot write where the pipeline runs
        assert list(index.parent.glob('sessionsession_1/*/azel.png')), index


def test_cleanup_removes_the_working_folder_and_keeps_every_product(contsub_and_image, run_script):
    run = succeeded(contsub_and_image)

    def products_and_mses():
        return [sorted(os.listdir(str(run.delivery / folder))) for folder in (IMAGES, 'measurement_sets')]
    kept = products_and_mses()
    result = run_script('--cleanup', delivery=run.delivery, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (run.delivery / 'working_reprocess').exists()
    assert products_and_mses() == kept
    after = user_ms_digests(run.delivery)
    assert {name: after[name] for name in run.before} == run.before


# --------------------------------------------------------------------------- --image with line MSes present

def test_image_alone_uses_the_delivered_line_mses_for_cubes(image_only, casa):
    run = succeeded(image_only)
    assert user_ms_digests(run.delivery) == run.before, 'a user MS (targets or line) changed'
    check_continuum_images(casa, run)
    check_cubes_hold_the_line_without_the_continuum(casa, run)
    check_repbw_cube(casa, run)
    # what the pipeline itself says it imaged the cubes from
    commands = sorted((run.delivery / 'working_reprocess').glob('**/pipeline-*/html/casa_commands.log'))
    assert commands
    calls = []  # a call starts at column 0; its continuation lines are indented
    for path in commands:
        for line in path.read_text().splitlines():
            if line.startswith('#') or not line.strip():
                continue
            if line[0].isspace() and calls:
                calls[-1] += ' ' + line.strip()
            else:
                calls.append(line.strip())
    cube_calls = [call for call in calls if call.startswith('tclean(') and "specmode='cube'" in call]
    assert cube_calls
    for call in cube_calls:
        visibilities = re.search(r"vis=\[([^\]]*)\]", call).group(1)
        assert '_targets_line.ms' in visibilities and "_targets.ms'" not in visibilities, call[:300]
