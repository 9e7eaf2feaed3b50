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
    if options.contsub:
        require_pipeline_for_contsub()
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
    real, files are links, and every table.lock is a private copy, so the
    table locks CASA takes stay inside the shadow too.
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
        else:
            _link_or_copy_lock(entry, target)
    return destination


def _link_files(source, destination):
    destination.mkdir()
    for entry in source.iterdir():
        target = destination / entry.name
        if entry.is_dir():
            _link_files(entry, target)
        else:
            _link_or_copy_lock(entry, target)


def _link_or_copy_lock(entry, target):
    """Link a table file; copy a table.lock, so that locks taken in the shadow stay there.

    The copy matters: without a table.lock carrying the table's sync data,
    msmetadata (hence uvcontsub and the pipeline) sees subtables of a shadow
    as empty ("DATA_DESCRIPTION only has 0 rows"; measured with CASA 6.7).
    """
    if entry.name == 'table.lock':
        shutil.copyfile(str(entry), str(target))
    else:
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
    spw_ids = spws_with_data(casa, concatenated)
    first_ids = set(spws_with_data(casa, inputs[0]))
    return {'rows': rows, 'spw_ids': spw_ids, 'renumbered': bool(set(spw_ids) - first_ids)}


def spws_with_data(casa, ms):
    """Ids of the spectral windows that have rows in ms (not every SPECTRAL_WINDOW row has data)."""
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        used = set(int(i) for i in table.getcol('DATA_DESC_ID'))
    finally:
        table.close()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        spw_of = table.getcol('SPECTRAL_WINDOW_ID')
    finally:
        table.close()
    return sorted(set(int(spw_of[i]) for i in used))


# ---------------------------------------------------------------------------
# cont.dat: reader and checker
# ---------------------------------------------------------------------------
#
# The format, as the pipeline writes and reads it (pipeline/infrastructure/contfilehandler.py):
#
#   v1:  FIELDNAME            v2:  Field: FIELDNAME        v3:  Field: FIELDNAME
#        SPW25                     SpectralWindow: 25           SpectralWindow: 25 X1#ALMA_RB_06#BB_1#SW-01#FULL_RES
#        215.1~215.6GHz            215.1~215.6GHz LSRK          Flags: LOWBANDWIDTH
#                                  NONE                         215.1~215.6GHz LSRK
#
# The pipeline's reader turns any line it does not recognise into a field name, so a typo
# silently becomes a field.  This reader is strict instead: every line must be one of the
# forms above, and an error names the line and says what to write.

CONTDAT_FRAMES = ('LSRK', 'SOURCE', 'TOPO')
CONTDAT_KEYWORDS = ('NONE', 'ALL', 'ALLCONT')
CONTDAT_FLAGS = ('ALLCONT', 'LOWBANDWIDTH', 'LOWSPREAD')
_HZ_PER_UNIT = collections.OrderedDict([('Hz', 1.0), ('kHz', 1e3), ('MHz', 1e6), ('GHz', 1e9)])

ContRange = collections.namedtuple('ContRange', 'lo_hz hi_hz frame line')
Problem = collections.namedtuple('Problem', 'severity path line message')  # severity: error, warning, note


class ContDatSpw(object):
    """One spectral-window block: the pipeline's virtual spw id, its name (v3), ranges, flags."""

    def __init__(self, *, virtual_id, name, line):
        self.virtual_id = virtual_id
        self.name = name
        self.line = line
        self.ranges = []
        self.keywords = []  # [(word, line)] for NONE / ALL / ALLCONT lines
        self.flags = []
        self.implicit_topo = False  # a v1 (SPWn) block: its ranges carry no frame and are TOPO

    @property
    def fit_all_channels(self):
        """NONE, ALL, ALLCONT or an empty block: the pipeline fits the continuum over every channel."""
        return not self.ranges

    @property
    def low_bandwidth(self):
        """Flags for which the pipeline fits a constant (fit order 0) instead of a slope."""
        return 'LOWBANDWIDTH' in self.flags or 'LOWSPREAD' in self.flags

    @property
    def selection_word(self):
        """What a block without ranges says: NONE, ALL or ALLCONT (an empty block means NONE)."""
        if 'ALLCONT' in self.flags:
            return 'ALLCONT'
        return self.keywords[-1][0] if self.keywords else 'NONE'

    def label(self):
        return 'spw %d%s' % (self.virtual_id, ' (%s)' % self.name if self.name else '')


