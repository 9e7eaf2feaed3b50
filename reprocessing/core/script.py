"""Which program this is, and how to start it again: the generated script by its path, or the package.

Worker processes and MPI servers run this same program again: a generated script by its file, the
package (``python -m reprocessing``) by its name with its folder on the path.  Under ``casa -c SCRIPT
--x`` some CASA releases leave CASA's own options in sys.argv and set __file__ to something else, so
both are found by the script's name.
"""

import os
import sys
from pathlib import Path

PACKAGE_NAME = 'reprocessing'


def running_as_package():
    """True in the package (python -m reprocessing), False in a generated script.

    A module of the package has __package__ 'reprocessing.core'; the flat script, run or imported,
    has None or ''.
    """
    return bool(__package__)


def package_parent():
    """The folder that holds the package reprocessing/ (put on the path of the processes it starts)."""
    return Path(__file__).resolve().parents[2]


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
    try:
        own = __file__
    except NameError:  # exec()'d without a file
        own = None
    monolithic = 'casashell' in sys.modules
    if own and own.endswith('.py') and os.path.isfile(own) and (not monolithic or os.path.basename(own) == script):
        return Path(own).resolve()
    for argument in sys.argv:
        if os.path.basename(argument) == script and os.path.isfile(argument):
            return Path(argument).resolve()
    return None


def self_command(script):
    """The command that starts this program again (then its arguments follow), or None when it cannot be found."""
    if running_as_package():
        return [sys.executable, '-m', PACKAGE_NAME]
    path = script_path(script)
    return None if path is None else [sys.executable, str(path)]


def self_environment(environment):
    """`environment` for a process started with self_command: in the package, its folder on PYTHONPATH."""
    environment = dict(environment)
    if running_as_package():
        paths = [str(package_parent())] + [p for p in environment.get('PYTHONPATH', '').split(os.pathsep) if p]
        environment['PYTHONPATH'] = os.pathsep.join(paths)
    return environment
