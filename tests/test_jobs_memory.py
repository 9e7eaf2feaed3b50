"""--jobs for every step and memory planned per worker (issue 28).

  * `--image --jobs 2` makes its images in two worker processes, says so, and makes the same products
    (peak and rms of every image) as `--jobs 1`;
  * `--jobs` applies to --contsub_fast and --image, and is refused elsewhere;
  * the plan estimates each image's disk, memory and time from metadata (--dry-run shows them); the largest
    process of a run stays under the planned memory; an image that cannot fit in a worker's share is refused
    in one line before anything is written; without --jobs, fewer workers run when the memory asks for it.
"""
import re
import time

import pytest

import scriptForReprocessing as sfr
from conftest import one_error_line, read_image

# one EB, a continuum source: mfs of each spw and the aggregate continuum, three small images
SMALL = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, offset_arcsec=(4.0, -3.0))


def peak_and_rms(casa, path):
    import numpy
    pixels = read_image(casa, path, dropdeg=True).pixels
    finite = pixels[numpy.isfinite(pixels)]
    return float(finite.max()), float(numpy.sqrt(numpy.mean(finite ** 2)))


# runs a command and says the peak RSS of its largest process (itself, its workers): getrusage of the children
MEASURED = ('import resource, subprocess, sys\n'
            'code = subprocess.call(sys.argv[1:])\n'
            'sys.stderr.write("@@peak %d\\n" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))\n'
            'sys.exit(code)\n')


def run_measured(delivery, *args):
    """(CompletedProcess, peak RSS in bytes of the largest process of the run)."""
    import sys
    from conftest import SCRIPT, run_command
    done = run_command([sys.executable, '-c', MEASURED, sys.executable, str(SCRIPT)] + list(args), cwd=delivery,
                       timeout=900)
    peak = int(re.search(r'@@peak (\d+)\n', done.stderr).group(1))
    done.stderr = re.sub(r'@@peak \d+\n', '', done.stderr)
    return done, peak


def test_image_jobs_2_makes_the_products_of_jobs_1_in_two_processes(delivery_factory, run_script, casa):
    made = {}
    for jobs in ('1', '2'):
        delivery = delivery_factory(**SMALL)
        args = ('--image', '--specmodes', 'mfs,cont', '--jobs', jobs, '--memory-per-worker', '2GB')
        planned = run_script('--delivery', delivery, '--dry-run', *args)
        estimate, limit = dry_run_memory(planned.stdout)
        assert limit == 2e9
        done, peak = run_measured(delivery, *args)
        assert done.returncode == 0 and done.stderr == '', done.stdout + done.stderr
        assert peak <= estimate, 'the largest process took %.3f GB, more than the %.3f GB planned' % (
            peak / 1e9, estimate / 1e9)
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
    assert one_error_line(capsys.readouterr()) == ('ERROR: --jobs only applies to --contsub_fast and --image (the steps '
                                               'that run in worker processes) — add one of them')


# -- memory per worker, planned from metadata ----------------------------------------------------------

def dry_run_memory(stdout):
    """(bytes of the largest image, bytes each worker may use or None) from --dry-run's Memory line."""
    match = re.search(r'\n  Memory: about ([0-9.]+) (MB|GB) for the largest image(?:, each worker may use ([0-9.]+) '
                      r'(MB|GB))?', stdout)
    assert match, stdout
    unit = {'MB': 1e6, 'GB': 1e9}
    return (float(match.group(1)) * unit[match.group(2)],
            float(match.group(3)) * unit[match.group(4)] if match.group(3) else None)


def test_dry_run_shows_each_images_disk_memory_and_time(delivery_factory, run_script):
    delivery = delivery_factory(**SMALL)
    done = run_script('--delivery', delivery, '--image', '--specmodes', 'mfs,cont', '--dry-run', '--jobs', '2',
                      '--memory-per-worker', '3GB')
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r'\n    (oussid\.\S+): (\d+)x(\d+), about [0-9.]+ [kM]B on disk, ([0-9.]+) MB of memory, ~\d+ s',
                      done.stdout)
    assert len(rows) == 3, done.stdout
    largest, limit = dry_run_memory(done.stdout)
    assert limit == 3e9 and largest == max(float(row[3]) for row in rows) * 1e6


def test_a_tiny_memory_limit_is_refused_before_anything_is_written(delivery_factory, run_script):
    delivery = delivery_factory(**SMALL)
    done = run_script('--delivery', delivery, '--image', '--specmodes', 'mfs,cont', '--memory-per-worker', '50MB')
    assert re.fullmatch(r'ERROR: the image oussid\.\S+ \(\d+x\d+\) needs about [0-9.]+ MB of memory in one process, '
                        r'more than --memory-per-worker 50\.0 MB allows — make it smaller \(--imsize, --nchan, '
                        r'--nbins, --spw\), give a larger --memory-per-worker if the machine has it, or spread its '
                        r'channels over MPI servers \(mpirun, see "Running on a cluster"\)', one_error_line(done, sfr.EXIT_FAILED))
    assert sorted(p.name for p in delivery.iterdir()) == ['caltables', 'measurement_sets', 'truth.json']


