"""Execution blocks in parallel: worker processes (or MPI servers) that run registered EB tasks."""

import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path

from .casa_engine import casa_safe_directory, load_casa
from .eb_tasks import EB_TASKS, run_registered_task
from ..core.script import self_command, self_environment
from ..core.layout import SCRIPT_NAME
from ..core.messages import EXIT_FAILED, EXIT_OK, ReprocessingError, duration_text, leave_stop_warning_to_parent, say
from .mpi import MpiEbServers, mpi_servers_available


# -- execution blocks in parallel -------------------------------------------------------------------
#
# CASA tools are not fork-safe, so each worker is a fresh Python running this same script in
# worker mode (EB_WORKER_FLAG), which loads CASA with its own log and takes one task (JSON, one
# line on its stdin) after another, answering with progress lines and one result line.  The
# parent prints the progress lines prefixed with the execution block's name.

EB_WORKER_FLAG = '--eb-worker'  # hidden: this script as a worker process of a parent run
PARENT_ENV = 'SCRIPTFORREPROCESSING_PARENT_PID'  # the parent run's pid, given to its workers
# Test-only: a worker stops before its first task and waits to be killed (a marker in its logs folder says so).
WORKER_PAUSE_ENV = 'SCRIPTFORREPROCESSING_TEST_WORKER_PAUSE'
# Test-only: a worker that does not die with its parent (to test that the next run stops such an orphan).
NO_PARENT_WATCH_ENV = 'SCRIPTFORREPROCESSING_TEST_NO_PARENT_WATCH'
_RESULT_MARK = '@@eb-task-result@@ '
_MPI_VARIABLES = ('OMPI_', 'PMI_', 'PMIX_', 'MPI_', 'HYDRA_')


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Below this much data, starting CASA in worker processes (2-3 s each) costs more than it saves.
PARALLEL_MIN_BYTES = 200 * 1000 * 1000


def resolve_jobs(requested, n_ebs, *, total_bytes=None):
    """Processes to use: --jobs N, else the number of cores (one for small data); never more than the EBs."""
    if requested:
        jobs = requested
    elif total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES:
        jobs = 1
    else:
        jobs = available_cores()
    return max(1, min(int(jobs), int(n_ebs)))


