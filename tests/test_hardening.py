"""What real machines and careless hands do to a delivery: read-only MSes, a space in the path, a
broken MS, no HOME, a disk that fills up.  Real CASA on simulated deliveries; every case ends in
success or one ERROR line, and the user's MSes stay byte-identical.
"""
import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, error_lines, one_error_line, user_ms_digests
from test_cli import tree_listing
from test_concat_and_safety import THREE_EBS, read_table

ONE_EB = dict(n_ebs=1, spw_ids=(25, 27), nchan=16, n_antennas=8)  # small enough for a small file system


def script_command(delivery, *args, prefix=()):
    return list(prefix) + [sys.executable, str(SCRIPT), '--delivery', str(delivery)] + [str(a) for a in args]


def run(delivery, *args, prefix=(), env=None):
    return subprocess.run(script_command(delivery, *args, prefix=prefix), cwd=str(delivery), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


# --- Read-only measurement sets --------------------------------------------------------------------

def unprivileged():
    """A command prefix that runs a program held to file permissions, as a user is.

    Root ignores permissions through its capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER); root without
    any capability is held to them like any user, and can run this Python (the user "tester" of the
    test machines cannot: its interpreter lies under /root, mode 700).
    """
    if os.geteuid() != 0:
        return []
    prefix = ['setpriv', '--bounding-set=-all', '--inh-caps=-all', '--']
    probe_dir = tempfile.mkdtemp()
    try:
        os.chmod(probe_dir, 0o500)
        probe = subprocess.run(prefix + ['touch', os.path.join(probe_dir, 'x')], stderr=subprocess.DEVNULL)
    except OSError:
        probe = None
    finally:
        os.chmod(probe_dir, 0o700)
        shutil.rmtree(probe_dir)
    if probe is None or probe.returncode == 0:
        pytest.skip('cannot run as an unprivileged user here (setpriv is missing or cannot drop capabilities)')
    return prefix


OTHER_USER = 65534  # "nobody": the MSes are another user's when the test runs as root


def make_read_only(delivery):
    """The user MSes read-only (and another user's where the test may chown), as an archive copy is."""
    for ms in (delivery / 'measurement_sets').glob('uid*.ms'):
        for root, dirs, files in os.walk(str(ms)):
            for name in dirs + files + ['']:
                path = os.path.join(root, name)
                if os.geteuid() == 0:
                    os.chown(path, OTHER_USER, OTHER_USER)
        subprocess.run(['chmod', '-R', 'a-w', str(ms)], check=True)


def test_read_only_measurement_sets_are_imaged_and_concatenated(delivery_factory, casa):
    as_user = unprivileged()
    delivery = delivery_factory(**THREE_EBS)
    make_read_only(delivery)
    before = user_ms_digests(delivery)
    result = run(delivery, '--image', '--engine', 'casa', '--specmodes', 'mfs', '--spw', '25',
                 '--calibrated_final', prefix=as_user)
    assert result.returncode == 0, result.stderr
    assert 'are read-only: concat works on copies of them' in result.stdout
    output = delivery / 'measurement_sets' / 'calibrated_final.ms'
    targets = sorted((delivery / 'measurement_sets').glob('uid*_targets.ms'))
    assert read_table(casa, output) == sum(read_table(casa, ms) for ms in targets)
    assert list((delivery / 'images').glob('*.fits'))
    assert user_ms_digests(delivery) == before
    # everything this tool made can be removed by the user: --cleanup, then rm -rf
    cleanup = run(delivery, '--cleanup', prefix=as_user)
    assert cleanup.returncode == 0, cleanup.stderr
    assert not (delivery / sfr.WORK_DIR_NAME).exists()
    removal = subprocess.run(as_user + ['rm', '-rf', str(output), str(delivery / 'images')],
                             stderr=subprocess.PIPE, universal_newlines=True)
    assert removal.returncode == 0, removal.stderr
    if os.geteuid() == 0:  # another user's line MSes cannot be replaced: said before anything is written
        refused = run(delivery, '--contsub_fast', '--overwrite-line', prefix=as_user)
        assert refused.returncode == 1
        assert 'you may not remove' in one_error_line(refused)
    os.chmod(str(delivery / 'measurement_sets'), 0o555)  # nothing can be written beside the MSes either
    try:
        refused = run(delivery, '--calibrated_final', prefix=as_user)
        assert refused.returncode == 1
        assert 'which is not writable for you' in one_error_line(refused)
    finally:
        os.chmod(str(delivery / 'measurement_sets'), 0o755)
    assert user_ms_digests(delivery) == before


@pytest.mark.parametrize('pause_at, args, staged', [
    ('concat', ['--calibrated_final'], 2),  # copies of the later execution blocks (concat writes into them)
    ('tclean', ['--image', '--engine', 'casa', '--specmodes', 'mfs', '--spw', '25'], 6),  # shadows, lines too
])
def test_a_run_killed_on_read_only_data_leaves_nothing_the_user_cannot_remove(delivery_factory, pause_at, args,
                                                                              staged):
    as_user = unprivileged()
    delivery = delivery_factory(**THREE_EBS)
    make_read_only(delivery)
    before = user_ms_digests(delivery)
    process = subprocess.Popen(script_command(delivery, *args, prefix=as_user), cwd=str(delivery),
                               env=dict(os.environ, **{sfr.PAUSE_ENV: pause_at}), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
    marker = delivery / ('.paused-at-' + pause_at)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    process.kill()
    process.communicate()
    marker.unlink()
    stand_ins = list((delivery / sfr.WORK_DIR_NAME / 'staging').glob('*/uid*.ms'))
    assert len(stand_ins) == staged, stand_ins
    removal = subprocess.run(as_user + ['rm', '-rf', str(delivery / sfr.WORK_DIR_NAME)],
                             stderr=subprocess.PIPE, universal_newlines=True)
    assert removal.returncode == 0, removal.stderr
    rerun = run(delivery, '--cleanup', prefix=as_user)
    assert rerun.returncode == 0, rerun.stderr
    assert 'the previous run (pid %d) ended without finishing' % process.pid in rerun.stdout
    assert user_ms_digests(delivery) == before


# --- A space in the delivery's path ------------------------------------------------------------------

def test_a_delivery_whose_path_has_a_space_is_concatenated_and_imaged(delivery_factory, tmp_path, casa):
    """CASA 6.7's check_mslist (concat; tclean of several MSes) cuts subtable paths at spaces."""
    delivery = tmp_path / 'My Data' / 'calibrated_final'
    delivery.parent.mkdir()
    shutil.move(str(delivery_factory(**THREE_EBS)), str(delivery))
    before = user_ms_digests(delivery)
    links_before = set(glob.glob(os.path.join(tempfile.gettempdir(), '.reprocessing-*')))
    result = run(delivery, '--calibrated_final', '--image', '--engine', 'casa', '--specmodes', 'mfs', '--spw', '25')
    assert result.returncode == 0, result.stderr
    output = delivery / 'measurement_sets' / 'calibrated_final.ms'
    targets = sorted((delivery / 'measurement_sets').glob('uid*_targets.ms'))
    assert read_table(casa, output) == sum(read_table(casa, ms) for ms in targets)
    images = list((delivery / 'images').glob('*.spw25.mfs.I.pbcor.fits'))
    assert len(images) == 1, list((delivery / 'images').iterdir())
    assert user_ms_digests(delivery) == before
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), '.reprocessing-*'))) == links_before, \
        'the link by which CASA reached the staging folder was left behind'


