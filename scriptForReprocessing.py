#!/usr/bin/env python3
"""Reprocess an ALMA delivery: redo continuum subtraction, make new images, concatenate.

Copy this file into a delivery's ``calibrated_final/`` directory, which holds
``caltables/cont.dat`` and ``measurement_sets/uid*_targets.ms``, and run it there.

With a CASA release that includes the pipeline::

    casa --pipeline -c scriptForReprocessing.py --contsub --image
    casa --pipeline -c scriptForReprocessing.py --image cubes_robust2 --specmodes cube --robust 2
    casa --pipeline -c scriptForReprocessing.py --weblog

With modular CASA from PyPI (``pip install casatools casatasks casadata six``)::

    python scriptForReprocessing.py --contsub_fast
    python scriptForReprocessing.py --calibrated_final --calibrated_final_line
    python scriptForReprocessing.py --dry-run --contsub_fast --calibrated_final_line
    python scriptForReprocessing.py --cleanup

From anywhere, pointing at the delivery::

    python scriptForReprocessing.py --delivery /data/2023.1.01234.S/calibrated_final --calibrated_final

What it guarantees: your ``uid*_targets.ms`` are never moved and never written
by CASA-only actions; outputs appear under their final names only when
complete; a run that is killed is cleaned up by the next one; every problem is
reported as one ``ERROR: what is wrong — what to do`` line with a non-zero exit
status (1: the run failed, 2: the command line is wrong).
"""

# ---------------------------------------------------------------------------
# User-editable defaults.  Edit them here, or override them on the command line.
# None leaves the choice to the pipeline's (or the CASA engine's) heuristics.
# ---------------------------------------------------------------------------
IMAGES_DIR = 'images'           # --image [DIR]
WEBLOG = 'latest'               # --weblog [NAME]
SPECMODES = ['mfs', 'cont', 'cube', 'repBW']
ROBUST = None                   # e.g. 0.5
UVTAPER = None                  # e.g. ['0.5arcsec']
UVRANGE = None                  # e.g. '>20klambda'
FIELD = None                    # e.g. 'IRAS_16293-2422'
SPW = None                      # e.g. '25,27' (ids of the first execution block)
PHASECENTER = None              # e.g. 'ICRS 16:32:22.6 -24.28.33'
IMSIZE = None                   # e.g. [512, 512] or '0.3pb'
CELL = None                     # e.g. '0.05arcsec' or '3ppb'
NBINS = None                    # e.g. '25:2,*:4' (channel binning per spw)
MITIGATION = True               # False: skip hif_checkproductsize
MAXPRODUCTSIZE = None           # GB
MAXCUBESIZE = None              # GB
MAXCUBELIMIT = None             # GB
# ---------------------------------------------------------------------------

import argparse
import collections
import contextlib
import datetime
import errno
import fnmatch
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

SCRIPT_NAME = 'scriptForReprocessing.py'
WORK_DIR_NAME = 'working_reprocess'
LOCK_NAME = '.scriptForReprocessing.lock'
JOURNAL_NAME = '.scriptForReprocessing.journal'
SHADOW_MARKER = '.reprocessing-shadow'
PARTIAL_TAG = '.partial-'
# Test-only: the name of a checkpoint at which the run stops and waits to be killed.
PAUSE_ENV = 'SCRIPTFORREPROCESSING_TEST_PAUSE_AT'

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ReprocessingError(Exception):
    """A problem the user can fix; the message reads 'what is wrong — what to do'."""


class UsageError(ReprocessingError):
    """The command line itself is wrong (exit status 2)."""


class Interrupted(ReprocessingError):
    """A signal asked the run to stop."""


def say(message=''):
    print(message, flush=True)


def warn(message):
    print('WARNING: ' + message, flush=True)


# ===========================================================================
# Command line
# ===========================================================================

