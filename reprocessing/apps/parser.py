"""Command-line plumbing both scripts share: one-line argparse errors, and directories as arguments (pure)."""

import argparse
import sys
from pathlib import Path

from ..core.messages import UsageError


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
