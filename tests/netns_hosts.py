"""Several "hosts" on this machine for Open MPI: network namespaces joined by a bridge, entered by an agent.

Each host is a network namespace with its own link-local address (169.254.28.N/24, made here on veth
interfaces that exist only inside namespaces this helper creates: no address outside them is ever
contacted) and its own host name (a UTS namespace per process tree started in it).  A third namespace
holds the bridge joining them, as a switch would.  Open MPI's launcher (plm rsh) is given an agent that
enters a host's namespaces instead of ssh; the file system is shared, as cluster nodes share one.

    with NetnsHosts(2) as hosts:
        hosts.mpirun(['-n', '3', 'python', 'script.py'], cwd=...)  # mpirun itself runs on the first host

Needs root, iproute2 ("ip"), util-linux's unshare and Open MPI's mpirun; NetnsHosts.missing() says what
is not there (the tests skip on it).
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUBNET = '169.254.28.0/24'


def _address(index):
    return '169.254.28.%d' % (index + 1)


AGENT = '''#!/bin/sh
# ssh stand-in for Open MPI: "agent [ssh options] HOST COMMAND..." runs COMMAND on HOST, i.e. in HOST's
# network namespace, under HOST's name (hosts.map beside this file: address namespace name).
map="$(dirname "$0")/hosts.map"
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
host=$1; shift
line=$(grep "^$host " "$map") || { echo "agent: unknown host $host" >&2; exit 255; }
namespace=$(echo "$line" | cut -d' ' -f2)
name=$(echo "$line" | cut -d' ' -f3)
exec ip netns exec "$namespace" unshare --uts sh -c "hostname $name && $*"
'''


class NetnsHosts(object):
    def __init__(self, count, *, slots=2):
        self.count = count
        self.slots = slots
        tag = '%d' % (os.getpid() % 100000)
        self.namespaces = ['rp%s-h%d' % (tag, i) for i in range(count)]
        self.switch = 'rp%s-sw' % tag
        self.names = ['host%d' % i for i in range(count)]
        self.addresses = [_address(i) for i in range(count)]
        self.directory = None

    @staticmethod
    def missing():
        """Why the hosts cannot be made here ('' when they can)."""
        if os.geteuid() != 0:
            return 'network namespaces need root'
        for program in ('ip', 'unshare', 'mpirun'):
            if shutil.which(program) is None:
                return '%s is not installed' % program
        return ''

    def _ip(self, *args):
        subprocess.run(['ip'] + list(args), check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def __enter__(self):
        try:
            self._make()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc):
        self._remove()
        return False

    def _make(self):
        self.directory = Path(tempfile.mkdtemp(prefix='netns-hosts-'))
        self._ip('netns', 'add', self.switch)
        self._ip('-n', self.switch, 'link', 'add', 'br0', 'type', 'bridge')
        self._ip('-n', self.switch, 'link', 'set', 'br0', 'up')
        for index, namespace in enumerate(self.namespaces):
            self._ip('netns', 'add', namespace)
            inside, port = 'eth%d' % index, 'port%d' % index
            self._ip('-n', namespace, 'link', 'add', inside, 'type', 'veth', 'peer', 'name', port,
                     'netns', self.switch)
            self._ip('-n', self.switch, 'link', 'set', port, 'master', 'br0')
            self._ip('-n', self.switch, 'link', 'set', port, 'up')
            self._ip('-n', namespace, 'addr', 'add', self.addresses[index] + '/24', 'dev', inside)
            self._ip('-n', namespace, 'link', 'set', inside, 'up')
            self._ip('-n', namespace, 'link', 'set', 'lo', 'up')
        agent = self.directory / 'agent'
        agent.write_text(AGENT)
        agent.chmod(0o755)
        (self.directory / 'hosts.map').write_text(''.join(
            '%s %s %s\n' % (address, namespace, name)
            for address, namespace, name in zip(self.addresses, self.namespaces, self.names)))
        (self.directory / 'hostfile').write_text(''.join('%s slots=%d\n' % (a, self.slots) for a in self.addresses))

    def _remove(self):
        for namespace in self.namespaces + [self.switch]:
            listed = subprocess.run(['ip', 'netns', 'pids', namespace], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, universal_newlines=True)
            for pid in listed.stdout.split():  # processes this test started there (orted, ranks, Xvfb)
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(['ip', 'netns', 'del', namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.directory is not None:
            shutil.rmtree(str(self.directory), ignore_errors=True)

    def environment(self):
        """Open MPI over the hosts' link-local subnet only (TCP between hosts, shared memory within one)."""
        return {'OMPI_MCA_plm_rsh_agent': str(self.directory / 'agent'), 'OMPI_MCA_plm_rsh_no_tree_spawn': '1',
                'OMPI_MCA_oob_tcp_if_include': SUBNET, 'OMPI_MCA_btl_tcp_if_include': SUBNET,
                'OMPI_MCA_btl': 'self,vader,tcp', 'OMPI_MCA_orte_default_hostfile': str(self.directory / 'hostfile'),
                'OMPI_MCA_rmaps_base_mapping_policy': 'node',
                'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1'}

    def mpirun(self, arguments, *, cwd, timeout=900, env=None):
        """mpirun ARGUMENTS on the first host (ranks placed round-robin over the hosts): CompletedProcess."""
        environment = dict(os.environ)
        environment.update(self.environment())
        environment.update(env or {})
        command = ' '.join(_quote(a) for a in [shutil.which('mpirun')] + [str(a) for a in arguments])
        return subprocess.run(['ip', 'netns', 'exec', self.namespaces[0], 'unshare', '--uts', 'sh', '-c',
                               'hostname %s && cd %s && exec %s' % (self.names[0], _quote(str(cwd)), command)],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)


def _quote(text):
    import shlex
    return shlex.quote(text)


# What a rank records before it becomes the tool: its rank, host name and network namespace.
RANK_RECORDER = '''
import json, os, socket, sys
record = {'rank': int(os.environ.get('OMPI_COMM_WORLD_RANK', -1)), 'host': socket.gethostname(),
          'netns': os.readlink('/proc/self/ns/net')}
with open(os.path.join(%(where)r, 'rank%%d.json' %% record['rank']), 'w') as handle:
    json.dump(record, handle)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'''


def rank_recorder(directory):
    """A program that records where each rank runs (directory/rankN.json), then runs its arguments."""
    path = Path(directory) / 'record_rank.py'
    path.write_text(RANK_RECORDER % {'where': str(directory)})
    return path
