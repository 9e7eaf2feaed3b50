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
    """argparse, but an error is one line and raises UsageError instead of exiting.

    A value that starts with "-" (--cell -1arcsec, --uvrange -5m) is taken as the option's value
    when it is no option itself, so that its validator can say what is wrong with it; argparse
    alone reports "expected one argument".
    """

    def error(self, message):
        raise UsageError('%s — run "%s --help" for the options' % (message, self.prog))

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        takes_value = {flag for action in self._actions if action.option_strings and action.nargs is None
                       and action.const is None for flag in action.option_strings}
        known = {flag for action in self._actions for flag in action.option_strings}
        joined, index = [], 0
        while index < len(args):
            arg = args[index]
            following = args[index + 1] if index + 1 < len(args) else None
            if arg in takes_value and following is not None and following.startswith('-') \
                    and following.split('=')[0] not in known:
                joined.append('%s=%s' % (arg, following))
                index += 2
                continue
            joined.append(arg)
            index += 1
        return argparse.ArgumentParser.parse_args(self, joined, namespace)


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