class ContDatField(object):
    def __init__(self, *, name, line):
        self.name = name
        self.line = line
        self.spws = collections.OrderedDict()  # virtual spw id -> ContDatSpw


class ContDat(object):
    """cont.dat, read: field name -> virtual spw id -> ranges, plus what reading noticed."""

    def __init__(self, *, path, display):
        self.path = Path(path)
        self.display = display  # how messages name the file, e.g. caltables/cont.dat
        self.version = 2
        self.fields = collections.OrderedDict()  # field name -> ContDatField
        self.problems = []  # warnings found while reading (duplicate blocks, unknown flags)

    def blocks(self):
        """(field, spw) for every spw block, in file order."""
        return [(field, spw) for field in self.fields.values() for spw in field.spws.values()]

    def warn(self, line, message):
        self.problems.append(Problem('warning', self.display, line, message))


def read_contdat(path, *, display=None):
    """Read a cont.dat of any version (v1, v2, v3); raise ReprocessingError naming the line on errors."""
    path = Path(path)
    display = display or str(path)
    try:
        with open(str(path), encoding='utf-8', errors='replace') as handle:
            text = handle.read()
    except OSError as error:
        raise ReprocessingError('cannot read %s (%s) — restore cont.dat from the delivery'
                                % (display, error.strerror or error))
    return parse_contdat(text, path=path, display=display)


def parse_contdat(text, *, path, display):
    import re
    contdat = ContDat(path=path, display=display)
    lines = text.splitlines()
    # A file that uses "Field:" anywhere is v2/v3, where a bare line is a mistake, not a field (v1).
    bare_lines_are_fields = not any(line.strip().startswith('Field:') for line in lines)
    field = spw = None
    saw_v1_spw = saw_v3 = False

    def fail(number, what, todo):
        raise ReprocessingError('%s line %d: %s — %s' % (display, number, what, todo))

    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        v1_spw = re.match(r'^SPW\s*(\d+)$', line)
        if line.startswith('#'):
            fail(number, '"%s" starts with "#", but cont.dat has no comments (the pipeline would read the line '
                         'as a field name)' % _shorten(line), 'delete the line')
        elif line.startswith('Field:'):
            field, spw = _start_field(contdat, _dequote(line[len('Field:'):].strip()), number, fail), None
        elif line.startswith('SpectralWindow:'):
            words = line.split()
            if len(words) not in (2, 3) or not words[1].isdigit():
                fail(number, '"%s" is not "SpectralWindow: ID" nor "SpectralWindow: ID NAME"' % _shorten(line),
                     'write e.g. "SpectralWindow: 25" or "SpectralWindow: 25 X1#ALMA_RB_06#BB_1#SW-01#FULL_RES"')
            saw_v3 = saw_v3 or len(words) == 3
            spw = _start_spw(contdat, field, int(words[1]), words[2] if len(words) == 3 else None, number, fail)
        elif v1_spw:
            saw_v1_spw = True
            spw = _start_spw(contdat, field, int(v1_spw.group(1)), None, number, fail)
            spw.implicit_topo = True
        elif line.startswith('Flags:'):
            saw_v3 = True
            _need_spw(spw, number, 'a Flags: line', fail)
            for flag in line[len('Flags:'):].split():
                if flag not in CONTDAT_FLAGS:
                    contdat.warn(number, 'unknown flag "%s" (the pipeline writes %s) — it is ignored; delete it'
                                 % (flag, ', '.join(CONTDAT_FLAGS)))
                elif flag not in spw.flags:
                    spw.flags.append(flag)
        elif line in CONTDAT_KEYWORDS:
            _need_spw(spw, number, line, fail)
            spw.keywords.append((line, number))
        elif '~' in line:
            _need_spw(spw, number, 'a frequency range', fail)
            for part in line.split(';'):
                if part.strip():
                    spw.ranges.append(_parse_range(part.strip(), number, spw.implicit_topo, fail))
        elif bare_lines_are_fields:
            field, spw = _start_field(contdat, _dequote(line), number, fail), None
        else:
            fail(number, '"%s" is not a cont.dat line' % _shorten(line),
                 'expected "Field: NAME", "SpectralWindow: ID [NAME]", "Flags: ...", NONE, ALL, ALLCONT or '
                 'ranges like "215.1~215.6GHz LSRK"; correct or delete the line')
    contdat.version = 1 if saw_v1_spw else 3 if saw_v3 else 2
    return contdat


