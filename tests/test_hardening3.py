"""Hardening, round 3 (issue 26): orphan workers, long paths, no inodes, signals at publishing, images
put back after a kill, subtable edits under --update, outputs into the user's data, per-EB windows.
Real CASA on small simulated deliveries; every case ends in success or one ERROR line.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, long_directory, user_ms_digests

TWO_EBS = dict(n_ebs=2)  # the delivery of test_contsub_fast and test_signals (shared cache)


def start(delivery, *args, env=None, cwd=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + [str(a) for a in args],
                            cwd=str(cwd or delivery), env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def run(delivery, *args, env=None, cwd=None, timeout=600):
    process = start(delivery, *args, env=env, cwd=cwd)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def one_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('ERROR: '), err
    return lines[0]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open('/proc/%d/stat' % pid) as handle:
        return handle.read().rsplit(')', 1)[-1].split()[0] != 'Z'


def paused_workers(delivery, process, count):
    """The pids of `count` workers paused before their first task (WORKER_PAUSE_ENV)."""
    logs = delivery / 'working_reprocess' / 'logs'
    deadline = time.time() + 240
    while len(list(logs.glob('.worker-paused-*'))) < count:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, 'the workers never started their tasks'
        time.sleep(0.2)
    return [int(path.read_text()) for path in logs.glob('.worker-paused-*')]


# --- 2b: every worker process dies with its parent; the next run stops an orphan ----------------------

def test_workers_die_with_their_parent_killed_outright(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    before = user_ms_digests(delivery)
    process = start(delivery, '--contsub_fast', '--jobs', '2', env={sfr.WORKER_PAUSE_ENV: '1'})
    workers = paused_workers(delivery, process, 2)
    process.kill()  # SIGKILL: no cleanup runs in the parent
    process.communicate()
    deadline = time.time() + 5
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), 'a worker outlived its parent by 5 s'
    status, out, err = run(delivery, '--check')
    assert status == 0, err
    assert 'Recovering from an interrupted run' in out
    assert user_ms_digests(delivery) == before


def test_the_next_run_stops_workers_that_outlived_their_run(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    process = start(delivery, '--contsub_fast', '--jobs', '2',
                    env={sfr.WORKER_PAUSE_ENV: '1', sfr.NO_PARENT_WATCH_ENV: '1'})
    workers = paused_workers(delivery, process, 2)
    process.kill()
    process.communicate()
    time.sleep(1.5)
    assert all(alive(pid) for pid in workers)  # orphans (their watch disabled), holding the lock
    stranger = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])  # not the tool's
    try:
        lock = delivery / sfr.LOCK_NAME
        text = lock.read_text()
        assert 'workers ' in text
        lock.write_text(text.rstrip('\n') + ' %d\n' % stranger.pid)  # named as a worker, but is not one
        status, out, err = run(delivery, '--check')
        assert status == 0, err
        assert 'Stopped 2 worker processes' in out, out
        assert not any(alive(pid) for pid in workers)
        assert stranger.poll() is None  # a process that is not one of its workers is never touched
    finally:
        stranger.kill()
        stranger.wait()


# --- 4: a current directory (or a delivery) too long for CASA -----------------------------------------

def test_a_delivery_of_1503_characters_is_checked_from_inside_it(delivery_factory, tmp_path):
    import shutil
    source = delivery_factory(**TWO_EBS)
    delivery = long_directory(tmp_path / 'long', 1503)
    os.rmdir(str(delivery))
    shutil.move(str(source), str(delivery))
    before = user_ms_digests(delivery)
    command = [sys.executable, str(SCRIPT)]
    checked = subprocess.run(command + ['--check'], cwd=str(delivery), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert checked.returncode == 0, (checked.returncode, checked.stderr[-2000:])  # was -6 (SIGABRT), silent
    made = subprocess.run(command + ['--contsub_fast', '--jobs', '2'], cwd=str(delivery), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]  # its workers, started in working_reprocess/logs/, too
    assert len(list((delivery / 'measurement_sets').glob('*_targets_line.ms'))) == 2
    imaged = subprocess.run(command + ['--image'], cwd=str(delivery), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert imaged.returncode == 1
    assert 'move the delivery to a shorter path' in one_error(imaged.stderr)
    assert not (delivery / 'images').exists()
    now = user_ms_digests(delivery)
    assert all(now[name] == digests for name, digests in before.items())


def test_a_delivery_too_long_for_the_files_it_would_hold_is_refused_in_one_line(tmp_path):
    delivery = long_directory(tmp_path / 'longer', 3953)
    (delivery / 'measurement_sets').mkdir()
    (delivery / 'caltables').mkdir()
    status, out, err = run(delivery, '--contsub_fast', cwd=tmp_path)
    assert status == 1 and "system's limit" in one_error(err)
    assert not (delivery / 'working_reprocess').exists()


# --- 2a: images replaced under --update come back after a kill, as line MSes do -------------------------

MFS = ['--image', 'imgs', '--specmodes', 'mfs', '--imsize', '64', '--engine', 'casa']


def tree_state(folder):
    """{relative path: (inode, size, mtime ns)} of every file below folder."""
    states = {}
    for root, _dirs, files in os.walk(str(folder)):
        for name in files:
            info = os.stat(os.path.join(root, name))
            states[os.path.relpath(os.path.join(root, name), str(folder))] = (info.st_ino, info.st_size,
                                                                               info.st_mtime_ns)
    return states


@pytest.fixture(scope='module')
def imaged(delivery_cache, tmp_path_factory):
    """A delivery with mfs images made once (and recorded) in imgs/, kept as a template."""
    from simulate_delivery import cached_delivery, copy_delivery
    delivery = tmp_path_factory.mktemp('imaged') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **TWO_EBS), delivery)
    status, out, err = run(delivery, *MFS)
    assert status == 0, err
    return delivery


def copy_of(template, tmp_path):
    import shutil
    delivery = tmp_path / 'calibrated_final'
    shutil.copytree(str(template), str(delivery), symlinks=True)
    return delivery


@pytest.mark.parametrize('moment, how', [('images-set-aside', signal.SIGKILL), ('image-published', signal.SIGKILL),
                                         ('image-published', signal.SIGTERM)])
def test_images_replaced_by_update_come_back_after_a_kill(imaged, tmp_path, moment, how):
    delivery = copy_of(imaged, tmp_path)
    images = delivery / 'imgs'
    before = tree_state(images)
    assert any(name.endswith('.provenance.json') for name in before) and len(before) > 20
    env = {sfr.PAUSE_ENV: moment}
    process = start(delivery, *(MFS + ['--update', '--robust', '1']), env=env)
    marker = delivery / ('.paused-at-' + moment)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    process.send_signal(how)
    out, err = process.communicate(timeout=120)
    marker.unlink()
    if how == signal.SIGTERM:  # stopped: the run itself puts them back
        assert process.returncode == 1 and one_error(err).startswith('ERROR: stopped by signal 15')
    status, out, err = run(delivery, '--check')
    assert status == 0, err
    assert tree_state(images) == before, 'the old images were not all put back, untouched'
    assert not list(images.glob('.*')), 'a temporary was left in imgs/'
    status, out, err = run(delivery, *(MFS + ['--update', '--robust', '1']))  # and the next --update works
    assert status == 0, err
    assert '0 images kept, 2 to make' in out
    assert not list(images.glob('.*'))


# --- 6: --update sees edits of the subtables that change the science ------------------------------------

def shift_phase_centre(casa, ms, arcsec):
    """What fixvis/fixplanets do to an MS: every field's directions moved north by `arcsec`."""
    import math
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'FIELD'), nomodify=False)
    try:
        for column in ('PHASE_DIR', 'DELAY_DIR', 'REFERENCE_DIR'):
            directions = table.getcol(column)
            directions[1] += arcsec / 3600.0 * math.pi / 180.0
            table.putcol(column, directions)
    finally:
        table.close()


