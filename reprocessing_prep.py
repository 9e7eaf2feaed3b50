#!/usr/bin/env python3
"""Turn a restored ALMA pipeline ``working/`` directory into a ``calibrated_final/`` delivery.

Run it inside the pipeline's ``working/`` directory (the one holding
``uid___A002_X..._X..._targets.ms``, ``cont.dat`` and a lot of other files).
It builds ``../calibrated_final/`` the way ALMA delivers it::

    calibrated_final/
      caltables/cont.dat
      caltables/*uvcont.tbl                  (Cycle 9 and later, when present)
      measurement_sets/uid*_targets.ms
      measurement_sets/uid*_targets_line.ms  (when present)
      scriptForReprocessing.py               (copied, if it sits beside this script)

Examples (with this file copied into working/, or give its path)::

    cd /data/2023.1.01234.S/member.uid___A001_X1_X2/working
    python3 reprocessing_prep.py --dry-run        # show the plan and the disk space needed
    python3 reprocessing_prep.py                  # copy (the default)
    python3 reprocessing_prep.py --link           # symbolic links: no extra disk space
    python3 reprocessing_prep.py --move           # move the MSes out of working/
    python3 reprocessing_prep.py --working /data/run1/working --output /scratch/calibrated_final
    casa -c reprocessing_prep.py --link           # inside monolithic CASA works too

Deliveries from before Cycle 9 have ``uid*_target.ms`` whose CORRECTED_DATA
column holds the continuum-subtracted data.  Each one is converted with CASA's
``mstransform`` (which only reads it) into ``uid*_targets.ms`` (its DATA
column) and ``uid*_targets_line.ms`` (its CORRECTED_DATA column).  This needs
CASA: modular CASA (``pip install casatools casatasks casadata``) or
``casa -c reprocessing_prep.py``.

Guarantees: nothing in working/ is modified (``--move`` moves the delivered
files out of it; the only new file there is a CASA log when a pre-Cycle-9 MS
is converted); the output appears under its final name only when it is complete
(it is built as ``<output>.partial-<pid>`` beside it); on any error the partial
output is removed and, with ``--move``, everything already moved is moved back;
every problem is one ``ERROR: what is wrong — what to do`` line on stderr with
exit status 1 (2 for a wrong command line).
"""

import argparse
import collections
import contextlib
import datetime
import os
import shutil
import signal
import stat
import sys
from pathlib import Path, PurePosixPath

SCRIPT_NAME = 'reprocessing_prep.py'
REPROCESSING_SCRIPT_NAME = 'scriptForReprocessing.py'
DEFAULT_OUTPUT_NAME = 'calibrated_final'
PARTIAL_TAG = '.partial-'
SPACE_MARGIN = 0.10          # copies need a little more than the sum of file sizes (blocks, metadata)

MODE_COPY, MODE_LINK, MODE_MOVE = 'copy', 'link', 'move'

# What a plan step does.  DELIVER follows the mode (copy, link or move); COPY is
# always a copy (the reprocessing script: small, and users edit it);
# CONVERT writes a new MS from one data column of a pre-Cycle-9 MS.
ACTION_DELIVER, ACTION_COPY, ACTION_CONVERT = 'deliver', 'copy', 'convert'

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

MS_DIR = PurePosixPath('measurement_sets')
# Inside the partial output: copies and conversions are written here under their
# final names (an MS keeps its own name in its history), then renamed into place.
STAGING_DIR = PurePosixPath('.incomplete')
CALTABLES_DIR = PurePosixPath('caltables')


class PrepError(Exception):
    """A problem the user can fix; the message reads 'what is wrong — what to do'."""


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


