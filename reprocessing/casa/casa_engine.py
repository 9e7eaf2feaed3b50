"""CASA itself: the one loader (modular or monolithic), the one table opener, the one task wrapper.

Calls into CASA go through casa_task(), which turns CASA's RuntimeErrors into ReprocessingError
and lets Interrupted through; what CASA's C++ prints is kept off the terminal here too.  Both
scripts load CASA with load_casa().
"""

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..core.fileops import free_space_text, full_disk_among
from ..core.messages import ReprocessingError, one_line, say, stop_behind


class CasaModules(object):
    """CASA in this process: casatools, casatasks, the version and the kind ('modular' or 'monolithic').

    Modular CASA with casaconfig (6.6+) has casatasks imported when it is first used: its import
    imports every task, scipy and matplotlib, and planning, validating cont.dat and --check read
    metadata with casatools alone.  Measured with CASA 6.7.0 on 2 cores: casatools 0.24 s, casatasks
    0.95 s more; a parallel --contsub_fast starts its worker processes that much sooner.  Until then
    the log is a casatools logsink made CASA's global log, as casatasks makes its casalog.
    """

    def __init__(self, casatools, version, kind, *, casatasks=None, import_casatasks=None, casalog=None):
        self.casatools, self.version, self.kind = casatools, version, kind
        self._casatasks, self._import_casatasks, self._casalog = casatasks, import_casatasks, casalog

    def import_casatasks(self):
        """Import casatasks now (it is otherwise imported when first used), and return it."""
        return self.casatasks

    @property
    def casatasks(self):
        if self._casatasks is None:
            self._casatasks = self._import_casatasks(self._casalog.logfile())
            self._casalog = None
        return self._casatasks

    @property
    def casalog(self):
        """CASA's logger (logfile(), setlogfile(), post()), without importing casatasks.

        casatasks imported by another (the pipeline imports it) opens /dev/null or the log named at
        loading, and makes that CASA's global log: it is taken over here, told the log in use.
        """
        if self._casatasks is None and 'casatasks' in sys.modules:
            return self.casatasks.casalog
        return self._casalog if self._casatasks is None else self._casatasks.casalog


# What provides a module that loading modular CASA can miss, and how to get it.  Measured:
# casatasks 6.7.0 imports distutils, which Python 3.12 removed (setuptools brings a stand-in);
# casatasks imports six without declaring it; casaconfig exists from CASA 6.6 on.
CASA_MODULE_PROVIDERS = {
    'distutils': 'Python 3.12 removed distutils, which this casatasks imports — install setuptools '
                 '("pip install setuptools")',
    'six': 'casatasks needs six but does not declare it — install it ("pip install six")',
    'casadata': 'the measures data come from casadata — install it ("pip install casadata")',
    'casatools': 'install modular CASA ("pip install casatools casatasks casadata six")',
    'casatasks': 'install modular CASA ("pip install casatools casatasks casadata six")',
    'casaconfig': 'install modular CASA ("pip install casatools casatasks casadata six")',
}

_LOADED = []  # the CasaModules of this process, once loaded

# casacore asks for the current directory with a buffer of 1,024 bytes (Path.cc: "Failed AlwaysAssert
# getcwd(temp, 1024)"): measured (CASA 6.7, Linux), from a directory of 1,491 characters `import casatools`
# dies of SIGABRT with nothing printed, and once imported every table open fails with that assertion.
# So CASA never runs in such a directory: the run moves to a short one (casa_safe_directory).
CASA_CWD_LIMIT = 1000
# The longest path this tool makes below a delivery (working_reprocess/staging/concat/.uid..._targets.ms
# .partial-PID/SPECTRAL_WINDOW/table.f0 and the like), and the system's limit on a path.
LONGEST_PATH_BELOW_DELIVERY = 240
PATH_LIMIT = 4095


def casa_safe_directory(path=None):
    """path (default: the current directory) when CASA can work in it, else a short directory that exists
    (tempfile's, else the home directory, else /)."""
    path = str(path) if path is not None else os.getcwd()
    if len(path) < CASA_CWD_LIMIT:
        return path
    for candidate in (tempfile.gettempdir(), os.path.expanduser('~'), '/'):
        if len(candidate) < CASA_CWD_LIMIT and os.path.isdir(candidate):
            return candidate
    return '/'


