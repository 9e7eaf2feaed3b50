"""SIGTERM at random moments of --contsub_fast and --image (a cluster's time limit sends SIGTERM).

Every stopped run must end with exit status 1 and one ERROR line that says what is on disk, the
user's MSes byte-identical, an "interrupted" report when the run had begun, nothing half-written
under a final name, and the next run must complete.  The moments are drawn in each part of a
control run's duration (early, middle, late) with a seed (REPROCESSING_SIGNAL_SEED, printed).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import SCRIPT, user_ms_digests
from stop_checks import fits_data, recorded_workers, running

SEED = int(os.environ.get('REPROCESSING_SIGNAL_SEED', '20261202'))
CONTSUB = dict(n_ebs=2)  # as in test_contsub_fast: the simulated delivery is shared
IMAGE = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, with_line_ms=True)


def start(delivery, args):
    return subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + list(args),
                            cwd=str(delivery), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)


def timed_run(delivery, args):
    started = time.time()
    process = start(delivery, args)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return time.time() - started, out


def moments(duration, count):
    """One moment in each of `count` equal parts of the run (the last part ends before the end)."""
    chooser = random.Random(SEED + count)
    part = 0.9 * duration / count
    return [round(part * (i + chooser.random()), 2) for i in range(count)]


def runs_recorded(delivery):
    return [json.loads(path.read_text()) for path in
            sorted((delivery / 'working_reprocess' / 'report').glob('run-*/run.json'))]


def stop_at(delivery, args, seconds):
    """Run the script, send SIGTERM after `seconds` (None: let it finish); (status, stdout, stderr)."""
    process = start(delivery, args)
    if seconds is not None:
        time.sleep(seconds)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def unchanged(delivery, before):
    """The user's MSes (those there before the run; not the line MSes it made) are byte-identical."""
    now = user_ms_digests(delivery)
    return all(now.get(name) == digests for name, digests in before.items())


def stopped_run(make_delivery, args, seconds, capsys, *, control_seconds):
    """(delivery, the user's MS digests before, whether the signal stopped the run): one checked trial.

    A run that ended before its signal, because the machine got faster since the control run (seen under a load
    falling from 12 to 3: a control run of 154 s, then runs over before 50 s), is tried once more on a fresh
    delivery, at the same fraction of that run's own duration."""
    delivery = make_delivery()
    before = user_ms_digests(delivery)
    started = time.time()
    status, out, err = stop_at(delivery, args, seconds)
    elapsed = time.time() - started
    with capsys.disabled():
        print('  at %.2f s: exit %s %s' % (seconds, status, ([l for l in err.splitlines() if 'ERROR' in l] or [''])[0]))
    was_stopped = check_stopped_run(delivery, status, out, err, before)
    if not was_stopped and elapsed < 0.8 * control_seconds:
        return stopped_run(make_delivery, args, round(seconds * elapsed / control_seconds, 2), capsys,
                           control_seconds=elapsed)
    return delivery, before, was_stopped


def check_stopped_run(delivery, status, out, err, before):
    assert 'Traceback' not in err and 'Traceback' not in out, err
    assert unchanged(delivery, before), 'a user MS changed'
    if status == 0:
        return False  # it finished before the signal: nothing to check about stopping
    if status == -signal.SIGTERM:  # before Python ran the script's first line: nothing can have been made
        assert not (delivery / 'working_reprocess').exists() and not list(delivery.glob('.scriptForReprocessing*'))
        return True
    assert status == 1, (status, err)
    errors = [line for line in err.splitlines() if line.startswith('ERROR:')]
    assert len(errors) == 1 and errors[0].startswith('ERROR: stopped by signal 15 (SIGTERM)'), err
    if 'nothing was written' not in errors[0]:  # the run had begun: its report says how it ended
        assert runs_recorded(delivery)[-1]['status'] == 'interrupted'
    return True


