"""The one error policy of both scripts: run_main turns every way a run can end into an exit status.

0 success, 2 a usage error (one ERROR line), 1 a failed run (one ERROR line): a ReprocessingError
says what is wrong and what to do; a signal (Interrupted, KeyboardInterrupt) says what is on disk
when the run described it, else that nothing was written; anything else is a bug, reported in one
line (REPROCESSING_DEBUG=1 shows the traceback).
"""

import os
import sys

from ..casa.casa_engine import is_full_disk_error

from ..core.messages import DEBUG_ENV, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Interrupted, ReprocessingError, UsageError, one_line, report_error, signals_as_exceptions


def run_main(parse, run, *, script, usage_said_elsewhere=lambda: False):
    """Parse the command line (parse()), then run(options); returns the exit status.

    usage_said_elsewhere(): True where another process reports a usage error (an MPI server rank:
    rank 0 says it once), so this one ends quietly.
    """
    try:
        with signals_as_exceptions():
            try:
                options = parse()
            except SystemExit as finished:  # --help
                return finished.code if isinstance(finished.code, int) else EXIT_OK
            return run(options)
    except UsageError as error:
        if usage_said_elsewhere():
            return EXIT_OK
        report_error(str(error))
        return EXIT_USAGE
    except ReprocessingError as error:
        report_error(str(error))
        if is_full_disk_error(error) and 'casatools' in sys.modules:
            # Measured (CASA 6.7, no inodes left during uvcontsub): after the ERROR line, a table CASA could
            # not create aborts the process as Python ends ("terminate called ... cannot be created", exit
            # 134).  The run has cleaned up and said why: end here, without CASA's destructors.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt) as stop:
        if isinstance(stop, Interrupted) and stop.described:
            report_error(str(stop))
        else:  # before the run began: nothing was written
            report_error('%s — nothing was written; run the same command again'
                         % (stop if isinstance(stop, Interrupted) else 'interrupted (Ctrl-C)'))
        return EXIT_FAILED
    except Exception as error:  # a bug: one line, unless the developer asks for the traceback
        if os.environ.get(DEBUG_ENV) == '1':
            raise
        report_error('unexpected %s (%s) — this is a bug in %s: run it again with %s=1 to see where, and '
                     'report it' % (type(error).__name__, one_line(error), script, DEBUG_ENV))
        return EXIT_FAILED