# --- A broken measurement set ---------------------------------------------------------------------

BROKEN = 'uid___A002_X1_X1_targets.ms'


def break_ms(kind, ms_dir):
    broken = ms_dir / BROKEN
    if kind == 'an empty directory':
        broken.mkdir()
        return
    shutil.copytree(str(sorted(ms_dir.glob('uid*_targets.ms'))[0]), str(broken))
    if kind == 'no table.dat':
        (broken / 'table.dat').unlink()
    else:
        shutil.rmtree(str(broken / 'FIELD'))


@pytest.mark.parametrize('kind, said', [('an empty directory', 'is an empty directory'),
                                        ('no table.dat', 'has no table.dat'),
                                        ('no FIELD', 'the FIELD subtable of measurement_sets/%s is missing' % BROKEN)])
def test_a_broken_measurement_set_is_named_in_one_line_by_the_plan(delivery_factory, capsys, kind, said):
    delivery = delivery_factory(**THREE_EBS)
    break_ms(kind, delivery / 'measurement_sets')
    before, listing = user_ms_digests(delivery), tree_listing(delivery)
    for command in (['--check'], ['--contsub_fast', '--overwrite-line'], ['--calibrated_final'],
                    ['--dry-run', '--calibrated_final'],
                    ['--dry-run', '--contsub_fast', '--overwrite-line', '--image', '--engine', 'casa']):
        assert sfr.main(['--delivery', str(delivery)] + command) == 1, command
        captured = capsys.readouterr()
        line, = error_lines(captured.err)
        assert said in line and 'restore it from the delivery' in line and BROKEN in line, (command, line)
        assert tree_listing(delivery) == listing, 'the plan wrote something'
    assert user_ms_digests(delivery) == before


