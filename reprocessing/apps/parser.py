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
        self._refuse_repeated(joined)
        return argparse.ArgumentParser.parse_args(self, joined, namespace)

    def _refuse_repeated(self, args):
        """A flag given twice (--image a --image b, two --robust) is a usage error: argparse would keep the last
        silently, and the user meant one of them."""
        by_flag = dict((flag, action) for action in self._actions for flag in action.option_strings)
        seen = {}
        for index, arg in enumerate(args):
            if arg == '--':
                break
            if not arg.startswith('--'):
                continue
            name = arg.split('=', 1)[0]
            candidates = [flag for flag in by_flag if flag == name] or [
                flag for flag in by_flag if flag.startswith(name)]  # argparse's abbreviations
            if len(candidates) != 1:
                continue  # argparse says what is wrong with it
            action = by_flag[candidates[0]]
            following = args[index + 1] if index + 1 < len(args) else ''
            given = arg if '=' in arg or action.nargs == 0 or not following or following.startswith('-') \
                else '%s %s' % (arg, following)
            # by flag, not by destination: two flags of one destination (--link, --move) are argparse's to refuse
            if candidates[0] in seen:
                raise UsageError('%s is given twice (%s, then %s) — give it once' % (
                    candidates[0], seen[candidates[0]], given))
            seen[candidates[0]] = given


def existing_directory(text):
    """argparse type: a directory that exists, resolved."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError('%s is not a directory' % text)
    return path.resolve()
