"""MPI: ranks under mpicasa or mpirun, casampi servers, and execution-block tasks run on them."""

import collections
import contextlib
import json
import os
import sys
import time

from .casa_engine import configure_modular_casa, is_monolithic_casa
from ..core.script import package_parent, running_as_package, script_path
from ..core.layout import SCRIPT_NAME
from ..core.messages import EXIT_FAILED, ReprocessingError, leave_stop_warning_to_parent, one_line, say


MpiInfo = collections.namedtuple('MpiInfo', 'size rank is_client')


def mpi_info():
    """MPI as CASA uses it: casampi's view once it is loaded, before that the launcher's environment."""
    environment = sys.modules.get('casampi.MPIEnvironment')
    if environment is not None:
        mpi = environment.MPIEnvironment
        if mpi.is_mpi_enabled:
            return MpiInfo(mpi.mpi_world_size, mpi.mpi_processor_rank, mpi.is_mpi_client)
        return MpiInfo(1, 0, True)  # casampi found no usable MPI: CASA runs in this process alone
    size, rank = mpi_launch()
    return MpiInfo(size, rank, rank == 0)


def mpi_launch():
    """(size, rank) of the MPI job this process was started in, from the launcher's environment; (1, 0) if none."""
    for size_var, rank_var in (('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'), ('PMI_SIZE', 'PMI_RANK')):
        if size_var in os.environ:
            try:
                return int(os.environ[size_var]), int(os.environ.get(rank_var, '0'))
            except ValueError:
                break
    return 1, 0


def mpi_description():
    mpi = mpi_info()
    if mpi.size <= 1:
        size, _rank = mpi_launch()
        return 'MPI: none' if size <= 1 else 'MPI: started with %d processes, casampi not running' % size
    if not mpi.is_client:
        return 'MPI: %d ranks, this is server rank %d' % (mpi.size, mpi.rank)
    return 'MPI: %d ranks (rank 0 drives, %d casampi servers)' % (mpi.size, mpi.size - 1)


def mpi_servers_available():
    """True on rank 0 of an MPI job whose casampi servers can take CASA work (mpicasa, or mpirun + casampi)."""
    mpi = mpi_info()
    return mpi.size > 1 and mpi.is_client and 'casampi.MPIEnvironment' in sys.modules


def change_directory(path):
    """os.chdir here, and on the MPI servers too when there are some.

    CASA work sent to the servers uses their own working directory: tclean's temporary tables, the
    pipeline's parallel products (the pipeline works around the same problem in hif_selfcal).
    Without this they would land in the directory mpirun was started from.
    """
    os.chdir(str(path))
    if mpi_servers_available():
        from casampi.MPIEnvironment import MPIEnvironment
        from casampi.MPICommandClient import MPICommandClient
        client = MPICommandClient()
        client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
        client.push_command_request('os.chdir(%r)' % os.getcwd(), block=True,
                                    target_server=MPIEnvironment.mpi_server_rank_list())


def tclean_parallel(job):
    """tclean's parallel= for one imaging job: True for cubes and mosaics when MPI servers are there.

    Cubes spread their channels over the servers, mosaics their major cycles.  A single-pointing
    continuum image is gridded on rank 0: partitioning its data costs more than it gains.
    """
    return mpi_servers_available() and (bool(job.spectral) or job.gridder == 'mosaic')


# -- MPI with modular CASA: casampi's servers under "mpirun -n N python scriptForReprocessing.py" ---
#
# Under "mpicasa -n N casa -c scriptForReprocessing.py" (monolithic CASA), casashell makes ranks
# 1..N-1 casampi servers before the script starts, and only rank 0 runs it.  Under mpirun with
# modular CASA every rank starts this script; casa_mpi_job() then makes ranks 1..N-1 servers the
# same way: they serve inside the import of casampi.private.start_mpi and end the process there,
# never returning into the steps.  Rank 0 drives: it alone plans, takes the lock, writes the
# journal and outputs, and sends CASA work to the servers (tclean parallel=True, the pipeline's
# parallel='automatic', one execution block per server for --contsub_fast: MpiEbServers).
# casampi must be imported before casatasks on a server: importing casatasks under mpirun starts
# the servers too, but then inside casatasks' own import, where a task's "import casatasks" on a
# server waits forever for that import to finish (measured with casatasks 6.7 + casampi 0.6).