class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and raise instead of exiting."""

    def error(self, message):
        raise UsageError('%s — run "%s --help" for the options' % (message, SCRIPT_NAME))


def build_parser():
    parser = _Parser(
        prog=SCRIPT_NAME,
        description='Reprocess an ALMA delivery (run it in calibrated_final/, or use --delivery).',
        epilog='Steps run in this order: contsub, image, calibrated_final(_line), cleanup, weblog. '
               'Exit status: 0 success, 1 the run failed, 2 the command line is wrong.')
    actions = parser.add_argument_group('actions (at least one)')
    actions.add_argument('--contsub', action='store_true',
                         help='continuum subtraction with the ALMA pipeline, from caltables/cont.dat, '
                              'into measurement_sets/uid*_targets_line.ms')
    actions.add_argument('--contsub_fast', action='store_true',
                         help='continuum subtraction with CASA only (no pipeline needed)')
    actions.add_argument('--image', nargs='?', const=IMAGES_DIR, default=None, metavar='DIR',
                         help='make images into DIR (default: %s, relative to the delivery)' % IMAGES_DIR)
    actions.add_argument('--calibrated_final', action='store_true',
                         help='concatenate uid*_targets.ms into measurement_sets/calibrated_final.ms')
    actions.add_argument('--calibrated_final_line', action='store_true',
                         help='concatenate uid*_targets_line.ms into measurement_sets/calibrated_final_line.ms')
    actions.add_argument('--cleanup', action='store_true',
                         help='remove %s/ and the logs this tool created' % WORK_DIR_NAME)
    actions.add_argument('--weblog', nargs='?', const=WEBLOG, default=None, metavar='NAME',
                         help='serve a pipeline weblog over HTTP (default: %s)' % WEBLOG)
    general = parser.add_argument_group('general')
    general.add_argument('--delivery', type=_existing_directory, default=None, metavar='DIR',
                         help='the calibrated_final/ directory to work on (default: the current directory)')
    general.add_argument('--dry-run', action='store_true',
                         help='print the plan (steps, inputs, outputs, disk needed) and exit without touching anything')
    general.add_argument('--overwrite-line', action='store_true',
                         help='with --contsub/--contsub_fast: replace existing uid*_targets_line.ms '
                              '(the old ones are kept until the new ones are complete)')
    return parser


def _existing_directory(text):
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError('%s is not a directory' % text)
    return path.resolve()


def script_arguments(argv):
    """The options meant for this script.

    Under ``casa -c scriptForReprocessing.py --x`` some CASA releases leave
    CASA's own options in sys.argv; the script's options are those after the
    script's path.
    """
    if argv is not None:
        return list(argv)
    args = sys.argv[1:]
    for index, arg in enumerate(sys.argv):
        if os.path.basename(arg) == SCRIPT_NAME:
            args = sys.argv[index + 1:]
    return args


ACTION_NAMES = ('contsub', 'contsub_fast', 'image', 'calibrated_final', 'calibrated_final_line',
                'cleanup', 'weblog')


def chosen_actions(options):
    return [name for name in ACTION_NAMES
            if getattr(options, name) not in (None, False)]


def check_combinations(options):
    """Rules that depend on the flags alone."""
    actions = chosen_actions(options)
    if not actions:
        raise UsageError('no action given — add at least one of --contsub, --contsub_fast, --image, '
                         '--calibrated_final, --calibrated_final_line, --cleanup, --weblog')
    if options.contsub and options.contsub_fast:
        raise UsageError('--contsub and --contsub_fast both subtract the continuum — choose one')
    if options.weblog is not None and options.cleanup:
        raise UsageError('--cleanup removes the weblogs that --weblog would serve — run them separately')
    concat_only = set(actions) - {'weblog'} <= {'calibrated_final', 'calibrated_final_line'}
    if options.weblog is not None and len(actions) > 1 and concat_only:
        raise UsageError('--calibrated_final(_line) runs no pipeline, so it makes no weblog to serve — '
                         'run --weblog on its own')
    if options.overwrite_line and not (options.contsub or options.contsub_fast):
        raise UsageError('--overwrite-line only applies to --contsub or --contsub_fast — add one of them')
    if options.image is not None:
        _check_relative_output_name(options.image, '--image')


def _check_relative_output_name(name, flag):
    if not name or name.startswith('-'):
        raise UsageError('%s needs a directory name, got "%s" — e.g. %s images' % (flag, name, flag))


# ===========================================================================
# The delivery
# ===========================================================================

class Delivery(object):
    """What a calibrated_final/ directory holds."""

    def __init__(self, root):
        self.root = Path(root)
        self.ms_dir = self.root / 'measurement_sets'
        self.caltables = self.root / 'caltables'
        self.contdat = self.caltables / 'cont.dat'
        self.work_dir = self.root / WORK_DIR_NAME
        self.targets = self._list_ms('uid*_targets.ms')
        self.targets_line = self._list_ms('uid*_targets_line.ms')
        self.target_cycle8 = self._list_ms('uid*_target.ms')
        self.uvcont_tables = sorted(self.caltables.glob('*uvcont.tbl')) if self.caltables.is_dir() else []

    def _list_ms(self, pattern):
        if not self.ms_dir.is_dir():
            return []
        return sorted(p for p in self.ms_dir.iterdir()
                      if fnmatch.fnmatch(p.name, pattern) and p.is_dir() and PARTIAL_TAG not in p.name)

    def check_layout(self):
        if not self.ms_dir.is_dir():
            raise ReprocessingError(
                'no measurement_sets/ directory in %s — run the script in a delivery\'s calibrated_final/ '
                'directory, or point at one with --delivery DIR' % self.root)
        if not self.targets:
            if self.target_cycle8:
                raise ReprocessingError(
                    'measurement_sets/ holds only pre-Cycle 9 uid*_target.ms — convert them with '
                    '"python reprocessing_prep.py --working %s" first (it writes uid*_targets.ms and, from the '
                    'CORRECTED column, uid*_targets_line.ms)' % self.ms_dir)
            raise ReprocessingError(
                'no uid*_targets.ms in %s — run the script in a delivery\'s calibrated_final/ directory, '
                'or point at one with --delivery DIR' % self.ms_dir)

    def output(self, name):
        return self.ms_dir / name


def directory_bytes(path):
    """Bytes used by the real files below path (links are not followed)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(str(path)):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def free_bytes(path):
    return shutil.disk_usage(str(path)).free