class _Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwind like Ctrl-C so the partial output is cleaned up."""


# A pre-Cycle-9 uid*_target.ms and the Cycle-9 names it becomes.
Cycle8Conversion = collections.namedtuple('Cycle8Conversion', 'source targets_name line_name')

# What was found in working/.
DeliveryProducts = collections.namedtuple(
    'DeliveryProducts',
    'targets_ms targets_line_ms cycle8_conversions superseded_cycle8 cont_dat uvcont_tables')

# One thing to do: source (absolute Path), destination (relative to the output),
# size_bytes (of the source), datacolumn ('data'/'corrected' for CONVERT, else None).
PlanStep = collections.namedtuple('PlanStep', 'action source destination size_bytes datacolumn')

Plan = collections.namedtuple(
    'Plan', 'working output partial_output mode steps bytes_needed notes warnings')


# ===========================================================================
# Finding what to deliver (reads directory listings only)
# ===========================================================================

def _measurement_sets(*, working, pattern):
    """The MS directories in working/ matching pattern; a matching name that is no MS is an error."""
    found = []
    for path in sorted(working.glob(pattern)):
        if not path.is_dir() or not (path / 'table.dat').is_file():
            raise PrepError('%s looks like a measurement set but is not one (no table.dat) — restore it '
                            'again from the archive, or move it out of %s' % (path, working))
        found.append(path)
    return found


def find_delivery_products(*, working):
    """What in working/ belongs in calibrated_final/; everything else (the clutter) is ignored."""
    targets = _measurement_sets(working=working, pattern='uid*_targets.ms')
    targets_line = _measurement_sets(working=working, pattern='uid*_targets_line.ms')
    conversions, superseded = [], []
    existing_names = {p.name for p in targets}
    for source in _measurement_sets(working=working, pattern='uid*_target.ms'):
        stem = source.name[:-len('_target.ms')]
        conversion = Cycle8Conversion(source, stem + '_targets.ms', stem + '_targets_line.ms')
        # A Cycle-9 MS of the same execution block wins: it is what the pipeline delivers today.
        if conversion.targets_name in existing_names:
            superseded.append(source)
        else:
            conversions.append(conversion)
    cont_dat = working / 'cont.dat'
    uvcont_tables = sorted(working.glob('*uvcont.tbl'))
    return DeliveryProducts(targets, targets_line, conversions, superseded,
                            cont_dat if cont_dat.is_file() else None, uvcont_tables)


def _describe_missing_products(*, working):
    """Why there is nothing to prep, with a hint when working/ is a prepared delivery already."""
    if list(working.glob('measurement_sets/uid*_targets.ms')):
        return ('%s is already a calibrated_final/ delivery (it has measurement_sets/) — run '
                'scriptForReprocessing.py there instead' % working)
    return ('no uid*_targets.ms or uid*_target.ms in %s — run %s inside the pipeline\'s working/ '
            'directory, or give it with --working DIR' % (working, SCRIPT_NAME))


def tree_size(path):
    """Bytes of a file, or of every file below a directory (links followed, as a copy follows them)."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(str(path), followlinks=True):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_size
    return total


def free_bytes_at(directory):
    """Free bytes on the filesystem of directory (tests replace this function to simulate a full disk)."""
    return shutil.disk_usage(str(directory)).free


# ===========================================================================
# Planning (pure logic: no file system access)
# ===========================================================================

def partial_output_for(output, *, pid):
    return output.parent / ('%s%s%d' % (output.name, PARTIAL_TAG, pid))