_MPI_JOB = {'client': None}


@contextlib.contextmanager
def casa_mpi_job():
    """Around a run: under mpirun with several ranks, ranks > 0 serve CASA here and exit; rank 0 continues.

    Rank 0 stops the servers when the body ends, also on errors, so that mpirun exits with rank
    0's status.  Without MPI, and in monolithic CASA (servers started by casashell), nothing happens.
    """
    size, rank = mpi_launch()
    if size <= 1 or is_monolithic_casa():
        yield
        return
    client = _join_casampi(size, rank)  # a server never comes back from here
    _MPI_JOB['client'] = client
    try:
        yield
    except BaseException:
        _MPI_JOB['client'] = None
        _stop_mpi_servers(client, interrupt=True)
        raise
    _MPI_JOB['client'] = None
    _stop_mpi_servers(client, interrupt=False)


MPI_STOP_SECONDS = 60


def _stop_mpi_servers(client, *, interrupt):
    """Stop the servers and finalise MPI on every rank, so that mpirun exits with rank 0's status.

    After an error or a signal the servers may be busy, or gone (mpirun passes SIGTERM to every
    rank): they are told to drop what they do, and rank 0 waits at most MPI_STOP_SECONDS; if they
    have not answered by then, rank 0 exits anyway and mpirun ends the remaining ranks.
    """
    import atexit
    atexit.unregister(client.stop_services)  # casampi's own stop at exit would only warn "finalized", or wait
    if not interrupt:
        client.stop_services()  # the servers are idle: a few seconds
        return
    import threading
    stopper = threading.Thread(target=client.stop_services, kwargs={'force_command_request_interruption': True})
    stopper.daemon = True
    stopper.start()
    stopper.join(MPI_STOP_SECONDS)


def _join_casampi(size, rank):
    import importlib.util
    missing = [name for name in ('casampi', 'mpi4py') if importlib.util.find_spec(name) is None]
    if missing:
        raise ReprocessingError(
            'this run was started by mpirun with %d processes, but %s %s not installed in this Python (%s) — '
            'install them with "pip install casampi mpi4py" (and Open MPI), or run without mpirun'
            % (size, ' and '.join(missing), 'is' if len(missing) == 1 else 'are', sys.executable))
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise ReprocessingError('this run was started by an MPI launcher other than Open MPI, which casampi does '
                                'not support — start it with Open MPI\'s mpirun (or mpicasa)')
    # casampi imports casatools, so CASA is configured first.  CASA's log goes nowhere until rank 0
    # has chosen the run's log (share_logs_with_mpi_servers): no casa-*.log lands in the user's directory.
    configure_modular_casa(logfile=os.devnull)
    from casampi.MPIEnvironment import MPIEnvironment  # initialises MPI on this rank
    if not MPIEnvironment.is_mpi_enabled:
        reason = str(getattr(MPIEnvironment, 'mpi_error_msg', 'unknown reason')).strip().splitlines()
        raise ReprocessingError('casampi could not use MPI (%s) — check the Open MPI and mpi4py installation, '
                                'or run without mpirun' % (reason[-1] if reason else 'unknown reason'))
    _shorten_casampi_polling(MPIEnvironment)
    if rank != 0:
        _serve_until_stopped(rank)
    import casampi.private.start_mpi  # noqa: F401  (on rank 0: the client's side of the servers)
    from casampi.MPICommandClient import MPICommandClient
    client = MPICommandClient()
    client.set_log_mode('unified')
    client.start_services()
    return client