def test_update_remakes_what_a_moved_phase_centre_changes(imaged, tmp_path, casa):
    delivery = copy_of(imaged, tmp_path)
    status, out, err = run(delivery, '--contsub_fast')
    assert status == 0, err
    targets = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))
    shift_phase_centre(casa, targets[0], 2.0)
    status, out, err = run(delivery, *(['--contsub_fast', '--update'] + MFS))
    assert status == 0, err
    moved, other = [ms.name.replace('_targets.ms', '_targets_line.ms') for ms in targets]
    assert '--update: %s to make' % moved in out, out  # was "kept: its source MS ... unchanged"
    assert '--update: %s kept' % other in out, out
    assert '0 images kept, 2 to make' in out, out  # was "2 images kept"
    assert '%s changed' % targets[0].name in out


# --- 3: an execution block without one of the windows ----------------------------------------------------

def drop_window_from_later_eb(casa, delivery, keep_spw):
    """The later EB's targets MS rebuilt with mstransform with only keep_spw (as an EB that observed fewer
    windows is delivered: its SPECTRAL_WINDOW table lacks the others); returns (earlier, later) MS."""
    import shutil
    targets = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))
    def start(ms):
        table = casa.casatools.table()
        table.open(str(ms))
        try:
            return float(table.getcol('TIME').min())
        finally:
            table.close()
    earlier, later = sorted(targets, key=start)
    rebuilt = later.with_name('rebuilt.ms')
    casa.casatasks.mstransform(vis=str(later), outputvis=str(rebuilt), spw=str(keep_spw), datacolumn='data')
    shutil.rmtree(str(later))
    rebuilt.rename(later)
    return earlier, later