def build_plan(*, working, output, mode, products, sizes, corrected_column, reprocessing_script, pid):
    """The steps that make output from products.

    sizes: {source path: bytes}; corrected_column: {pre-Cycle-9 MS: whether it
    has CORRECTED_DATA}; reprocessing_script: the scriptForReprocessing.py to
    copy, or None.
    """
    steps, notes, warnings = [], [], []
    # Conversions first: the slow, failure-prone part runs before anything is moved.
    for conversion in products.cycle8_conversions:
        size = sizes[conversion.source]
        steps.append(PlanStep(ACTION_CONVERT, conversion.source, MS_DIR / conversion.targets_name,
                              size, 'data'))
        if corrected_column[conversion.source]:
            steps.append(PlanStep(ACTION_CONVERT, conversion.source, MS_DIR / conversion.line_name,
                                  size, 'corrected'))
            notes.append('pre-Cycle-9 %s becomes %s (its DATA column) and %s (its CORRECTED_DATA column, '
                         'the continuum-subtracted data); the source is only read'
                         % (conversion.source.name, conversion.targets_name, conversion.line_name))
        else:
            notes.append('pre-Cycle-9 %s becomes %s (its DATA column); the source is only read'
                         % (conversion.source.name, conversion.targets_name))
            warnings.append('%s has no CORRECTED_DATA column, so there is no continuum-subtracted data to '
                            'deliver as %s — run scriptForReprocessing.py --contsub afterwards to make it'
                            % (conversion.source.name, conversion.line_name))
    for source in products.superseded_cycle8:
        warnings.append('%s is ignored: %s of the same execution block is delivered instead — remove one '
                        'of them if that is wrong' % (source.name, source.name.replace('_target.ms',
                                                                                       '_targets.ms')))
    for source in products.targets_ms + products.targets_line_ms:
        steps.append(PlanStep(ACTION_DELIVER, source, MS_DIR / source.name, sizes[source], None))
    if products.cont_dat is None:
        warnings.append('no cont.dat in %s: the delivery cannot be continuum-subtracted again — '
                        'put the cont.dat of this delivery into %s/ before running --contsub'
                        % (working, CALTABLES_DIR))
    else:
        steps.append(PlanStep(ACTION_DELIVER, products.cont_dat, CALTABLES_DIR / 'cont.dat',
                              sizes[products.cont_dat], None))
    for table in products.uvcont_tables:
        steps.append(PlanStep(ACTION_DELIVER, table, CALTABLES_DIR / table.name, sizes[table], None))
    if reprocessing_script is None:
        warnings.append('no %s beside %s — copy the one from your delivery\'s script/ directory into %s'
                        % (REPROCESSING_SCRIPT_NAME, SCRIPT_NAME, output))
    else:
        steps.append(PlanStep(ACTION_COPY, reprocessing_script, PurePosixPath(REPROCESSING_SCRIPT_NAME),
                              sizes[reprocessing_script], None))
    return Plan(working, output, partial_output_for(output, pid=pid), mode, steps,
                bytes_needed(steps, mode=mode), notes, warnings)


def bytes_written(step, *, mode):
    """Bytes step writes to the output's filesystem."""
    if step.action == ACTION_CONVERT:
        # Upper bound: the new MS holds one data column of the source, which may hold several.
        return step.size_bytes
    if step.action == ACTION_COPY or mode == MODE_COPY:
        return step.size_bytes
    return 0        # a link or a rename within one filesystem


def bytes_needed(steps, *, mode):
    written = sum(bytes_written(step, mode=mode) for step in steps)
    return int(written * (1 + SPACE_MARGIN) + 0.5)


def human_size(n_bytes):
    size = float(n_bytes)
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if size < 1000 or unit == 'TB':
            return ('%d %s' % (size, unit)) if unit == 'B' else ('%.1f %s' % (size, unit))
        size /= 1000.0


def step_verb(step, *, mode):
    if step.action == ACTION_CONVERT:
        return 'convert DATA' if step.datacolumn == 'data' else 'convert CORRECTED_DATA'
    return MODE_COPY if step.action == ACTION_COPY else mode


def format_plan(plan, *, free_bytes):
    lines = ['Plan (mode: %s)' % plan.mode,
             '  from:  %s' % plan.working,
             '  into:  %s  (built as %s, renamed when complete)' % (plan.output, plan.partial_output.name)]
    verbs = [step_verb(step, mode=plan.mode) for step in plan.steps]
    width = max(len(verb) for verb in verbs)
    for verb, step in zip(verbs, plan.steps):
        source = step.source.name if step.source.parent == plan.working else str(step.source)
        lines.append('  %-*s  %s -> %s  (%s)' % (width, verb, source, step.destination,
                                                 human_size(step.size_bytes)))
    for note in plan.notes:
        lines.append('  note: %s' % note)
    lines.append('  disk space needed: {:,} bytes ({}, with a {}% margin); free: {:,} bytes ({}) in {}'.format(
                 plan.bytes_needed, human_size(plan.bytes_needed), round(SPACE_MARGIN * 100),
                 free_bytes, human_size(free_bytes), plan.output.parent))
    return '\n'.join(lines)


