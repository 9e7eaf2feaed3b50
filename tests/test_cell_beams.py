"""The PSF beams that set the cells (imaging/cell_beams.py): kept between runs for the same data and settings, and
not made when the cell is given.

A second run on the same delivery takes the cell from the first run's PSF instead of making the PSF again (an mfs
PSF of the whole spw, 7.0 s of a 54-s first run in bench/bench_grid.py --size xlarge) and makes the same image; a
user's change to an MS (a flag) makes it again; --cleanup removes the file, also from a working_reprocess/ that
links to scratch.  A cell given as an angle makes no PSF at all.
"""

import json
import os
import re
import time

import numpy

import scriptForReprocessing as sfr
from conftest import read_image, user_ms_digests

ONE_EB = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, offset_arcsec=(4.0, -3.0))
MFS = ('--specmodes', 'mfs', '--spw', '25')


def psf_calls(result):
    """The tclean calls that made a PSF for a cell, in the CASA log of the run that printed result."""
    log = re.search(r'CASA log: (\S+)', result.stdout).group(1)
    with open(log) as handle:
        return [line for line in handle if 'tclean(' in line and 'psf-for-cell' in line]


def kept_beams(delivery):
    return json.loads((delivery / sfr.WORK_DIR_NAME / 'known-beams.json').read_text())


def test_a_second_run_takes_the_cell_from_the_first_runs_psf_and_a_changed_ms_makes_it_again(
        delivery_factory, run_script, casa, tmp_path):
    delivery = delivery_factory(**ONE_EB)
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    (delivery / sfr.WORK_DIR_NAME).symlink_to(scratch)  # a cluster habit: cleanup must still remove the file
    time.sleep(sfr.FRESH_SECONDS)  # the copied MS settled: its beam may be kept
    before = user_ms_digests(delivery)

    first = run_script('--delivery', delivery, '--image', *MFS, timeout=900)
    assert first.returncode == 0, first.stderr
    assert len(psf_calls(first)) == 1 and 'an earlier run made' not in first.stdout
    assert len(kept_beams(delivery)) == 1

    second = run_script('--delivery', delivery, '--image', 'images-again', *MFS, timeout=900)
    assert second.returncode == 0, second.stderr
    assert psf_calls(second) == []
    said = [line.strip() for line in second.stdout.splitlines() if 'an earlier run made' in line]
    assert said == ['the cell of spw 25 (IRAS_16293-2422) from the PSF beam an earlier run made of the same data '
                    'and settings (working_reprocess/known-beams.json)']
    (fits,) = (delivery / 'images').glob('*.mfs.I.pbcor.fits')
    again = delivery / 'images-again' / fits.name
    first_image, second_image = read_image(casa, fits, dropdeg=True), read_image(casa, again, dropdeg=True)
    assert list(first_image.coordinates.increment()['numeric']) == list(second_image.coordinates.increment()['numeric'])
    assert first_image.pixels.shape == second_image.pixels.shape
    assert numpy.array_equal(first_image.pixels, second_image.pixels, equal_nan=True)  # same cell, same image
    assert user_ms_digests(delivery) == before

    # the user flags an antenna: the data the PSF is made of changed, so it is made again
    (ms,) = (delivery / 'measurement_sets').glob('*_targets.ms')
    casa.casatasks.flagdata(vis=str(ms), mode='manual', antenna='0', flagbackup=False)
    time.sleep(sfr.FRESH_SECONDS)
    third = run_script('--delivery', delivery, '--image', 'images-flagged', *MFS, timeout=900)
    assert third.returncode == 0, third.stderr
    assert len(psf_calls(third)) == 1 and 'an earlier run made' not in third.stdout
    assert len(kept_beams(delivery)) == 2

    cleaned = run_script('--delivery', delivery, '--cleanup')
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (scratch / 'known-beams.json').exists()


def test_a_cell_given_as_an_angle_makes_no_psf(delivery_factory, run_script, casa):
    delivery = delivery_factory(**ONE_EB)
    result = run_script('--delivery', delivery, '--image', '--cell', '0.5arcsec', *MFS, timeout=900)
    assert result.returncode == 0, result.stderr
    assert psf_calls(result) == [] and not (delivery / sfr.WORK_DIR_NAME / 'known-beams.json').exists()
    (fits,) = (delivery / 'images').glob('*.mfs.I.pbcor.fits')
    increment = read_image(casa, fits, dropdeg=True).coordinates.increment(format='n', type='direction')['numeric']
    assert abs(abs(float(increment[0])) * 206264.806 - 0.5) < 1e-6


def test_a_known_beams_file_that_is_not_ours_is_ignored_and_replaced(tmp_path):
    path = tmp_path / 'known-beams.json'
    known = sfr.KnownBeams(path)
    for text in ('not json', '[1, 2]', '{"k": "1.0"}', '{"k": [0, 1]}'):
        path.write_text(text)
        assert known.get('k') is None, text
    known.put('k', (1.25, 1.0))
    assert sfr.KnownBeams(path).get('k') == (1.25, 1.0)
    assert known.get(None) is None


def test_an_ms_written_in_the_last_seconds_gives_no_key(tmp_path):
    ms = tmp_path / 'uid___A002_X1_X2_targets.ms'
    (ms / 'FIELD').mkdir(parents=True)
    for name in ('table.dat', 'table.f0', 'FIELD/table.dat'):
        (ms / name).write_text(name)
    known = sfr.KnownBeams(tmp_path / 'known-beams.json')
    assert known.key(vis=[str(ms)], casa_version='6.7', robust=0.5) is None
    old = time.time() - 10
    for name in ('table.dat', 'table.f0', 'FIELD/table.dat'):
        os.utime(str(ms / name), (old, old))
    key = known.key(vis=[str(ms)], casa_version='6.7', robust=0.5)
    assert key is not None and key == known.key(vis=[str(ms)], casa_version='6.7', robust=0.5)
    assert key != known.key(vis=[str(ms)], casa_version='6.7', robust=2.0)
    (ms / 'FIELD' / 'table.dat').write_text('a FIELD row changed')
    os.utime(str(ms / 'FIELD' / 'table.dat'), (old + 1, old + 1))
    assert known.key(vis=[str(ms)], casa_version='6.7', robust=0.5) not in (None, key)