@pytest.mark.parametrize('count', [3])
def test_sigterm_at_random_moments_of_contsub_fast(delivery_factory, casa, count, capsys):
    args = ['--contsub_fast']
    control = delivery_factory(**CONTSUB)
    duration, _out = timed_run(control, args)
    rows = {}
    for line in (control / 'measurement_sets').glob('*_line.ms'):
        table = casa.casatools.table()
        table.open(str(line))
        rows[line.name] = table.nrows()
        table.close()
    assert len(rows) == 2
    stopped = 0
    with capsys.disabled():
        print('\n  seed %d, control run %.1f s, SIGTERM at %s s' % (SEED, duration, moments(duration, count)))
    for seconds in moments(duration, count):
        delivery, before, was_stopped = stopped_run(lambda: delivery_factory(**CONTSUB), args, seconds, capsys,
                                                    control_seconds=duration)
        stopped += was_stopped
        lines = sorted((delivery / 'measurement_sets').glob('*_line.ms'))
        for line in lines:  # a line MS under its final name is complete
            table = casa.casatools.table()
            table.open(str(line))
            assert table.nrows() == rows[line.name], line.name
            table.close()
        again = args + (['--overwrite-line'] if lines else [])
        status, out, err = stop_at(delivery, again, None)  # the next run, to its end
        assert status == 0, err
        assert sorted(p.name for p in (delivery / 'measurement_sets').glob('*_line.ms')) == sorted(rows)
        assert not [p for p in delivery.rglob('*.partial-*')], 'a partial output survived the next run'
        assert unchanged(delivery, before)
    assert stopped >= count - 1, 'the signal came too late to stop most runs'


@pytest.mark.parametrize('count', [2])
def test_sigterm_at_random_moments_of_image(delivery_factory, count, capsys):
    args = ['--image', '--engine', 'casa', '--specmodes', 'mfs,cube']
    control = delivery_factory(**IMAGE)
    duration, _out = timed_run(control, args)
    made = sorted(p.name for p in (control / 'images').iterdir())
    stopped = 0
    with capsys.disabled():
        print('\n  seed %d, control run %.1f s, SIGTERM at %s s' % (SEED, duration, moments(duration, count)))
    for seconds in moments(duration, count):
        delivery, before, was_stopped = stopped_run(lambda: delivery_factory(**IMAGE), args, seconds, capsys,
                                                    control_seconds=duration)
        stopped += was_stopped
        images = delivery / 'images'
        if images.exists():  # published: then whole
            assert sorted(p.name for p in images.iterdir()) == made
            continue
        status, out, err = stop_at(delivery, args, None)
        assert status == 0, err
        assert sorted(p.name for p in images.iterdir()) == made
        assert not [p for p in delivery.rglob('*.partial-*')], 'a partial output survived the next run'
        assert unchanged(delivery, before)
    assert stopped >= count - 1, 'the signal came too late to stop most runs'


