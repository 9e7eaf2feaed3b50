"""Messages and errors: the exceptions, exit codes and the one-line output every module uses.

Every problem reaches the user as one line ``ERROR: what is wrong — what to do``; progress and
warnings are plain lines on stdout.  Interrupted is a BaseException, like KeyboardInterrupt, so no
``except Exception`` meant for a CASA error can swallow a signal.
"""

import contextlib
import signal
import sys



EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ReprocessingError(Exception):
    """A problem the user can fix; the message reads 'what is wrong — what to do'."""


class UsageError(ReprocessingError):
    """The command line itself is wrong (exit status 2)."""


class Interrupted(BaseException):
    """A signal (STOP_SIGNALS) asked the run to stop.

    A BaseException, like KeyboardInterrupt: handlers for CASA's errors (``except Exception``) let
    it through, so no step can turn a signal into a warning and carry on.
    """

    def __init__(self, number, message=None):
        self.number = number
        self.name = signal_name(number)
        self.described = message is not None  # says what is on disk and what to do
        BaseException.__init__(self, message or 'stopped by signal %d (%s)' % (number, self.name))


# SIGUSR1 is the warning a batch job asks for before its time limit (Slurm: --signal=B:USR1@300), which
# mpirun passes on to every rank.  Slurm's own SIGTERM at the limit reaches mpirun too, and measured
# (Open MPI 4.1, Slurm 22.05) mpirun then drops whatever its ranks print after it: even a line printed
# at once was lost, while the same line after SIGUSR1 reached the job's output.
STOP_SIGNALS = ('SIGTERM', 'SIGHUP', 'SIGINT', 'SIGUSR1')


# The stop signals this process received since its run began (signals_as_exceptions): a stop whose exception CASA
# turned into another, or that an "except Exception" kept as a warning, is still known (stop_behind).
_RECEIVED = []


def exception_chain(error):
    """error, then the exceptions it was raised from or while handling (__cause__, __context__), each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def stop_behind(error):
    """The stop an exception stands for, or None: an Interrupted (or KeyboardInterrupt) in its chain, else, when a
    stop signal has come since the run began, an Interrupted for it.  Measured (CASA 6.7, SIGTERM during imsmooth):
    the handler's Interrupted came back from casatasks as SystemError("<built-in function ...> returned a result
    with an exception set"), and the run reported "imsmooth failed ... see the CASA log" instead of its stop."""
    for chained in exception_chain(error):
        if isinstance(chained, (Interrupted, KeyboardInterrupt)):
            return chained
    return Interrupted(_RECEIVED[-1]) if _RECEIVED else None


def raise_if_stopped():
    """Raise the stop a signal asked for, if one came (and its exception was swallowed on the way)."""
    stop = stop_behind(None)
    if stop is not None:
        raise stop


def stop_signal_numbers():
    """The STOP_SIGNALS this platform has."""
    return [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]


def leave_stop_warning_to_parent():
    """In a worker or an MPI server: SIGUSR1 is for the process that drives the run, which stops this one."""
    if hasattr(signal, 'SIGUSR1'):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return 'signal %s' % number


# Set to 1 to see the traceback of an unexpected error instead of its one-line summary.
DEBUG_ENV = 'REPROCESSING_DEBUG'


def say(message=''):
    _emit(message, sys.stdout)


def warn(message, *, stream=None):
    """A WARNING line: on stdout with the progress lines (stream=sys.stderr for reprocessing_prep.py's)."""
    _emit('WARNING: ' + message, stream or sys.stdout)


def report_error(message):
    _emit('ERROR: ' + message, sys.stderr)


def _emit(text, stream):
    """Print a line even where the terminal cannot show every character.

    Python 3.6 (older CASA releases) under LANG=C writes ASCII only: the dash of
    'what is wrong — what to do' would otherwise raise UnicodeEncodeError.
    """
    encoding = getattr(stream, 'encoding', None) or 'ascii'
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        text = text.replace('\u2014', '-').encode('ascii', 'replace').decode('ascii')
    print(text, file=stream, flush=True)


def duration_text(seconds):
    """'42 s', '3 min 05 s', '2 h 07 min'; '' for None."""
    if seconds is None:
        return ''
    seconds = int(round(seconds))
    if seconds < 60:
        return '%d s' % seconds
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return '%d min %02d s' % (minutes, seconds)
    hours, minutes = divmod(minutes, 60)
    return '%d h %02d min' % (hours, minutes)


def shorten(text, limit=60):
    return text if len(text) <= limit else text[:limit - 3] + '...'


def one_line(error):
    text = ' '.join(str(error).split())
    return shorten(text, 160)


def exit_as_finished(status):
    """End the script's process with status, a stop signal no longer able to change how it ended.

    Once run_main has returned, the run has finished, failed or said why it stopped; a SIGTERM while Python and
    CASA shut down (atexit handlers, C++ destructors) would otherwise kill the process by that signal after
    its last line (seen under load, 2026-12-07: "Done." printed, then exit -15, working_reprocess/ complete)."""
    for number in stop_signal_numbers():
        signal.signal(number, signal.SIG_IGN)
    sys.exit(status)


@contextlib.contextmanager
def signals_as_exceptions():
    """STOP_SIGNALS (SIGTERM, SIGHUP, SIGINT, SIGUSR1) raise Interrupted wherever the run is, so every cleanup runs.

    A signal that arrives while CASA's C++ code runs (a long tclean) is acted on when CASA returns
    to Python; a cluster's SIGKILL after its grace period is recovered by the next run.
    """
    def interrupt(number, _frame):
        _RECEIVED.append(number)
        raise Interrupted(number)
    del _RECEIVED[:]  # a new run (tests run several in one process)
    previous = {}
    for number in stop_signal_numbers():
        try:
            previous[number] = signal.signal(number, interrupt)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
