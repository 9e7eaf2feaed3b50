"""Worker processes that outlived their run: found from the lock file and stopped, safely (Linux /proc)."""

import os
import time

from ..core.fileops import is_inside
from ..core.host import host_name
from ..core.messages import say


def stop_orphan_workers(holder, handle, logs_dir):
    """The lock is held: if its run is gone and only its worker processes hold it (orphans still
    writing into working_reprocess/), stop them and take the lock.  True when the lock is now ours.

    A process is stopped only when all of this holds: the lock file names it as a worker of a run on
    this host whose own process is gone, it belongs to this user, and its command line is this tool's
    worker mode with its log in this delivery's working_reprocess/logs/.
    """
    import fcntl
    import signal
    orphans = find_orphan_workers(holder, logs_dir)
    if not orphans:
        return False
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + 10
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.time() > deadline:
                return False
            time.sleep(0.1)
    say('Stopped %d worker process%s (pid %s) that the interrupted run %s left running'
        % (len(orphans), '' if len(orphans) == 1 else 'es', ', '.join(str(p) for p in orphans),
           (holder.split() + ['?', '?'])[1]))
    return True


def find_orphan_workers(holder, logs_dir):
    """The worker pids of a lock file's text (holder) that outlived their run: [] unless the run's
    process is gone (on this host) and each pid is this user's process running this tool's worker mode
    with its log in logs_dir."""
    lines = holder.splitlines()
    words = lines[0].split() if lines else []
    if len(words) < 4 or words[0] != 'pid' or not words[1].isdigit() or words[3] != host_name():
        return []
    if _alive(int(words[1])):
        return []  # the run itself is working
    pids = []
    for line in lines[1:]:
        if line.startswith('workers '):
            pids.extend(int(word) for word in line.split()[1:] if word.isdigit())
    return [pid for pid in pids if _is_our_worker(pid, logs_dir)]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process of that pid: not ours to judge
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[-1].split()[0] != 'Z'  # a zombie is gone
    except OSError:
        return True


def _is_our_worker(pid, logs_dir):
    """True when pid is this user's process of this tool's worker mode, logging into logs_dir."""
    try:
        if os.stat('/proc/%d' % pid).st_uid != os.geteuid():
            return False
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            arguments = [a.decode('utf-8', 'replace') for a in handle.read().split(b'\0') if a]
    except OSError:
        return False  # gone, or no /proc (not Linux): nothing is stopped
    if '--eb-worker' not in arguments or arguments.index('--eb-worker') + 1 >= len(arguments):
        return False
    log = os.path.abspath(arguments[arguments.index('--eb-worker') + 1])
    return is_inside(log, logs_dir) and _alive(pid)