def leave_directory_too_long_for_casa():
    """Move, for the rest of the process, out of a current directory too long for CASA (casa_safe_directory).

    For good, not for a block: CASA asks for the current directory again as the process ends (measured:
    reprocessing_prep.py from a directory of 1,411 characters came back to it after its work and died of
    SIGABRT, "Failed AlwaysAssert getcwd(temp, 1024)").  Every path the caller holds must be absolute."""
    here = os.getcwd()
    if casa_safe_directory(here) != here:
        os.chdir(casa_safe_directory(here))


@contextlib.contextmanager
def short_working_directory():
    """Run the block (CASA's imports) in a directory whose path CASA can hold, then come back."""
    here = os.getcwd()
    safe = casa_safe_directory(here)
    if safe == here:
        yield
        return
    os.chdir(safe)
    try:
        yield
    finally:
        os.chdir(here)


def casatools_version(casatools):
    """casatools' version as text: version_string(), else its numbers (6.6.0.20's version_string() is empty)."""
    text = str(casatools.version_string() or '').strip()
    if text:
        return text
    try:
        return '.'.join(str(int(part)) for part in list(casatools.version())[:4])
    except (AttributeError, TypeError, ValueError):
        return 'unknown version'


def is_monolithic_casa():
    """True inside a monolithic CASA session (``casa -c``), where CASA is configured already.

    Judged before CASA is loaded: casatools 6.4/6.5 import casashell themselves when it is
    installed (to find ~/.casa), so after loading only what load_casa found counts.
    """
    if _LOADED:
        return _LOADED[0].kind == 'monolithic'
    return 'casashell' in sys.modules


def load_casa(*, logfile=None, script='scriptForReprocessing.py', native_output=None):
    """casatools and casatasks (CasaModules: casatasks when first used, with casaconfig), configuring
    modular CASA for offline use first (once per process).

    Modular CASA must be told where its measures data are *before* its first
    import: with no network it otherwise refuses to start.  We point it at the
    ``casadata`` package and switch auto-updates off.  Monolithic CASA, and a CASA
    that the program importing us configured already, are left alone.  What CASA's C++ prints
    while it starts goes to native_output (default: the log file).
    """
    if _LOADED:
        return _LOADED[0]
    give_casa_a_home()
    monolithic = is_monolithic_casa()
    configured = monolithic or 'casatools' in sys.modules
    # casaconfig (CASA 6.6 and later) must be told before the first import; a CASA without it
    # (monolithic CASA's own Python in a worker process, modular CASA 6.4/6.5) configures itself.
    with_casaconfig = not configured and (_importable('casaconfig') or not _importable('casatools'))
    if with_casaconfig:
        configure_modular_casa(logfile=logfile, script=script)
    kind = 'monolithic' if monolithic else 'modular'
    native = native_output or logfile or os.devnull
    if with_casaconfig:
        with _casa_import_errors(), short_working_directory():
            with native_output_into(native):
                import casatools
        # casatasks when first used (CasaModules); until then a logger made as casatasks makes its casalog
        from casaconfig import config
        casalog = casatools.logsink(config.logfile)
        casalog.setglobal(True)
        casalog.showconsole(False)  # the terminal gets the script's own lines; CASA's messages go to its log
        _LOADED.append(CasaModules(casatools, casatools_version(casatools), kind, casalog=casalog,
                                   import_casatasks=_import_casatasks_now))
        return _LOADED[0]
    with _casa_import_errors(), short_working_directory():
        with native_output_into(native), \
                casatasks_settings_without_casaconfig(None if configured else logfile):
            import casatools
            import casatasks
    if logfile is not None and not monolithic and casatasks.casalog.logfile() != os.path.realpath(str(logfile)):
        casatasks.casalog.setlogfile(str(logfile))
    # The terminal gets the script's own progress lines; CASA's messages go to its log.
    casatasks.casalog.showconsole(False)
    _LOADED.append(CasaModules(casatools, casatools_version(casatools), kind, casatasks=casatasks))
    return _LOADED[0]


def _import_casatasks_now(current_log):
    """casatasks where casaconfig configured CASA: it opens config.logfile as its log, so that is
    the log in use now (the run may have switched logs since loading); what C++ prints meanwhile
    goes there too."""
    from casaconfig import config
    config.logfile = str(current_log)
    with _casa_import_errors(), short_working_directory():
        with native_output_into(current_log):
            import casatasks
    # measured (CASA 6.7.0): casatasks' casalog kept the log casatools opened (/dev/null while
    # planning) although config.logfile named another, so it is told again
    if casatasks.casalog.logfile() != os.path.realpath(str(current_log)):
        casatasks.casalog.setlogfile(str(current_log))
    casatasks.casalog.showconsole(False)
    return casatasks


