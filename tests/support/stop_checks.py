"""What a stopped run is checked for, shared by tests/test_signals.py and bench/stop_anywhere.py: its workers, and
the FITS data of its products."""
import hashlib
from pathlib import Path


def fits_data(images):
    """{FITS name: sha1 of its data units} of a folder (the headers hold dates and versions)."""
    found = {}
    for path in sorted(Path(images).glob('*.fits')):
        raw, start = path.read_bytes(), 0
        while not any(raw[start + k:start + k + 80].rstrip() == b'END' for k in range(0, 2880, 80)):
            start += 2880
        found[path.name] = hashlib.sha1(raw[start + 2880:]).hexdigest()
    return found


def running(pid):
    """The process exists and is not a zombie (waiting for this machine's init to collect it)."""
    try:
        with open('/proc/%s/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def recorded_workers(delivery):
    """The worker pids the run's lock file names (RunState.record_workers)."""
    lock = Path(delivery) / '.scriptForReprocessing.lock'
    text = lock.read_text() if lock.is_file() else ''
    return text.split('\nworkers ')[1].split() if '\nworkers ' in text else []