def _start_field(contdat, name, number, fail):
    if not name:
        fail(number, '"Field:" has no field name', 'write the MS field name after "Field:"')
    if name in contdat.fields:
        contdat.warn(number, 'field "%s" appears again (first at line %d); like the pipeline, only this later '
                             'block is used — merge the two blocks into one' % (name, contdat.fields[name].line))
    field = ContDatField(name=name, line=number)
    contdat.fields[name] = field
    return field


def _start_spw(contdat, field, virtual_id, name, number, fail):
    if field is None:
        fail(number, 'spectral window %d comes before any field' % virtual_id,
             'add a "Field: NAME" line above it')
    if virtual_id in field.spws:
        contdat.warn(number, 'spw %d of field "%s" appears again (first at line %d); like the pipeline, only this '
                             'later block is used — merge the two blocks into one'
                     % (virtual_id, field.name, field.spws[virtual_id].line))
    spw = ContDatSpw(virtual_id=virtual_id, name=name, line=number)
    field.spws[virtual_id] = spw
    return spw


def _need_spw(spw, number, what, fail):
    if spw is None:
        fail(number, '%s comes before any spectral window of its field' % what,
             'add a "SpectralWindow: ID" line above it')


def _parse_range(text, number, implicit_topo, fail):
    """'215.1~215.6GHz LSRK' -> ContRange in Hz.  v1 ranges carry no frame: they are TOPO."""
    import re
    number_pattern = r'(\d+(?:\.\d*)?|\.\d+)'
    match = re.match(r'^%s\s*~\s*%s\s*([A-Za-z]+)\s*(\S*)$' % (number_pattern, number_pattern), text)
    if not match:
        fail(number, 'cannot read the range "%s"' % _shorten(text),
             'write it as LOW~HIGH with plain decimals, a unit and a frame, e.g. "215.1~215.6GHz LSRK"')
    low, high, unit, frame = match.groups()
    if unit not in _HZ_PER_UNIT:
        fail(number, 'unit "%s" in "%s"' % (unit, _shorten(text)),
             'use one of %s, spelled exactly so' % ', '.join(_HZ_PER_UNIT))
    if not frame:
        if not implicit_topo:
            fail(number, 'the range "%s" has no frame' % _shorten(text),
                 'add LSRK after it (SOURCE for ephemeris targets, TOPO if you mean topocentric)')
        frame = 'TOPO'
    if frame == 'REST':
        fail(number, 'the REST frame ("%s") is not supported' % _shorten(text),
             'give the range in LSRK (SOURCE for ephemeris targets)')
    if frame not in CONTDAT_FRAMES:
        fail(number, 'unknown frame "%s" in "%s"' % (frame, _shorten(text)),
             'use LSRK, SOURCE or TOPO, in capitals (the pipeline compares them exactly)')
    scale = _HZ_PER_UNIT[unit]
    lo_hz, hi_hz = float(low) * scale, float(high) * scale
    if lo_hz >= hi_hz:
        fail(number, 'the range "%s" is empty or reversed' % _shorten(text), 'write the lower frequency first')
    return ContRange(lo_hz, hi_hz, frame, number)