class EbWorkers(object):
    """Tasks on execution blocks: in this process (one job) or in worker processes (several)."""

    def __init__(self, count, *, state, share_cores=False):
        self.count = count
        self.state = state
        self.share_cores = share_cores
        self.processes = []
        self.logfiles = []

    @classmethod
    @contextlib.contextmanager
    def started(cls, jobs, *, state, share_cores=False):
        """share_cores: each worker's OpenMP threads (tclean's) limited to its share of the cores, unless
        OMP_NUM_THREADS is set already (measured: README "One cube over several workers")."""
        workers = cls(jobs, state=state, share_cores=share_cores)
        try:
            if jobs > 1:
                workers._start()
            yield workers
        except BaseException:
            workers._stop(at_once=True)  # a failure or an interruption: nothing more to wait for
            raise
        workers._stop()

    def narrow(self, count, *, share_cores=False):
        """From here on count workers sharing the cores as asked, for workers started before the run knew its
        tasks (steps/image.py: their CASA loads while the run plans): the ones beyond count are stopped (they were
        never given a task); all are replaced by new ones when they are too few or their threads are not what
        count workers get (_omp_threads)."""
        count = max(1, count)
        fitting = 1 < count <= len(self.processes) and share_cores == self.share_cores and \
            self._omp_threads(count) == self._omp_threads(len(self.processes))
        if not fitting:
            self._stop(at_once=True)
            self.count, self.share_cores, self.logfiles = count, share_cores, []
            if count > 1:
                self._start()
            return
        _stop_processes(self.processes[count:], at_once=True)  # never given a task
        self.processes, self.logfiles, self.count = self.processes[:count], self.logfiles[:count], count
        record = getattr(self.state, 'record_workers', None)
        if record is not None:
            record([process.pid for process in self.processes])

    def _omp_threads(self, count):
        """OMP_NUM_THREADS for each of count workers: their share of the cores with share_cores, unless it is set
        already (then None: theirs is this process's)."""
        if not self.share_cores or 'OMP_NUM_THREADS' in os.environ:
            return None
        return str(max(1, available_cores() // count))

    def _start(self):
        command = self_command(SCRIPT_NAME)
        if command is None:
            say('  note: cannot find this script\'s own path, so the execution blocks run one after another')
            self.count = 1
            return
        self.state.logs_dir.mkdir(parents=True, exist_ok=True)
        environment = self_environment((name, value) for name, value in os.environ.items()
                                       if not name.startswith(_MPI_VARIABLES))
        environment['PYTHONIOENCODING'] = 'utf-8'  # the pipe between us, whatever the locale
        threads = self._omp_threads(self.count)
        if threads is not None:
            environment['OMP_NUM_THREADS'] = threads
        environment[PARENT_ENV] = str(os.getpid())  # a worker dies with this process (die_with_parent)
        lock = getattr(self.state, '_lock_file', None)
        # The workers inherit the run's lock: if this process is killed, no new run starts in this
        # delivery before they have stopped writing.
        keep = (lock.fileno(),) if lock is not None else ()
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        for number in range(1, self.count + 1):
            logfile = self.state.logs_dir / ('casa-%s-worker%d.log' % (stamp, number))
            # What CASA prints on stderr (leap-second warnings, C++ messages) goes to a file beside
            # its log; the terminal gets the worker's progress lines only.
            errors = logfile.with_name(logfile.name[:-len('.log')] + '-stderr.txt')
            process = _start_worker_process(command + [EB_WORKER_FLAG, str(logfile)],
                                            cwd=casa_safe_directory(self.state.logs_dir), env=environment, pass_fds=keep,
                                            stderr_path=errors)
            self.processes.append(process)
            self.logfiles.append(logfile)
        record = getattr(self.state, 'record_workers', None)
        if record is not None:  # the next run stops them if they outlive this process
            record([process.pid for process in self.processes])

    def run(self, tasks, *, casa, unit='execution blocks', progress=None):
        """Results of the tasks, in their order; the first failure stops the others and is raised.

        unit: what the tasks are, in the progress lines ('images'); progress(done, total, started, queued=): says
        the progress instead of say_progress.
        """
        progress = progress or (lambda done, total, started, queued=None: say_progress(
            done, total, started, queued=queued, unit=unit))
        if self.count <= 1 or not self.processes:
            results, started = [], time.time()
            for task in tasks:
                results.append(self._run_here(task, casa))
                progress(len(results), len(tasks), started)
            return results
        return self._run_in_workers(tasks, progress)

    @staticmethod
    def _run_here(task, casa):
        def report(message):
            say('  [%s] %s' % (task['eb'], message))
        return EB_TASKS[task['function']](casa, report, **task['arguments'])

    def _run_in_workers(self, tasks, progress):
        import threading
        queue = list(enumerate(tasks))
        results = [None] * len(tasks)
        failures = []
        guard = threading.Lock()
        started, done = time.time(), [0]

        def serve(process, logfile):
            while True:
                with guard:
                    if failures or not queue:
                        return
                    index, task = queue.pop(0)
                try:
                    process.stdin.write(json.dumps(task) + '\n')
                    process.stdin.flush()
                except OSError:
                    answer = None
                else:
                    answer = _read_answer(process, task['eb'], guard)
                with guard:
                    if answer is None:
                        failures.append('the worker process for %s stopped unexpectedly (exit status %s) — see its '
                                        'CASA log %s and the -stderr.txt file beside it'
                                        % (task['eb'], process.poll(), logfile))
                    elif not answer.get('ok'):
                        failures.append(answer.get('error', 'unknown error'))
                    else:
                        results[index] = answer['result']
                        done[0] += 1
                        progress(done[0], len(tasks), started, queued=len(queue))

        threads = [threading.Thread(target=serve, args=(process, logfile))
                   for process, logfile in zip(self.processes, self.logfiles)]
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short waits keep Ctrl-C and SIGTERM responsive
                if failures:  # stop the other execution blocks now rather than after their work
                    for process in self.processes:
                        if process.poll() is None:
                            process.terminate()
        if failures:
            raise ReprocessingError(failures[0])
        return results

    def _stop(self, at_once=False):
        _stop_processes(self.processes, at_once=at_once)
        self.processes = []


def _stop_processes(processes, *, at_once=False):
    """End worker processes: stdin closed (an idle worker exits), terminated at once if asked, else waited for."""
    for process in processes:
        try:
            process.stdin.close()  # end of tasks: an idle worker exits
        except OSError:
            pass
        if at_once and process.poll() is None:
            process.terminate()
    deadline = time.time() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.time()))
        except Exception:  # subprocess.TimeoutExpired: still busy, stop it
            process.terminate()
            try:
                process.wait(10)
            except Exception:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def say_progress(done, total, started, *, queued=None, unit='execution blocks'):
    """'k of n execution blocks done in T s, about X s left' (left: the time per block so far).

    queued: blocks not started yet in parallel runs; when none is, the rest are running and no
    estimate is made (the first ones' time includes starting the workers).
    """
    if total < 2:
        return
    elapsed = time.time() - started
    if done == total:
        left = ''
    elif queued == 0:
        left = ', the other %d running' % (total - done)
    else:
        left = ', about %s left' % duration_text(elapsed / done * (total - done))
    say('  %d of %d %s done in %s%s' % (done, total, unit, duration_text(elapsed), left))