def next_steps_text(*, output, reprocessing_script_copied):
    lines = ['Next steps:', '  cd %s' % output]
    if not reprocessing_script_copied:
        lines.append('  cp /path/to/your/delivery/script/%s .' % REPROCESSING_SCRIPT_NAME)
    lines += [
        '  casa --pipeline -c %s --contsub          # redo the continuum subtraction with caltables/cont.dat'
        % REPROCESSING_SCRIPT_NAME,
        '  python3 %s --contsub_fast                # the same with CASA only, without the pipeline'
        % REPROCESSING_SCRIPT_NAME,
        '  casa --pipeline -c %s --image            # make new images' % REPROCESSING_SCRIPT_NAME,
        '  python3 %s --calibrated_final            # concatenate into measurement_sets/calibrated_final.ms'
        % REPROCESSING_SCRIPT_NAME,
    ]
    return '\n'.join(lines)


# ===========================================================================
# Checks before anything is written
# ===========================================================================

def check_output_is_free(*, output):
    if os.path.lexists(str(output)):
        raise PrepError('%s already exists — remove or rename it first, or choose another --output'
                        % output)
    if not output.parent.is_dir():
        raise PrepError('the directory %s (where %s would go) does not exist — create it first, or choose '
                        'another --output' % (output.parent, output.name))


def check_output_outside_sources(*, output, sources):
    for source in sources:
        if source == output or source in output.parents:
            raise PrepError('the output %s would be inside %s — choose an --output outside it'
                            % (output, source))


def check_move_is_possible(*, plan):
    """--move renames, which is atomic only within one filesystem: refuse what would need a copy."""
    output_device = os.stat(str(plan.output.parent)).st_dev
    for step in plan.steps:
        if step.action != ACTION_DELIVER:
            continue
        if step.source.is_symlink():
            raise PrepError('%s is a symbolic link: --move would move only the link — use --link, or the '
                            'default copy mode' % step.source)
        if os.lstat(str(step.source)).st_dev != output_device:
            raise PrepError('%s is on another filesystem than %s, so --move would have to copy — use the '
                            'default copy mode, or --link' % (step.source, plan.output.parent))


def check_free_space(*, plan, free_bytes):
    if plan.bytes_needed > free_bytes:
        raise PrepError('not enough disk space in {}: {:,} bytes ({}) needed with a {}% margin, {:,} bytes ({}) '
                        'free — free some space, choose another --output, or use --link or --move'.format(
                            plan.output.parent, plan.bytes_needed, human_size(plan.bytes_needed),
                            round(SPACE_MARGIN * 100), free_bytes, human_size(free_bytes)))


def leftover_partial_outputs(*, output):
    return sorted(output.parent.glob(output.name + PARTIAL_TAG + '*'))


# ===========================================================================
# CASA (imported only when a pre-Cycle-9 MS must be inspected or converted)
# ===========================================================================

CasaModules = collections.namedtuple('CasaModules', 'casatools casatasks logfile')
_casa = None


def _is_monolithic_casa():
    """True inside a monolithic CASA session (``casa -c``), where CASA is configured already."""
    return 'casashell' in sys.modules