def spw_names(casa, ms):
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'SPECTRAL_WINDOW'))
    try:
        return [str(name) for name in table.getcol('NAME')]
    finally:
        table.close()


def windows_with_data(casa, ms):
    """The names of the spectral windows that have rows in an MS's main table."""
    import numpy
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        dd_ids = numpy.unique(table.getcol('DATA_DESC_ID'))
    finally:
        table.close()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        spws = table.getcol('SPECTRAL_WINDOW_ID')
    finally:
        table.close()
    names = spw_names(casa, ms)
    return sorted(names[spws[dd]] for dd in dd_ids)


def test_a_window_one_execution_block_lacks_applies_to_the_others(delivery_factory, casa):
    delivery = delivery_factory(**TWO_EBS)
    earlier, later = drop_window_from_later_eb(casa, delivery, 25)
    assert len(spw_names(casa, later)) < len(spw_names(casa, earlier))
    before = user_ms_digests(delivery)
    status, out, err = run(delivery, '--check')
    assert status == 0, err  # was: "no spectral window numbered 27 in ... — correct the spw number"
    assert 'spw 27 is not in %s' % later.name.split('_targets')[0] in out, out
    status, out, err = run(delivery, '--contsub_fast')
    assert status == 0, err
    lines = dict((ms.name, windows_with_data(casa, ms)) for ms in (delivery / 'measurement_sets').glob('*_line.ms'))
    earlier_line = lines[earlier.name.replace('_targets.ms', '_targets_line.ms')]
    later_line = lines[later.name.replace('_targets.ms', '_targets_line.ms')]
    assert len(earlier_line) == 2 and len(later_line) == 1, lines  # spw 27 subtracted where it is
    now = user_ms_digests(delivery)
    assert all(now[name] == digests for name, digests in before.items())
    # a window no execution block has is still refused, in one line
    contdat = delivery / 'caltables' / 'cont.dat'
    contdat.write_text(contdat.read_text().replace('SpectralWindow: 27', 'SpectralWindow: 29'))
    status, out, err = run(delivery, '--check')
    assert status == 1 and 'no spectral window numbered 29' in out + err


# --- 7: the advice after a signal is true of what is on disk --------------------------------------------

@pytest.mark.parametrize('moment', ['renamed', 'concat-written'])
def test_sigint_as_the_concatenated_ms_is_published_says_what_is_there(delivery_factory, moment):
    delivery = delivery_factory(**TWO_EBS)
    before = user_ms_digests(delivery)
    process = start(delivery, '--calibrated_final', env={sfr.PAUSE_ENV: moment})
    marker = delivery / ('.paused-at-' + moment)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    marker.unlink()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    error = one_error(err)
    output = delivery / 'measurement_sets' / 'calibrated_final.ms'
    assert process.returncode == 1
    if moment == 'renamed':  # published a moment before the signal: complete, kept, and said so
        assert output.is_dir()
        assert 'calibrated_final.ms' in error and 'kept' in error, error  # was "nothing of this run was kept"
        assert 'run the same command again' in error.lower()
        inode = os.stat(str(output)).st_ino
    else:  # still under its temporary name: removed, and said so
        assert not output.exists() and 'nothing of this run was kept' in error
    status, out, err = run(delivery, '--calibrated_final')  # the same command: it does not fail on it
    assert status == 0, err
    assert output.is_dir()
    if moment == 'renamed':
        assert 'completed by the interrupted run' in out and os.stat(str(output)).st_ino == inode
    now = user_ms_digests(delivery)
    assert all(now[name] == digests for name, digests in before.items())
    assert not list((delivery / 'measurement_sets').glob('.*partial*'))
    status, out, err = run(delivery, '--calibrated_final')  # once done, the usual rule again
    assert status == 1 and 'already exists' in one_error(err)


# --- 5: a file system with bytes free but no inodes left ---------------------------------------------------

