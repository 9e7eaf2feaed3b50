"""Shared fixtures: the scripts as built from the working tree, simulated deliveries (made once per test
run, copied per test) and script runners."""
import collections
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scriptForReprocessing.py'
PREP = REPO / 'reprocessing_prep.py'
BUILD = REPO / 'tools' / 'build.py'
BUILT = (SCRIPT, PREP)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests' / 'support'))


# -- the scripts under test are the package as it is in the working tree ------------------------------
# The tests import and run the generated scripts (what users run; worker processes and MPI servers load
# the script file).  So that an edit of reprocessing/ is tested as edited, the build runs here, before
# anything imports a script, whenever the scripts are not what the package builds; STALE remembers which
# were, and tests/test_build.py then fails, asking for the build to be committed.

STALE = []          # the scripts this run rebuilt
BUILD_SKIPPED = []  # why the scripts could not be checked (the build needs Python 3.10+)
BUILD_FAILED = []   # the build's error, reported as the run stops (pytest_configure)


def build_scripts_if_stale():
    if sys.version_info < (3, 10):
        BUILD_SKIPPED.append('tools/build.py needs Python 3.10+, this is %d.%d: the scripts are tested as they '
                             'are, not rebuilt from reprocessing/' % sys.version_info[:2])
        return
    before = {path: path.read_bytes() if path.is_file() else None for path in BUILT}
    done = subprocess.run([sys.executable, str(BUILD)], cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        BUILD_FAILED.append((done.stderr.strip() or done.stdout.strip() or 'tools/build.py exited %d'
                             % done.returncode))
        return
    STALE.extend(path.name for path in BUILT if (path.read_bytes() if path.is_file() else None) != before[path])


build_scripts_if_stale()


def pytest_configure(config):
    if BUILD_FAILED:
        pytest.exit('the package does not build, so nothing can be tested: %s' % BUILD_FAILED[0], returncode=1)


# The longest test files first (their minutes in the first two-process run, under load, 2026-12-07): with
# --dist loadfile a file runs whole on one process, and one of these started last would run alone at the end.
LONGEST_FIRST = ('test_mpi.py', 'test_signals.py', 'test_combine_cube.py', 'test_combine.py', 'test_update.py', 'test_archive.py',
                 'test_selfcal.py', 'test_cube_split.py', 'test_delivery_shapes.py', 'test_image_resume.py',
                 'test_jobs_memory.py', 'test_slurm.py')


def pytest_collection_modifyitems(session, config, items):
    rank = dict((name, index) for index, name in enumerate(LONGEST_FIRST))
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


def pytest_report_header(config):
    if STALE:
        return 'scripts rebuilt from reprocessing/ (they were stale): %s' % ', '.join(STALE)
    return BUILD_SKIPPED[0] if BUILD_SKIPPED else None


def casa_installed():
    import importlib.util
    return importlib.util.find_spec('casatools') is not None


requires_casa = pytest.mark.skipif(not casa_installed(), reason='modular CASA (casatools) is not installed')


def skip_without_casa():
    if not casa_installed():
        pytest.skip('modular CASA (casatools) is not installed')


@pytest.fixture(scope='session')
def casa(tmp_path_factory):
    """CASA for checks made by the tests themselves, logging into the test run's temporary folder."""
    skip_without_casa()
    import scriptForReprocessing
    return scriptForReprocessing.load_casa(logfile=tmp_path_factory.mktemp('casa_log') / 'casa.log')


@pytest.fixture(scope='session')
def delivery_cache(tmp_path_factory):
    """Where simulated deliveries are kept for this test run (SIMULATION_CACHE keeps them across runs)."""
    skip_without_casa()   # the simulator is CASA
    shared = os.environ.get('SIMULATION_CACHE')
    if shared:
        path = Path(shared)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if os.environ.get('PYTEST_XDIST_WORKER'):  # pytest -n: one cache for the run's processes (a basetemp each)
        path = tmp_path_factory.getbasetemp().parent / 'simulated'
        path.mkdir(exist_ok=True)
        return path
    return tmp_path_factory.mktemp('simulated')


@pytest.fixture
def delivery_factory(delivery_cache, tmp_path):
    """delivery_factory(**simulate_kwargs) -> a fresh copy of a simulated delivery, made once per kwargs."""
    from simulate_delivery import cached_delivery, copy_delivery
    counter = [0]

    def make(**kwargs):
        source = Path(cached_delivery(delivery_cache, **kwargs))
        counter[0] += 1
        destination = tmp_path / ('delivery%d' % counter[0])
        copy_delivery(source, destination)
        return destination
    return make


def run_command(command, *, cwd, env=None, timeout=600):
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run(command, cwd=str(cwd), env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


@pytest.fixture
def run_script():
    """run_script(*args, cwd=DIR, env=None) -> CompletedProcess of the script run in a subprocess in cwd."""
    def run(*args, delivery=None, cwd=None, env=None, timeout=600):
        args = [str(a) for a in args]
        if cwd is None and delivery is None and '--delivery' in args:
            delivery = args[args.index('--delivery') + 1]
        return run_command([sys.executable, str(SCRIPT)] + args, cwd=cwd or delivery, env=env, timeout=timeout)
    return run


class Server(object):
    """The script serving a weblog in a subprocess, and what it printed."""

    def __init__(self, delivery, *args, env=None):
        environment = dict(os.environ)
        for name in ('DISPLAY', 'WAYLAND_DISPLAY', 'SSH_CONNECTION', 'SSH_CLIENT', 'SSH_TTY'):
            environment.pop(name, None)
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), '--delivery', str(delivery)] + [str(a) for a in args],
            cwd=str(delivery), env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True)
        self.lines = []
        self._printed = queue.Queue()
        reader = threading.Thread(target=self._read_stdout, daemon=True)
        reader.start()
        self.url = self._wait_for_url()
        self.port = int(self.url.split(':')[2].split('/')[0])

    def _read_stdout(self):
        for line in self.process.stdout:
            self._printed.put(line.rstrip('\n'))
        self._printed.put(None)

    def _wait_for_url(self):
        """Read what the script prints until it starts serving; the address it printed."""
        url = None
        while True:
            try:
                line = self._printed.get(timeout=60)
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                pytest.fail('the server never printed its address:\n%s\n%s'
                            % ('\n'.join(self.lines), self.process.stderr.read()))
            self.lines.append(line)
            if line.strip().startswith('open http://127.0.0.1:'):
                url = line.split()[1]
            if line.strip().startswith('Ctrl-C stops the server') and url:
                return url

    @property
    def base(self):
        return 'http://127.0.0.1:%d' % self.port

    def stop(self):
        """Ctrl-C; returns (exit status, everything it printed, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        err = self.process.stderr.read()
        while True:
            line = self._printed.get(timeout=10)
            if line is None:
                break
            self.lines.append(line)
        return self.process.returncode, '\n'.join(self.lines), err

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve():
    """serve(delivery, *args, env=None) -> a Server: the script serving a weblog (--weblog ...), killed at the end."""
    servers = []

    def start(delivery, *args, env=None):
        server = Server(delivery, *args, env=env)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.kill()


def start_paused(delivery, pause_at, *args):
    """Start the script and wait until it reaches the test-only pause point."""
    import scriptForReprocessing as sfr
    env = dict(os.environ, **{sfr.PAUSE_ENV: pause_at})
    process = subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + list(args),
                               cwd=str(delivery), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    marker = delivery / ('.paused-at-' + pause_at)
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, 'the script never reached ' + pause_at
        time.sleep(0.1)
    marker.unlink()
    return process


def md5_tree(path):
    """{relative path: md5} of every file below path (links followed, so link targets are checked)."""
    path = Path(path)
    digests = {}
    for root, _dirs, files in os.walk(str(path)):
        for name in files:
            full = Path(root) / name
            digest = hashlib.md5()
            with open(str(full), 'rb') as handle:
                for block in iter(lambda: handle.read(1 << 20), b''):
                    digest.update(block)
            digests[str(full.relative_to(path))] = digest.hexdigest()
    return digests


@pytest.fixture(name='md5_tree')
def md5_tree_fixture():
    return md5_tree


def user_ms_digests(delivery):
    """Checksums of every user MS in measurement_sets/ (targets and line MSes)."""
    ms_dir = Path(delivery) / 'measurement_sets'
    return {p.name: md5_tree(p) for p in sorted(ms_dir.glob('uid*.ms'))}


def mean_spectrum(casa, ms, spw_id, column='DATA'):
    """A data column of one spw averaged over rows and correlations, per channel (flagged data left
    out), and how many samples went into each channel."""
    import numpy
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        dd_id = list(table.getcol('SPECTRAL_WINDOW_ID')).index(spw_id)
    finally:
        table.close()
    table.open(str(ms))
    try:
        rows = table.query('DATA_DESC_ID==%d' % dd_id)
        data, flags = rows.getcol(column), rows.getcol('FLAG')
        rows.close()
    finally:
        table.close()
    return numpy.ma.masked_array(data, flags).mean(axis=(0, 2)).filled(numpy.nan), data.shape[0] * data.shape[2]


def long_directory(base, length):
    """A directory below base whose path is exactly `length` characters (components of at most 250)."""
    path = str(base)
    while len(path) < length:
        room = length - len(path) - 1
        path = os.path.join(path, 'd' * min(250, room) if room > 250 or room < 1 else 'e' * room)
    os.makedirs(path)
    assert len(path) == length
    return Path(path)


def spectral_axis(casa, path):
    """(radio velocities km/s of every channel at the image's rest frequency, rest frequency Hz, frame) of a CASA
    image or FITS file (its spectral axis is 3 in a CASA image, 2 in a FITS file)."""
    image = casa.casatools.image()
    image.open(str(path))
    try:
        shape = [int(n) for n in image.shape()]
        coordinates = image.coordsys()
        restfreq = coordinates.restfrequency()['value'][0]
        frame = coordinates.referencecode('spectral')[0]
        axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
        velocities = []
        for k in range(shape[axis]):
            pixel = [0] * len(shape)
            pixel[axis] = k
            velocities.append(float(coordinates.frequencytovelocity(coordinates.toworld(pixel)['numeric'][axis],
                                                                    doppler='radio', velunit='km/s')[0]))
        coordinates.done()
    finally:
        image.close()
    return velocities, restfreq, frame


def truth_of(delivery):
    """What the simulator put into a delivery (its truth.json)."""
    return json.loads((Path(delivery) / 'truth.json').read_text())


def error_lines(text):
    """The lines a user sees on stderr (blank ones left out): a failure must be ONE line, "ERROR: ..."."""
    return [line for line in text.splitlines() if line.strip()]


def one_error_line(result, exit_code=None):
    """The failure's single line, 'ERROR: what is wrong — what to do', alone on stderr, no traceback.

    result: a finished script (subprocess; its exit code checked when exit_code is given) or pytest's captured
    output of an in-process run (capsys.readouterr())."""
    stderr = result.stderr if hasattr(result, 'stderr') else result.err
    if exit_code is not None:
        assert result.returncode == exit_code, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith('ERROR: ') and ' — ' in lines[0], stderr
    return lines[0]


Image = collections.namedtuple('Image', 'pixels coordinates beam unit')


def read_image(casa, path, *, dropdeg):
    """Image(pixels, coordinates, beam, unit) of a CASA image or a FITS file.

    dropdeg=True: CASA's getchunk(dropdeg=True), the degenerate axes dropped ([x, y] for one plane, [x, y,
    channel] for a cube of one Stokes).  dropdeg=False: always [x, y, plane], every axis after the two sky
    axes flattened into planes (one Stokes: [x, y, channel] whether the Stokes or the frequency axis comes
    first, as in the CASA images and the FITS files; [x, y, 1] for one plane).
    """
    image = casa.casatools.image()
    image.open(str(path))
    try:
        pixels = image.getchunk(dropdeg=dropdeg)
        coordinates = image.coordsys()
        beam = image.restoringbeam()
        unit = image.brightnessunit()
    finally:
        image.close()
        image.done()
    if not dropdeg:
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    return Image(pixels, coordinates, beam, unit)


def pipeline_available():
    """True when "import pipeline" works.  With modular CASA the pipeline imports casatools, which
    must first be configured for offline use (load_casa), or the failed import poisons every later
    CASA import in this process; so CASA is loaded only when a pipeline is installed at all."""
    import importlib.util
    try:
        if BUILD_FAILED or importlib.util.find_spec('pipeline') is None:
            return False
        import scriptForReprocessing
        scriptForReprocessing.load_casa()
        import pipeline  # noqa: F401
    except Exception:
        return False
    return True


requires_pipeline = pytest.mark.skipif(not pipeline_available(), reason='the ALMA pipeline is not installed')
