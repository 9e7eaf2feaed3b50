"""Where and when this run is: host and user names, local times as text (pure, standard library)."""

import datetime
import os




def process_started_at():
    """When this process started (seconds since the epoch), from /proc on Linux; else now (nothing is older)."""
    import time
    try:
        with open('/proc/self/stat') as handle:
            ticks = int(handle.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime') as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + ticks / float(os.sysconf('SC_CLK_TCK'))
    except (OSError, ValueError, IndexError):
        return time.time()


def now_text():
    return datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')


def host_name():
    import socket
    return socket.gethostname()


def time_text(timestamp):
    return datetime.datetime.fromtimestamp(timestamp).strftime('%Y-%m-%d %H:%M:%S')


def user_name():
    import getpass
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return 'USER'


def full_host_name():
    """The name others reach this host by; getfqdn() says 'localhost' where /etc/hosts lists the host there."""
    import socket
    name = socket.getfqdn()
    return socket.gethostname() if not name or name.startswith('localhost') else name


def owner_name(path):
    """The user name owning path (its uid where the password database does not know it)."""
    import os
    uid = os.stat(str(path)).st_uid
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return 'uid %d' % uid


def available_memory():
    """Bytes of memory this run may take: /proc/meminfo's MemAvailable, or less where a cgroup (a Slurm job's
    --mem, a container) limits the whole job (cgroup v2 memory.max, v1 memory.limit_in_bytes); None where unknown."""
    available = None
    try:
        with open('/proc/meminfo') as handle:
            for line in handle:
                if line.startswith('MemAvailable:'):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit in _cgroup_memory_limits():
        available = limit if available is None else min(available, limit)
    return available


def _cgroup_memory_limits():
    limits = []
    try:
        with open('/proc/self/cgroup') as handle:
            lines = [line.strip().split(':', 2) for line in handle]
    except OSError:
        return limits
    for _number, controllers, path in (line for line in lines if len(line) == 3):
        if controllers == '':
            candidates = [('/sys/fs/cgroup' + path, 'memory.max')]
        elif 'memory' in controllers.split(','):
            candidates = [('/sys/fs/cgroup/memory' + path, 'memory.limit_in_bytes'),
                          ('/sys/fs/cgroup/memory', 'memory.limit_in_bytes')]
        else:
            continue
        for folder, name in candidates:
            try:
                with open(os.path.join(folder, name)) as handle:
                    text = handle.read().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2 ** 60:  # "max", or v1's "no limit" (about 2**63)
                limits.append(int(text))
            break
    return limits