def small_tmpfs(where, inodes):
    """A 200 MB tmpfs at where that holds at most `inodes` files (root only; the test is skipped elsewhere)."""
    where.mkdir()
    made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200m,nr_inodes=%d' % inodes, 'tmpfs', str(where)],
                          stderr=subprocess.PIPE, universal_newlines=True)
    if made.returncode != 0:
        pytest.skip('cannot mount a tmpfs here (%s)' % made.stderr.strip())
    return where


@pytest.fixture
def few_inodes(tmp_path):
    mount = small_tmpfs(tmp_path / 'few_inodes', 400)
    yield mount
    subprocess.run(['umount', '-l', str(mount)])


@pytest.fixture
def some_inodes(tmp_path):
    mount = small_tmpfs(tmp_path / 'some_inodes', 2000)
    yield mount
    subprocess.run(['umount', '-l', str(mount)])


def test_no_free_inodes_is_said_before_the_first_long_step(delivery_factory, few_inodes):
    import shutil
    source = delivery_factory(**TWO_EBS)
    delivery = few_inodes / 'calibrated_final'
    shutil.copytree(str(source), str(delivery))
    info = os.statvfs(str(delivery))
    assert info.f_favail < 250 and info.f_bavail * info.f_frsize > 150e6  # bytes free, files not
    before = user_ms_digests(delivery)
    status, out, err = run(delivery, '--contsub_fast', cwd=few_inodes)
    error = one_error(err)  # was: SIGABRT inside uvcontsub, no ERROR line, a .partial- MS left
    assert status == 1 and 'no room for more files' in error and 'inode' in error, error
    assert user_ms_digests(delivery) == before
    assert not list((delivery / 'measurement_sets').glob('*line*')) and not list(delivery.rglob('.*partial*'))
    status, out, err = run(delivery, '--check', cwd=few_inodes)  # what writes (almost) nothing still runs
    assert status == 0, err


def test_inodes_running_out_during_uvcontsub_are_said_in_one_line(delivery_factory, some_inodes):
    few_inodes = some_inodes
    import shutil
    delivery = few_inodes / 'calibrated_final'
    shutil.copytree(str(delivery_factory(n_ebs=1, spw_ids=(25, 27), nchan=16, n_antennas=8)), str(delivery))
    before = user_ms_digests(delivery)
    assert os.statvfs(str(delivery)).f_favail > 250  # the checks before the first long step pass
    process = start(delivery, '--contsub_fast', env={sfr.HOLD_ENV: 'contsub-tasks'}, cwd=few_inodes)
    marker = delivery / '.held-at-contsub-tasks'
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    fillers = few_inodes / 'fillers'
    fillers.mkdir()
    with pytest.raises(OSError) as full:
        for number in range(10000):
            (fillers / str(number)).touch()
    assert full.value.errno == 28  # ENOSPC: every inode is taken, 190 MB are still free
    marker.unlink()
    out, err = process.communicate(timeout=300)
    assert err.strip(), (process.returncode, out[-3000:])
    error = one_error(err)  # was: SIGABRT (exit 134) after a line naming /tmp's 51 GB as the full disk
    assert process.returncode == 1, (process.returncode, err)
    assert 'uvcontsub failed' in error and 'no free inodes' in error and str(few_inodes) in error, error
    assert user_ms_digests(delivery) == before
    assert not list((delivery / 'measurement_sets').glob('*line*'))
    shutil.rmtree(str(fillers))  # the user frees some files: the next run recovers and completes
    status, out, err = run(delivery, '--contsub_fast', cwd=few_inodes)
    assert status == 0, err


# --- 1: an output folder is never one of the user's paths ---------------------------------------------------

def test_images_are_never_written_into_the_users_data(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    target = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))[0]
    before = {'ms': user_ms_digests(delivery), 'caltables': sorted(os.listdir(str(delivery / 'caltables'))),
              'root': sorted(os.listdir(str(delivery)))}
    for folder, named in (('measurement_sets/%s' % target.name, target.name), ('measurement_sets', 'measurement_sets'),
                          ('caltables', 'caltables'), ('.', str(delivery)), ('..', 'holds the delivery'),
                          ('measurement_sets/%s/images' % target.name, target.name),
                          ('working_reprocess/images', 'working_reprocess')):
        status, out, err = run(delivery, '--image', folder, '--reuse-images', '--specmodes', 'mfs', '--spw', '25')
        error = one_error(err)  # was: exit 0, "Done.", FITS and CASA images inside the MS
        assert status == 2 and named in error and 'choose a new folder' in error, (folder, error)
    assert user_ms_digests(delivery) == before['ms']
    assert sorted(os.listdir(str(delivery / 'caltables'))) == before['caltables']
    assert sorted(os.listdir(str(delivery))) == before['root']  # nothing written, not even working_reprocess/
    (delivery / 'linked').symlink_to(delivery / 'caltables')  # the same folder by another name
    status, out, err = run(delivery, '--image', 'linked', '--reuse-images', '--specmodes', 'mfs')
    assert status == 2 and 'caltables' in one_error(err)