def _start_worker_process(command, *, cwd, env, pass_fds=(), stderr_path):
    import subprocess
    try:
        with open(str(stderr_path), 'w') as errors:
            return subprocess.Popen(command, cwd=cwd, env=env, pass_fds=pass_fds, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors, bufsize=1,
                                    encoding='utf-8', errors='replace')
    except OSError as error:
        raise ReprocessingError('cannot start a worker process (%s) — run with --jobs 1' % (error.strerror or error))


def _read_answer(process, eb, guard):
    """Print the worker's progress lines for this task (prefixed) until its result line."""
    for line in iter(process.stdout.readline, ''):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
        with guard:  # one whole line at a time, whichever worker it comes from
            say('  [%s] %s' % (eb, line.rstrip('\n')))
    return None


def die_with_parent(parent):
    """End this process as soon as its parent (pid) has gone, even in the middle of a long CASA task.

    Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; CASA's C++ code
    runs on, holding the GIL, so no Python handler could act in time).  Everywhere: a thread checks
    every second that the parent is still this process's parent (it runs between CASA's calls).
    What a killed worker leaves in working_reprocess/ is removed by the next run (its journal).
    """
    import signal
    import threading
    if os.environ.get(NO_PARENT_WATCH_ENV) == '1':
        return
    if sys.platform.startswith('linux'):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still watches
    if parent is not None and os.getppid() != parent:
        os._exit(EXIT_FAILED)  # the parent died before the line above took effect

    def watch():
        while True:
            time.sleep(1.0)
            if parent is not None and os.getppid() != parent or parent is None and os.getppid() == 1:
                os._exit(EXIT_FAILED)
    thread = threading.Thread(target=watch, name='parent-watch')
    thread.daemon = True
    thread.start()


def _pause_for_test(logfile):
    """Test-only (WORKER_PAUSE_ENV): say so by a marker beside the worker's log, then wait to be killed."""
    if os.environ.get(WORKER_PAUSE_ENV) != '1' or logfile is None:
        return
    (logfile.parent / ('.worker-paused-%d' % os.getpid())).write_text(str(os.getpid()))
    while True:
        time.sleep(0.2)


def run_eb_worker(arguments):
    """Worker mode: load CASA, then run the tasks read from stdin, one JSON line each, until EOF."""
    logfile = Path(arguments[0]) if arguments else None
    parent = os.environ.get(PARENT_ENV, '')
    die_with_parent(int(parent) if parent.isdigit() else None)
    leave_stop_warning_to_parent()
    try:
        casa = load_casa(logfile=logfile)  # while the parent checks cont.dat
        casa.import_casatasks()  # now, not when the first task comes (load_casa leaves it to its first use)
    except ReprocessingError:
        casa = None  # each task then answers with the reason
    try:
        for line in iter(sys.stdin.readline, ''):
            if not line.strip():
                continue
            _pause_for_test(logfile)
            answer = run_registered_task(json.loads(line), say, casa=casa, logfile=logfile)
            sys.stdout.write(_RESULT_MARK + json.dumps(answer) + '\n')
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return EXIT_FAILED
    except BrokenPipeError:  # the parent is gone (killed); its next run removes what was half written
        return EXIT_FAILED
    return EXIT_OK


@contextlib.contextmanager
def eb_workers(jobs, *, state):
    """Where execution-block tasks run: on the MPI servers under MPI, else in `jobs` processes (EbWorkers)."""
    if mpi_servers_available():
        yield MpiEbServers.connect()
        return
    with EbWorkers.started(jobs, state=state) as workers:
        yield workers