def human_bytes(count):
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(count) < 1000 or unit == 'TB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (count, unit)
        count /= 1000.0


# ===========================================================================
# The plan: every decision and check made before the first long step
# ===========================================================================

Step = collections.namedtuple('Step', 'name summary inputs outputs extra_bytes function')


class Plan(object):
    def __init__(self, options, delivery):
        self.options = options
        self.delivery = delivery
        self.steps = []
        self.notes = []

    @property
    def extra_bytes(self):
        return sum(step.extra_bytes for step in self.steps)


def make_plan(options, delivery):
    """Validate the flags against the delivery and list the steps to run."""
    plan = Plan(options, delivery)
    needs_data = set(chosen_actions(options)) - {'cleanup', 'weblog'}
    if needs_data:
        delivery.check_layout()
    contsub = options.contsub or options.contsub_fast
    if contsub:
        _plan_contsub(plan)
    if options.image is not None:
        _plan_image(plan)
    if options.calibrated_final:
        _plan_concat(plan, delivery.targets, 'calibrated_final.ms')
    if options.calibrated_final_line:
        if not delivery.targets_line and not contsub:
            raise ReprocessingError(
                'no uid*_targets_line.ms in %s, so there is nothing to concatenate for --calibrated_final_line — '
                'make them in the same run with --contsub or --contsub_fast' % delivery.ms_dir)
        inputs = delivery.targets_line or [_line_name(ms) for ms in delivery.targets]
        _plan_concat(plan, inputs, 'calibrated_final_line.ms')
    if options.cleanup:
        plan.steps.append(Step('cleanup', 'remove %s/ and the logs this tool created' % WORK_DIR_NAME,
                               [delivery.work_dir], [], 0, run_cleanup))
    if options.weblog is not None:
        plan.steps.append(Step('weblog', 'serve the weblog "%s"' % options.weblog, [], [], 0, run_weblog))
    _check_free_space(plan)
    return plan


def _line_name(targets_ms):
    return targets_ms.with_name(targets_ms.name[:-len('.ms')] + '_line.ms')


def _plan_contsub(plan):
    delivery, options = plan.delivery, plan.options
    if not delivery.contdat.is_file():
        raise ReprocessingError('%s is missing — continuum subtraction needs it: restore it from the delivery'
                                % delivery.contdat)
    if delivery.targets_line and not options.overwrite_line:
        raise ReprocessingError(
            'measurement_sets/ already holds %d uid*_targets_line.ms — move them elsewhere, or add '
            '--overwrite-line to replace them once the new ones are complete' % len(delivery.targets_line))
    engine = 'pipeline' if options.contsub else 'CASA'
    function = run_contsub if options.contsub else run_contsub_fast
    outputs = [_line_name(ms) for ms in delivery.targets]
    extra = sum(directory_bytes(ms) for ms in delivery.targets)
    plan.steps.append(Step('contsub', 'continuum subtraction (%s) from %s' % (engine, delivery.contdat),
                           list(delivery.targets), outputs, extra, function))