def test_without_jobs_the_workers_are_as_many_as_the_memory_holds(delivery_factory, capsys, monkeypatch):
    delivery = delivery_factory(**SMALL)
    monkeypatch.setattr(sfr, 'available_cores', lambda: 2)
    monkeypatch.setattr(sfr, 'available_memory', lambda: 12 * 10 ** 8)  # an image takes about 0.5 GB: twice fits
    assert sfr.main(['--delivery', str(delivery), '--image', '--specmodes', 'mfs,cont', '--dry-run']) == 0
    assert '\n  Images: 3 to make in 2 processes, ' in capsys.readouterr().out
    monkeypatch.setattr(sfr, 'available_memory', lambda: 7 * 10 ** 8)  # only once
    assert sfr.main(['--delivery', str(delivery), '--image', '--specmodes', 'mfs,cont', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '\n  Images: 3 to make in 1 process, ' in out
    assert re.search(r'Note: 2 images side by side would need about 1\.0 GB of memory, 700\.0 MB is available: 1 '
                     r'process makes them \(give --jobs to choose\)', out), out
    # --jobs 2 is obeyed, and then each of the two may use half, which the images do not fit in
    assert sfr.main(['--delivery', str(delivery), '--image', '--specmodes', 'mfs,cont', '--dry-run', '--jobs', '2']) == 1
    error = one_error_line(capsys.readouterr())
    assert re.match(r'ERROR: the image \S+ \(\d+x\d+\) needs about 50[0-9.]+ MB of memory in one process, more than '
                    r'the 700\.0 MB available / 2 workers allows — run fewer workers \(--jobs 1\), ', error), error


def _environment_of(pid):
    """A worker's environment once its exec is complete: Popen returns when the exec has closed the worker's
    descriptors, before the kernel has set the new environment's place, and a read then finds it empty (seen
    once in CI on 2 busy cores: the last of three workers read as having no OMP_NUM_THREADS)."""
    deadline = time.time() + 20
    while True:
        with open('/proc/%d/environ' % pid, 'rb') as handle:
            environment = dict(item.split(b'=', 1) for item in handle.read().split(b'\0') if b'=' in item)
        if environment or time.time() > deadline:
            return environment
        time.sleep(0.05)


def _recorded_workers(state):
    text = state.lock_path.read_text()
    return sorted(int(pid) for pid in re.search(r'\nworkers ([0-9 ]*)\n', text).group(1).split())


def test_workers_started_before_the_run_knows_its_tasks_are_fitted_to_it(tmp_path, monkeypatch):
    """steps/image.py starts a split cube's workers before its own planning; EbWorkers.narrow then keeps as many
    as the run needs (the others stopped, never given a task), or replaces them all when their threads differ."""
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    root = tmp_path / 'calibrated_final'
    (root / 'measurement_sets').mkdir(parents=True)
    state = sfr.RunState(sfr.Delivery(root))
    state.acquire()
    cores = sfr.available_cores()
    try:
        with sfr.EbWorkers.started(3, state=state, share_cores=True) as workers:
            early = list(workers.processes)
            assert [_environment_of(p.pid).get(b'OMP_NUM_THREADS') for p in early] == \
                [str(max(1, cores // 3)).encode()] * 3
            assert _recorded_workers(state) == sorted(p.pid for p in early)
            workers.narrow(2, share_cores=True)
            if cores // 2 == cores // 3 or cores < 3:  # the same threads for 2 as for 3: the first two kept
                assert workers.processes == early[:2] and workers.count == 2
            else:  # more threads each for 2 workers: two new ones
                assert not set(workers.processes) & set(early) and len(workers.processes) == 2
            assert early[2].wait(10) is not None  # the third stopped at once
            assert _recorded_workers(state) == sorted(p.pid for p in workers.processes)
            # the kept ones serve tasks: one answers (here an error line: a task given no arguments)
            with pytest.raises(sfr.ReprocessingError, match=r'image_job failed on eb1 \(TypeError'):
                workers.run([{'function': 'image_job', 'eb': 'eb1', 'arguments': {}}], casa=None)
            shared = list(workers.processes)
            workers.narrow(2, share_cores=False)  # images side by side, each tclean with every core: new workers
            assert not set(workers.processes) & set(shared) and len(workers.processes) == 2
            assert [b'OMP_NUM_THREADS' in _environment_of(p.pid) for p in workers.processes] == [False, False]
            assert _recorded_workers(state) == sorted(p.pid for p in workers.processes)
            last = list(workers.processes)
            assert all(p.poll() is None for p in last)
            workers.narrow(1)  # nothing for workers: all stopped, the tasks run in this process
            assert workers.processes == [] and workers.count == 1 and all(p.poll() is not None for p in last)
    finally:
        state.release()