def _serve_until_stopped(rank):
    """An MPI server: run what rank 0 sends until it says stop; then end this process, whatever happens."""
    leave_stop_warning_to_parent()  # mpirun passes SIGUSR1 to every rank: rank 0 stops the servers
    try:
        import casampi.private.start_mpi  # noqa: F401  (serves, then ends the process with status 0)
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; rank 0 reports it
        pass
    except BaseException as error:
        print('ERROR: MPI server rank %d stopped (%s: %s)' % (rank, type(error).__name__, one_line(error)),
              file=sys.stderr, flush=True)
    os._exit(EXIT_FAILED)


def _shorten_casampi_polling(environment):
    """casampi's services poll every 3-5 s, which makes stopping the servers take ~17 s; 0.5-1 s is plenty.

    Set on every rank before the servers start (both sides read them); the timeouts that declare a
    server lost were computed from the defaults and stay as they are.
    """
    for name, seconds in (('mpi_stop_service_sleep_time', 0.5), ('mpi_monitor_status_service_heartbeat', 1.0),
                          ('mpi_ping_status_request_handler_service_sleep_time', 0.5),
                          ('mpi_ping_status_response_handler_service_sleep_time', 0.5)):
        if isinstance(getattr(environment, name, None), (int, float)):
            setattr(environment, name, min(getattr(environment, name), seconds))


def share_logs_with_mpi_servers(casa, logfile, console_log=None):
    """The MPI servers log where rank 0 does: the run's CASA log, and its console log for what C++ prints.

    Under mpirun, CASA was loaded before the run chose its log, so rank 0 switches too; under
    mpicasa, CASA's log is unified already.  A server's file descriptor 2 (casacore's and the
    imager's own WARN/SEVERE lines) goes to the console log, as rank 0's does during the steps.
    """
    if not mpi_servers_available():
        return
    from casampi.MPIEnvironment import MPIEnvironment
    from casampi.MPICommandClient import MPICommandClient
    client = MPICommandClient()
    client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
    commands = []
    if _MPI_JOB['client'] is not None and logfile is not None:
        casa.casalog.setlogfile(str(logfile))
        commands.append('casalog.setlogfile(%r)' % str(logfile))
    if console_log is not None:
        commands.append('import os as _reprocessing_os\n'
                        '_reprocessing_fd = _reprocessing_os.open(%r, _reprocessing_os.O_WRONLY | '
                        '_reprocessing_os.O_APPEND | _reprocessing_os.O_CREAT, 0o644)\n'
                        '_reprocessing_os.dup2(_reprocessing_fd, 2)\n'
                        '_reprocessing_os.close(_reprocessing_fd)\n' % str(console_log))
    for command in commands:
        client.push_command_request(command, block=True, target_server=MPIEnvironment.mpi_server_rank_list())


# -- execution-block tasks on MPI servers -------------------------------------------------------------

MPI_SERVER_MODULE = 'scriptForReprocessing_on_mpi_server'
# Run once on every server (casampi executes it in its own namespace): load this script as a module
# from its path, without running main, so that the servers can call its execution-block tasks.
_MPI_SERVER_LOADER = '''
import importlib.util as _reprocessing_import, sys as _reprocessing_sys
if %(name)r not in _reprocessing_sys.modules:
    _reprocessing_spec = _reprocessing_import.spec_from_file_location(%(name)r, %(path)r)
    _reprocessing_module = _reprocessing_import.module_from_spec(_reprocessing_spec)
    _reprocessing_spec.loader.exec_module(_reprocessing_module)
    _reprocessing_sys.modules[%(name)r] = _reprocessing_module
'''
# The same for the package (python -m reprocessing): importing its entry registers every execution-block
# task; the servers then call run_eb_task_on_mpi_server of the module that defines it.
_MPI_SERVER_PACKAGE_LOADER = '''
import importlib as _reprocessing_import, sys as _reprocessing_sys
if %(name)r not in _reprocessing_sys.modules:
    if %(parent)r not in _reprocessing_sys.path:
        _reprocessing_sys.path.insert(0, %(parent)r)
    _reprocessing_import.import_module('reprocessing.apps.reprocess')
    _reprocessing_sys.modules[%(name)r] = _reprocessing_import.import_module('reprocessing.casa.eb_tasks')
'''


