"""Execution-block tasks: the registry of functions a worker or an MPI server runs on one EB."""

import json

from .casa_engine import load_casa
from ..core.messages import ReprocessingError, one_line


def eb_task(function):
    """Register a function that works on one execution block, in this process or in a worker."""
    EB_TASKS[function.__name__] = function
    return function


EB_TASKS = {}


def run_registered_task(task, report, *, casa=None, logfile=None):
    """{'ok': True, 'result': ...} or {'ok': False, 'error': one line}: a task (JSON-able dict) run here.

    casa: CASA loaded already, else it is loaded here (with logfile).  A signal is not an answer: it
    passes through (Interrupted and KeyboardInterrupt are BaseExceptions).
    """
    try:
        casa = casa or load_casa(logfile=logfile)
        return {'ok': True, 'result': EB_TASKS[task['function']](casa, report, **task['arguments'])}
    except ReprocessingError as error:
        return {'ok': False, 'error': str(error)}
    except Exception as error:
        return {'ok': False, 'error': '%s failed on %s (%s: %s) — see the CASA log%s' % (
            task.get('function'), task.get('eb'), type(error).__name__, one_line(error),
            ' %s' % logfile if logfile else '')}


def run_eb_task_on_mpi_server(task_json):
    """On an MPI server: one execution-block task; the answer (JSON) carries its progress lines."""
    lines = []
    answer = run_registered_task(json.loads(task_json), lines.append)
    answer['lines'] = lines
    return json.dumps(answer)
