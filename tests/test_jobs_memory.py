"""--jobs for every step and memory planned per worker (issue 28).

  * `--image --jobs 2` makes its images in two worker processes, says so, and makes the same products
    (peak and rms of every image) as `--jobs 1`;
  * `--jobs` applies to --contsub_fast and --image, and is refused elsewhere.
"""
import re

import pytest

import scriptForReprocessing as sfr
from conftest import read_image

# one EB, a continuum source: mfs of each spw and the aggregate continuum, three small images
SMALL = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, offset_arcsec=(4.0, -3.0))


def peak_and_rms(casa, path):
    import numpy
    pixels = read_image(casa, path, dropdeg=True).pixels
    finite = pixels[numpy.isfinite(pixels)]
    return float(finite.max()), float(numpy.sqrt(numpy.mean(finite ** 2)))


def test_image_jobs_2_makes_the_products_of_jobs_1_in_two_processes(delivery_factory, run_script, casa):
    made = {}
    for jobs in ('1', '2'):
        delivery = delivery_factory(**SMALL)
        done = run_script('--delivery', delivery, '--image', '--specmodes', 'mfs,cont', '--jobs', jobs, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        processes = ' in 2 processes' if jobs == '2' else ' in 1 process'
        assert re.search(r'\n  3 images to make%s: about ' % processes, done.stdout), done.stdout
        workers = sorted((delivery / sfr.WORK_DIR_NAME / 'logs').glob('casa-*-worker*.log'))
        assert len(workers) == (2 if jobs == '2' else 0), workers
        made[jobs] = dict((path.name, peak_and_rms(casa, path)) for path in sorted((delivery / 'images').glob('*.fits')))
    assert len(made['1']) >= 6 and sorted(made['1']) == sorted(made['2'])
    for name, (peak, rms) in made['1'].items():
        assert made['2'][name] == pytest.approx((peak, rms), rel=1e-6), name


@pytest.mark.parametrize('args', [['--check', '--jobs', '2'], ['--contsub', '--jobs', '2'],
                                  ['--calibrated_final', '--jobs', '1']])
def test_jobs_without_a_step_that_has_workers_is_refused(args, capsys):
    assert sfr.main(args) == sfr.EXIT_USAGE
    assert capsys.readouterr().err.strip() == ('ERROR: --jobs only applies to --contsub_fast and --image (the steps '
                                               'that run in worker processes) — add one of them')