class MpiEbServers(object):
    """Execution-block tasks (see eb_task) on casampi's servers, one execution block per server at a time.

    Same interface as EbWorkers (count, run).  Rank 0 keeps the journal: the tasks only write the
    temporary outputs rank 0 registered.  A server's progress lines come back with its result and
    are printed prefixed with the execution block's name.
    """
    POLL_SECONDS = 0.2

    def __init__(self, client, servers):
        self.client = client
        self.servers = list(servers)
        self.count = len(self.servers)
        self.loaded = False

    @classmethod
    def connect(cls):
        from casampi.MPIEnvironment import MPIEnvironment
        from casampi.MPICommandClient import MPICommandClient
        client = MPICommandClient()
        client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
        return cls(client, MPIEnvironment.mpi_server_rank_list())

    def run(self, tasks, *, casa):
        """Results of the tasks, in their order; after a failure no new task starts, and the first is raised."""
        self._load_script_on_servers()
        queue, idle = list(enumerate(tasks)), list(self.servers)
        running = {}  # request id -> (index, task, server)
        results, failures = [None] * len(tasks), []
        while queue or running:
            while queue and idle and not failures:
                index, task = queue.pop(0)
                server = idle.pop(0)
                running[self._push(task, server)] = (index, task, server)
                say('  [%s] on MPI server %d' % (task['eb'], server))
            if not running:
                break
            time.sleep(self.POLL_SECONDS)
            for response in self.client.get_command_response(list(running), block=False, verbose=False):
                index, task, server = running.pop(response['id'])
                idle.append(server)
                answer = self._answer(response, task, server)
                for line in answer.get('lines', []):
                    say('  [%s] %s' % (task['eb'], line))
                if answer.get('ok'):
                    results[index] = answer['result']
                else:
                    failures.append(answer.get('error', 'unknown error'))
        if failures:
            raise ReprocessingError(failures[0])
        return results

    def _load_script_on_servers(self):
        if self.loaded:
            return
        if running_as_package():
            script = package_parent() / 'reprocessing'
            loader = _MPI_SERVER_PACKAGE_LOADER % {'name': MPI_SERVER_MODULE, 'parent': str(package_parent())}
        else:
            script = script_path(SCRIPT_NAME)
            if script is None:
                raise ReprocessingError('cannot find this script\'s own path, which the MPI servers need to load '
                                        'it — run it by its path (python /path/to/%s ...)' % SCRIPT_NAME)
            loader = _MPI_SERVER_LOADER % {'name': MPI_SERVER_MODULE, 'path': str(script)}
        responses = self.client.push_command_request(loader, block=True, target_server=self.servers) or []
        failed = [r for r in responses if not r.get('successful')]
        if failed or len(responses) != len(self.servers):
            detail = one_line(failed[0].get('traceback') or 'no answer') if failed else 'no answer'
            raise ReprocessingError('the MPI servers cannot load %s (%s) — it must be readable at the same path on '
                                    'every node' % (script, detail))
        self.loaded = True

    def _push(self, task, server):
        command = '__import__(%r).modules[%r].run_eb_task_on_mpi_server(%r)' % (
            'sys', MPI_SERVER_MODULE, json.dumps(task))
        ids = self.client.push_command_request(command, block=False, target_server=[server])
        if not ids:
            raise ReprocessingError('MPI server %d did not accept the work on %s — see the CASA log'
                                    % (server, task['eb']))
        return ids[0]

    @staticmethod
    def _answer(response, task, server):
        if response.get('successful'):
            try:
                return json.loads(response.get('ret'))
            except (TypeError, ValueError):
                pass
        detail = str(response.get('traceback') or response.get('status') or 'no answer').strip().splitlines()
        return {'ok': False, 'error': '%s on %s failed on MPI server %d (%s) — see the CASA log' % (
            task['function'], task['eb'], server, detail[-1] if detail else 'no answer')}