def _plan_image(plan):
    delivery, options = plan.delivery, plan.options
    images = delivery.root / options.image
    if images.exists() and (not images.is_dir() or any(images.iterdir())):
        raise ReprocessingError('the images directory %s exists and is not empty — choose another name '
                                'with --image DIR, or move it away' % images)
    if not (options.contsub or options.contsub_fast) and not delivery.targets_line:
        plan.notes.append('no uid*_targets_line.ms: cube images need continuum-subtracted data — '
                          'add --contsub or --contsub_fast to make them')
    plan.steps.append(Step('image', 'imaging into %s' % images, list(delivery.targets), [images], 0,
                           run_image))


def _plan_concat(plan, inputs, output_name):
    delivery = plan.delivery
    output = delivery.output(output_name)
    if output.exists() or output.is_symlink():
        raise ReprocessingError('%s already exists — rename or remove it to make a new one' % output)
    extra = sum(directory_bytes(ms) for ms in inputs if ms.exists())
    plan.steps.append(Step(output_name[:-3], 'concatenate %d MS into %s' % (len(inputs), output),
                           list(inputs), [output], extra, run_concat))


def _check_free_space(plan):
    needed = plan.extra_bytes
    if not needed:
        return
    # 10% margin: CASA writes subtables, flag versions and logs beside the data.
    needed = int(needed * 1.1)
    available = free_bytes(plan.delivery.root)
    if available < needed:
        raise ReprocessingError(
            'not enough free disk in %s: the plan needs about %s, %s are free — free some space or '
            'run fewer steps at once' % (plan.delivery.root, human_bytes(needed), human_bytes(available)))


def describe_plan(plan):
    delivery = plan.delivery
    lines = ['Plan for %s' % delivery.root]
    for number, step in enumerate(plan.steps, 1):
        lines.append('  %d. %s' % (number, step.summary))
        for path in step.inputs:
            lines.append('       in:  %s' % _relative(path, delivery.root))
        for path in step.outputs:
            lines.append('       out: %s' % _relative(path, delivery.root))
    if plan.extra_bytes:
        lines.append('  Extra disk needed: about %s (%s free)'
                     % (human_bytes(plan.extra_bytes), human_bytes(free_bytes(delivery.root))))
    for note in plan.notes:
        lines.append('  Note: ' + note)
    return '\n'.join(lines)


