"""A cube made in channel chunks (--split-cube; issue 28): planned from the memory model, resumed per chunk.

  * a cube that does not fit --memory-per-worker in one process is split into chunks that fit (and a cube four
    times longer gets more chunks, not larger ones) instead of being refused; only a cube whose smallest chunk
    cannot fit is refused, in one line; --split-cube no keeps the old refusal;
  * a split cube has the whole cube's spectral grid, one beam per plane, and its line where the simulator put
    it, at the injected peak;
  * a run stopped by SIGTERM while a chunk's cube health cleaned channels again, then by SIGKILL after more chunks
    were finished: the same command reuses them (it says so), makes only the others (a chunk kept before its
    health pass: only that pass; the channel grid: not probed again), and joins a cube equal (peak, rms within
    1 %) to an uninterrupted run's.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, one_error_line, read_image, truth_of

# one EB, one spw: a cube of 144x144 pixels x 30 channels with a line in the middle
CUBE = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, with_line_ms=True, spw_ids=(25,))
MB = 1000 * 1000
BEFORE_HEALTH = sfr.BEFORE_HEALTH


def dry_run_rows(stdout):
    """{channels: (chunks or None, chunk size text, MB per process)} of --dry-run's cube lines."""
    rows = {}
    for match in re.finditer(r'\n    oussid\.\S+cube\S*: \d+x\d+ x (\d+) channels, about [0-9.]+ MB on disk, '
                             r'(?:made in (\d+) chunks of ([0-9-]+) channels: )?([0-9.]+) MB of memory', stdout):
        rows[int(match.group(1))] = (int(match.group(2)) if match.group(2) else None, match.group(3),
                                     float(match.group(4)))
    return rows


def test_a_cube_too_large_for_a_worker_is_split_in_chunks_that_fit_not_refused(delivery_factory, run_script):
    delivery = delivery_factory(**CUBE)
    command = ('--delivery', delivery, '--image', '--specmodes', 'cube', '--dry-run')
    whole = dry_run_rows(run_script(*command).stdout)
    (nchan, (chunks, _size, whole_mb)), = whole.items()
    assert chunks is None and nchan == 30  # it fits the machine: made whole, as before
    per_channel = (whole_mb - 500.0) / nchan  # the memory model: 0.5 GB + 24 planes x 4 bytes per pixel-channel
    limit_mb = 500.0 + 3.5 * per_channel  # three channels fit, four do not
    long_cube = run_script(*command, '--memory-per-worker', '%.1fMB' % limit_mb)
    short_cube = run_script(*command, '--memory-per-worker', '%.1fMB' % limit_mb, '--nbins', '25:4')
    assert long_cube.returncode == 0 and short_cube.returncode == 0, long_cube.stdout + long_cube.stderr
    (long_n, (long_chunks, long_size, long_mb)), = dry_run_rows(long_cube.stdout).items()
    (short_n, (short_chunks, short_size, short_mb)), = dry_run_rows(short_cube.stdout).items()
    assert (long_n, short_n) == (30, 6)  # five times the channels
    assert (long_chunks, long_size) == (10, '3') and (short_chunks, short_size) == (2, '3')
    assert long_mb == short_mb <= limit_mb  # the same memory per worker, under the limit
    # not even three channels fit: refused in one line, before anything is written
    refused = run_script('--delivery', delivery, '--image', '--specmodes', 'cube', '--memory-per-worker',
                         '%.1fMB' % (500.0 + 2.5 * per_channel))
    assert re.fullmatch(r'ERROR: the cube oussid\.\S+ \(144x144 x 30 channels\) needs about [0-9.]+ MB of memory in one '
                        r'process even in chunks of 3 channels, more than --memory-per-worker [0-9.]+ MB allows — '
                        r'make its planes smaller \(--imsize, --cell\), give a larger --memory-per-worker if the '
                        r'machine has it', one_error_line(refused, sfr.EXIT_FAILED))
    assert sorted(p.name for p in delivery.iterdir()) == ['caltables', 'measurement_sets', 'truth.json']
    # --split-cube no: the cube is refused as it was before chunks
    never = run_script(*command, '--memory-per-worker', '%.1fMB' % limit_mb, '--split-cube', 'no')
    assert 'needs about %.1f MB of memory in one process' % whole_mb in one_error_line(never, sfr.EXIT_FAILED)
    # --split-cube 2 --jobs 2: the cube over both workers, though it fits
    both = run_script(*command, '--split-cube', '2', '--jobs', '2')
    assert dry_run_rows(both.stdout)[30][:2] == (2, '15') and '\n  Images: 1 to make in 2 processes' in both.stdout


def cleaned_chunks(delivery, stage='cleaned'):
    """The records kept at stage (None: every stage: dirty images, and the cube's grid too)."""
    store = delivery / sfr.WORK_DIR_NAME / 'imaging-chunks'
    # only folders with their final name: a partial one (".name.partial-PID") is not a finished chunk
    records = [json.loads(path.read_text()) for path in store.glob('*/*/finished.provenance.json')
               if not path.parent.name.startswith('.')]
    return [record for record in records if stage is None or record.get('stage') == stage]