@contextlib.contextmanager
def _stderr_into(path):
    """Send file descriptor 2 to path meanwhile.

    CASA prints its WARN and SEVERE messages on the terminal even with
    showconsole(False); they are in its log anyway, and our errors must stay one line.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        os.close(saved)
        yield          # the log cannot be opened: CASA's messages stay on the terminal
        return
    try:
        os.dup2(target, 2)
        os.close(target)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def load_casa(*, logfile):
    """casatools and casatasks, configuring modular CASA for offline use first.

    Modular CASA must be told where its measures data are *before* its first
    import: without network access it otherwise refuses to start.  We point it
    at the ``casadata`` package and switch auto-updates off.  Monolithic CASA
    (``casa -c``) is configured already and is left alone.
    """
    global _casa
    if _casa is not None:
        return _casa
    if _is_monolithic_casa() or 'casatools' in sys.modules:
        # Configured (and logging) already: by casa -c, or by the program that imported us.
        import casatools
        import casatasks
    else:
        with _stderr_into(str(logfile)):
            try:
                import casadata
                from casaconfig import config
            except ImportError:
                raise PrepError('pre-Cycle-9 measurement sets must be converted with CASA, which is not '
                                'installed in this Python (%s) — install it with "pip install casatools '
                                'casatasks casadata", or run "casa -c %s ..."' % (sys.executable, SCRIPT_NAME))
            config.measurespath = casadata.datapath
            config.datapath = [casadata.datapath]
            config.measures_auto_update = False
            config.data_auto_update = False
            config.casaconfig_verbose = 0
            config.logfile = str(logfile)
            try:
                import casatools
                import casatasks
            except Exception as exc:
                raise PrepError('CASA failed to start (%s: %s) — see its log %s'
                                % (type(exc).__name__, exc, logfile))
    # The terminal gets this script's progress lines; CASA's messages go to its log.
    casatasks.casalog.showconsole(False)
    _casa = CasaModules(casatools, casatasks, Path(casatasks.casalog.logfile()))
    return _casa


def casa_logfile_for(*, working, output, dry_run):
    if dry_run:
        return Path(os.devnull)   # a dry run touches nothing, not even a log
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    name = 'casa-%s-%s.log' % (SCRIPT_NAME[:-len('.py')], stamp)
    # Beside the pipeline's own casa-*.log; the output's parent if working/ is read-only.
    directory = working if os.access(str(working), os.W_OK) else output.parent
    return directory / name


def _table_columns_and_rows(casa, ms):
    table = casa.casatools.table()
    if not table.open(str(ms), nomodify=True):
        raise PrepError('CASA cannot open %s — check that it is a complete measurement set' % ms)
    try:
        return table.colnames(), table.nrows()
    finally:
        table.close()


def has_corrected_column(casa, ms):
    with _stderr_into(str(casa.logfile)):
        columns, _rows = _table_columns_and_rows(casa, ms)
    return 'CORRECTED_DATA' in columns


def file_fingerprints(directory):
    """{relative path: (size, mtime)} of every file: cheap evidence that nothing was written."""
    fingerprints = {}
    for root, _dirs, files in os.walk(str(directory)):
        for name in files:
            path = os.path.join(root, name)
            status = os.stat(path)
            fingerprints[os.path.relpath(path, str(directory))] = (status.st_size, status.st_mtime_ns)
    return fingerprints


def convert_measurement_set(casa, *, source, destination, datacolumn):
    """mstransform one data column of source into a new MS at destination (source is only read)."""
    before = file_fingerprints(source)
    with _stderr_into(str(casa.logfile)):
        try:
            # reindex=False keeps the ALMA spw ids (25, 27, ...) that cont.dat refers to.
            casa.casatasks.mstransform(vis=str(source), outputvis=str(destination),
                                       datacolumn=datacolumn, reindex=False)
        except Exception as exc:
            raise PrepError('mstransform of %s (%s column) failed: %s — see the CASA log %s'
                            % (source.name, datacolumn.upper(), exc, casa.logfile))
        if not (destination / 'table.dat').is_file():
            raise PrepError('mstransform of %s (%s column) wrote no measurement set — see the CASA log %s'
                            % (source.name, datacolumn.upper(), casa.logfile))
        _source_columns, source_rows = _table_columns_and_rows(casa, source)
        _columns, rows = _table_columns_and_rows(casa, destination)
    if rows != source_rows:
        raise PrepError('mstransform of %s wrote %d rows instead of %d — see the CASA log %s'
                        % (source.name, rows, source_rows, casa.logfile))
    if file_fingerprints(source) != before:
        raise PrepError('%s changed while it was being converted — check it, and report this to the ALMA '
                        'helpdesk with the CASA log %s' % (source, casa.logfile))


# ===========================================================================
# Doing it
# ===========================================================================

def _os_error(action, exc):
    """PrepError for a failed file operation: 'cannot ACTION (FILE: REASON) — ...'."""
    reason = exc.strerror or str(exc)
    if getattr(exc, 'filename', None):
        reason = '%s: %s' % (exc.filename, reason)
    return PrepError('cannot %s (%s) — check the permissions and the free space there' % (action, reason))


def _make_user_writable(path):
    """Copies of archive files may be read-only; the user will reprocess (write) them."""
    for root, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            entry = os.path.join(root, name)
            mode = os.lstat(entry).st_mode
            if not stat.S_ISLNK(mode) and not mode & stat.S_IWUSR:
                os.chmod(entry, mode | stat.S_IWUSR)
    mode = os.lstat(str(path)).st_mode
    if not mode & stat.S_IWUSR:
        os.chmod(str(path), mode | stat.S_IWUSR)


def remove_tree(path):
    """rmtree that also removes read-only entries; symbolic links are removed, never followed."""
    def make_writable_and_retry(function, failed_path, _exc_info):
        parent = os.path.dirname(failed_path)
        os.chmod(parent, os.lstat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        function(failed_path)
    if os.path.islink(str(path)) or os.path.isfile(str(path)):
        os.unlink(str(path))
    elif os.path.isdir(str(path)):
        shutil.rmtree(str(path), onerror=make_writable_and_retry)


def copy_to(*, source, destination, temporary):
    """Copy a file or directory to temporary, then rename it to destination."""
    try:
        if source.is_dir():
            shutil.copytree(str(source), str(temporary), symlinks=False)
        else:
            shutil.copy2(str(source), str(temporary))
        _make_user_writable(temporary)
        os.rename(str(temporary), str(destination))
    except shutil.Error as exc:
        first = exc.args[0][0] if exc.args and exc.args[0] else ('?', '?', str(exc))
        raise PrepError('cannot copy %s (%s: %s) — check the permissions and the free space there'
                        % (source.name, first[0], first[2]))
    except OSError as exc:
        raise _os_error('copy %s' % source.name, exc)


def link_to(*, source, destination):
    try:
        os.symlink(str(source), str(destination))
    except OSError as exc:
        raise _os_error('link %s' % source.name, exc)


def move_to(*, source, destination):
    try:
        os.rename(str(source), str(destination))    # atomic: never half-moved
    except OSError as exc:
        raise _os_error('move %s' % source.name, exc)


@contextlib.contextmanager
def _termination_unwinds():
    """SIGTERM/SIGHUP unwind like Ctrl-C, so cleanup runs; a no-op outside the main thread."""
    def unwind(signum, _frame):
        raise _Terminated('signal %d' % signum)
    previous = {}
    for signum in (signal.SIGTERM, getattr(signal, 'SIGHUP', None)):
        if signum is None:
            continue
        try:
            previous[signum] = signal.signal(signum, unwind)
        except ValueError:
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _undo(*, plan, moved, created_partial):
    """Move back what was moved, then remove the partial output; returns what could not be undone."""
    problems = []
    for source, destination in reversed(moved):
        try:
            os.rename(str(destination), str(source))
        except OSError as exc:
            problems.append('%s is still at %s (%s)' % (source.name, destination, exc.strerror or exc))
    if problems:
        return problems     # the partial output holds the user's data: keep it
    if not created_partial:
        return problems     # someone else's directory: never remove it
    try:
        remove_tree(plan.partial_output)
    except OSError as exc:
        problems.append('could not remove %s (%s)' % (plan.partial_output, exc.strerror or exc))
    return problems


def execute_plan(plan, *, casa_logfile, say):
    """Build plan.partial_output, then rename it to plan.output; undo everything on any error."""
    moved = []      # (source, destination) of every rename done by --move, for the undo
    partial = plan.partial_output
    created_partial = False
    try:
        with _termination_unwinds():
            try:
                os.mkdir(str(partial))
                created_partial = True
                for directory in (MS_DIR, CALTABLES_DIR, STAGING_DIR):
                    os.mkdir(str(partial / directory))
            except OSError as exc:
                raise _os_error('create', exc)
            casa = None
            for number, step in enumerate(plan.steps, 1):
                destination = partial / step.destination
                temporary = partial / STAGING_DIR / step.destination.name
                say('[%d/%d] %s %s -> %s' % (number, len(plan.steps), step_verb(step, mode=plan.mode),
                                             step.source.name, step.destination))
                if step.action == ACTION_CONVERT:
                    casa = casa or load_casa(logfile=casa_logfile)
                    convert_measurement_set(casa, source=step.source, destination=temporary,
                                            datacolumn=step.datacolumn)
                    try:
                        os.rename(str(temporary), str(destination))
                    except OSError as exc:
                        raise _os_error('rename', exc)
                elif step.action == ACTION_COPY or plan.mode == MODE_COPY:
                    copy_to(source=step.source, destination=destination, temporary=temporary)
                elif plan.mode == MODE_LINK:
                    link_to(source=step.source, destination=destination)
                else:
                    move_to(source=step.source, destination=destination)
                    moved.append((step.source, destination))
            try:
                os.rmdir(str(partial / STAGING_DIR))
            except OSError as exc:
                raise _os_error('remove', exc)
            if os.path.lexists(str(plan.output)):
                raise PrepError('%s appeared while this script was running — remove or rename it and run '
                                'again' % plan.output)
            try:
                os.rename(str(partial), str(plan.output))
            except OSError as exc:
                raise _os_error('rename the finished output to %s' % plan.output, exc)
    except BaseException as exc:
        if isinstance(exc, PrepError):
            message = str(exc)
        elif isinstance(exc, (KeyboardInterrupt, _Terminated)):
            message = 'interrupted — nothing was kept; run the script again'
        elif isinstance(exc, OSError):
            message = str(_os_error('write', exc))
        else:
            message = 'unexpected %s: %s — please report this' % (type(exc).__name__, exc)
        problems = _undo(plan=plan, moved=moved, created_partial=created_partial)
        if problems:
            message += ('; the undo failed too: %s — move these back into %s by hand, then remove %s'
                        % ('; '.join(problems), plan.working, partial))
        elif moved:
            message += ' (everything moved was moved back to %s)' % plan.working
        raise PrepError(message)


# ===========================================================================
# Command line
# ===========================================================================

class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and raises instead of exiting."""

    def error(self, message):
        raise UsageError('%s — run "%s --help" for the options' % (message, SCRIPT_NAME))