def _relative(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# ===========================================================================
# Run state: one run per delivery, a journal of what must be undone if it dies
# ===========================================================================

class RunState(object):
    """The lock, the journal and the staging area of one run.

    Nothing of the user's is ever moved.  What a run creates (partial outputs,
    staging shadows) is written to the journal *before* it is created, so that
    the next run can remove it if this one is killed, even with SIGKILL.
    """

    def __init__(self, delivery):
        self.delivery = delivery
        self.lock_path = delivery.root / LOCK_NAME
        self.journal_path = delivery.root / JOURNAL_NAME
        self.staging_dir = delivery.work_dir / 'staging'
        self.logs_dir = delivery.work_dir / 'logs'
        self._lock_file = None
        self._journal = None
        self.casa_logfile = None
        self.results = []

    # -- lock ---------------------------------------------------------------
    def acquire(self):
        import fcntl
        try:
            handle = open(str(self.lock_path), 'a+')
        except OSError as error:
            raise ReprocessingError('cannot create %s (%s) — check that you may write in %s'
                                    % (self.lock_path, error.strerror, self.delivery.root))
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            handle.close()
            raise ReprocessingError('another run is working in this delivery (%s) — wait for it to finish'
                                    % holder)
        handle.seek(0)
        handle.truncate()
        handle.write('pid %d on %s since %s\n' % (os.getpid(), _hostname(), _now()))
        handle.flush()
        self._lock_file = handle

    def release(self):
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- journal ------------------------------------------------------------
    def begin(self, command):
        self._journal = {'pid': os.getpid(), 'started': _now(), 'command': command, 'created': []}
        self._write_journal()

    def will_create(self, path):
        """Record path before creating it: the next run removes it if this one dies."""
        self._journal['created'].append(str(path))
        self._write_journal()

    def created_for_good(self, path):
        """path (a temporary) was renamed or removed: nothing to undo for it any more."""
        self._journal['created'] = [p for p in self._journal['created'] if p != str(path)]
        self._write_journal()

    def finish(self):
        """Remove what this run created and did not keep; then forget the journal."""
        if self._journal is None:
            return
        self.undo(self._journal)
        _remove_file(self.journal_path)
        self._journal = None

    def _write_journal(self):
        temporary = self.journal_path.with_name(self.journal_path.name + '.tmp')
        with open(str(temporary), 'w') as handle:
            json.dump(self._journal, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(str(temporary), str(self.journal_path))

    def recover(self):
        """Undo what a killed run left behind; say what was recovered."""
        if not self.journal_path.exists():
            self._sweep_partials(quiet=False)
            return
        try:
            with open(str(self.journal_path)) as handle:
                journal = json.load(handle)
        except (OSError, ValueError):
            journal = {'created': [], 'pid': '?', 'started': '?', 'command': '?'}
        say('Recovering from an interrupted run (pid %s, started %s: %s):'
            % (journal.get('pid'), journal.get('started'), journal.get('command')))
        removed = self.undo(journal)
        removed += self._sweep_partials(quiet=True)
        for path in removed:
            say('  removed its unfinished %s' % _relative(path, self.delivery.root))
        if not removed:
            say('  it left nothing behind to remove')
        say('  your measurement sets were never moved: nothing else to restore')
        _remove_file(self.journal_path)

    def undo(self, journal):
        removed = []
        for text in reversed(journal.get('created', [])):
            path = Path(text)
            if not _is_inside(path, self.delivery.root):
                continue  # never touch anything outside the delivery, whatever a journal says
            if path.exists() or path.is_symlink():
                _remove_tree(path)
                removed.append(path)
        return removed

    def _sweep_partials(self, quiet):
        """Partial outputs whose journal entry was lost are recognisable by name."""
        removed = []
        for folder in (self.delivery.ms_dir, self.delivery.root):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if PARTIAL_TAG in path.name and path.name.startswith('.'):
                    _remove_tree(path)
                    removed.append(path)
                    if not quiet:
                        say('Removed %s, left unfinished by an earlier run'
                            % _relative(path, self.delivery.root))
        return removed

    # -- temporary outputs ----------------------------------------------------
    def partial_name(self, final):
        final = Path(final)
        return final.with_name('.%s%s%d' % (final.name, PARTIAL_TAG, os.getpid()))

    def publish(self, partial, final):
        """Give a complete output its final name."""
        final = Path(final)
        if final.exists() or final.is_symlink():
            raise ReprocessingError('%s appeared while this run was writing it — the new result is kept as %s'
                                    % (final, partial))
        os.rename(str(partial), str(final))
        self.created_for_good(partial)


def _is_inside(path, root):
    try:
        Path(os.path.abspath(str(path))).relative_to(os.path.abspath(str(root)))
        return True
    except ValueError:
        return False


def _remove_tree(path):
    """Remove path; links are removed, never followed."""
    path = Path(path)
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(str(path))
    except OSError as error:
        raise ReprocessingError('cannot remove %s (%s) — remove it by hand, then rerun'
                                % (path, error.strerror or error))


def _remove_file(path):
    try:
        Path(path).unlink()
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise ReprocessingError('cannot remove %s (%s) — remove it by hand' % (path, error.strerror))


def _now():
    return datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')


def _hostname():
    import socket
    return socket.gethostname()


def pause_point(name, state):
    """Test-only: stop here and wait to be killed when the test asks for it."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    marker = state.delivery.root / ('.paused-at-' + name)
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(0.2)


# ===========================================================================
# Staging: shadows of the user's measurement sets
# ===========================================================================

def make_shadow(ms, destination, *, private=('HISTORY',)):
    """A stand-in for ms whose files are links to the user's, except `private` subtables.

    CASA tasks that write into their inputs (concat appends HISTORY rows to
    every input after the first; the pipeline rewrites FIELD) then write into
    private copies, and the user's MS stays byte-identical.  Directories are
    real, files are links, and no table.lock is linked, so the table locks
    CASA takes stay inside the shadow too.
    """
    ms, destination = Path(ms).resolve(), Path(destination)
    destination.mkdir(parents=True)
    (destination / SHADOW_MARKER).write_text(str(ms))
    for entry in ms.iterdir():
        target = destination / entry.name
        if entry.name in private:
            shutil.copytree(str(entry), str(target), symlinks=False)
        elif entry.is_dir():
            _link_files(entry, target)
        elif entry.name != 'table.lock':
            os.symlink(str(entry), str(target))
    return destination


def _link_files(source, destination):
    destination.mkdir()
    for entry in source.iterdir():
        target = destination / entry.name
        if entry.is_dir():
            _link_files(entry, target)
        elif entry.name != 'table.lock':
            os.symlink(str(entry), str(target))


# ===========================================================================
# Steps: one function per step, each given the plan, the run state and CASA
# ===========================================================================

def run_concat(plan, state, step, casa):
    """concat the inputs into a temporary MS, then give it its final name."""
    output = step.outputs[0]
    inputs = [Path(ms) for ms in step.inputs]
    missing = [str(ms) for ms in inputs if not ms.is_dir()]
    if missing:
        raise ReprocessingError('cannot concatenate: %s missing — make them first (--contsub_fast or --contsub)'
                                % ', '.join(missing))
    staging = state.staging_dir / step.name
    state.will_create(staging)
    shadows = [make_shadow(ms, staging / ms.name) for ms in inputs]
    partial = state.partial_name(output)
    state.will_create(partial)
    say('  concatenating %d measurement sets into %s' % (len(inputs), _relative(output, plan.delivery.root)))
    pause_point('concat', state)
    casa.casatasks.concat(vis=[str(s) for s in shadows], concatvis=str(partial), copypointing=True)
    if not partial.is_dir():
        raise ReprocessingError('concat did not write %s — see the CASA log %s' % (partial, state.casa_logfile))
    pause_point('concat-written', state)
    summary = summarize_concat(casa, partial, inputs)
    state.publish(partial, output)
    _remove_tree(staging)
    state.created_for_good(staging)
    say('  wrote %s: %d rows (the sum of the inputs), %s' % (
        _relative(output, plan.delivery.root), summary['rows'], human_bytes(directory_bytes(output))))
    say('  spectral windows: %s' % ', '.join(str(i) for i in summary['spw_ids']))
    if summary['renumbered']:
        say('  note: concat gave later execution blocks new spw ids where their TOPO frequencies differ; '
            'select spws by name (e.g. spw="*FULL_RES*") rather than by id in this MS')
    return {'outputs': [str(output)], 'rows': summary['rows'], 'spw_ids': summary['spw_ids']}


def summarize_concat(casa, concatenated, inputs):
    """Rows and spw ids of the concatenated MS, checked against its inputs."""
    table = casa.casatools.table()

    def read(path, column=None):
        table.open(str(path))
        try:
            return table.nrows() if column is None else [int(v) for v in table.getcol(column)]
        finally:
            table.close()

    input_rows = sum(read(ms) for ms in inputs)
    rows = read(concatenated)
    if rows != input_rows:
        raise ReprocessingError('the concatenated MS has %d rows but the inputs have %d — it was not '
                                'published; see the CASA log' % (rows, input_rows))
    spw_ids = sorted(set(read(concatenated / 'DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')))
    first_ids = set(read(inputs[0] / 'DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID'))
    return {'rows': rows, 'spw_ids': spw_ids, 'renumbered': bool(set(spw_ids) - first_ids)}


# ---------------------------------------------------------------------------
# cont.dat: reader and checker
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Continuum subtraction: --contsub_fast (CASA) and --contsub (pipeline)
# ---------------------------------------------------------------------------

def run_contsub_fast(plan, state, step, casa):
    raise ReprocessingError('--contsub_fast is not implemented yet in this version')


def run_contsub(plan, state, step, casa):
    raise ReprocessingError('--contsub is not implemented yet in this version — use --contsub_fast')


# ---------------------------------------------------------------------------
# Imaging: --image (pipeline, or CASA tclean without the pipeline)
# ---------------------------------------------------------------------------

def run_image(plan, state, step, casa):
    raise ReprocessingError('--image is not implemented yet in this version')


# ---------------------------------------------------------------------------
# Weblog server and the reprocessing report
# ---------------------------------------------------------------------------

def run_weblog(plan, state, step, casa):
    raise ReprocessingError('--weblog is not implemented yet in this version')


# ---------------------------------------------------------------------------
# Cleanup
# ---------------------------------------------------------------------------


def run_cleanup(plan, state, step, casa):
    """Remove working_reprocess/ and the CASA logs this tool created, nothing else."""
    delivery = plan.delivery
    work_dir = delivery.work_dir
    if work_dir.is_symlink():
        raise ReprocessingError('%s is a link to %s — not removing anything through it; remove the link by hand'
                                % (work_dir, os.readlink(str(work_dir))))
    if not work_dir.exists():
        say('  nothing to clean up: %s/ does not exist' % WORK_DIR_NAME)
        return {'freed': 0}
    stranded = find_user_measurement_sets(work_dir)
    if stranded:
        raise ReprocessingError(
            '%s holds measurement sets that are not links or tool outputs: %s — move them back to '
            'measurement_sets/ first (an older version of this script moved them there)'
            % (work_dir, ', '.join(_relative(p, delivery.root) for p in stranded)))
    logs = read_created_logs(delivery)
    freed = directory_bytes(work_dir)
    _remove_tree(work_dir)
    for log in logs:
        if log.exists() and _is_inside(log, delivery.root) and log != state.casa_logfile:
            freed += log.stat().st_size
            _remove_file(log)
    say('  removed %s/%s, freed %s' % (WORK_DIR_NAME, ' and %d CASA logs' % len(logs) if logs else '',
                                       human_bytes(freed)))
    return {'freed': freed}


def find_user_measurement_sets(work_dir):
    """Real (not linked, not shadow) uid*_target(s).ms directories below work_dir."""
    found = []
    for root, dirs, _files in os.walk(str(work_dir)):
        for name in list(dirs):
            full = Path(root) / name
            if full.is_symlink():
                dirs.remove(name)
                continue
            if fnmatch.fnmatch(name, 'uid*_target*.ms') and not (full / SHADOW_MARKER).exists():
                if not (full / 'table.dat').is_symlink():
                    found.append(full)
                dirs.remove(name)
    return found


CREATED_LOGS = 'created_logs.txt'


def record_created_log(delivery, log):
    """Monolithic CASA writes its log where it was started; remember ours for --cleanup."""
    if log and _is_inside(log, delivery.root) and not _is_inside(log, delivery.work_dir):
        delivery.work_dir.mkdir(exist_ok=True)
        with open(str(delivery.work_dir / CREATED_LOGS), 'a') as handle:
            handle.write(str(log) + '\n')


def read_created_logs(delivery):
    listing = delivery.work_dir / CREATED_LOGS
    if not listing.exists():
        return []
    return [Path(line) for line in listing.read_text().splitlines() if line.strip()]


# ===========================================================================
# Engines: CASA (modular or monolithic), the pipeline, MPI
# ===========================================================================

CasaModules = collections.namedtuple('CasaModules', 'casatools casatasks version kind')


def _is_monolithic_casa():
    """True inside a monolithic CASA session (``casa -c``), where CASA is configured already."""
    return 'casashell' in sys.modules


def load_casa(*, logfile=None):
    """Import casatools/casatasks, configuring modular CASA for offline use first.

    Modular CASA must be told where its measures data are *before* its first
    import: with no network it otherwise refuses to start.  We point it at the
    ``casadata`` package and switch auto-updates off.  Monolithic CASA is
    already configured and is left alone.
    """
    if _is_monolithic_casa():
        import casatools
        import casatasks
        return CasaModules(casatools, casatasks, casatools.version_string(), 'monolithic')
    if 'casatools' not in sys.modules:
        try:
            import casadata
            from casaconfig import config
        except ImportError:
            raise ReprocessingError(
                'modular CASA is not installed in this Python (%s) — install it with '
                '"pip install casatools casatasks casadata six", or run the script with '
                '"casa --pipeline -c scriptForReprocessing.py ..."' % sys.executable)
        config.measurespath = casadata.datapath
        config.datapath = [casadata.datapath]
        config.measures_auto_update = False
        config.data_auto_update = False
        config.casaconfig_verbose = 0
        if logfile is not None:
            config.logfile = str(logfile)
    try:
        import casatools
        import casatasks
    except ImportError as error:
        raise ReprocessingError('CASA failed to import (%s) — install "six" with pip if it is missing, '
                                'or check the CASA installation' % error)
    # The terminal gets this script's own progress lines; CASA's messages go to its log.
    casatasks.casalog.showconsole(False)
    return CasaModules(casatools, casatasks, casatools.version_string(), 'modular')


def describe_environment():
    """One line: CASA, pipeline, MPI — read without importing CASA or the pipeline."""
    return 'Environment: CASA %s; pipeline %s; %s; Python %s' % (
        _casa_version(), _pipeline_version(), _mpi_description(), sys.version.split()[0])


def _casa_version():
    kind = 'monolithic' if _is_monolithic_casa() else 'modular'
    if 'casatools' in sys.modules:
        return '%s (%s)' % (sys.modules['casatools'].version_string(), kind)
    version = _distribution_version('casatools')
    return '%s (%s)' % (version, kind) if version else 'not installed'


def _pipeline_version():
    module = sys.modules.get('pipeline')
    if module is not None:
        return str(getattr(module, 'revision', None) or getattr(module, '__version__', 'unknown version'))
    import importlib.util
    try:
        found = importlib.util.find_spec('pipeline') is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return 'absent'
    return _distribution_version('pipeline') or 'installed (loaded when a step needs it)'


def _distribution_version(name):
    try:
        from importlib import metadata  # novermin (guarded: Python < 3.8 takes the except branch)
    except ImportError:  # Python < 3.8
        return None
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


MpiInfo = collections.namedtuple('MpiInfo', 'size rank is_client')


def mpi_info():
    """MPI as CASA sees it (casampi), else as the launcher's environment says."""
    environment = sys.modules.get('casampi.MPIEnvironment')
    if environment is not None:
        mpi = environment.MPIEnvironment
        if mpi.is_mpi_enabled:
            return MpiInfo(mpi.mpi_world_size, mpi.mpi_processor_rank, mpi.is_mpi_client)
    for size_var, rank_var in (('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'), ('PMI_SIZE', 'PMI_RANK')):
        if size_var in os.environ:
            rank = int(os.environ.get(rank_var, '0'))
            return MpiInfo(int(os.environ[size_var]), rank, rank == 0)
    return MpiInfo(1, 0, True)


def _mpi_description():
    mpi = mpi_info()
    if mpi.size <= 1:
        return 'MPI: none'
    return 'MPI: %d ranks (this is rank %d, the %s)' % (mpi.size, mpi.rank,
                                                         'client' if mpi.is_client else 'server')


# ===========================================================================
# main
# ===========================================================================

STEP_ORDER = ('contsub', 'image', 'calibrated_final', 'calibrated_final_line', 'cleanup', 'weblog')


@contextlib.contextmanager
def signals_as_exceptions():
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C, so every cleanup runs."""
    def interrupt(number, _frame):
        raise Interrupted('stopped by signal %d — partial outputs were removed; run the same command again'
                          % number)
    previous = {}
    for name in ('SIGTERM', 'SIGHUP'):
        number = getattr(signal, name, None)
        if number is not None:
            try:
                previous[number] = signal.signal(number, interrupt)
            except ValueError:  # not the main thread
                pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv=None):
    """Run the script; returns the exit status (0 success, 1 failure, 2 usage error)."""
    try:
        options = build_parser().parse_args(script_arguments(argv))
        check_combinations(options)
        return run(options, argv)
    except UsageError as error:
        print('ERROR: %s' % error, file=sys.stderr, flush=True)
        return EXIT_USAGE
    except ReprocessingError as error:
        print('ERROR: %s' % error, file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print('ERROR: interrupted — partial outputs were removed; run the same command again',
              file=sys.stderr, flush=True)
        return EXIT_FAILED


def run(options, argv):
    root = options.delivery or Path.cwd().resolve()
    delivery = Delivery(root)
    mpi = mpi_info()
    if not mpi.is_client:
        return EXIT_OK  # MPI servers take their work from rank 0; they run no steps of their own
    plan = make_plan(options, delivery)
    say(describe_environment())
    if options.dry_run:
        say(describe_plan(plan))
        say('Dry run: nothing was changed.')
        return EXIT_OK
    for note in plan.notes:
        say('Note: ' + note)
    state = RunState(delivery)
    state.acquire()
    try:
        with signals_as_exceptions():
            state.recover()
            state.begin(' '.join([SCRIPT_NAME] + script_arguments(argv)))
            try:
                _run_steps(plan, state)
            finally:
                state.finish()
    finally:
        state.release()
    say('Done.')
    return EXIT_OK


def _run_steps(plan, state):
    casa = None
    for number, step in enumerate(plan.steps, 1):
        say('[%d/%d] %s' % (number, len(plan.steps), step.summary))
        if casa is None and step.name not in ('cleanup', 'weblog'):
            casa = _start_casa(plan, state)
        started = time.time()
        result = step.function(plan, state, step, casa) or {}
        result.update(step=step.name, seconds=round(time.time() - started, 1))
        state.results.append(result)


def _start_casa(plan, state):
    logfile = None
    if not _is_monolithic_casa():
        state.logs_dir.mkdir(parents=True, exist_ok=True)
        logfile = state.logs_dir / ('casa-%s.log' % datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    casa = load_casa(logfile=logfile)
    state.casa_logfile = Path(casa.casatasks.casalog.logfile()).resolve()
    record_created_log(plan.delivery, state.casa_logfile)
    say('  CASA log: %s' % state.casa_logfile)
    return casa


if __name__ == '__main__':
    sys.exit(main())