def stopped_after(delivery, args, cleaned, how, stage='cleaned'):
    """Start the command, send how (a signal) once `cleaned` chunks are kept at stage; the process's output."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + list(args),
                               cwd=str(delivery), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    deadline = time.time() + 900
    while len(cleaned_chunks(delivery, stage)) < cleaned:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, 'no chunk was finished in time'
        time.sleep(0.2)
    process.send_signal(how)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def cube_of(casa, delivery):
    import numpy
    path, = (delivery / 'images').glob('*spw25.cube.I.pbcor.fits')
    image = read_image(casa, path, dropdeg=False)
    finite = image.pixels[numpy.isfinite(image.pixels)]
    return image, float(finite.max()), float(numpy.sqrt(numpy.mean(finite ** 2)))


def line_at_source(casa, delivery, image):
    """(frequency of the brightest channel at the source, its value, the channel width) of a cube."""
    import numpy
    truth = truth_of(delivery)
    source = truth['fields'][0]['source_direction']
    coordinates = image.coordinates
    world = coordinates.referencevalue(format='n')['numeric']
    world[0], world[1] = numpy.radians(source['ra_deg']), numpy.radians(source['dec_deg'])
    pixel = coordinates.topixel(list(world))['numeric']
    spectrum = image.pixels[int(round(pixel[0])), int(round(pixel[1])), :]
    channel = int(numpy.argmax(spectrum))
    axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
    at = list(pixel)
    frequencies = []
    for k in (channel, channel + 1):
        at[axis] = k
        frequencies.append(coordinates.toworld(at, 'n')['numeric'][axis])
    return frequencies[0], float(spectrum[channel]), abs(frequencies[1] - frequencies[0])


def test_a_split_cube_stopped_twice_reuses_its_finished_chunks_and_equals_an_uninterrupted_run(
        delivery_factory, run_script, casa):
    args = ['--image', '--specmodes', 'cube', '--split-cube', '3', '--jobs', '2']
    reference = delivery_factory(**CUBE)
    done = run_script('--delivery', reference, *args, timeout=1200)
    assert done.returncode == 0 and done.stderr == '', done.stdout + done.stderr
    assert 'is made in 3 chunks of 10 channels (--split-cube 3), it differs slightly from the cube one tclean makes' \
        in done.stdout
    for k in (1, 2, 3):  # progress, chunk by chunk
        assert re.search(r'\] chunk %d of 3 done, (about .+ left|all cleaned)\n' % k, done.stdout), done.stdout
    image, peak, rms = cube_of(casa, reference)
    # the physics: the whole cube's grid (30 channels from the plan's first frequency), a beam per plane, the
    # line at its injected LSRK frequency and peak
    grid = re.search(r'30 channels of ([0-9.]+)MHz from ([0-9.]+)GHz \(LSRK', done.stdout)
    assert image.pixels.shape[2] == 30 and len(image.beam['beams']) == 30
    truth = truth_of(reference)
    frequency, line_peak, width = line_at_source(casa, reference, image)
    assert width == pytest.approx(float(grid.group(1)) * 1e6, rel=1e-6)
    assert abs(frequency - truth['line_lsrk_freq_ghz']['25'][0] * 1e9) <= width
    assert line_peak == pytest.approx(truth['line_peak_jy'], rel=0.10)

    delivery = delivery_factory(**CUBE)
    # a scheduler's time limit, while a chunk's cube health cleans channels again (the line's): that chunk is kept
    # cleaned, before its health pass
    code, out, err = stopped_after(delivery, args, 1, signal.SIGTERM, stage=BEFORE_HEALTH)
    assert code == sfr.EXIT_FAILED and re.fullmatch(r'ERROR: stopped by signal 15 \(SIGTERM\).*', one_error_line(
        subprocess.CompletedProcess([], code, out, err))), out + err
    assert not (delivery / 'images').exists()
    first, health = len(cleaned_chunks(delivery)), len(cleaned_chunks(delivery, BEFORE_HEALTH))
    # the error line says what is kept for the next run (it once said "nothing of this run was kept")
    every = len([record for record in cleaned_chunks(delivery, None) if record.get('stage') != sfr.GRID_STAGE])
    assert every >= first + health and one_error_line(subprocess.CompletedProcess([], code, out, err)).endswith(
        ' — %d chunk%s of split cubes kept in %s; run the same command again: it makes only the rest' % (
            every, '' if every == 1 else 's', sfr.WORK_DIR_NAME)), out + err
    assert health >= 1
    code, out, err = stopped_after(delivery, args, first + 1, signal.SIGKILL)  # then nothing can clean up
    assert code == -signal.SIGKILL
    assert 'chunks kept from a run that was stopped, with the same inputs and parameters (%d cleaned, %d of them ' \
           'before their cube-health pass, ' % (first + health, health) in out, out
    # such a chunk is not cleaned again: only its health pass is made; the channel grid is not probed again
    assert len(re.findall(r'\[spw25\.cube chunk\d+\] cleaned by a run that was stopped \(\d+ clean iterations\): '
                          r'only its cube-health pass is made again\n', out)) == health, out
    assert 'the channel grid of a run that was stopped, with the same inputs and parameters: not probed again' in out
    store = delivery / sfr.WORK_DIR_NAME / 'imaging-chunks'
    for folder in store.glob('*/*'):  # a final name only when complete
        assert folder.name.startswith('.') or (folder / 'finished.provenance.json').is_file(), folder
    kept, health = cleaned_chunks(delivery), cleaned_chunks(delivery, BEFORE_HEALTH)
    assert len(kept) >= 2 and len(set(record['threshold'] for record in kept + health)) == 1
    resumed = run_script('--delivery', delivery, *args, timeout=1200)
    assert resumed.returncode == 0 and resumed.stderr == '', resumed.stdout + resumed.stderr
    assert re.search(r'\] \d of 3 chunks kept from a run that was stopped, with the same inputs and parameters '
                     r'\(%d cleaned, %s\d dirty images\): not made again' % (
                         len(kept) + len(health), '%d of them before their cube-health pass, ' % len(health)
                         if health else ''), resumed.stdout), resumed.stdout
    assert len(re.findall(r'\[spw25\.cube chunk\d+\] \d+ clean iterations', resumed.stdout)) == \
        3 - len(kept) - len(health)
    again, again_peak, again_rms = cube_of(casa, delivery)
    assert again.pixels.shape == image.pixels.shape
    assert again_peak == pytest.approx(peak, rel=0.01) and again_rms == pytest.approx(rms, rel=0.01)
    assert not store.exists() and not (delivery / sfr.WORK_DIR_NAME / 'imaging-finished').exists()


def test_a_chunk_stopped_after_its_automasking_pass_found_nothing_makes_only_its_fallback_and_equals_a_whole_run(
        delivery_factory, run_script):
    """The line's chunk (10 chunks of 3 channels: its residual peak over 30 x the noise) has an automasking pass that
    finds nothing, then the fallback cleans it.  A run stopped between the two keeps the chunk at that stage (its
    dirty images, the record saying what the pass found): the same command makes only the fallback, and the cube's
    FITS data equal those of an uninterrupted run that made the pass, and of one whose forecast skipped it.
    NO_FORECAST_ENV (test-only) makes the runs make every pass: the forecast would skip this one."""
    from stop_checks import fits_data
    args = ['--image', '--specmodes', 'cube', '--split-cube', '10', '--jobs', '2']
    every_pass = {sfr.NO_FORECAST_ENV: '1'}
    reference = delivery_factory(**CUBE)
    done = run_script('--delivery', reference, *args, env=every_pass, timeout=1200)
    assert done.returncode == 0 and done.stderr == '', done.stdout + done.stderr
    passes = re.findall(r'\[spw25\.cube (chunk\d+)\] no automatic mask was found in any channel \(residual peak',
                        done.stdout)
    assert len(passes) == 1, done.stdout  # made by tclean's pass (not "foreseen")
    forecast = delivery_factory(**CUBE)
    skipped = run_script('--delivery', forecast, *args, timeout=1200)
    assert skipped.returncode == 0 and '[spw25.cube %s] no automatic mask was found in any channel (foreseen from ' \
        'the dirty cube' % passes[0] in skipped.stdout, skipped.stdout

    delivery = delivery_factory(**CUBE)
    marker = delivery / sfr.WORK_DIR_NAME / 'imaging' / 'chunks' / '.paused-at-chunk-nothing-automasked'
    process = subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + args, cwd=str(delivery),
                               env=dict(os.environ, **dict(every_pass, **{sfr.PAUSE_ENV: 'chunk-nothing-automasked'})),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    deadline = time.time() + 600
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, 'the pass that finds nothing was not reached'
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=300)
    kept = cleaned_chunks(delivery, sfr.NOTHING_AUTOMASKED)
    assert len(kept) == 1 and kept[0]['residual'][0] > 10.0 * kept[0]['residual'][1], kept
    resumed = run_script('--delivery', delivery, *args, env=every_pass, timeout=1200)
    assert resumed.returncode == 0 and resumed.stderr == '', resumed.stdout + resumed.stderr
    assert ', 1 of them after an automasking pass that found nothing): not made again' in resumed.stdout, resumed.stdout
    assert '[spw25.cube %s] no automatic mask was found in any channel (known from a run that was stopped after its ' \
        'automasking pass: not made again)' % passes[0] in resumed.stdout, resumed.stdout
    expected = fits_data(reference / 'images')
    assert len(expected) == 3 and fits_data(delivery / 'images') == expected == fits_data(forecast / 'images')