@contextlib.contextmanager
def _casa_import_errors():
    """An ImportError while CASA is imported becomes one line naming the missing module and its provider."""
    try:
        yield
    except ImportError as error:
        missing = getattr(error, 'name', None) or ''
        advice = CASA_MODULE_PROVIDERS.get(missing.split('.')[0], 'check the CASA installation')
        if 'measures data is not available' in str(error):
            advice = MEASURES_MISSING_WITHOUT_CASACONFIG
        raise ReprocessingError('CASA failed to import in this Python (%s): %s — %s'
                                % (sys.executable, one_line(error), advice))


def give_casa_a_home():
    """Set HOME to a private empty folder for this run when it is not set (a batch system, env -u HOME).

    Measured with CASA 6.7: without HOME, "import casatasks" dies of a segmentation fault (exit 139),
    which no Python code can report.  Nothing of the run is kept there (CASA writes nothing into
    HOME; matplotlib, which draws the report's thumbnails, caches its font list), so the folder is
    made in the system's temporary directory, not in the delivery (a --dry-run writes nothing
    there), and is removed when the run ends.
    """
    if os.environ.get('HOME'):
        return None
    home = tempfile.mkdtemp(prefix='scriptForReprocessing-home-')
    os.environ['HOME'] = home
    atexit.register(shutil.rmtree, home, True)
    say('Note: HOME is not set: CASA gets an empty one for this run (%s, removed at the end)' % home)
    return home


# Modular CASA 6.4/6.5 (casatools/__init__.py, casatasks/private/userconfig.py of those wheels) have
# no casaconfig: casatools finds its data in ~/.casa/config.py's rundata/datapath, ~/.casa/data, or
# the casadata package, in that order; casatasks reads its log file from ~/.casa/config.py, or from
# a module casataskrc instead when one can be imported, and else opens casa-<UTC time>.log in the
# current directory at import.
MEASURES_MISSING_WITHOUT_CASACONFIG = (
    'this modular CASA (6.4/6.5, no casaconfig) finds its measures data in the casadata package, '
    '~/.casa/data or the rundata of ~/.casa/config.py: install casadata ("pip install casadata")')


@contextlib.contextmanager
def casatasks_settings_without_casaconfig(logfile):
    """While casatasks 6.4/6.5 is imported: a casataskrc holding the user's ~/.casa/config.py
    settings and logfile, so that CASA logs there from its first line and no stray
    casa-<time>.log is left in the current directory; nothing is written into ~/.casa."""
    if logfile is None or 'casataskrc' in sys.modules or _importable('casataskrc'):
        yield  # CASA 6.6+ (casaconfig does it), or a casataskrc of the user's own: theirs is used
        return
    import types
    settings = types.ModuleType('casataskrc')
    settings.__dict__.update(os=os, sys=sys)  # what ~/.casa/config.py finds when casatasks runs it
    user_config = Path(os.path.expanduser('~/.casa/config.py'))
    if user_config.is_file():
        try:
            exec(compile(user_config.read_text(), str(user_config), 'exec'), settings.__dict__)
        except Exception:  # casatasks, too, goes on with its defaults when the file fails
            pass
    settings.logfile = str(logfile)
    sys.modules['casataskrc'] = settings
    try:
        yield
    finally:
        sys.modules.pop('casataskrc', None)


def configure_modular_casa(*, logfile=None, script='scriptForReprocessing.py'):
    """Point modular CASA at casadata's measures, offline; to be done before casatools is first imported."""
    try:
        import casadata
        from casaconfig import config
    except ImportError as error:
        missing = getattr(error, 'name', None) or ''
        if missing.split('.')[0] in ('casadata', 'casaconfig') and _importable('casatools'):
            advice = CASA_MODULE_PROVIDERS.get(missing, '')
            raise ReprocessingError('modular CASA in this Python (%s) lacks %s — %s'
                                    % (sys.executable, missing, advice))
        raise ReprocessingError(
            'modular CASA is not installed in this Python (%s) — install it with '
            '"pip install casatools casatasks casadata six", or run the script with '
            '"casa --pipeline -c %s ..."' % (sys.executable, script))
    config.measurespath = casadata.datapath
    config.datapath = [casadata.datapath]
    config.measures_auto_update = False
    config.data_auto_update = False
    config.casaconfig_verbose = 0
    if logfile is not None:
        config.logfile = str(logfile)