# --- No HOME ------------------------------------------------------------------------------------

def test_a_run_without_home_succeeds(delivery_factory):
    """Measured with CASA 6.7: without HOME, "import casatasks" dies of a segmentation fault (exit 139)."""
    delivery = delivery_factory(**THREE_EBS)
    before = user_ms_digests(delivery)
    environment = {name: value for name, value in os.environ.items() if name != 'HOME'}
    result = run(delivery, '--calibrated_final', env=environment)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert (delivery / 'measurement_sets' / 'calibrated_final.ms').is_dir()
    note, = [line for line in result.stdout.splitlines() if 'HOME is not set' in line]
    home = note.split('(')[1].split(',')[0]
    assert not os.path.exists(home), 'the temporary HOME was left behind'
    assert user_ms_digests(delivery) == before


# --- A disk that fills up during --image --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB file system of its own (tmpfs, mounted as root), or a skip."""
    if os.geteuid() != 0:
        pytest.skip('mounting a small file system needs root')
    mount_point = tmp_path / 'disk'
    mount_point.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=40m', 'tmpfs', str(mount_point)],
                             stderr=subprocess.PIPE, universal_newlines=True)
    if mounted.returncode != 0:
        pytest.skip('cannot mount a tmpfs here (%s)' % mounted.stderr.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(['umount', '-l', str(mount_point)])


def fill_disk(where, *, leave):
    """Write a file until about `leave` bytes are free on where's file system; returns it."""
    filler = Path(where) / 'filler'
    with open(str(filler), 'wb') as handle:
        try:
            while shutil.disk_usage(str(where)).free > leave:
                handle.write(b'\0' * min(65536, max(4096, shutil.disk_usage(str(where)).free - leave)))
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def image_while_the_disk_fills(delivery, hold_at, *, leave, more=()):
    """Start --image, hold it at hold_at, fill the disk, let it go on; the finished process."""
    process = subprocess.Popen(script_command(delivery, '--image', '--engine', 'casa', '--specmodes', 'mfs', *more),
                               cwd=str(delivery), env=dict(os.environ, **{sfr.HOLD_ENV: hold_at}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    marker = delivery / ('.held-at-' + hold_at)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.1)
    filler = fill_disk(delivery, leave=leave)
    marker.unlink()
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err, filler


def test_a_disk_full_before_an_image_stops_the_run_with_one_line(delivery_factory, small_disk):
    delivery = small_disk / 'calibrated_final'
    shutil.copytree(str(delivery_factory(**ONE_EB)), str(delivery), symlinks=True)
    before = user_ms_digests(delivery)
    status, out, err, filler = image_while_the_disk_fills(delivery, 'image-product', leave=0)
    assert status == 1, err
    line, = [line for line in err.splitlines() if line.strip()]
    assert line.startswith('ERROR: not enough free disk in ') and 'for the image ' in line, line
    assert not (delivery / sfr.JOURNAL_NAME).exists() and not (delivery / 'images').exists()
    assert user_ms_digests(delivery) == before


@pytest.mark.parametrize('leave', [0, 300000])
def test_a_disk_that_fills_during_tclean_is_explained(delivery_factory, small_disk, leave):
    """Measured with CASA 6.7: tclean on a full disk raises (an AlwaysAssert on a lock file); with a
    few hundred kB left it gets further and CASA aborts the process (SIGABRT, exit status 134)."""
    delivery = small_disk / 'calibrated_final'
    shutil.copytree(str(delivery_factory(**ONE_EB)), str(delivery), symlinks=True)
    before = user_ms_digests(delivery)
    # one image: it is made in this process (several are made in worker processes: see below)
    status, out, err, filler = image_while_the_disk_fills(delivery, 'tclean', leave=leave, more=('--spw', '25'))
    if leave == 0:
        assert status == 1, err
        line, = [line for line in err.splitlines() if line.strip()]
        assert 'tclean failed' in line and 'is full' in line and 'free some space' in line, line
    else:
        assert status == -signal.SIGABRT, (status, err)
        assert (delivery / sfr.JOURNAL_NAME).exists()
        filler.unlink()  # the user frees some space
        rerun = run(delivery, '--cleanup')
        assert rerun.returncode == 0, rerun.stderr
        said = rerun.stdout.split('Recovering from an interrupted run')[1]
        assert 'ended without finishing: the disk was full' in said and 'No space left on device' in said, said
        assert 'removed its unfinished working_reprocess/imaging' in said
        assert not (delivery / sfr.JOURNAL_NAME).exists()
    assert user_ms_digests(delivery) == before


@pytest.mark.skipif(sfr.available_cores() < 2, reason='images are made in worker processes only with 2+ cores')
def test_a_disk_that_fills_while_workers_make_images_is_explained(delivery_factory, small_disk):
    """Two images on two cores: CASA aborts the worker (exit 134) and the run says the disk is full."""
    delivery = small_disk / 'calibrated_final'
    shutil.copytree(str(delivery_factory(**ONE_EB)), str(delivery), symlinks=True)
    before = user_ms_digests(delivery)
    status, out, err, filler = image_while_the_disk_fills(delivery, 'tclean', leave=300000)
    assert status == 1, (status, err)
    line, = [line for line in err.splitlines() if line.strip()]
    assert 'tclean failed' in line and 'is full' in line and 'free some space' in line, line
    assert not (delivery / sfr.JOURNAL_NAME).exists() and not (delivery / 'images').exists()
    assert user_ms_digests(delivery) == before


# --- A lock file of another user -------------------------------------------------------------------

def test_a_lock_held_by_another_user_names_that_user(delivery_factory, tmp_path):
    import pwd
    prefix = unprivileged()
    delivery = delivery_factory(n_ebs=1)
    lock = delivery / '.scriptForReprocessing.lock'
    lock.write_text('')
    owner = os.geteuid() if not prefix else OTHER_USER
    if prefix:
        os.chown(str(lock), OTHER_USER, -1)
    os.chmod(str(lock), 0o444 if not prefix else 0o644)  # a user's own read-only lock is the same case
    result = subprocess.run(prefix + [sys.executable, str(SCRIPT), '--cleanup'], cwd=str(delivery),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('ERROR:')]
    assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert 'belongs to %s' % pwd.getpwuid(owner).pw_name in errors[0], errors[0]
    assert 'check that you may write in' not in errors[0]  # the directory is writable: that advice would be false