def test_delivery_pointed_at_measurement_sets_or_a_working_directory_says_where_to_point(delivery_factory, tmp_path):
    delivery = delivery_factory(**TWO_EBS)
    status, out, err = run(delivery / 'measurement_sets', '--check')
    assert status == 1 and 'point --delivery at its parent, %s' % delivery in one_error(err)
    working = tmp_path / 'working'
    working.mkdir()
    target = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))[0]
    (working / target.name.replace('_targets.ms', '_target.ms')).symlink_to(target)
    status, out, err = run(working, '--check')
    assert status == 1 and 'reprocessing_prep.py --working %s' % working in one_error(err)


# --- Also seen: what a user meets ---------------------------------------------------------------------------

@pytest.mark.parametrize('args, flag', [(['--image', 'a', '--image', 'b'], '--image'),
                                        (['--image', '--robust', '1', '--robust=2'], '--robust'),
                                        (['--check', '--imag=a', '--image', 'b'], '--image')])
def test_a_flag_given_twice_is_a_usage_error(tmp_path, args, flag):
    status, out, err = run(tmp_path, *args)
    error = one_error(err)  # was: the last one kept, silently
    assert status == 2 and error.startswith('ERROR: %s is given twice' % flag), error


@pytest.mark.parametrize('size', ['1', '4', '8,64'])
def test_an_image_too_small_to_grid_is_refused_at_once(tmp_path, size):
    status, out, err = run(tmp_path, '--image', '--imsize', size)
    assert status == 2 and 'at least 16 pixels' in one_error(err)  # was: CASA's text from inside tclean


def test_a_field_name_with_a_look_alike_character_is_pointed_at(delivery_factory):
    delivery = delivery_factory(**TWO_EBS)
    contdat = delivery / 'caltables' / 'cont.dat'
    field = contdat.read_text().splitlines()[0].split(':', 1)[1].strip()
    assert '-' in field
    typed = field.replace('-', '\u2212')  # pasted from a PDF
    status, out, err = run(delivery, '--image', 'imgs', '--specmodes', 'mfs', '--field', typed, '--dry-run')
    error = one_error(err)
    assert status == 1 and "U+2212 MINUS SIGN" in error and 'it means "%s"' % field in error, error
    contdat.write_text(contdat.read_text().replace(field, typed))
    status, out, err = run(delivery, '--check')
    assert status == 1 and "U+2212 MINUS SIGN" in out, out


def test_cleanup_of_a_linked_working_reprocess_keeps_the_link_and_what_it_did_not_make(delivery_factory, tmp_path):
    delivery = delivery_factory(**TWO_EBS)
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    (delivery / 'working_reprocess').symlink_to(scratch)
    status, out, err = run(delivery, '--check')
    assert status == 0, err
    assert (scratch / 'report').is_dir() and (scratch / 'logs').is_dir()
    (scratch / 'notes.txt').write_text('the user\'s')
    before = user_ms_digests(delivery)
    status, out, err = run(delivery, '--cleanup')
    assert status == 0, err  # was: "is a link to ... — remove the link by hand"
    assert (delivery / 'working_reprocess').is_symlink() and os.readlink(str(delivery / 'working_reprocess')) == str(scratch)
    assert sorted(os.listdir(str(scratch))) == ['notes.txt']
    assert user_ms_digests(delivery) == before
    (delivery / 'working_reprocess').unlink()  # a link into the user's data is never cleaned
    (delivery / 'working_reprocess').symlink_to(delivery / 'caltables')
    status, out, err = run(delivery, '--cleanup')
    assert status == 1 and 'holds or is inside your data' in one_error(err)


def test_an_entirely_flagged_execution_block_is_said_in_one_line(delivery_factory, casa):
    delivery = delivery_factory(**TWO_EBS)
    flagged, other = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))
    casa.casatasks.flagdata(vis=str(flagged), mode='manual', flagbackup=False)
    status, out, err = run(delivery, '--contsub_fast', '--dry-run')
    assert status == 0, err
    said = [line for line in out.splitlines() if 'is flagged' in line]
    assert len(said) == 1 and said[0].startswith('WARNING: every visibility of measurement_sets/%s' % flagged.name)
    assert other.name not in said[0]