def existing_directory(text):
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError('%s is not a directory' % text)
    return path.resolve()


def output_directory(text):
    if not text.strip():
        raise argparse.ArgumentTypeError('the output directory name is empty')
    # abspath, not resolve: the output does not exist yet, and its name must stay as given.
    return Path(os.path.abspath(os.path.expanduser(text)))


def build_parser():
    parser = _Parser(
        prog=SCRIPT_NAME,
        description='Build calibrated_final/ (caltables/, measurement_sets/) from an ALMA pipeline working/ '
                    'directory, converting pre-Cycle-9 uid*_target.ms with CASA.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples (inside working/):\n'
               '  python3 %(prog)s --dry-run     show the plan and the disk space needed\n'
               '  python3 %(prog)s               copy into ../calibrated_final\n'
               '  python3 %(prog)s --link        symbolic links instead: no extra disk space\n'
               '  casa -c %(prog)s --move        inside monolithic CASA\n'
               '\nexit status: 0 success, 1 failed (nothing is left half-done), 2 wrong command line')
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument('--copy', dest='mode', action='store_const', const=MODE_COPY,
                       help='copy (the default; the disk space is checked first)')
    modes.add_argument('--link', dest='mode', action='store_const', const=MODE_LINK,
                       help='make symbolic links (absolute) to working/ instead: no extra disk space')
    modes.add_argument('--move', dest='mode', action='store_const', const=MODE_MOVE,
                       help='move out of working/ instead (same filesystem only; undone on failure)')
    parser.add_argument('--working', type=existing_directory, default=None, metavar='DIR',
                        help='the pipeline working/ directory (default: the current directory)')
    parser.add_argument('--output', type=output_directory, default=None, metavar='DIR',
                        help='where to build it (default: WORKING/../%s); must not exist' % DEFAULT_OUTPUT_NAME)
    parser.add_argument('-n', '--dry-run', action='store_true',
                        help='print the plan (what goes where, mode, disk space) and exit without touching anything')
    parser.set_defaults(mode=MODE_COPY)
    return parser