def _importable(name):
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def casa_log_path(casa):
    """Where CASA logs now (the run may have moved the log after loading)."""
    return Path(casa.casalog.logfile())


def casa_task(casa, name, *, about, **arguments):
    """Run the CASA task `name`; a CASA failure becomes one ReprocessingError naming the task and `about`.

    CASA tasks raise plain RuntimeErrors (or anything else from inside); those mean "the task
    failed".  Interrupted and KeyboardInterrupt are BaseExceptions and pass through untouched.
    """
    task = getattr(casa.casatasks, name)
    try:
        return task(**arguments)
    except ReprocessingError:
        raise
    except Exception as error:
        stop = stop_behind(error)
        if stop is not None:  # a stop signal that came inside the task, returned as the task's own error
            raise stop
        # what the task writes first: the current directory (tclean's temporary tables) is on another disk
        full = full_disk_among([arguments[key] for key in OUTPUT_ARGUMENTS if arguments.get(key)] + [os.getcwd()],
                               error)
        if full:
            raise full_disk_error(name, about, error, full)
        raise ReprocessingError('%s failed on %s (%s) — see the CASA log %s; your MS was not '
                                'changed' % (name, about, one_line(error), casa_log_path(casa)))


# The arguments naming what a CASA task writes (their disks are looked at when the task fails).
OUTPUT_ARGUMENTS = ('imagename', 'concatvis', 'outputvis', 'fitsimage')


def full_disk_error(task, about, error, full):
    """The one error line of a CASA task that failed on a full disk (full: full_disk_among's answer)."""
    return ReprocessingError('%s failed on %s (%s): the disk of %s%s%s) — free some space, then run '
                             'the same command again; your MS was not changed'
                             % (task, about, one_line(error), full[0], _FULL_DISK_MARK, free_space_text(full[0])))


_FULL_DISK_MARK = ' is full ('


def is_full_disk_error(error):
    """Whether error is full_disk_error's line, also after it crossed a worker's pipe as text."""
    return _FULL_DISK_MARK in str(error)


@contextlib.contextmanager
def opened_table(casa, path, *, missing=None, writable=False, refusal=None):
    """A casatools table opened on path (read-only unless writable), closed on the way out whatever happens.

    missing: the advice when the table cannot be opened (e.g. "restore it from the delivery"); an
    MS whose directory is empty, or whose table.dat is gone, is named in one error line then.
    refusal: instead, a function of CASA's error that returns the ReprocessingError to raise.
    """
    table = casa.casatools.table()
    try:
        table.open(str(path), nomodify=not writable)
    except Exception as error:  # casatools raises RuntimeError "Table ... does not exist"
        if refusal is not None:
            raise refusal(error)
        raise ReprocessingError('cannot open the table %s (%s) — %s' % (
            path, one_line(error), missing or 'check that it is a complete CASA table'))
    try:
        yield table
    finally:
        table.close()


@contextlib.contextmanager
def opened_tool(tool, path):
    """A casatools tool (ms, msmetadata, image) opened on path, closed (done) on the way out."""
    tool.open(str(path))
    try:
        yield tool
    finally:
        for finish in ('close', 'done'):
            method = getattr(tool, finish, None)
            if method is not None:
                try:
                    method()
                except Exception:  # closing a tool that failed to open: nothing to release
                    pass


@contextlib.contextmanager
def _file_descriptor_into(fd, path):
    """Send what is written on file descriptor fd (C++ code writes there directly) into path meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(str(path), 'a') as target:
            os.dup2(target.fileno(), fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)


def native_stdout_silenced():
    """Keep what CASA's C++ prints on file descriptor 1 off the user's terminal (its log has it all)."""
    return _file_descriptor_into(1, os.devnull)


def native_output_into(path):
    """Send what CASA's C++ layer prints straight to the terminal into a file.

    casalog.showconsole(False) silences CASA's logger, but casacore and the
    imager still print WARN/SEVERE lines on file descriptor 2 (an old leap-second
    table, "No regions found by automasking"), which would bury the script's own
    progress lines.  They are kept, in the console log (console-<time>.log) beside the CASA log.
    """
    return _file_descriptor_into(2, path)