@pytest.mark.parametrize('script', ['scriptForReprocessing', 'reprocessing_prep'])
def test_a_sigterm_while_the_finished_process_shuts_down_does_not_kill_it(script):
    # The race the random moments found under load (2026-12-07): "Done." printed, then a SIGTERM while Python
    # shut down, and the process died by it (-15).  Here the signal comes from an atexit handler, i.e. after
    # main() returned, at the same place; the process must end with the status main() gave.
    program = ('import atexit, os, signal, time\n'
               'import %s as script\n'
               'atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.3)))\n'
               'script.exit_as_finished(0)\n' % script)
    done = subprocess.run([sys.executable, '-c', program], cwd=str(SCRIPT.parent), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert 'Traceback' not in done.stderr


def test_a_stop_while_a_casa_image_is_open_for_writing_removes_it_without_an_abort(tmp_path):
    # Found by SIGTERM at random moments of a split cube (2026-12-07): the signal came inside the join, after
    # imageconcat had made the joined image and before its done(); the tool lived on in the traceback, the run's
    # cleanup removed its folder, and when Python collected the tool CASA's C++ aborted the process (exit -6,
    # "table.dat_tmp does not exist and cannot be created") instead of the one ERROR line.  Here the same order:
    # an image tool writing, a stop signal's exception, the folder removed while it is handled (remove_tree).
    program = ('import sys\n'
               'import numpy, scriptForReprocessing as script\n'
               'casa = script.load_casa(logfile=%r)\n'
               'work = %r\n'
               'import os; os.makedirs(work)\n'
               'def join():\n'
               '    image = casa.casatools.image()\n'
               '    image.fromshape(outfile=work + "/part", shape=[8, 8, 1, 3], overwrite=True)\n'
               '    try:\n'
               '        joined = image.subimage(outfile=work + "/joined", overwrite=True)\n'
               '        joined.putchunk(numpy.ones([8, 8, 1, 3], dtype=numpy.float32))\n'
               '        raise script.Interrupted(15)\n'
               '    finally:\n'
               '        image.done()\n'
               'try:\n'
               '    join()\n'
               'except script.Interrupted:\n'
               '    script.remove_tree(work)\n'
               'print("removed")\n' % (str(tmp_path / 'casa.log'), str(tmp_path / 'work')))
    done = subprocess.run([sys.executable, '-c', program], cwd=str(SCRIPT.parent), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert done.returncode == 0 and done.stdout == 'removed\n', (done.returncode, done.stderr[-800:])
    assert 'terminate called' not in done.stderr and not (tmp_path / 'work').exists()


SPLIT = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, with_line_ms=True, spw_ids=(25,))


@pytest.mark.parametrize('count', [3])
def test_a_split_cube_stopped_at_random_moments_ends_equal_to_an_uninterrupted_one(delivery_factory, count, capsys):
    """Issue 28: SIGTERM and SIGKILL at random moments of a cube made in chunks on 2 workers, then the same
    command: the cube equals, pixel for pixel, the one a run that was never stopped made (every chunk is made from
    the same record, whichever run makes it), no worker outlives a run, nothing partial is left."""
    args = ['--image', '--specmodes', 'cube', '--split-cube', '3', '--jobs', '2']
    control = delivery_factory(**SPLIT)
    duration, _out = timed_run(control, args)
    reference = fits_data(control / 'images')
    assert len(reference) == 3
    with capsys.disabled():
        print('\n  seed %d, control run %.1f s, stops at %s s' % (SEED, duration, moments(duration, count)))
    for index, seconds in enumerate(moments(duration, count)):
        how = (signal.SIGTERM, signal.SIGKILL)[index % 2]
        delivery = delivery_factory(**SPLIT)
        before = user_ms_digests(delivery)
        process = start(delivery, args)
        time.sleep(seconds)
        process.send_signal(how)
        out, err = process.communicate(timeout=300)
        with capsys.disabled():
            print('  %s at %.2f s: exit %s %s' % (signal.Signals(how).name, seconds, process.returncode,
                                                  ([l for l in err.splitlines() if 'ERROR' in l] or [''])[0]))
        if how == signal.SIGTERM:
            check_stopped_run(delivery, process.returncode, out, err, before)
        else:
            assert process.returncode in (0, -signal.SIGKILL), err
        workers = recorded_workers(delivery)
        deadline = time.time() + 10  # a worker's own check of its parent runs every second
        while [pid for pid in workers if running(pid)] and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if running(pid)], 'a worker outlived its run'
        if not (delivery / 'images').exists():  # not finished before the signal: the same command again
            status, out, err = stop_at(delivery, args, None)
            assert status == 0, err
        assert fits_data(delivery / 'images') == reference
        assert not [p for p in delivery.rglob('*.partial-*')] and not (delivery / 'working_reprocess' /
                                                                       'imaging-chunks').exists()
        assert unchanged(delivery, before)


def test_a_stop_that_casa_returns_as_another_error_is_still_a_stop():
    # Found by stopping --beam common at random moments (2026-12-07): a SIGTERM inside imsmooth came back from
    # casatasks as SystemError("<built-in function ...> returned a result with an exception set"), chained to the
    # handler's Interrupted, and the run said "imsmooth failed ... see the CASA log" instead of its stop.
    import scriptForReprocessing as sfr
    stop = sfr.Interrupted(15)
    try:
        try:
            raise stop
        except sfr.Interrupted as inner:
            raise SystemError('<built-in function image_convolve2d> returned a result with an exception set') \
                from inner
    except SystemError as error:
        assert sfr.stop_behind(error) is stop
    assert sfr.stop_behind(RuntimeError('a CASA task failed')) is None  # no signal came: an error stays an error
    with sfr.signals_as_exceptions():
        with pytest.raises(sfr.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        behind = sfr.stop_behind(RuntimeError('what a handler made of it'))  # a signal came: the stop, not the error
        assert isinstance(behind, sfr.Interrupted) and behind.number == signal.SIGTERM
        with pytest.raises(sfr.Interrupted):
            sfr.raise_if_stopped()
    with sfr.signals_as_exceptions():  # the next run starts with no stop received
        assert sfr.stop_behind(RuntimeError('a CASA task failed')) is None
