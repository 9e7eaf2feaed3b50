"""A real single-node Slurm (Debian's slurm-wlm and munge) in a temporary directory, for the tests.

munged with a key made here, slurmctld and slurmd with a generated slurm.conf: one node "localhost" with
4 CPUs (SlurmdParameters=config_overrides: more than this 2-core machine has, so that two 2-task jobs
that mostly wait at a time limit can run at once), one partition, free ports on 127.0.0.1, KillWait 30 s (a time limit sends SIGTERM, then SIGKILL
30 s later).  Everything (state, spool, logs, sockets) lives in the directory; stop() ends the three
daemons (by their pids) and every job process they started.

    with SlurmCluster(tmp_path) as slurm:
        job = slurm.sbatch(script_path, env=...)
        state = slurm.wait(job)          # 'COMPLETED', 'TIMEOUT', ...
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

KILL_WAIT = 30

SLURM_CONF = '''ClusterName=reprocessingtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/run/munge.sock
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
PlugStackConfig={dir}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait={kill_wait}
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
'''

DAEMONS = ('munged', 'slurmctld', 'slurmd')


def _free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class SlurmCluster(object):
    def __init__(self, directory):
        self.dir = Path(directory)
        self.processes = []

    @staticmethod
    def missing():
        """Why Slurm cannot run here ('' when it can)."""
        for program in DAEMONS + ('sbatch', 'scontrol', 'sinfo'):
            if shutil.which(program) is None:
                return '%s is not installed (Debian: apt-get install slurm-wlm munge)' % program
        if os.geteuid() != 0:
            return 'the test Slurm runs its daemons as root'
        return ''

    @property
    def env(self):
        return dict(os.environ, SLURM_CONF=str(self.dir / 'slurm.conf'))

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        for name in ('run', 'log', 'state', 'spool'):
            (self.dir / name).mkdir(parents=True, exist_ok=True)
        (self.dir / 'run').chmod(0o755)
        key = self.dir / 'munge.key'
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.dir / 'plugstack.conf').write_text('')
        (self.dir / 'slurm.conf').write_text(SLURM_CONF.format(dir=self.dir, ctld_port=_free_port(),
                                                               d_port=_free_port(), kill_wait=KILL_WAIT))
        run = self.dir / 'run'
        self._daemon(['munged', '-F', '-f', '--socket=%s' % (run / 'munge.sock'), '--key-file=%s' % key,
                      '--log-file=%s' % (self.dir / 'log' / 'munged.log'), '--pid-file=%s' % (run / 'munged.pid'),
                      '--seed-file=%s' % (run / 'munged.seed')], 'munged')
        self._wait_for(lambda: (run / 'munge.sock').exists(), 'munged')
        conf = str(self.dir / 'slurm.conf')
        self._daemon(['slurmctld', '-D', '-i', '-f', conf], 'slurmctld')
        self._daemon(['slurmd', '-D', '-N', 'localhost', '-f', conf], 'slurmd')
        self._wait_for(self._node_idle, 'slurmd (node localhost idle)')

    def _daemon(self, command, name):
        output = open(str(self.dir / 'log' / (name + '.out')), 'w')
        self.processes.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))
        output.close()

    def _node_idle(self):
        done = subprocess.run(['sinfo', '-h', '-n', 'localhost', '-o', '%T'], env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
        return done.returncode == 0 and done.stdout.strip() == 'idle'

    def _wait_for(self, ready, what, seconds=60):
        deadline = time.time() + seconds
        while not ready():
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.time() > deadline:
                logs = ''.join(p.read_text(errors='replace')[-2000:] for p in sorted((self.dir / 'log').glob('*')))
                raise RuntimeError('%s did not start: %s' % (what, logs))
            time.sleep(0.3)

    def stop(self):
        """End the jobs, then slurmd, slurmctld and munged (each by its pid); nothing is left running."""
        if self.processes:
            subprocess.run(['scancel', '--full', '--signal=KILL', '-p', 'test'], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 30
            while time.time() < deadline and self._active_jobs():
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes = []

    def _active_jobs(self):
        listed = subprocess.run(['squeue', '-h', '-o', '%T'], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, universal_newlines=True)
        return [state for state in listed.stdout.split() if state in ('RUNNING', 'COMPLETING', 'PENDING')]

    def job_processes(self, job):
        """pids of the processes of a job (their environment names it)."""
        return self._processes_with(('SLURM_JOB_ID=%s' % job).encode() + b'\0')

    def _processes_with(self, variable, text=None):
        found = []
        for entry in Path('/proc').iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                command = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
                environ = (entry / 'environ').read_bytes()
            except OSError:
                continue
            if (b'\0' + variable) in (b'\0' + environ) or (text is not None and text in command):
                found.append(int(entry.name))
        return found

    def leftovers(self):
        """pids of processes still running from this cluster's directory or started by its daemons."""
        return self._processes_with(('SLURM_CONF=%s' % (self.dir / 'slurm.conf')).encode() + b'\0', text=str(self.dir))

    def sbatch(self, script, *, env=None, cwd=None):
        environment = self.env
        environment.update(env or {})
        done = subprocess.run(['sbatch', '--parsable', str(script)], env=environment, cwd=str(cwd or self.dir),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)
        return done.stdout.strip().split(';')[0]

    def job_field(self, job, field):
        done = subprocess.run(['scontrol', 'show', 'job', job], env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
        for word in done.stdout.split():
            if word.startswith(field + '='):
                return word[len(field) + 1:]
        return None

    def wait(self, job, *, timeout=900, until=('COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED', 'NODE_FAIL',
                                               'OUT_OF_MEMORY')):
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_field(job, 'JobState')
            if state in until:  # set when the signals are sent: wait until the job's processes are gone too
                while time.time() < deadline and self.job_processes(job):
                    time.sleep(0.5)
                return state
            time.sleep(1)
        raise AssertionError('job %s still %s after %d s' % (job, self.job_field(job, 'JobState'), timeout))
