"""Command-line plumbing both scripts share: one-line argparse errors, arguments and path under casa -c.

Pure (standard library).  Under ``casa -c SCRIPT --x`` some CASA releases leave CASA's own options
in sys.argv and set __file__ to something else, so both are found by the script's name.
"""

import argparse
import os
import sys
from pathlib import Path

from .messages import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line and raises UsageError instead of exiting."""

    def error(self, message):
        raise UsageError('%s — run "%s --help" for the options' % (message, self.prog))


def existing_directory(text):
    """argparse type: a directory that exists, resolved."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError('%s is not a directory' % text)
    return path.resolve()


def script_arguments(argv, *, script):
    """The options meant for the script called `script`: argv, else those after its path in sys.argv."""
    if argv is not None:
        return list(argv)
    args = sys.argv[1:]
    for index, arg in enumerate(sys.argv):
        if os.path.basename(arg) == script:
            args = sys.argv[index + 1:]
    return args


def script_path(script):
    """This script's own file (worker processes and MPI servers load it), or None when it cannot be found.

    The generated file's __file__ when it is a Python file (a user may have renamed it) and not
    monolithic CASA's own; else the argument of sys.argv named like the script.
    """
    own = globals().get('__file__')
    monolithic = 'casashell' in sys.modules
    if own and own.endswith('.py') and os.path.isfile(own) and (not monolithic or os.path.basename(own) == script):
        return Path(own).resolve()
    for argument in sys.argv:
        if os.path.basename(argument) == script and os.path.isfile(argument):
            return Path(argument).resolve()
    return None