def script_arguments(argv):
    """The options meant for this script.

    Under ``casa -c reprocessing_prep.py --link`` sys.argv holds CASA's own
    arguments too: take those after this script's path.
    """
    if argv is not None:
        return list(argv)
    for index, argument in enumerate(sys.argv):
        if os.path.basename(argument) == SCRIPT_NAME:
            return sys.argv[index + 1:]
    return sys.argv[1:]


def this_script_path():
    """This file; under ``casa -c`` __file__ may be unset or CASA's own, so look in sys.argv too."""
    candidates = []
    if not _is_monolithic_casa() and '__file__' in globals():
        candidates.append(globals()['__file__'])
    candidates += [argument for argument in sys.argv if os.path.basename(argument) == SCRIPT_NAME]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return Path(candidate).resolve()
    return None


def _write_line(stream, text):
    """Print text readably even where the terminal cannot encode '—' (Python 3.6 in the C locale)."""
    encoding = getattr(stream, 'encoding', None)
    if encoding:
        try:
            text.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            text = text.replace('\u2014', '--').encode(encoding, 'replace').decode(encoding)
    stream.write(text + '\n')
    stream.flush()


def say(text):
    _write_line(sys.stdout, text)


def warn(text):
    _write_line(sys.stderr, 'WARNING: ' + text)


