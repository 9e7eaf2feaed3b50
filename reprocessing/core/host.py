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