def _dequote(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'':
        return text[1:-1].strip()
    return text


def _shorten(text, limit=60):
    return text if len(text) <= limit else text[:limit - 3] + '...'


# -- what the checker and the fit need to know of each measurement set ------------------------------

SpwInfo = collections.namedtuple('SpwInfo', 'id name nchan')


class MsLayout(object):
    """Fields, science spws and (field, spw) pairs with data of one MS, read once with the table tool."""

    def __init__(self, *, path, start, fields, spws, pairs, rows):
        self.path = Path(path)
        self.name = self.path.name
        self.eb = eb_name(self.path)
        self.start = start
        self.fields = fields  # OrderedDict field name -> [field ids]
        self.spws = spws      # OrderedDict spw id -> SpwInfo, only spws with data
        self.pairs = pairs    # {(field id, spw id)} with rows
        self.rows = rows

    def spw_ids_by_name(self, name):
        return [spw.id for spw in self.spws.values() if spw.name == name]

    def has_data(self, field_ids, spw_id):
        return any((field_id, spw_id) in self.pairs for field_id in field_ids)


def eb_name(ms):
    """uid___A002_X1_X2 for uid___A002_X1_X2_targets.ms (or _targets_line.ms)."""
    name = Path(ms).name
    for suffix in ('_targets_line.ms', '_targets.ms', '_target.ms', '.ms'):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def read_ms_layout(casa, ms):
    import numpy
    table = casa.casatools.table()

    def columns(subtable, *names):
        table.open(str(Path(ms) / subtable) if subtable else str(ms))
        try:
            return [table.getcol(name) if table.nrows() else [] for name in names]
        finally:
            table.close()

    field_names, = columns('FIELD', 'NAME')
    spw_names, spw_nchan = columns('SPECTRAL_WINDOW', 'NAME', 'NUM_CHAN')
    dd_spw, = columns('DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')
    field_ids, dd_ids = columns('', 'FIELD_ID', 'DATA_DESC_ID')
    time_range, = columns('OBSERVATION', 'TIME_RANGE')
    pairs = set()
    if len(field_ids):
        combined = numpy.unique(numpy.asarray(field_ids, dtype=numpy.int64) * 100000 + numpy.asarray(dd_ids))
        pairs = {(int(value // 100000), int(dd_spw[value % 100000])) for value in combined}
    fields = collections.OrderedDict()
    for field_id, name in enumerate(field_names):
        if any(pair[0] == field_id for pair in pairs):
            fields.setdefault(str(name), []).append(field_id)
    spws = collections.OrderedDict(
        (spw_id, SpwInfo(spw_id, str(spw_names[spw_id]), int(spw_nchan[spw_id])))
        for spw_id in sorted({pair[1] for pair in pairs}))
    start = float(numpy.min(time_range)) if len(time_range) else 0.0
    return MsLayout(path=ms, start=start, fields=fields, spws=spws, pairs=pairs, rows=len(field_ids))


# -- from cont.dat ranges to each MS's channels ------------------------------------------------------

class ChannelConverter(object):
    """cont.dat frequency ranges -> TOPO channels of one MS, with synthesisutils.advisechansel.

    Called exactly as the pipeline's contfilehandler does (freqstep=100., LSRK; SOURCE with
    ephemtable='TRACKFIELD' for ephemeris targets), so the channels match what hif_uvcontsub
    would fit; no Doppler arithmetic of our own.
    """

    def __init__(self, casa):
        self.tool = casa.casatools.synthesisutils()

    def channels(self, ms, field_id, spw_id, cont_range):
        """(first, last) channel of the range in this MS/field/spw, or None when it selects nothing."""
        arguments = dict(msname=str(ms), fieldid=int(field_id), spwselection=str(spw_id),
                         freqstart=cont_range.lo_hz, freqend=cont_range.hi_hz, freqstep=100.,
                         freqframe=cont_range.frame)
        if cont_range.frame == 'SOURCE':
            arguments['ephemtable'] = 'TRACKFIELD'
        try:
            result = self.tool.advisechansel(**arguments)
        finally:
            self.tool.done()
        spws = [int(spw) for spw in result.get('spw', [])]
        if spw_id not in spws:
            return None
        index = spws.index(spw_id)
        count = int(result['nchan'][index])
        first = int(result['start'][index])
        return (first, first + count - 1) if count > 0 else None

    def coverage(self, ms, field_id, spw_id, frame):
        """(low, high) Hz that the spw covers in frame, over the whole observation."""
        arguments = dict(msname=str(ms), fieldid=int(field_id), spwselection=str(spw_id),
                         freqframe=frame, getfreqrange=True)
        if frame == 'SOURCE':
            arguments['ephemtable'] = 'TRACKFIELD'
        try:
            result = self.tool.advisechansel(**arguments)
        finally:
            self.tool.done()
        return _hz(result['freqstart']), _hz(result['freqend'])


def _hz(quantity):
    value = quantity['value'] if isinstance(quantity, dict) else quantity
    try:
        value = list(value)[0]
    except TypeError:
        pass
    scale = _HZ_PER_UNIT.get(quantity.get('unit', 'Hz'), 1.0) if isinstance(quantity, dict) else 1.0
    return float(value) * scale


def merge_channel_ranges(ranges):
    """Sorted union of (first, last) channel ranges; touching ranges join."""
    merged = []
    for first, last in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def channel_string(ranges):
    return ';'.join('%d~%d' % pair for pair in ranges)


# -- the checker -----------------------------------------------------------------------------------

# What to fit, per MS, field and real spw.  chan: channel selection for uvcontsub ('' = all channels).
FitSelection = collections.namedtuple(
    'FitSelection', 'field_name field_ids spw_id virtual_id chan n_selected nchan fitorder line reason')


class ContDatAnalysis(object):
    """cont.dat checked against the measurement sets, and the channels to fit in each of them."""

    def __init__(self, contdat, layouts):
        self.contdat = contdat
        self.layouts = layouts  # in time order; the first defines the virtual spw ids
        self.problems = []
        self.selections = collections.OrderedDict((str(layout.path), []) for layout in layouts)

    @property
    def errors(self):
        return [problem for problem in self.problems if problem.severity == 'error']

    def layout(self, ms):
        for layout in self.layouts:
            if layout.path == Path(ms):
                return layout
        raise KeyError(str(ms))

    def virtual_id(self, layout, spw_id):
        """The virtual (first-EB) id of a spw of this MS, as the line MS's cont.dat block names it."""
        for selection in self.selections.get(str(layout.path), []):
            if selection.spw_id == spw_id:
                return selection.virtual_id
        return spw_id


def check_contdat(contdat, measurement_sets, casa):
    """Problems of cont.dat against the measurement sets: [Problem(severity, path, line, message)]."""
    return analyse_contdat(contdat, measurement_sets, casa).problems


def analyse_contdat(contdat, measurement_sets, casa):
    layouts = sorted((read_ms_layout(casa, ms) for ms in measurement_sets), key=lambda l: (l.start, l.name))
    analysis = ContDatAnalysis(contdat, layouts)
    report = _ProblemCollector(contdat.display, [layout.eb for layout in layouts])
    converter = ChannelConverter(casa)
    for field in contdat.fields.values():
        _check_field(field, layouts, converter, analysis, report)
    _check_coverage_of_science_data(contdat, layouts, analysis, report)
    analysis.problems = sorted(list(contdat.problems) + report.problems(),
                               key=lambda p: (p.line or 0, ('error', 'warning', 'note').index(p.severity)))
    return analysis


class _ProblemCollector(object):
    """Problems found per execution block, reported once per (line, message) with the EBs they concern."""

    def __init__(self, display, ebs):
        self.display = display
        self.ebs = ebs
        self._found = collections.OrderedDict()

    def add(self, severity, line, message, eb=None):
        """message may hold "{where}", replaced by the execution blocks the problem was found in."""
        key = (severity, line, message)
        self._found.setdefault(key, [])
        if eb is not None and eb not in self._found[key]:
            self._found[key].append(eb)

    def problems(self):
        found = []
        for (severity, line, message), ebs in self._found.items():
            found.append(Problem(severity, self.display, line, message.replace('{where}', self._where(ebs))))
        return found

    def _where(self, ebs):
        if len(self.ebs) > 1 and len(ebs) == len(self.ebs):
            return 'in all %d execution blocks' % len(ebs)
        if len(ebs) > 3:
            return 'in %d execution blocks (%s, ...)' % (len(ebs), ', '.join(ebs[:2]))
        return 'in ' + ', '.join(ebs)


def _check_field(field, layouts, converter, analysis, report):
    present = [layout for layout in layouts if field.name in layout.fields]
    if not present:
        known = sorted({name for layout in layouts for name in layout.fields})
        report.add('error', field.line, 'field "%s" is in none of the measurement sets (they have %s) — correct '
                   'the name or delete its block' % (field.name, ', '.join(known) or 'no fields'))
        return
    if not field.spws:
        report.add('warning', field.line, 'field "%s" has no spectral windows, so it is left out of the line '
                   'MSes — add its "SpectralWindow:" blocks' % field.name)
    for spw in field.spws.values():
        _check_ranges_among_themselves(spw, report)
        _check_spw_name(field, spw, layouts[0], report)
        for layout in present:
            _check_spw_in_ms(field, spw, layout, layouts[0], converter, analysis, report)


def _check_ranges_among_themselves(spw, report):
    if spw.ranges and spw.keywords:
        word, line = spw.keywords[0]
        report.add('warning', line, '%s stands beside frequency ranges in %s; like the pipeline, the ranges are '
                   'used — delete one of them' % (word, spw.label()))
    for frame in CONTDAT_FRAMES:
        ordered = sorted((r for r in spw.ranges if r.frame == frame), key=lambda r: r.lo_hz)
        for before, after in zip(ordered, ordered[1:]):
            if after.lo_hz < before.hi_hz:
                report.add('warning', after.line, 'in %s, %s overlaps %s (line %d); their union is fitted — '
                           'merge them into one range' % (spw.label(), _range_text(after), _range_text(before),
                                                          before.line))


def _check_spw_name(field, spw, first, report):
    if spw.name and spw.virtual_id in first.spws and first.spws[spw.virtual_id].name != spw.name:
        report.add('warning', spw.line, 'spw %d is named %s in the first execution block (%s), not %s; like the '
                   'pipeline, the name decides which spw the block means — check the number'
                   % (spw.virtual_id, first.spws[spw.virtual_id].name, first.eb, spw.name))


def map_spw(spw, layout, first):
    """The real spw id in layout of a cont.dat block, or None.

    The number in cont.dat is the pipeline's virtual id: the id in the first execution block.
    Other EBs may number the same window differently, so it is found there by name (the v3
    name, else the name the first EB gives that id) and by number only when names say nothing.
    """
    name = spw.name
    if name is None:
        if spw.virtual_id not in first.spws:
            return None
        if layout is first:
            return spw.virtual_id
        name = first.spws[spw.virtual_id].name
    by_name = layout.spw_ids_by_name(name) if name else []
    if len(by_name) == 1:
        return by_name[0]
    if spw.virtual_id in by_name or (not by_name and spw.virtual_id in layout.spws and spw.name is None):
        return spw.virtual_id
    return None


def _check_spw_in_ms(field, spw, layout, first, converter, analysis, report):
    real_id = map_spw(spw, layout, first)
    if real_id is None:
        what = 'named %s' % spw.name if spw.name else 'numbered %d' % spw.virtual_id
        report.add('error', spw.line, 'field "%s": no spectral window %s {where} (it has %s) — correct the spw '
                   'number%s or delete the block' % (field.name, what, ', '.join(str(i) for i in layout.spws),
                                                      ' and name' if spw.name else ''), layout.eb)
        return
    field_ids = layout.fields[field.name]
    if not layout.has_data(field_ids, real_id):
        return  # this field was not observed in that spw here: nothing to fit
    fitorder = 0 if spw.low_bandwidth else 1
    nchan = layout.spws[real_id].nchan
    if spw.fit_all_channels:
        report.add('note', spw.line, 'field "%s" %s: %s — the continuum is fitted over all channels, as the '
                   'pipeline does' % (field.name, spw.label(), spw.selection_word))
        analysis.selections[str(layout.path)].append(FitSelection(
            field.name, field_ids, real_id, spw.virtual_id, '', nchan, nchan, fitorder, spw.line,
            spw.selection_word))
        return
    channel_ranges = []
    for cont_range in spw.ranges:
        try:
            channels = converter.channels(layout.path, field_ids[0], real_id, cont_range)
            coverage = converter.coverage(layout.path, field_ids[0], real_id, cont_range.frame)
        except Exception as error:  # CASA raises plain RuntimeErrors
            report.add('error', cont_range.line, 'cannot convert %s of field "%s" to channels {where} (%s) — '
                       'check the frame (SOURCE is for ephemeris targets only)'
                       % (_range_text(cont_range), field.name, _one_line(error)), layout.eb)
            continue
        covered = '%s %s' % (_ghz_text(*coverage), cont_range.frame)
        if channels is None:
            report.add('error', cont_range.line, '%s lies outside %s of field "%s" {where}, which covers %s — '
                       'correct the range' % (_range_text(cont_range), spw.label(), field.name, covered), layout.eb)
            continue
        if cont_range.lo_hz < coverage[0] or cont_range.hi_hz > coverage[1]:
            report.add('warning', cont_range.line, '%s reaches beyond %s of field "%s" {where}, which covers %s; '
                       'only the channels inside are fitted — trim the range'
                       % (_range_text(cont_range), spw.label(), field.name, covered), layout.eb)
        channel_ranges.append(channels)
    merged = merge_channel_ranges(channel_ranges)
    selected = sum(last - first + 1 for first, last in merged)
    if channel_ranges and selected < fitorder + 1:
        report.add('error', spw.line, 'field "%s" %s selects only %d channel {where}, too few for a fit of order %d '
                   '— widen the ranges' % (field.name, spw.label(), selected, fitorder), layout.eb)
    if merged and selected >= fitorder + 1:
        analysis.selections[str(layout.path)].append(FitSelection(
            field.name, field_ids, real_id, spw.virtual_id, channel_string(merged), selected, nchan, fitorder,
            spw.line, 'ranges'))


def _check_coverage_of_science_data(contdat, layouts, analysis, report):
    """Fields and spws with data that cont.dat does not mention, and what happens to them."""
    for layout in layouts:
        selections = analysis.selections[str(layout.path)]
        chosen_spws = {s.spw_id for s in selections}
        for name, field_ids in layout.fields.items():
            if name not in contdat.fields:
                report.add('warning', None, 'field "%s" has data {where} but no block in cont.dat, so it is left '
                           'out of the line MSes — add a "Field: %s" block (NONE fits all channels)' % (name, name),
                           layout.eb)
                continue
            for spw_id in sorted(chosen_spws):
                mentioned = any(s.field_name == name and s.spw_id == spw_id for s in selections)
                if layout.has_data(field_ids, spw_id) and not mentioned and _block_maps_here(
                        contdat.fields[name], spw_id, layout, layouts[0]) is None:
                    # uvcontsub selects spws for all fields at once: the window is in the line MS anyway.
                    virtual = analysis.virtual_id(layout, spw_id)
                    report.add('warning', contdat.fields[name].line, 'field "%s" has no block for spw %d, which '
                               'other fields have; its continuum there is fitted over all channels {where} — add '
                               'a "SpectralWindow: %d" block for it' % (name, virtual, virtual), layout.eb)
                    nchan = layout.spws[spw_id].nchan
                    selections.append(FitSelection(name, field_ids, spw_id, virtual, '', nchan, nchan, 1,
                                                   contdat.fields[name].line, 'absent'))
        for spw in layout.spws.values():
            if spw.id not in chosen_spws and any(name in contdat.fields for name in layout.fields):
                report.add('note', None, 'spw %d (%s) is in no cont.dat block {where}: it is left out of the line '
                           'MSes, as the pipeline does' % (spw.id, spw.name), layout.eb)


def _block_maps_here(field, spw_id, layout, first):
    for spw in field.spws.values():
        if map_spw(spw, layout, first) == spw_id:
            return spw
    return None


def _range_text(cont_range):
    return '%s %s' % (_ghz_text(cont_range.lo_hz, cont_range.hi_hz), cont_range.frame)


def _ghz_text(lo_hz, hi_hz):
    return '%.6f~%.6fGHz' % (lo_hz / 1e9, hi_hz / 1e9)


def _one_line(error):
    text = ' '.join(str(error).split())
    return _shorten(text, 160)


def describe_problem(problem):
    where = '%s:%d' % (problem.path, problem.line) if problem.line else problem.path
    return '%s: %s: %s' % (where, problem.severity, problem.message)


def contdat_preflight(plan, casa):
    """Check cont.dat against the measurement sets before anything is written; stop on errors.

    Every continuum subtraction path calls this first.  It needs CASA (advisechansel and
    table reads), which the plan is made without, so it is the first thing the contsub step
    does; the plan itself already read cont.dat, so syntax errors stop even --dry-run.
    """
    analysis = getattr(plan, 'contdat_analysis', None)
    if analysis is None:
        delivery = plan.delivery
        contdat = getattr(plan, 'contdat', None) or read_contdat(
            delivery.contdat, display=_relative(delivery.contdat, delivery.root))
        say('  checking %s against %d measurement set(s)' % (contdat.display, len(delivery.targets)))
        analysis = analyse_contdat(contdat, delivery.targets, casa)
        for problem in analysis.problems:
            say('  ' + describe_problem(problem))
        plan.contdat_analysis = analysis
    errors = analysis.errors
    if errors:
        raise ReprocessingError('%s has %d error%s (listed above) — correct %s and run again; nothing was written'
                                % (analysis.contdat.display, len(errors), '' if len(errors) == 1 else 's',
                                   'it' if len(errors) == 1 else 'them'))
    return analysis


def run_check(plan, state, step, casa):
    """--check: cont.dat against the measurement sets, and the channels each EB would fit."""
    try:
        analysis = contdat_preflight(plan, casa)
    finally:
        analysis = getattr(plan, 'contdat_analysis', None)
        if analysis is not None:
            _say_fit_table(analysis, fitorder=getattr(plan.options, 'fitorder', None))
    warnings = [p for p in analysis.problems if p.severity == 'warning']
    say('  %s: no errors, %d warning%s' % (analysis.contdat.display, len(warnings), '' if len(warnings) == 1 else 's'))
    return {'errors': 0, 'warnings': len(warnings), 'problems': [describe_problem(p) for p in analysis.problems]}


def _say_fit_table(analysis, *, fitorder=None):
    for layout in analysis.layouts:
        selections = analysis.selections[str(layout.path)]
        if not selections:
            say('  %s: nothing to fit' % layout.eb)
            continue
        for s in selections:
            chosen = 'all %d channels' % s.nchan if not s.chan else 'channels %s (%d of %d)' % (
                s.chan, s.n_selected, s.nchan)
            say('  %s: field %s spw %d%s: %s, fit order %d' % (
                layout.eb, s.field_name, s.spw_id, ' (cont.dat spw %d)' % s.virtual_id if s.virtual_id != s.spw_id
                else '', chosen, s.fitorder if fitorder is None else fitorder))


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
        try:
            options = build_parser().parse_args(script_arguments(argv))
        except SystemExit as finished:  # --help
            return finished.code or EXIT_OK
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