def prepare(options):
    """Everything after the command line; raises PrepError."""
    working = options.working or Path(os.getcwd()).resolve()
    output = options.output or working.parent / DEFAULT_OUTPUT_NAME
    check_output_is_free(output=output)
    products = find_delivery_products(working=working)
    if not products.targets_ms and not products.cycle8_conversions:
        raise PrepError(_describe_missing_products(working=working))
    reprocessing_script = None
    script = this_script_path()
    if script is not None and (script.parent / REPROCESSING_SCRIPT_NAME).is_file():
        reprocessing_script = script.parent / REPROCESSING_SCRIPT_NAME
    sources = (products.targets_ms + products.targets_line_ms + products.uvcont_tables
               + [c.source for c in products.cycle8_conversions]
               + ([products.cont_dat] if products.cont_dat else [])
               + ([reprocessing_script] if reprocessing_script else []))
    check_output_outside_sources(output=output, sources=[s.resolve() for s in sources])
    try:
        sizes = {source: tree_size(source) for source in sources}
    except OSError as exc:
        raise _os_error('read', exc)

    casa_logfile = casa_logfile_for(working=working, output=output, dry_run=options.dry_run)
    corrected_column = {}
    casa = None
    if products.cycle8_conversions:
        casa = load_casa(logfile=casa_logfile)
        for conversion in products.cycle8_conversions:
            corrected_column[conversion.source] = has_corrected_column(casa, conversion.source)

    plan = build_plan(working=working, output=output, mode=options.mode, products=products, sizes=sizes,
                      corrected_column=corrected_column, reprocessing_script=reprocessing_script,
                      pid=os.getpid())
    if os.path.lexists(str(plan.partial_output)):
        raise PrepError('%s is left over from an interrupted run (with --move it may hold your measurement '
                        'sets) — move back what you need from it, then remove it' % plan.partial_output)
    for leftover in leftover_partial_outputs(output=output):
        warn('%s is left over from an interrupted run (with --move it may hold your measurement sets) — '
             'move back what you need from it, then remove it' % leftover)
    for message in plan.warnings:
        warn(message)
    free_bytes = free_bytes_at(output.parent)
    say(format_plan(plan, free_bytes=free_bytes))
    check_free_space(plan=plan, free_bytes=free_bytes)
    if plan.mode == MODE_MOVE:
        check_move_is_possible(plan=plan)
    if options.dry_run:
        say('Dry run: nothing was changed.')
        return
    if casa is not None:
        say('CASA log: %s' % casa.logfile)
    execute_plan(plan, casa_logfile=casa_logfile, say=say)
    say('Done: %s is ready (%s mode).' % (output, plan.mode))
    say(next_steps_text(output=output, reprocessing_script_copied=reprocessing_script is not None))


def main(argv=None):
    parser = build_parser()
    try:
        options = parser.parse_args(script_arguments(argv))
    except UsageError as exc:
        _write_line(sys.stderr, 'ERROR: %s' % exc)
        return EXIT_USAGE
    except SystemExit as exc:       # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        prepare(options)
    except PrepError as exc:
        _write_line(sys.stderr, 'ERROR: %s' % exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _write_line(sys.stderr, 'ERROR: interrupted before anything was written — run the script again')
        return EXIT_FAILED
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
