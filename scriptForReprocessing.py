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
    _emit(message, sys.stdout)


def warn(message):
    _emit('WARNING: ' + message, sys.stdout)


def report_error(message):
    _emit('ERROR: ' + message, sys.stderr)


def _emit(text, stream):
    """Print a line even where the terminal cannot show every character.

    Python 3.6 (older CASA releases) under LANG=C writes ASCII only: the dash of
    'what is wrong — what to do' would otherwise raise UnicodeEncodeError.
    """
    encoding = getattr(stream, 'encoding', None) or 'ascii'
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        text = text.replace('\u2014', '-').encode('ascii', 'replace').decode('ascii')
    print(text, file=stream, flush=True)


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
        epilog='Steps run in this order: check, contsub, image, calibrated_final(_line), cleanup, weblog. '
               'Exit status: 0 success, 1 the run failed, 2 the command line is wrong.')
    actions = parser.add_argument_group('actions (at least one)')
    actions.add_argument('--contsub', action='store_true',
                         help='continuum subtraction with the ALMA pipeline, from caltables/cont.dat, '
                              'into measurement_sets/uid*_targets_line.ms')
    actions.add_argument('--contsub_fast', action='store_true',
                         help='continuum subtraction with CASA only (no pipeline needed): applies the delivered '
                              'caltables/*uvcont.tbl (Cycle 9), else fits cont.dat with CASA uvcontsub')
    actions.add_argument('--check', action='store_true',
                         help='check caltables/cont.dat against the measurement sets and list every problem '
                              '(file:line, what to do) and the channels each execution block would fit; '
                              'changes nothing; exit status 1 if cont.dat has errors')
    actions.add_argument('--image', nargs='?', const=IMAGES_DIR, default=None, metavar='DIR',
                         help='make images into DIR (default: %s, relative to the delivery)' % IMAGES_DIR)
    actions.add_argument('--calibrated_final', action='store_true',
                         help='concatenate uid*_targets.ms into measurement_sets/calibrated_final.ms')
    actions.add_argument('--calibrated_final_line', action='store_true',
                         help='concatenate uid*_targets_line.ms into measurement_sets/calibrated_final_line.ms')
    actions.add_argument('--cleanup', action='store_true',
                         help='remove %s/ and the logs this tool created' % WORK_DIR_NAME)
    actions.add_argument('--weblog', nargs='?', const=WEBLOG, default=None, metavar='NAME',
                         help='serve a pipeline weblog over HTTP on this machine until Ctrl-C. NAME: "latest" '
                              '(the newest), a pipeline-* folder name, or "report" for the reprocessing report '
                              'every run writes into %s/report/ (default: %s)' % (WORK_DIR_NAME, WEBLOG))
    general = parser.add_argument_group('general')
    general.add_argument('--delivery', type=_existing_directory, default=None, metavar='DIR',
                         help='the calibrated_final/ directory to work on (default: the current directory)')
    general.add_argument('--dry-run', action='store_true',
                         help='print the plan (steps, inputs, outputs, disk needed) and exit without touching anything')
    general.add_argument('--port', type=_port_number, default=None, metavar='N',
                         help='with --weblog: the first port to try (default: a free one in %d-%d)' % WEBLOG_PORTS)
    general.add_argument('--no-browser', action='store_true',
                         help='with --weblog: only print the address, do not open a browser')
    general.add_argument('--overwrite-line', action='store_true',
                         help='with --contsub/--contsub_fast: replace existing uid*_targets_line.ms '
                              '(the old ones are kept until the new ones are complete)')
    continuum = parser.add_argument_group('continuum subtraction with --contsub_fast')
    continuum.add_argument('--refit', action='store_true',
                           help='fit the continuum again from cont.dat instead of applying the delivered tables '
                                '(caltables/*uvcont.tbl)')
    continuum.add_argument('--fitorder', type=_fit_order, default=None, metavar='N',
                           help='polynomial order of every continuum fit (default: 1, and 0 for spws cont.dat '
                                'flags LOWBANDWIDTH or LOWSPREAD, as the pipeline does); implies --refit')
    continuum.add_argument('--jobs', type=_job_count, default=None, metavar='N',
                           help='execution blocks processed at the same time, each in its own process '
                                '(default: the number of cores, at most the number of execution blocks)')
    add_imaging_arguments(parser)
    return parser


def _fit_order(text):
    if not text.isdigit() or int(text) > 3:
        raise argparse.ArgumentTypeError('%s is not a fit order: give 0, 1, 2 or 3' % text)
    return int(text)


def _job_count(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError('%s is not a number of jobs: give 1 or more' % text)
    return int(text)


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


ACTION_NAMES = ('check', 'contsub', 'contsub_fast', 'image', 'calibrated_final', 'calibrated_final_line',
                'cleanup', 'weblog')


def chosen_actions(options):
    return [name for name in ACTION_NAMES
            if getattr(options, name) not in (None, False)]


def check_combinations(options):
    """Rules that depend on the flags alone."""
    actions = chosen_actions(options)
    if not actions:
        raise UsageError('no action given — add at least one of --contsub, --contsub_fast, --check, --image, '
                         '--calibrated_final, --calibrated_final_line, --cleanup, --weblog')
    for flag, given in (('--refit', options.refit), ('--fitorder', options.fitorder is not None),
                        ('--jobs', options.jobs is not None)):
        if given and not options.contsub_fast:
            raise UsageError('%s only applies to --contsub_fast — add it' % flag)
    if options.contsub and options.contsub_fast:
        raise UsageError('--contsub and --contsub_fast both subtract the continuum — choose one')
    if options.weblog is not None and options.cleanup:
        raise UsageError('--cleanup removes the weblogs that --weblog would serve — run them separately')
    concat_only = set(actions) - {'weblog'} <= {'calibrated_final', 'calibrated_final_line'}
    if options.weblog is not None and len(actions) > 1 and concat_only:
        raise UsageError('--calibrated_final(_line) runs no pipeline, so it makes no weblog to serve — '
                         'run --weblog on its own')
    if (options.port is not None or options.no_browser) and options.weblog is None:
        raise UsageError('--port and --no-browser only apply to --weblog — add --weblog')
    if options.overwrite_line and not (options.contsub or options.contsub_fast):
        raise UsageError('--overwrite-line only applies to --contsub or --contsub_fast — add one of them')
    if options.image is not None:
        _check_relative_output_name(options.image, '--image')
    check_imaging_options(options)


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
        self.contdat = None            # ContDat, read (pure Python) while planning a contsub or --check
        self.contdat_analysis = None   # ContDatAnalysis, made by the first step that checks cont.dat with CASA

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
    if options.check:
        _plan_check(plan)
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
        _plan_weblog(plan)
    _check_free_space(plan)
    return plan


def _line_name(targets_ms):
    return targets_ms.with_name(targets_ms.name[:-len('.ms')] + '_line.ms')


def _plan_contsub(plan):
    delivery, options = plan.delivery, plan.options
    if not delivery.contdat.is_file():
        raise ReprocessingError('%s is missing — continuum subtraction needs it: restore it from the delivery'
                                % delivery.contdat)
    plan.contdat = plan.contdat or read_delivery_contdat(delivery)  # syntax errors stop the run here
    if options.contsub:
        require_pipeline_for_contsub()
    else:
        plan.notes.append('--contsub_fast will be %s' % choose_contsub_fast_method(
            options, delivery, delivery.targets)[1])
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
    request = imaging_request(options)
    engine = choose_imaging_engine(request.engine)
    images = delivery.root / options.image
    if images.exists() and not images.is_dir():
        raise ReprocessingError('%s exists and is not a directory — choose another name with --image DIR' % images)
    if images.is_dir() and any(images.iterdir()):
        if not request.reuse_images:
            raise ReprocessingError('the images directory %s exists and is not empty — choose another name '
                                    'with --image DIR, move it away, or add --reuse-images' % images)
        check_reused_images_dir(images, request.specmodes)
    makes_line_ms = options.contsub or options.contsub_fast
    cubes = [mode for mode in request.specmodes if mode in ('cube', 'repBW')]
    if cubes and not makes_line_ms and not delivery.targets_line:
        if not request.allow_cubes_with_continuum:
            raise ReprocessingError(
                'no uid*_targets_line.ms, so %s images would contain the continuum — add --contsub_fast (or '
                '--contsub) to make the line MSes first, leave them out (--specmodes mfs,cont), or add '
                '--allow-cubes-with-continuum' % '/'.join(cubes))
        plan.notes.append('%s images are made from uid*_targets.ms: they contain the continuum '
                          '(--allow-cubes-with-continuum)' % '/'.join(cubes))
    if {'mfs', 'cont'} & set(request.specmodes) and not delivery.contdat.is_file():
        plan.notes.append('no caltables/cont.dat: mfs/cont images use every channel, lines included')
    limits = [n for n in ('maxproductsize', 'maxcubesize', 'maxcubelimit') if getattr(request, n) is not None]
    if engine == 'casa' and (limits or not request.mitigation):
        plan.notes.append('%s only apply to the pipeline\'s size mitigation: the CASA engine checks the free '
                          'disk instead' % ', '.join('--' + n for n in limits or ['no-mitigation']))
    plan.imaging, plan.imaging_engine = request, engine
    engine_name = 'ALMA pipeline' if engine == 'pipeline' else 'CASA tclean, no pipeline'
    inputs = list(delivery.targets) + ([] if makes_line_ms else list(delivery.targets_line) if cubes else [])
    plan.steps.append(Step('image', 'images %s (%s) into %s' % (','.join(request.specmodes), engine_name, images),
                           inputs, [images], 0, run_image))


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
    if getattr(plan, 'image_estimate', None) is not None:
        lines.append('  ' + describe_image_estimate(plan.image_estimate))
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
        self.console_log = None
        self.pipeline_dir = None  # where this process's first pipeline step ran
        self.results = []
        self.command = None        # the command line, for the report
        self.started = None        # time.time() when the run began
        self.current_step = None   # {'step', 'started'} of the step running now: the failed one if the run stops
        self.report_dir = None     # this run's folder in working_reprocess/report/

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
        self.command, self.started = command, time.time()
        self._journal = {'pid': os.getpid(), 'started': _now(), 'command': command, 'created': [],
                         'set_aside': []}
        self._write_journal()

    def set_aside(self, original):
        """Rename a user's file aside (to be replaced); the next run puts it back if this one dies."""
        original = Path(original)
        aside = original.with_name('.%s.replaced-%d' % (original.name, os.getpid()))
        self._journal['set_aside'].append([str(aside), str(original)])
        self._write_journal()
        os.rename(str(original), str(aside))
        return aside

    def put_back(self, aside, original):
        """Undo set_aside (the replacement failed)."""
        if not (Path(original).exists() or Path(original).is_symlink()):
            os.rename(str(aside), str(original))
        self._forget_aside(aside)

    def discard_aside(self, aside):
        """The replacement is published: the old version set aside can go."""
        _remove_tree(aside)
        self._forget_aside(aside)

    def _forget_aside(self, aside):
        self._journal['set_aside'] = [pair for pair in self._journal['set_aside'] if pair[0] != str(aside)]
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
        for aside_text, original_text in reversed(journal.get('set_aside', [])):
            aside, original = Path(aside_text), Path(original_text)
            if not (_is_inside(aside, self.delivery.root) and aside.exists()):
                continue
            if original.exists() or original.is_symlink():
                _remove_tree(aside)  # its replacement was published
            else:
                os.rename(str(aside), str(original))
                say('  put back %s, which the interrupted run had set aside to replace it'
                    % _relative(original, self.delivery.root))
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
    # In file order; what concerns no line of the file (data cont.dat does not mention) comes last.
    analysis.problems = sorted(list(contdat.problems) + report.problems(), key=lambda p: (
        p.line is None, p.line or 0, ('error', 'warning', 'note').index(p.severity)))
    return analysis


class _ProblemCollector(object):
    """Problems found per execution block, reported once per (line, message) with the EBs they concern."""

    def __init__(self, display, ebs):
        self.display = display
        self.ebs = ebs
        self._found = collections.OrderedDict()

    def add(self, severity, line, message, eb=None, detail=None):
        """message may hold "{where}", replaced by the execution blocks the problem was found in,
        each followed by its own detail (e.g. the frequencies its spw covers) when given."""
        key = (severity, line, message)
        self._found.setdefault(key, [])
        if eb is not None and eb not in [seen for seen, _detail in self._found[key]]:
            self._found[key].append((eb, detail))

    def problems(self):
        found = []
        for (severity, line, message), ebs in self._found.items():
            found.append(Problem(severity, self.display, line, message.replace('{where}', self._where(ebs))))
        return found

    def _where(self, ebs):
        details = [detail for _eb, detail in ebs if detail]
        suffix = ''
        if details and len(set(details)) == 1 and len(details) == len(ebs):
            suffix, details = ' (%s)' % details[0], []  # the same everywhere: say it once
        if not details and len(self.ebs) > 1 and len(ebs) == len(self.ebs):
            return ('in both execution blocks' if len(ebs) == 2 else 'in all %d execution blocks' % len(ebs)) + suffix
        named = ['%s (%s)' % (eb, detail) if details and detail else eb for eb, detail in ebs]
        if len(named) > 3:
            return 'in %d execution blocks (%s, ...)%s' % (len(named), ', '.join(named[:2]), suffix)
        return 'in ' + ', '.join(named) + suffix


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
        has = 'spws %s' % ', '.join('%d %s' % (i, s.name) if spw.name else str(i) for i, s in layout.spws.items())
        report.add('error', spw.line, 'field "%s": no spectral window %s {where} — correct the spw number%s or '
                   'delete the block' % (field.name, what, ' and name' if spw.name else ''), layout.eb,
                   'it has ' + has)
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
        covered = 'it covers %s %s' % (_ghz_text(*coverage), cont_range.frame)
        if channels is None:
            report.add('error', cont_range.line, '%s lies outside %s of field "%s" {where} — correct the range'
                       % (_range_text(cont_range), spw.label(), field.name), layout.eb, covered)
            continue
        if cont_range.lo_hz < coverage[0] or cont_range.hi_hz > coverage[1]:
            report.add('warning', cont_range.line, '%s reaches beyond %s of field "%s" {where}; only the channels '
                       'inside are fitted — trim the range' % (_range_text(cont_range), spw.label(), field.name),
                       layout.eb, covered)
        channel_ranges.append(channels)
    merged = merge_channel_ranges(channel_ranges)
    selected = sum(last - first + 1 for first, last in merged)
    if channel_ranges and selected < fitorder + 1:
        report.add('error', spw.line, 'field "%s" %s selects too few channels {where} for a fit of order %d — '
                   'widen the ranges' % (field.name, spw.label(), fitorder), layout.eb,
                   '%d channel%s' % (selected, '' if selected == 1 else 's'))
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
    analysis = plan.contdat_analysis
    if analysis is None:
        delivery = plan.delivery
        contdat = plan.contdat or read_delivery_contdat(delivery)
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


def read_delivery_contdat(delivery):
    """The delivery's caltables/cont.dat, read (pure Python; errors name the line)."""
    return read_contdat(delivery.contdat, display=_relative(delivery.contdat, delivery.root))


def _plan_check(plan):
    delivery = plan.delivery
    if not delivery.contdat.is_file():
        raise ReprocessingError('%s is missing — there is nothing to check: restore it from the delivery'
                                % delivery.contdat)
    plan.contdat = plan.contdat or read_delivery_contdat(delivery)
    plan.steps.append(Step('check', 'check %s against %d measurement set(s)' % (
        _relative(delivery.contdat, delivery.root), len(delivery.targets)), [delivery.contdat] + list(
        delivery.targets), [], 0, run_check))


def run_check(plan, state, step, casa):
    """--check: cont.dat against the measurement sets, and the channels each EB would fit."""
    try:
        analysis = contdat_preflight(plan, casa)
    except ReprocessingError:
        if plan.contdat_analysis is not None:  # the channels of what is right still help
            _say_fit_table(plan.contdat_analysis)
        raise
    _say_fit_table(analysis)
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
    """--contsub_fast: apply the delivered continuum tables (Cycle 9), or fit cont.dat with CASA uvcontsub.

    cont.dat is checked against the MSes first; on an error nothing is written.
    """
    method, reason = choose_contsub_fast_method(plan.options, plan.delivery, [Path(ms) for ms in step.inputs])
    say('  method: %s' % reason)
    if method == 'tables':
        contdat_preflight(plan, casa)
        result = contsub_apply_uvcont_tables(plan, state, step, casa, list(plan.delivery.uvcont_tables))
        result['reason'] = reason
        result['spectra'] = _spectra_after_contsub(plan, casa, step.inputs, result.get('outputs', []))
        return result
    return contsub_with_uvcontsub(plan, state, step, casa, reason)


CONTDAT_EDIT_SLACK_S = 60


def choose_contsub_fast_method(options, delivery, targets):
    """('tables' or 'uvcontsub', why) — decided from files and flags alone (pure: no CASA)."""
    fit = 'fitting the continuum from %s with CASA uvcontsub' % _relative(delivery.contdat, delivery.root)
    if getattr(options, 'refit', False):
        return 'uvcontsub', '%s: --refit was given (the delivered continuum tables are not used)' % fit
    if getattr(options, 'fitorder', None) is not None:
        return 'uvcontsub', '%s: --fitorder was given, and the delivered tables have their fit order built in' % fit
    tables = list(delivery.uvcont_tables)
    if not tables:
        return 'uvcontsub', '%s: caltables/ holds no *uvcont.tbl (Cycle 10 and later deliver none)' % fit
    owners = {eb_name(ms) for ms in targets if any(t.name.startswith(eb_name(ms) + '_target')
                                                   or t.name.startswith(eb_name(ms) + '.') for t in tables)}
    without = [eb_name(ms) for ms in targets if eb_name(ms) not in owners]
    if without:
        return 'uvcontsub', '%s: caltables/ has continuum tables for only %d of the %d execution blocks (none for ' \
                            '%s)' % (fit, len(targets) - len(without), len(targets), ', '.join(without))
    contdat_time = delivery.contdat.stat().st_mtime
    tables_time = min(_table_mtime(table) for table in tables)
    # The pipeline writes cont.dat before the tables; a copy made without keeping times (cp -r)
    # stamps them all within seconds, in any order.  An edit comes later than that.
    if contdat_time > tables_time + CONTDAT_EDIT_SLACK_S:
        return 'uvcontsub', '%s: cont.dat (changed %s) is newer than the delivered continuum tables (%s), so they ' \
                            'no longer match it' % (fit, _mtime_text(contdat_time), _mtime_text(tables_time))
    return 'tables', ('applying the delivered continuum fits caltables/*uvcont.tbl (a Cycle 9 delivery, and cont.dat '
                      'is not newer than them) — add --refit to fit cont.dat with CASA uvcontsub instead')


def _table_mtime(table):
    marker = Path(table) / 'table.dat'
    return (marker if marker.exists() else Path(table)).stat().st_mtime


def _mtime_text(seconds):
    return datetime.datetime.fromtimestamp(seconds).strftime('%Y-%m-%d %H:%M')


# -- CASA uvcontsub with fitspec from cont.dat ------------------------------------------------------

def build_fitspec(selections, *, fitorder=None):
    """uvcontsub's field / spw selections and fitspec dictionary for one MS (pure).

    fitspec is {'field ids': {'spw id': {'chan': 'a~b;c~d', 'fitorder': n}}}, as the pipeline's
    hif_uvcontsub builds it; chan '' fits all channels.  Fields sharing a name (mosaic
    pointings) share one entry.  Spws in no cont.dat block are not selected, so they are not
    in the line MS.
    """
    fitspec = collections.OrderedDict()
    for selection in selections:
        key = ','.join(str(field_id) for field_id in selection.field_ids)
        order = selection.fitorder if fitorder is None else fitorder
        fitspec.setdefault(key, collections.OrderedDict())[str(selection.spw_id)] = {
            'chan': selection.chan, 'fitorder': int(order)}
    field_ids = sorted({field_id for selection in selections for field_id in selection.field_ids})
    spw_ids = sorted({selection.spw_id for selection in selections})
    return (','.join(str(i) for i in field_ids), ','.join(str(i) for i in spw_ids),
            json.loads(json.dumps(fitspec)))


def contsub_with_uvcontsub(plan, state, step, casa, reason):
    delivery, options = plan.delivery, plan.options
    targets = [Path(ms) for ms in step.inputs]
    jobs = resolve_jobs(options.jobs, len(targets), total_bytes=step.extra_bytes)
    # Worker processes load CASA while cont.dat is checked here; they write nothing until given work.
    # Under MPI (mpicasa, or mpirun with casampi) the MPI servers are the workers instead.
    with eb_workers(jobs, state=state) as workers:
        analysis = contdat_preflight(plan, casa)
        _say_fit_table(analysis, fitorder=options.fitorder)
        tasks, outputs = [], []
        for ms in targets:
            field, spw, fitspec = build_fitspec(analysis.selections[str(ms)], fitorder=options.fitorder)
            if not fitspec:
                raise ReprocessingError('cont.dat selects nothing to fit in %s (see the notes above) — add blocks for '
                                        'its fields and spws' % ms.name)
            final = _line_name(ms)
            partial = state.partial_name(final)
            state.will_create(partial)
            outputs.append((partial, final))
            tasks.append({'function': 'subtract_continuum', 'eb': eb_name(ms), 'arguments': {
                'ms': str(ms), 'output': str(partial), 'field': field, 'spw': spw, 'fitspec': fitspec,
                'spectra': spectrum_requests(analysis, ms)}})
        say('  subtracting the continuum of %d execution block%s%s' % (
            len(tasks), '' if len(tasks) == 1 else 's', ' in %d processes' % workers.count if workers.count > 1
            else ''))
        results = workers.run(tasks, casa=casa)
    pause_point('contsub-written', state)
    publish_line_outputs(state, outputs, replace=options.overwrite_line)
    for (_partial, final), result in zip(outputs, results):
        say('  wrote %s: %d rows, spws %s (%s, %.1f s)' % (
            _relative(final, delivery.root), result['rows'], result['spw'], human_bytes(directory_bytes(final)),
            result['seconds']))
    spectra = []
    for result in results:
        for spectrum in result.get('spectra', []):
            spectrum['after_ms'] = _line_name(Path(spectrum['before_ms'])).name
            spectra.append(spectrum)
    pictures = _plots_or_warning(lambda: draw_spectra(spectra, spectra_directory(delivery)))
    _say_spectra(pictures, delivery)
    return {'outputs': [str(final) for _partial, final in outputs], 'method': 'uvcontsub', 'reason': reason,
            'jobs': workers.count, 'fitspec': dict((eb_name(ms), task['arguments']['fitspec'])
                                                   for ms, task in zip(targets, tasks)),
            'seconds_per_eb': dict((task['eb'], result['seconds']) for task, result in zip(tasks, results)),
            'spectra': [str(path) for path in pictures]}


def _spectra_after_contsub(plan, casa, before, after):
    """Spectra for a contsub path that did not measure them on the way (the delivered tables)."""
    pairs = [(Path(b), Path(a)) for b, a in zip(before, after) if Path(a).is_dir()]
    if not pairs:
        return []
    contdat = plan.contdat or read_delivery_contdat(plan.delivery)
    pictures = _plots_or_warning(lambda: plot_contsub_spectra(
        before_ms=[b for b, _a in pairs], after_ms=[a for _b, a in pairs], contdat=contdat,
        out_dir=spectra_directory(plan.delivery), casa=casa))
    _say_spectra(pictures, plan.delivery)
    return [str(path) for path in pictures]


def eb_task(function):
    """Register a function that works on one execution block, in this process or in a worker."""
    EB_TASKS[function.__name__] = function
    return function


EB_TASKS = {}


@eb_task
def subtract_continuum(casa, report, *, ms, output, field, spw, fitspec, spectra=()):
    """uvcontsub of one MS into output (a temporary name), checked; then its spectra before/after."""
    started = time.time()
    report('uvcontsub: fitting and subtracting the continuum (field ids %s, spws %s)' % (field, spw))
    try:
        with _native_stdout_silenced():  # its C++ messages belong in the CASA log
            casa.casatasks.uvcontsub(vis=str(ms), outputvis=str(output), field=field, spw=spw, fitspec=fitspec,
                                     datacolumn='data')
    except Exception as error:  # CASA tasks raise plain RuntimeErrors
        raise ReprocessingError('uvcontsub failed on %s (%s) — see the CASA log; your MS was not changed'
                                % (Path(ms).name, _one_line(error)))
    if not (Path(output) / 'table.dat').is_file():
        raise ReprocessingError('uvcontsub wrote no line MS for %s — see the CASA log; your MS was not changed'
                                % Path(ms).name)
    seconds = time.time() - started
    expected = count_rows(casa, ms, field_ids=field, spw_ids=spw)
    written = count_rows(casa, output)
    if written != expected:
        raise ReprocessingError('the line MS made from %s has %d rows where %d were selected — it was not '
                                'published; see the CASA log' % (Path(ms).name, written, expected))
    report('continuum subtracted in %.1f s: %d rows' % (seconds, written))
    measured = []
    if spectra:
        try:
            measured = measure_spectra_pair(casa, before_ms=ms, after_ms=output, requests=spectra)
        except Exception as error:  # the plots are a view of the result, not the result: carry on
            report('WARNING: no spectra for the plots (%s)' % _one_line(error))
    return {'rows': written, 'seconds': round(seconds, 2), 'spw': spw, 'field': field, 'spectra': measured}


def count_rows(casa, ms, *, field_ids='', spw_ids=''):
    """Rows of ms, or of the given fields ('0,1') and spws ('25,27') of it."""
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        if not field_ids and not spw_ids:
            return table.nrows()
        dd_table = casa.casatools.table()
        dd_table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
        try:
            spw_of_dd = [int(v) for v in dd_table.getcol('SPECTRAL_WINDOW_ID')] if dd_table.nrows() else []
        finally:
            dd_table.close()
        wanted = {int(v) for v in str(spw_ids).split(',') if v.strip()}
        dd_ids = [dd for dd, spw in enumerate(spw_of_dd) if spw in wanted] or [-1]
        selected = table.query('FIELD_ID IN [%s] AND DATA_DESC_ID IN [%s]'
                               % (field_ids, ','.join(str(dd) for dd in dd_ids)))
        try:
            return selected.nrows()
        finally:
            selected.close()
    finally:
        table.close()


# -- execution blocks in parallel -------------------------------------------------------------------
#
# CASA tools are not fork-safe, so each worker is a fresh Python running this same script in
# worker mode (EB_WORKER_FLAG), which loads CASA with its own log and takes one task (JSON, one
# line on its stdin) after another, answering with progress lines and one result line.  The
# parent prints the progress lines prefixed with the execution block's name.

EB_WORKER_FLAG = '--eb-worker'  # hidden: this script as a worker process of a parent run
_RESULT_MARK = '@@eb-task-result@@ '
_MPI_VARIABLES = ('OMPI_', 'PMI_', 'PMIX_', 'MPI_', 'HYDRA_')


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Below this much data, starting CASA in worker processes (2-3 s each) costs more than it saves.
PARALLEL_MIN_BYTES = 200 * 1000 * 1000


def resolve_jobs(requested, n_ebs, *, total_bytes=None):
    """Processes to use: --jobs N, else the number of cores (one for small data); never more than the EBs."""
    if requested:
        jobs = requested
    elif total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES:
        jobs = 1
    else:
        jobs = available_cores()
    return max(1, min(int(jobs), int(n_ebs)))


def _script_path():
    candidate = globals().get('__file__')
    if candidate and os.path.isfile(candidate) and candidate.endswith('.py'):
        return Path(candidate).resolve()
    for argument in sys.argv:
        if os.path.basename(argument) == SCRIPT_NAME and os.path.isfile(argument):
            return Path(argument).resolve()
    return None


class EbWorkers(object):
    """Tasks on execution blocks: in this process (one job) or in worker processes (several)."""

    def __init__(self, count, *, state):
        self.count = count
        self.state = state
        self.processes = []
        self.logfiles = []

    @classmethod
    @contextlib.contextmanager
    def started(cls, jobs, *, state):
        workers = cls(jobs, state=state)
        try:
            if jobs > 1:
                workers._start()
            yield workers
        except BaseException:
            workers._stop(at_once=True)  # a failure or an interruption: nothing more to wait for
            raise
        workers._stop()

    def _start(self):
        script = _script_path()
        if script is None:
            say('  note: cannot find this script\'s own path, so the execution blocks run one after another')
            self.count = 1
            return
        self.state.logs_dir.mkdir(parents=True, exist_ok=True)
        environment = dict((name, value) for name, value in os.environ.items()
                           if not name.startswith(_MPI_VARIABLES))
        environment['PYTHONIOENCODING'] = 'utf-8'  # the pipe between us, whatever the locale
        lock = getattr(self.state, '_lock_file', None)
        # The workers inherit the run's lock: if this process is killed, no new run starts in this
        # delivery before they have stopped writing.
        keep = (lock.fileno(),) if lock is not None else ()
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        for number in range(1, self.count + 1):
            logfile = self.state.logs_dir / ('casa-%s-worker%d.log' % (stamp, number))
            # What CASA prints on stderr (leap-second warnings, C++ messages) goes to a file beside
            # its log; the terminal gets the worker's progress lines only.
            errors = logfile.with_name(logfile.name[:-len('.log')] + '-stderr.txt')
            process = _start_worker_process([sys.executable, str(script), EB_WORKER_FLAG, str(logfile)],
                                            cwd=str(self.state.logs_dir), env=environment, pass_fds=keep,
                                            stderr_path=errors)
            self.processes.append(process)
            self.logfiles.append(logfile)

    def run(self, tasks, *, casa):
        """Results of the tasks, in their order; the first failure stops the others and is raised."""
        if self.count <= 1 or not self.processes:
            return [self._run_here(task, casa) for task in tasks]
        return self._run_in_workers(tasks)

    @staticmethod
    def _run_here(task, casa):
        def report(message):
            say('  [%s] %s' % (task['eb'], message))
        return EB_TASKS[task['function']](casa, report, **task['arguments'])

    def _run_in_workers(self, tasks):
        import threading
        queue = list(enumerate(tasks))
        results = [None] * len(tasks)
        failures = []
        guard = threading.Lock()

        def serve(process, logfile):
            while True:
                with guard:
                    if failures or not queue:
                        return
                    index, task = queue.pop(0)
                try:
                    process.stdin.write(json.dumps(task) + '\n')
                    process.stdin.flush()
                except OSError:
                    answer = None
                else:
                    answer = _read_answer(process, task['eb'], guard)
                with guard:
                    if answer is None:
                        failures.append('the worker process for %s stopped unexpectedly (exit status %s) — see its '
                                        'CASA log %s and the -stderr.txt file beside it'
                                        % (task['eb'], process.poll(), logfile))
                    elif not answer.get('ok'):
                        failures.append(answer.get('error', 'unknown error'))
                    else:
                        results[index] = answer['result']

        threads = [threading.Thread(target=serve, args=(process, logfile))
                   for process, logfile in zip(self.processes, self.logfiles)]
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short waits keep Ctrl-C and SIGTERM responsive
                if failures:  # stop the other execution blocks now rather than after their work
                    for process in self.processes:
                        if process.poll() is None:
                            process.terminate()
        if failures:
            raise ReprocessingError(failures[0])
        return results

    def _stop(self, at_once=False):
        for process in self.processes:
            try:
                process.stdin.close()  # end of tasks: an idle worker exits
            except OSError:
                pass
            if at_once and process.poll() is None:
                process.terminate()
        deadline = time.time() + 10
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.time()))
            except Exception:  # subprocess.TimeoutExpired: still busy, stop it
                process.terminate()
                try:
                    process.wait(10)
                except Exception:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []


def _start_worker_process(command, *, cwd, env, pass_fds=(), stderr_path):
    import subprocess
    try:
        with open(str(stderr_path), 'w') as errors:
            return subprocess.Popen(command, cwd=cwd, env=env, pass_fds=pass_fds, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors, bufsize=1,
                                    encoding='utf-8', errors='replace')
    except OSError as error:
        raise ReprocessingError('cannot start a worker process (%s) — run with --jobs 1' % (error.strerror or error))


def _read_answer(process, eb, guard):
    """Print the worker's progress lines for this task (prefixed) until its result line."""
    for line in iter(process.stdout.readline, ''):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
        with guard:  # one whole line at a time, whichever worker it comes from
            say('  [%s] %s' % (eb, line.rstrip('\n')))
    return None


def run_eb_worker(arguments):
    """Worker mode: load CASA, then run the tasks read from stdin, one JSON line each, until EOF."""
    logfile = Path(arguments[0]) if arguments else None
    try:
        casa = _load_casa_for_worker(logfile)
        problem = None
    except ReprocessingError as error:
        casa, problem = None, str(error)
    try:
        for line in iter(sys.stdin.readline, ''):
            if not line.strip():
                continue
            task = json.loads(line)
            try:
                if problem:
                    raise ReprocessingError(problem)
                answer = {'ok': True, 'result': EB_TASKS[task['function']](casa, say, **task['arguments'])}
            except ReprocessingError as error:
                answer = {'ok': False, 'error': str(error)}
            except Exception as error:
                answer = {'ok': False, 'error': '%s failed on %s (%s: %s) — see the CASA log %s' % (
                    task.get('function'), task.get('eb'), type(error).__name__, _one_line(error), logfile)}
            sys.stdout.write(_RESULT_MARK + json.dumps(answer) + '\n')
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return EXIT_FAILED
    except BrokenPipeError:  # the parent is gone (killed); its next run removes what was half written
        return EXIT_FAILED
    return EXIT_OK


def _load_casa_for_worker(logfile):
    """Modular CASA as load_casa configures it; inside a monolithic CASA's own Python, CASA as installed."""
    try:
        import casadata  # noqa: F401  (only modular CASA has it)
    except ImportError:
        try:
            import casatools
            import casatasks
        except ImportError as error:
            raise ReprocessingError('a worker process cannot import CASA (%s) — run with --jobs 1' % error)
        if logfile is not None:
            casatasks.casalog.setlogfile(str(logfile))
        casatasks.casalog.showconsole(False)
        return CasaModules(casatools, casatasks, casatools.version_string(), 'monolithic')
    return load_casa(logfile=logfile)


# -- spectra before and after -----------------------------------------------------------------------

# Visibilities (rows x correlations x channels) read at most per MS, field and spw for a spectrum:
# a plot does not need every integration of a large MS; time windows spread over the
# observation are averaged instead (the plot says so).  2e6 values keep the plots' noise ~1/30 of
# one visibility's for 2000 channels and 2 correlations, and their cost ~10% of the fit's.
SPECTRUM_BUDGET = 2000000


def spectra_directory(delivery):
    return delivery.work_dir / 'report' / 'spectra'


def spectrum_requests(analysis, ms):
    """What to measure for one MS: one entry per field and spw it fits, with cont.dat's ranges."""
    requests = []
    for selection in analysis.selections[str(ms)]:
        block = analysis.contdat.fields[selection.field_name].spws.get(selection.virtual_id)
        ranges = [[r.lo_hz, r.hi_hz, r.frame] for r in block.ranges] if block is not None else []
        requests.append({'field_name': selection.field_name, 'field_ids': list(selection.field_ids),
                         'spw_id': selection.spw_id, 'virtual_id': selection.virtual_id, 'ranges': ranges,
                         'after_field_ids': list(selection.field_ids), 'after_spw_id': selection.spw_id})
    return requests


def measure_spectra_pair(casa, *, before_ms, after_ms, requests):
    """For each request: LSRK frequency, |<V>| before and after, and the cont.dat ranges on that axis."""
    measured = []
    converter = ChannelConverter(casa)
    for request in requests:
        frequencies = lsrk_channel_frequencies(casa, before_ms, request['field_ids'][0], request['spw_id'])
        before, fraction = average_spectrum(casa, before_ms, request['field_ids'], request['spw_id'])
        after, _ = average_spectrum(casa, after_ms, request['after_field_ids'], request['after_spw_id'])
        shade = []
        for lo_hz, hi_hz, frame in request['ranges']:
            if frame == 'LSRK':
                shade.append([lo_hz, hi_hz])
                continue
            # Another frame: shade the channels advisechansel picks, at their LSRK frequencies.
            channels = converter.channels(before_ms, request['field_ids'][0], request['spw_id'],
                                          ContRange(lo_hz, hi_hz, frame, 0))
            if channels is not None:
                chosen = frequencies[channels[0]:channels[1] + 1]
                width = abs(frequencies[1] - frequencies[0]) / 2 if len(frequencies) > 1 else 0
                shade.append([min(chosen) - width, max(chosen) + width])
        measured.append({'eb': eb_name(before_ms), 'before_ms': Path(before_ms).name,
                         'after_ms': Path(after_ms).name, 'field_name':
                         request['field_name'], 'spw_id': request['spw_id'], 'virtual_id': request['virtual_id'],
                         'spw_name': _spw_name(casa, before_ms, request['spw_id']),
                         'frequency_hz': list(frequencies), 'before': before, 'after': after, 'shade_hz': shade,
                         'fraction': fraction, 'frames': sorted({r[2] for r in request['ranges']})})
    return measured


def lsrk_channel_frequencies(casa, ms, field_id, spw_id):
    """Channel frequencies in LSRK, in channel order, as the ms tool converts them (no maths of ours)."""
    tool = casa.casatools.ms()
    tool.open(str(ms))
    try:
        values = tool.cvelfreqs(spwids=[int(spw_id)], fieldids=[int(field_id)], mode='channel', outframe='LSRK')
    finally:
        tool.close()
    return [float(v) for v in values]


def _spw_name(casa, ms, spw_id):
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'SPECTRAL_WINDOW'))
    try:
        return str(table.getcell('NAME', int(spw_id)))
    finally:
        table.close()


def average_spectrum(casa, ms, field_ids, spw_id, *, budget=SPECTRUM_BUDGET):
    """(|<V>| per channel over baselines, time and correlations, fraction of rows used).

    Flagged visibilities are left out (TaQL's masked arrays); channels with no unflagged data are
    None.  A large MS is sampled in up to 8 time windows spread over the observation.
    """
    import numpy
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        dd_ids = [dd for dd, spw in enumerate(table.getcol('SPECTRAL_WINDOW_ID')) if int(spw) == int(spw_id)]
    finally:
        table.close()
    where = 'FIELD_ID IN [%s] AND DATA_DESC_ID IN [%s]' % (','.join(str(int(f)) for f in field_ids),
                                                           ','.join(str(dd) for dd in dd_ids) or '-1')
    if '"' in str(ms):
        raise ReprocessingError('the path %s contains a double quote — rename it' % ms)
    table.open(str(ms))
    try:
        selected = table.query(where)
        try:
            rows = selected.rownumbers()
            cell = selected.getcell('DATA', 0) if len(rows) else None
        finally:
            selected.close()
        if cell is None:
            return [], 0.0
        per_row = max(1, cell.size)
        windows = _time_windows(list(rows), max(1, budget // per_row))
        if windows:
            where += ' AND (%s)' % ' OR '.join('(ROWID() >= %d AND ROWID() <= %d)' % w for w in windows)
        row_numbers = numpy.asarray(rows)
        used = len(rows) if not windows else sum(
            int(((row_numbers >= first) & (row_numbers <= last)).sum()) for first, last in windows)
        # DATA[FLAG] is a masked array: flagged values are left out of the mean.
        result = table.taql('SELECT GMEANS(DATA[FLAG]) AS AVERAGE, GSUMS(IIF(FLAG, 0.0, 1.0)) AS UNFLAGGED '
                            'FROM "%s" WHERE %s' % (ms, where))
        try:
            mean = numpy.asarray(result.getcol('AVERAGE'))[..., 0]
            count = numpy.asarray(result.getcol('UNFLAGGED'))[..., 0]
        finally:
            result.close()
    finally:
        table.close()
    total = count.sum(axis=0)
    combined = (mean * count).sum(axis=0) / numpy.where(total > 0, total, 1)
    amplitude = [float(abs(value)) if weight > 0 else None for value, weight in zip(combined, total)]
    return amplitude, float(used) / len(rows)


def _time_windows(rows, limit, pieces=8):
    """Up to `pieces` row-number ranges spread over the selected rows, `limit` rows in all; [] = all."""
    if len(rows) <= limit:
        return []
    size = max(1, limit // pieces)
    starts = [int(i * (len(rows) - size) / float(max(1, pieces - 1))) for i in range(pieces)]
    windows = []
    for start in sorted(set(starts)):
        windows.append((rows[start], rows[min(len(rows) - 1, start + size - 1)]))
    return windows


def plot_contsub_spectra(*, before_ms, after_ms, contdat, out_dir, casa):
    """PNGs of |<V>| versus LSRK frequency before and after subtraction, cont.dat ranges shaded.

    before_ms / after_ms: an MS or a list of them, paired (uid*_targets.ms and its line MS).  One
    PNG per science field and spw, with one curve per execution block.  Returns the PNG paths.
    """
    befores = [Path(before_ms)] if isinstance(before_ms, (str, Path)) else [Path(p) for p in before_ms]
    afters = [Path(after_ms)] if isinstance(after_ms, (str, Path)) else [Path(p) for p in after_ms]
    analysis = analyse_contdat(contdat, befores, casa)
    spectra = []
    for before, after in zip(befores, afters):
        after_layout = read_ms_layout(casa, after)
        before_layout = analysis.layout(before)
        requests = []
        for request in spectrum_requests(analysis, before):
            if request['field_name'] not in after_layout.fields:
                continue
            name = before_layout.spws[request['spw_id']].name
            by_name = after_layout.spw_ids_by_name(name)
            after_spw = by_name[0] if len(by_name) == 1 else request['spw_id']
            if after_spw not in after_layout.spws:
                continue
            request['after_field_ids'] = after_layout.fields[request['field_name']]
            request['after_spw_id'] = after_spw
            requests.append(request)
        spectra.extend(measure_spectra_pair(casa, before_ms=before, after_ms=after, requests=requests))
    return draw_spectra(spectra, Path(out_dir))


def draw_spectra(spectra, out_dir):
    """One PNG per (field, cont.dat spw): before above, after below, one curve per EB (matplotlib, Agg)."""
    import re
    if not spectra:
        return []
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        warn('matplotlib is not installed in this Python, so no spectra plots were made — install it with '
             '"pip install matplotlib"')
        return []
    groups = collections.OrderedDict()
    for spectrum in spectra:
        groups.setdefault((spectrum['field_name'], spectrum['virtual_id']), []).append(spectrum)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for (field_name, virtual_id), items in groups.items():
        figure = Figure(figsize=(10, 6.5))
        FigureCanvasAgg(figure)
        top = figure.add_subplot(2, 1, 1)
        bottom = figure.add_subplot(2, 1, 2, sharex=top)
        for axes, key, title in ((top, 'before', 'before: uid*_targets.ms'),
                                 (bottom, 'after', 'after: uid*_targets_line.ms (continuum subtracted)')):
            for lo_hz, hi_hz in items[0]['shade_hz']:
                axes.axvspan(lo_hz / 1e9, hi_hz / 1e9, color='tab:green', alpha=0.18, linewidth=0)
            for item in items:
                points = [(f / 1e9, a) for f, a in zip(item['frequency_hz'], item[key]) if a is not None]
                points.sort()
                axes.plot([p[0] for p in points], [p[1] for p in points], linewidth=0.9,
                          label=item['eb'] + ('' if item['fraction'] >= 0.999 else
                                              ' (%d%% of the integrations)' % round(100 * item['fraction'])))
            axes.set_title(title, fontsize=10, loc='left')
            axes.set_ylabel('Amplitude (Jy)')
            axes.axhline(0.0, color='0.6', linewidth=0.5)
            axes.grid(alpha=0.3)
        bottom.set_xlabel('LSRK frequency (GHz)')
        frames = sorted({frame for item in items for frame in item['frames']})
        shaded = ('cont.dat ranges shaded (%s)' % ', '.join(frames) if frames
                  else 'no cont.dat ranges: all channels fitted')
        figure.suptitle('%s — spw %d %s\n|mean visibility| over baselines and time; %s' % (
            field_name, virtual_id, items[0]['spw_name'], shaded), fontsize=10)
        if len(items) <= 8:
            top.legend(fontsize=8, loc='upper right')
        name = '%s_spw%d.png' % (re.sub(r'[^A-Za-z0-9_.+-]+', '_', field_name), virtual_id)
        temporary = out_dir / ('.%s.partial' % name)
        figure.savefig(str(temporary), dpi=90, format='png')
        os.replace(str(temporary), str(out_dir / name))
        pictures.append(out_dir / name)
    return pictures


def _plots_or_warning(make):
    """The plots are a view of a finished result: when they fail, say so and carry on."""
    try:
        return make()
    except Exception as error:
        warn('the spectra plots could not be made (%s) — the line MSes are complete; report this problem'
             % _one_line(error))
        return []


def _say_spectra(pictures, delivery):
    if pictures:
        say('  spectra before/after (%d PNG, one per field and spw): %s/' % (
            len(pictures), _relative(Path(pictures[0]).parent, delivery.root)))


def run_contsub(plan, state, step, casa):
    """--contsub: the ALMA pipeline subtracts the continuum, the way the installed release does it.

    The pipeline works in working_reprocess/ on stand-ins of the user's MSes (shadows, or copies
    for PL2022, which applies its fit into the MS), so the user's MSes are only read; its line
    MSes are then moved into measurement_sets/ under temporary names and published.
    """
    contdat_preflight(plan, casa)
    delivery = plan.delivery
    targets = [Path(ms) for ms in step.inputs]
    revision, tasks = load_pipeline_tasks(work_dir=delivery.work_dir)
    decided = pipeline_contsub_calls(
        revision=revision, task_parameters=dict((name, task_parameter_names(task)) for name, task in tasks.items()),
        vis=[ms.name for ms in targets], mpi_size=mpi_info().size,
        datatypes_recorded=all(ms_records_pipeline_datatypes(casa, ms) for ms in targets))
    say('  pipeline %s (%s): %s' % (revision, decided.release, decided.flow))
    for note in decided.notes:
        say('  note: ' + note)
    work_dir = delivery.work_dir
    state.pipeline_dir = work_dir
    staged = stage_for_pipeline_contsub(state, targets, work_dir, copy=decided.copies_ms)
    place_contdat_for_pipeline(delivery)
    produced = collections.OrderedDict((ms, work_dir / pipeline_line_name(ms.name)) for ms in targets)
    for path in produced.values():
        state.will_create(path)  # removed by the journal if the pipeline fails or the run is killed
    _run_pipeline_calls(tasks, decided.calls, work_dir=work_dir, logfile=state.casa_logfile)
    missing = [path.name for path in produced.values() if not (path / 'table.dat').exists()]
    if missing:
        raise ReprocessingError('the pipeline did not write %s — see its weblog (%s/pipeline-*/html/index.html) '
                                'and the CASA log' % (', '.join(missing), WORK_DIR_NAME))
    outputs = []
    for ms, path in produced.items():
        final = _line_name(ms)
        partial = state.partial_name(final)
        state.will_create(partial)
        _move_tree(path, partial)
        state.created_for_good(path)
        outputs.append((partial, final))
    publish_line_outputs(state, outputs, replace=plan.options.overwrite_line)
    for stand_in in staged.values():
        _remove_tree(stand_in)
        state.created_for_good(stand_in)
    for _partial, final in outputs:
        say('  wrote %s (%s)' % (_relative(final, delivery.root), human_bytes(directory_bytes(final))))
    return {'outputs': [str(final) for _partial, final in outputs], 'method': 'pipeline',
            'pipeline': revision, 'release': decided.release, 'flow': decided.flow,
            'calls': [[name, kwargs] for name, kwargs in decided.calls]}


# -- Cycle 9 deliveries: apply the delivered continuum tables (caltables/*uvcont.tbl) ----------------
#
# The tables are AMueller ('A') solutions of the Cycle 5-9 pipeline's hif_uvcontfit, one or more
# per MS (one per source), each named after its MS.  What works with casatasks 6.7 (measured):
# split the data the tables cover into a scratch MS in working_reprocess/, applycal there, split
# CORRECTED into the line MS.  The user's MS is only read.  What does not work:
# * on-the-fly calibration (mstransform docallib=True + a cal library): casatasks' cal library
#   parser leaves out the scan/scanmap fields the calibrater now requires ("Caltable ... is
#   missing the following fields: scan scanmap"), and with them added AMueller fails
#   ("nPar() called before being set");
# * applycal on a shadow of the user's MS: the process aborts (casacore ArrayError, minMax of an
#   empty array) — and applycal writes FLAG and adds a column, so it must never see the user's
#   files anyway.

UVCONT_TABLE_KIND = 'A Mueller'

# pairs: {(field id, spw id)} the table has solutions for; field_names: {field id: name};
# spw_names: {spw id: name}, all as the MS the table was solved on numbers them (its subtables are
# copies of that MS's; an 'A' table's SPECTRAL_WINDOW has one channel per spw, so only names
# compare); ms_name: that MS's name (keyword MSName).
UvcontCoverage = collections.namedtuple('UvcontCoverage', 'table pairs field_names spw_names ms_name')
# One MS: what to split out of it (field, spw, taql for mstransform) and which table to apply to
# which fields; left_out: (field name, spw id) with data but no solution.
UvcontSelection = collections.namedtuple('UvcontSelection',
                                         'field spw taql rows_where applications left_out description')
UvcontApplication = collections.namedtuple('UvcontApplication', 'table field_ids')


def uvcont_tables_by_ms(targets, tables):
    """({ms: [its tables]}, [tables named after no MS]).

    A table's name starts with the name of the MS it was solved on: uid*_targets.ms, or
    uid*_target.ms before Cycle 9 (that MS became uid*_targets.ms), so the execution block decides.
    """
    by_ms = collections.OrderedDict((Path(ms), []) for ms in targets)
    orphans = []
    for table in sorted(Path(t) for t in tables):
        owners = [ms for ms in by_ms if table.name.startswith(eb_name(ms) + '_target')
                  or table.name.startswith(eb_name(ms) + '.')]
        if owners:
            by_ms[owners[0]].append(table)
        else:
            orphans.append(table)
    return by_ms, orphans


def contsub_apply_uvcont_tables(plan, state, step, casa, tables):
    """Subtract the continuum with the delivered uvcont tables into measurement_sets/uid*_targets_line.ms.

    Every table is checked against its MS before anything is written; the user's MSes are only
    read (mstransform), applycal writes into a scratch MS in working_reprocess/ only.
    """
    delivery = plan.delivery
    targets = [Path(ms) for ms in step.inputs]
    by_ms, orphans = uvcont_tables_by_ms(targets, tables)
    if orphans:
        raise ReprocessingError(
            'caltables/%s is named after none of the measurement sets (%s) — a continuum table must start with '
            'the name of its MS; rename or remove it' % (orphans[0].name, ', '.join(ms.name for ms in targets)))
    without = [ms.name for ms, found in by_ms.items() if not found]
    if without:
        raise ReprocessingError(
            'caltables/ has no continuum table (*uvcont.tbl) for %s — remove the other tables from caltables/ '
            'to fit every MS from cont.dat instead' % ', '.join(without))
    selections = collections.OrderedDict()
    for ms, ms_tables in by_ms.items():
        layout = read_ms_layout(casa, ms)
        coverages = [read_uvcont_coverage(casa, table) for table in ms_tables]
        for coverage in coverages:
            check_uvcont_coverage(coverage, layout)
        selections[ms] = plan_uvcont_selection(layout, coverages, dd_ids=_dd_ids_by_spw(casa, ms))
    scratch_dir = state.staging_dir / step.name
    state.will_create(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for ms, selection in selections.items():
        final = _line_name(ms)
        partial = state.partial_name(final)
        scratch = scratch_dir / (ms.name + '.scratch')
        state.will_create(partial)
        state.will_create(scratch)
        say('  %s: applying %s' % (ms.name, selection.description))
        for field_name, spw_id in selection.left_out:
            say('    field %s spw %d has no continuum solution: left out of the line MS' % (field_name, spw_id))
        apply_uvcont_tables(casa, ms=ms, selection=selection, scratch=scratch, output=partial)
        _remove_tree(scratch)
        state.created_for_good(scratch)
        _check_uvcont_output(casa, ms=ms, selection=selection, output=partial)
        outputs.append((partial, final))
    publish_line_outputs(state, outputs, replace=plan.options.overwrite_line)
    _remove_tree(scratch_dir)
    state.created_for_good(scratch_dir)
    for _partial, final in outputs:
        say('  wrote %s (%s)' % (_relative(final, delivery.root), human_bytes(directory_bytes(final))))
    return {'outputs': [str(final) for _partial, final in outputs], 'method': 'uvcont tables',
            'tables': [str(table) for found in by_ms.values() for table in found],
            'left_out': dict((ms.name, [list(pair) for pair in selection.left_out])
                             for ms, selection in selections.items() if selection.left_out)}


def read_uvcont_coverage(casa, table_path):
    """What a continuum table has solutions for; a table of another kind is an error."""
    table = casa.casatools.table()
    display = 'caltables/%s' % Path(table_path).name
    try:
        table.open(str(table_path))
    except Exception as error:  # CASA raises plain RuntimeErrors
        raise ReprocessingError('cannot open %s as a calibration table (%s) — restore it from the delivery, or '
                                'remove it to fit the continuum from cont.dat' % (display, _one_line(error)))
    try:
        keywords = table.getkeywords()
        kind = keywords.get('VisCal') or table.info().get('subType', '')
        if kind != UVCONT_TABLE_KIND:
            raise ReprocessingError('%s is a "%s" calibration table, not a continuum fit ("%s") — remove it from '
                                    'caltables/ (only *uvcont.tbl continuum tables belong there)'
                                    % (display, kind or 'unknown', UVCONT_TABLE_KIND))
        rows = table.query('', columns='DISTINCT FIELD_ID, SPECTRAL_WINDOW_ID')
        try:
            pairs = set(zip((int(v) for v in rows.getcol('FIELD_ID')),
                            (int(v) for v in rows.getcol('SPECTRAL_WINDOW_ID')))) if rows.nrows() else set()
        finally:
            rows.close()
    finally:
        table.close()
    table.open(str(Path(table_path) / 'FIELD'))
    try:
        field_names = dict(enumerate(str(name) for name in table.getcol('NAME')))
    finally:
        table.close()
    table.open(str(Path(table_path) / 'SPECTRAL_WINDOW'))
    try:
        spw_names = dict(enumerate(str(name) for name in table.getcol('NAME')))
    finally:
        table.close()
    if not pairs:
        raise ReprocessingError('%s holds no solutions — remove it from caltables/ to fit the continuum from '
                                'cont.dat instead' % display)
    return UvcontCoverage(Path(table_path), pairs, field_names, spw_names,
                          os.path.basename(str(keywords.get('MSName', ''))))


def check_uvcont_coverage(coverage, layout):
    """Raise unless every solution of the table is for a field and spw of this MS, as it numbers them."""
    display = 'caltables/%s' % coverage.table.name
    remedy = ('the table was made for another measurement set or numbering — remove it from caltables/ to fit '
              'the continuum from cont.dat instead')
    if coverage.ms_name and eb_name(coverage.ms_name) != eb_name(layout.name):
        raise ReprocessingError('%s was solved on %s, not on %s — %s'
                                % (display, coverage.ms_name, layout.name, remedy))
    field_name_of = dict((field_id, name) for name, ids in layout.fields.items() for field_id in ids)
    for field_id in sorted({field for field, _spw in coverage.pairs}):
        expected = coverage.field_names.get(field_id, '?')
        if field_name_of.get(field_id) != expected:
            found = '"%s"' % field_name_of[field_id] if field_id in field_name_of else 'a field without data'
            raise ReprocessingError('%s has solutions for field %d "%s", but field %d of %s is %s — %s'
                                    % (display, field_id, expected, field_id, layout.name, found, remedy))
    for spw_id in sorted({spw for _field, spw in coverage.pairs}):
        expected = coverage.spw_names.get(spw_id, '?')
        spw = layout.spws.get(spw_id)
        if spw is None or spw.name != expected:
            found = spw.name if spw else 'a spw without data'
            raise ReprocessingError('%s has solutions for spw %d (%s), but spw %d of %s is %s — %s'
                                    % (display, spw_id, expected, spw_id, layout.name, found, remedy))
    no_data = sorted(coverage.pairs - layout.pairs)
    if no_data:
        field_id, spw_id = no_data[0]
        raise ReprocessingError('%s has solutions for field %s in spw %d, which %s has no data for — %s'
                                % (display, coverage.field_names.get(field_id, field_id), spw_id, layout.name,
                                   remedy))


def plan_uvcont_selection(layout, coverages, *, dd_ids):
    """What to split out of one MS and which table calibrates which fields (pure: no CASA).

    dd_ids: {spw id: [data description ids]} of the MS.  A field belongs to one table only: two
    tables for the same field would be applied one after the other.
    """
    owner = {}
    for coverage in coverages:
        for field_id in sorted({field for field, _spw in coverage.pairs}):
            if field_id in owner:
                raise ReprocessingError(
                    'caltables/%s and caltables/%s both have solutions for field %d of %s — keep only one of them'
                    % (owner[field_id].name, coverage.table.name, field_id, layout.name))
            owner[field_id] = coverage.table
    covered = set()
    for coverage in coverages:
        covered |= coverage.pairs
    fields = sorted({field for field, _spw in covered})
    spws = sorted({spw for _field, spw in covered})
    rectangle = {(field, spw) for field in fields for spw in spws} & layout.pairs
    rows_where = ' OR '.join(
        '(FIELD_ID==%d AND DATA_DESC_ID IN [%s])' % (field, ','.join(str(dd) for spw in spws if (field, spw) in covered
                                                                     for dd in dd_ids.get(spw, [])))
        for field in fields)
    applications = [UvcontApplication(coverage.table, sorted({field for field, _spw in coverage.pairs}))
                    for coverage in coverages]
    field_name_of = dict((field_id, name) for name, ids in layout.fields.items() for field_id in ids)
    left_out = sorted({(field_name_of.get(field, str(field)), spw) for field, spw in layout.pairs - covered})
    description = '; '.join(
        'caltables/%s to %s' % (application.table.name,
                                ', '.join(sorted({field_name_of.get(f, str(f)) for f in application.field_ids})))
        for application in applications)
    return UvcontSelection(field=','.join(str(f) for f in fields), spw=','.join(str(s) for s in spws),
                           taql='' if rectangle == covered else rows_where, rows_where=rows_where,
                           applications=applications, left_out=left_out,
                           description='%s (spws %s)' % (description, ', '.join(str(s) for s in spws)))


def _dd_ids_by_spw(casa, ms):
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        spw_of_dd = [int(spw) for spw in table.getcol('SPECTRAL_WINDOW_ID')] if table.nrows() else []
    finally:
        table.close()
    dd_ids = collections.defaultdict(list)
    for dd_id, spw_id in enumerate(spw_of_dd):
        dd_ids[spw_id].append(dd_id)
    return dict(dd_ids)


def apply_uvcont_tables(casa, *, ms, selection, scratch, output):
    """Split the covered data of ms into scratch, apply the tables there, split CORRECTED into output.

    Arguments as the Cycle 9 pipeline applied these tables (hif_uvcontsub): linear interpolation in
    time, calwt=False, applymode 'calflag', so that data whose solution is flagged are flagged
    rather than passed through with their continuum.  reindex=False keeps the spw and field ids.
    """
    tasks = casa.casatasks

    def run(task_name, **arguments):
        try:
            getattr(tasks, task_name)(**arguments)
        except Exception as error:  # CASA tasks raise plain RuntimeErrors
            raise ReprocessingError('%s failed on %s (%s) — see the CASA log; your MS was not changed'
                                    % (task_name, ms.name, _one_line(error)))

    run('mstransform', vis=str(ms), outputvis=str(scratch), datacolumn='data', field=selection.field,
        spw=selection.spw, taql=selection.taql, reindex=False)
    if not (scratch / 'table.dat').exists():
        raise ReprocessingError('mstransform selected no data of %s for the continuum tables — see the CASA log'
                                % ms.name)
    for application in selection.applications:
        with _native_stdout_silenced():  # "The following MS spws have no corresponding cal spws": the empty ones
            run('applycal', vis=str(scratch), field=','.join(str(f) for f in application.field_ids),
                gaintable=[str(application.table)], interp=[''], calwt=[False], applymode='calflag',
                flagbackup=False)
    run('mstransform', vis=str(scratch), outputvis=str(output), datacolumn='corrected', reindex=False)
    for name in ('SpectralWindow.xml', 'DataDescription.xml'):
        # The pipeline copies these ASDM files into its line MSes; later pipeline stages read them.
        if (ms / name).is_file():
            shutil.copyfile(str(ms / name), str(output / name))


@contextlib.contextmanager
def _native_stdout_silenced():
    """Keep what CASA's C++ prints on file descriptor 1 off the user's terminal (its log has it all)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _check_uvcont_output(casa, *, ms, selection, output):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        chosen = table.query(selection.rows_where)
        try:
            expected = chosen.nrows()
        finally:
            chosen.close()
    finally:
        table.close()
    table.open(str(output))
    try:
        written, columns = table.nrows(), table.colnames()
    finally:
        table.close()
    if written != expected:
        raise ReprocessingError('the line MS made from %s has %d rows where %d were selected — it was not '
                                'published; see the CASA log' % (ms.name, written, expected))
    if 'CORRECTED_DATA' in columns or 'DATA' not in columns:
        raise ReprocessingError('the line MS made from %s has the columns %s instead of DATA alone — it was not '
                                'published; see the CASA log' % (ms.name, ', '.join(columns)))


def publish_line_outputs(state, outputs, *, replace):
    """Give complete line MSes their final names: [(partial, final)].

    With replace (--overwrite-line), an existing line MS is renamed aside just before its new one
    is published and removed once all are; if publishing fails, the old ones are put back.
    """
    retired = []
    try:
        for partial, final in outputs:
            if final.exists() or final.is_symlink():
                if not replace:
                    raise ReprocessingError('%s already exists — move it away, or add --overwrite-line to replace it'
                                            % final)
                retired.append((state.set_aside(final), final))
                pause_point('line-set-aside', state)
            state.publish(partial, final)
    except BaseException:
        for aside, final in retired:
            state.put_back(aside, final)
        raise
    for aside, _final in retired:
        state.discard_aside(aside)


def _move_tree(source, destination):
    """Rename, or copy and remove when source and destination are on different file systems."""
    try:
        os.rename(str(source), str(destination))
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise ReprocessingError('cannot move %s to %s (%s) — check the permissions of measurement_sets/'
                                    % (source, destination, error.strerror))
        shutil.copytree(str(source), str(destination), symlinks=False)
        _remove_tree(source)


# -- --contsub: the ALMA pipeline, the way each release needs it -------------------------------------
#
# Facts from the pipeline's source (hif/tasks/uvcontsub, h/tasks/importdata, h/cli):
# * PL2022 (Cycle 9, CASA 6.4): hif_uvcontfit writes uvcont tables from cont.dat in the working
#   directory; hif_uvcontsub applies them into CORRECTED of the MS (applycal, FLAG too), splits it
#   into *_targets_line.ms and removes the column — it writes into the MS it is given.
# * PL2023+: no hif_uvcontfit; hif_uvcontsub runs CASA uvcontsub (read-only on its input) with
#   fitspec from cont.dat in the working directory into *_targets_line.ms, replacing one that is there.
#   `parallel` appears in PL2024; `pipelinemode` is dropped with a warning from PL2023;
#   `dryrun`/`acceptresults` are rejected (TypeError) from PL2024.
# * hifa_importdata copies an MS into the working directory unless it is already there (or
#   nocopy=True); it writes HISTORY (data types), FIELD and SOURCE (J2000 -> ICRS) of the MS it imports.

PIPELINE_MISSING = ('the ALMA pipeline is not available in this Python — use --contsub_fast, or run with '
                    'casa --pipeline -c %s ...' % SCRIPT_NAME)
PIPELINE_TASKS = ('h_init', 'hifa_importdata', 'hif_uvcontfit', 'hif_uvcontsub', 'h_save')
STAGED_COPY_MARKER = '.reprocessing-staged-copy'
# The data type of DATA in a *_targets.ms, for an MS whose HISTORY does not record it.
TARGETS_DATA_TYPE = 'regcal_contline_science'

# calls: [(task name, keyword arguments)] in order; h_save is called after them, even on failure.
# copies_ms: the flow writes into the MS it imports, so the pipeline gets a copy, not a shadow.
PipelineContsub = collections.namedtuple('PipelineContsub', 'release flow calls copies_ms notes')


def pipeline_is_installed():
    import importlib.util
    try:
        return importlib.util.find_spec('pipeline') is not None
    except (ImportError, ValueError):
        return False


def require_pipeline_for_contsub():
    """Plan-time check of --contsub: the pipeline must be importable (found without importing it)."""
    if not pipeline_is_installed():
        raise ReprocessingError(PIPELINE_MISSING)


def pipeline_release_name(revision):
    """'PL2023' for '2023.1.1.9' (the pipeline's revision string); 'unknown release' otherwise."""
    import re
    match = re.match(r'^\D*(20\d\d)\.', str(revision or ''))
    return 'PL%s' % match.group(1) if match else 'unknown release'


def pipeline_contsub_calls(*, revision, task_parameters, vis, mpi_size, datatypes_recorded):
    """The pipeline tasks --contsub calls, and their arguments, for the release at hand (pure).

    task_parameters: {task name: [its parameter names], or None when they cannot be read}; a task
    absent from it does not exist in this release.  The flow follows which tasks exist, not the
    version number.  An argument is passed only when the task declares it, and only the ones that
    are needed: every release has its own defaults for the rest.
    """
    needed = ('h_init', 'hifa_importdata', 'hif_uvcontsub', 'h_save')
    missing = [name for name in needed if name not in task_parameters]
    release = pipeline_release_name(revision)
    if missing:
        raise ReprocessingError('the pipeline %s (%s) has no %s — use --contsub_fast'
                                % (revision, release, ', '.join(missing)))

    def accepts(task, parameter):
        parameters = task_parameters.get(task)
        return parameters is not None and parameter in parameters

    notes = []
    importdata = {'vis': list(vis)}
    if accepts('hifa_importdata', 'dbservice'):
        importdata['dbservice'] = False
    if not datatypes_recorded and accepts('hifa_importdata', 'datacolumns'):
        importdata['datacolumns'] = {'data': TARGETS_DATA_TYPE}
        notes.append('the MSes do not record their data type: importing DATA as %s' % TARGETS_DATA_TYPE)
    uvcontsub = {}
    if mpi_size > 1:
        if accepts('hif_uvcontsub', 'parallel'):
            uvcontsub['parallel'] = True
        else:
            notes.append('hif_uvcontsub of %s has no "parallel" option: it runs on this process only' % release)
    calls = [('h_init', {}), ('hifa_importdata', importdata)]
    fits_first = 'hif_uvcontfit' in task_parameters
    if fits_first:
        calls.append(('hif_uvcontfit', {}))
        flow = 'hif_uvcontfit then hif_uvcontsub (fit tables from cont.dat, then apply them; Cycle 9 style)'
    else:
        flow = 'hif_uvcontsub (CASA uvcontsub with the cont.dat ranges)'
    calls.append(('hif_uvcontsub', uvcontsub))
    return PipelineContsub(release, flow, calls, fits_first, notes)


def pipeline_line_name(ms_name):
    """The name hif_uvcontsub gives the line MS of ms_name (every release)."""
    if '_targets' in ms_name:
        return ms_name.replace('_targets', '_targets_line')
    return ms_name[:-len('.ms')] + '_line.ms' if ms_name.endswith('.ms') else ms_name + '_line.ms'


def load_pipeline_tasks(names=PIPELINE_TASKS, *, work_dir=None):
    """(revision, {name: task}) of the installed pipeline; tasks it does not have are left out.

    The pipeline opens its casacalls-<host>.txt in the current directory when it is first
    imported, so it is imported from work_dir (working_reprocess/), not the user's folder.
    """
    previous_dir = os.getcwd()
    try:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            os.chdir(str(work_dir))
        import pipeline
        tasks = {}
        for name in names:
            task = _find_pipeline_task(name)
            if task is not None:
                tasks[name] = task
    except ReprocessingError:
        raise
    except Exception as error:  # the pipeline's own import can fail in many ways
        raise ReprocessingError('%s (import pipeline: %s)' % (PIPELINE_MISSING, _one_line(error)))
    finally:
        os.chdir(previous_dir)
    quiet_pipeline_terminal_log()
    revision = str(getattr(pipeline, 'revision', None) or getattr(pipeline, '__version__', 'unknown'))
    return revision, tasks


def quiet_pipeline_terminal_log():
    """Show only the pipeline's warnings and errors on the terminal.

    The pipeline logs every INFO line to stdout (thousands per run) as well as to the CASA
    log; the CASA log keeps them all, the terminal keeps the script's own progress readable.
    """
    import logging
    module = sys.modules.get('pipeline.infrastructure.logging')
    for logger in getattr(module, '_loggers', []):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler or type(handler).__name__ == 'ColorizingStreamHandler':
                handler.setLevel(max(handler.level, logging.WARNING))


def _find_pipeline_task(name):
    """casa --pipeline puts the tasks in the script's namespace; PL2022 keeps its CASA task objects
    in pipeline.X.cli.gotasks, PL2023+ its functions in pipeline.X.cli."""
    import importlib
    task = globals().get(name)
    if callable(task):
        return task
    package = name.split('_')[0]
    for module_name in ('pipeline.%s.cli.gotasks' % package, 'pipeline.%s.cli' % package):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        task = getattr(module, name, None)
        if callable(task):
            return task
    return None


def task_parameter_names(task):
    """The keyword parameters a task declares, or None when its signature cannot be read."""
    import inspect
    try:
        parameters = inspect.signature(task).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names or None


def ms_records_pipeline_datatypes(casa, ms):
    """True when the MS's HISTORY holds the pipeline's data type record (PL2023+ MSes do)."""
    table = casa.casatools.table()
    try:
        table.open(str(Path(ms) / 'HISTORY'))
    except Exception:  # no HISTORY subtable
        return False
    try:
        messages = table.getcol('MESSAGE') if table.nrows() else []
    finally:
        table.close()
    return any('data_type_per_column' in str(message) for message in messages)


def stage_for_pipeline_contsub(state, targets, work_dir, *, copy):
    """{ms: its stand-in in work_dir}, named like the MS so that the pipeline imports it in place.

    A stand-in is a shadow whose subtables are all private (importdata writes HISTORY, FIELD and
    SOURCE; copying the small others too costs little and leaves only the main table's data files
    shared, which uvcontsub only reads), or, when the pipeline writes into the MS itself (copy=True,
    PL2022), a full copy.  Leftovers of this tool are replaced; anything else there stops the run
    before anything is written.
    """
    work_dir = Path(work_dir)
    for ms in targets:
        _check_pipeline_slot(work_dir / ms.name, ours=True)
        _check_pipeline_slot(work_dir / pipeline_line_name(ms.name), ours=False)
    stranded = find_user_measurement_sets(work_dir) if work_dir.is_dir() else []
    if stranded:
        raise ReprocessingError('%s holds measurement sets this tool did not make: %s — move them back to '
                                'measurement_sets/ first' % (work_dir, ', '.join(p.name for p in stranded)))
    work_dir.mkdir(parents=True, exist_ok=True)
    staged = collections.OrderedDict()
    for ms in targets:
        stand_in = work_dir / ms.name
        if stand_in.exists() or stand_in.is_symlink():
            _remove_tree(stand_in)
        state.will_create(stand_in)
        if copy:
            shutil.copytree(str(ms), str(stand_in), symlinks=False)
            (stand_in / STAGED_COPY_MARKER).write_text(str(Path(ms).resolve()))
        else:
            make_shadow(ms, stand_in, private=tuple(entry.name for entry in Path(ms).iterdir() if entry.is_dir()))
        staged[ms] = stand_in
    return staged


def _check_pipeline_slot(path, *, ours):
    if not (path.exists() or path.is_symlink()):
        return
    if ours and path.is_dir() and not path.is_symlink() and (
            (path / SHADOW_MARKER).exists() or (path / STAGED_COPY_MARKER).exists()):
        return  # a stand-in left by an earlier run of this tool
    raise ReprocessingError('%s/%s exists and the pipeline would %s it — move it elsewhere (or run --cleanup if '
                            'it is a leftover of an earlier run)'
                            % (WORK_DIR_NAME, path.name, 'import' if ours else 'replace'))


def place_contdat_for_pipeline(delivery):
    """The pipeline reads cont.dat in its working directory: copy caltables/cont.dat there."""
    destination = delivery.work_dir / 'cont.dat'
    source_text = delivery.contdat.read_bytes()
    if destination.is_file() and destination.read_bytes() != source_text:
        kept = destination.with_name('cont.dat.before-%s' % datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
        os.rename(str(destination), str(kept))
        say('  %s/cont.dat differed from caltables/cont.dat: kept as %s/%s' % (WORK_DIR_NAME, WORK_DIR_NAME,
                                                                                 kept.name))
    shutil.copyfile(str(delivery.contdat), str(destination))


@contextlib.contextmanager
def working_directory(path):
    """chdir into path for the pipeline, and always back."""
    previous = os.getcwd()
    change_directory(path)  # the MPI servers follow, if any
    try:
        yield Path(path)
    finally:
        change_directory(previous)


def _run_pipeline_calls(tasks, calls, *, work_dir, logfile):
    with working_directory(work_dir):
        try:
            for name, arguments in calls:
                say('  %s(%s)' % (name, ', '.join('%s=%r' % item for item in sorted(arguments.items()))))
                try:
                    tasks[name](**arguments)
                except (ReprocessingError, KeyboardInterrupt):
                    raise
                except Exception as error:  # whatever the pipeline raises
                    raise ReprocessingError('the pipeline task %s failed (%s) — see its weblog in %s/pipeline-*/ '
                                            'and the CASA log %s' % (name, _root_cause(error), WORK_DIR_NAME, logfile))
        finally:
            try:
                tasks['h_save']()
            except Exception as error:  # saving the context must not hide the real failure
                warn('h_save failed (%s): the pipeline context was not saved' % _root_cause(error))


def _root_cause(error):
    """The last line of an error's text: the pipeline wraps the real error, traceback and all."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip(')')]
    return _one_line(lines[-1] if lines else repr(error))


# ---------------------------------------------------------------------------
# Imaging: --image (pipeline, or CASA tclean without the pipeline)
# ---------------------------------------------------------------------------
#
# Two engines make the same four kinds of image (specmodes mfs, cont, cube, repBW):
# the ALMA pipeline (h_init .. hif_makeimages .. h_save), and, when the pipeline is absent,
# tclean with the pipeline's heuristics re-implemented here (cell, imsize, mosaics, robust,
# automasking, pbcor).  Either way the products are recorded as they are made (never globbed),
# named like the pipeline's, and published with their archive FITS names into the images folder.

# --- What the user asks for: imaging options, validated before anything runs ----

SPECMODE_ORDER = ('mfs', 'cont', 'cube', 'repBW')
IMAGING_ENGINES = ('auto', 'pipeline', 'casa')
_NUMBER = r'[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?'
_ANGLE_UNITS = ('arcsec', 'arcmin', 'deg', 'rad', 'mas')
_UV_UNITS = ('lambda', 'klambda', 'Mlambda', 'm', 'km')


def parse_specmodes(value):
    """'mfs,cube' or ['mfs', 'cube'] -> the specmodes in the order they are made."""
    items = value.split(',') if isinstance(value, str) else list(value or [])
    wanted = set()
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        canonical = {mode.lower(): mode for mode in SPECMODE_ORDER}.get(item.lower())
        if canonical is None:
            raise ValueError('unknown specmode "%s" — choose from %s' % (item, ','.join(SPECMODE_ORDER)))
        wanted.add(canonical)
    if not wanted:
        raise ValueError('no specmode given — choose from %s' % ','.join(SPECMODE_ORDER))
    return [mode for mode in SPECMODE_ORDER if mode in wanted]


def parse_robust(value):
    try:
        robust = float(value)
    except (TypeError, ValueError):
        raise ValueError('robust must be a number between -2 and 2, got "%s"' % (value,))
    if not -2.0 <= robust <= 2.0:
        raise ValueError('robust must be between -2 and 2 (Briggs weighting), got %s' % (value,))
    return robust


def parse_uvtaper(value):
    """'0.5arcsec' or '0.5arcsec,0.3arcsec,45deg' or '200klambda' -> a list for tclean/hif_makeimlist."""
    import re
    items = value.split(',') if isinstance(value, str) else list(value or [])
    items = [str(i).strip() for i in items if str(i).strip()]
    if len(items) > 3:
        raise ValueError('uvtaper takes at most 3 values (major, minor, position angle), got %d' % len(items))
    units = '|'.join(_ANGLE_UNITS + _UV_UNITS)
    for item in items:
        if not re.match(r'^%s(%s)$' % (_NUMBER, units), item):
            raise ValueError('uvtaper "%s" is not a size with a unit — e.g. 0.5arcsec or 200klambda' % item)
    return items


def parse_uvrange(value):
    """CASA uv-range syntax: '>20klambda', '0~300m', '<50klambda', comma-separated."""
    import re
    text = str(value).strip()
    units = '|'.join(_UV_UNITS)
    single = r'\s*(?:[<>]\s*%s|%s\s*~\s*%s|%s)\s*(?:%s)?\s*' % (_NUMBER, _NUMBER, _NUMBER, _NUMBER, units)
    if not text or not all(re.match('^%s$' % single, part) for part in text.split(',')):
        raise ValueError('uvrange "%s" is not CASA uv-range syntax — e.g. ">20klambda" or "0~300m"' % text)
    return text


def parse_field(value):
    text = str(value).strip()
    if not text or any(not name.strip() for name in text.split(',')):
        raise ValueError('field "%s" must be one or more field names separated by commas' % text)
    return text


def parse_spw(value):
    """'25,27' (virtual spw ids, as in the first execution block) -> '25,27'."""
    import re
    text = ','.join(str(v).strip() for v in value) if isinstance(value, (list, tuple)) else str(value)
    text = text.replace(' ', '')
    if not re.match(r'^[0-9]+(,[0-9]+)*$', text):
        raise ValueError('spw "%s" must be spw ids separated by commas — e.g. 25,27' % text)
    return text


def parse_phasecenter(value):
    """'ICRS 16:32:22.6 -24.28.33', 'J2000 248.1deg -24.5deg', a field id, or 'TRACKFIELD'."""
    text = ' '.join(str(value).split())
    frames = ('ICRS', 'J2000', 'B1950', 'GALACTIC', 'ECLIPTIC', 'AZEL')
    words = text.split(' ')
    if text.isdigit() or text == 'TRACKFIELD':
        return text
    if len(words) == 3 and words[0].upper() in frames:
        return text
    raise ValueError('phasecenter "%s" must look like "ICRS 16:32:22.6 -24.28.33", a field id, or '
                     'TRACKFIELD' % text)


def parse_imsize(value):
    """[n, n], n, 'n,m' or '0.3pb' (image edge at that primary-beam level)."""
    import re
    if isinstance(value, str):
        text = value.strip().strip('[]').replace(' ', '')
        match = re.match(r'^(%s)pb$' % _NUMBER, text)
        if match:
            level = float(match.group(1))
            if not 0.0 < level < 1.0:
                raise ValueError('imsize "%s": the primary-beam level must be between 0 and 1' % value)
            return text
        items = [t for t in text.split(',') if t]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value or [])
    try:
        sizes = [int(str(item)) for item in items]
    except ValueError:
        raise ValueError('imsize "%s" must be pixels ([512,512] or 512) or a primary-beam level (0.3pb)' % (value,))
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError('imsize "%s" must be one or two positive pixel counts, or e.g. 0.3pb' % (value,))
    return sizes


def parse_cell(value):
    """'0.5arcsec' / ['0.5arcsec'] / '0.5arcsec,0.4arcsec' or '3ppb' (pixels per synthesized beam)."""
    import re
    if isinstance(value, str):
        text = value.strip().strip('[]').replace(' ', '').replace("'", '')
        match = re.match(r'^(%s)ppb$' % _NUMBER, text)
        if match:
            if float(match.group(1)) <= 0:
                raise ValueError('cell "%s": pixels per beam must be positive' % value)
            return text
        items = [t for t in text.split(',') if t]
    else:
        items = [str(v).strip() for v in (value or [])]
    units = '|'.join(_ANGLE_UNITS)
    if not 1 <= len(items) <= 2 or not all(re.match(r'^%s(%s)$' % (_NUMBER, units), i) for i in items):
        raise ValueError('cell "%s" must be an angle (0.05arcsec) or pixels per beam (3ppb)' % (value,))
    if any(float(re.match(_NUMBER, i).group(0)) <= 0 for i in items):
        raise ValueError('cell "%s" must be positive' % (value,))
    return items


def parse_nbins(value):
    """Channel binning per spw, pipeline syntax: '25:2,27:4' or '*:2' (every spw)."""
    import re
    text = str(value).replace(' ', '')
    items = text.split(',')
    if not text or not all(re.match(r'^([0-9]+|\*):[0-9]+$', item) for item in items):
        raise ValueError('nbins "%s" must be SPW:N pairs separated by commas — e.g. 25:2,*:4' % value)
    if any(int(item.split(':')[1]) < 1 for item in items):
        raise ValueError('nbins "%s": the number of channels to bin must be at least 1' % value)
    return text


def nbins_for_spw(nbins, spw_id):
    """The binning nbins gives spw_id (1 when none applies)."""
    if not nbins:
        return 1
    pairs = dict(item.split(':') for item in nbins.split(','))
    return int(pairs.get(str(spw_id), pairs.get('*', 1)))


def parse_gigabytes(value):
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise ValueError('"%s" is not a size in GB' % (value,))
    if size <= 0:
        raise ValueError('a size limit must be positive (GB), got %s' % (value,))
    return size


def _argparse_type(parse):
    """argparse type= wrapper: a ValueError becomes argparse's one-line error."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))
    convert.__name__ = parse.__name__.replace('parse_', '')
    return convert


# (option, default from the user-editable block, parser)
IMAGING_PARAMETERS = (
    ('specmodes', 'SPECMODES', parse_specmodes),
    ('robust', 'ROBUST', parse_robust),
    ('uvtaper', 'UVTAPER', parse_uvtaper),
    ('uvrange', 'UVRANGE', parse_uvrange),
    ('field', 'FIELD', parse_field),
    ('spw', 'SPW', parse_spw),
    ('phasecenter', 'PHASECENTER', parse_phasecenter),
    ('imsize', 'IMSIZE', parse_imsize),
    ('cell', 'CELL', parse_cell),
    ('nbins', 'NBINS', parse_nbins),
    ('maxproductsize', 'MAXPRODUCTSIZE', parse_gigabytes),
    ('maxcubesize', 'MAXCUBESIZE', parse_gigabytes),
    ('maxcubelimit', 'MAXCUBELIMIT', parse_gigabytes),
)


def add_imaging_arguments(parser):
    group = parser.add_argument_group(
        'imaging (with --image; defaults: the block at the top of this script, else the heuristics)')
    add = group.add_argument
    add('--specmodes', type=_argparse_type(parse_specmodes), metavar='LIST',
        help='images to make, any of mfs,cont,cube,repBW (default: %s)' % ','.join(SPECMODES))
    add('--robust', type=_argparse_type(parse_robust), metavar='R', help='Briggs robust, -2..2 (default 0.5)')
    add('--uvtaper', type=_argparse_type(parse_uvtaper), metavar='TAPER', help='e.g. 0.5arcsec or 200klambda')
    add('--uvrange', type=_argparse_type(parse_uvrange), metavar='RANGE', help='e.g. ">20klambda"')
    add('--field', type=_argparse_type(parse_field), metavar='NAMES', help='science fields to image (names)')
    add('--spw', type=_argparse_type(parse_spw), metavar='IDS', help='spws to image, e.g. 25,27')
    add('--phasecenter', type=_argparse_type(parse_phasecenter), metavar='DIRECTION',
        help='image centre, e.g. "ICRS 16:32:22.6 -24.28.33"')
    add('--imsize', type=_argparse_type(parse_imsize), metavar='SIZE', help='pixels (512 or 512,512) or 0.3pb')
    add('--cell', type=_argparse_type(parse_cell), metavar='CELL', help='e.g. 0.05arcsec or 3ppb')
    add('--nbins', type=_argparse_type(parse_nbins), metavar='SPW:N,...',
        help='channel binning for cubes, e.g. 25:2,*:4')
    add('--no-mitigation', action='store_true', help='pipeline: skip hif_checkproductsize')
    add('--maxproductsize', type=_argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 500)')
    add('--maxcubesize', type=_argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 40)')
    add('--maxcubelimit', type=_argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 60)')
    add('--engine', choices=IMAGING_ENGINES, default=None,
        help='imaging engine: the ALMA pipeline, or CASA tclean without it '
             '(default auto: the pipeline when it can be imported)')
    add('--allow-cubes-with-continuum', action='store_true',
        help='make cube/repBW images from uid*_targets.ms when no continuum-subtracted line MS exists')
    add('--all-products', action='store_true',
        help='keep every image the engine made (psf, residual, model, iter0, ...), not only the final ones')
    add('--reuse-images', action='store_true',
        help='allow an existing, non-empty images directory (no product name may already be in it)')


ImagingRequest = collections.namedtuple(
    'ImagingRequest', 'specmodes robust uvtaper uvrange field spw phasecenter imsize cell nbins mitigation '
                      'maxproductsize maxcubesize maxcubelimit engine allow_cubes_with_continuum all_products '
                      'reuse_images')

IMAGING_FLAGS = ('no_mitigation', 'engine', 'allow_cubes_with_continuum', 'all_products', 'reuse_images')


def imaging_request(options):
    """The validated imaging parameters: the command line over the user-editable block.

    The block's values are validated too: a typo in the script is reported
    before anything runs, naming the variable to fix.
    """
    values = {}
    for name, variable, parse in IMAGING_PARAMETERS:
        given = getattr(options, name, None)
        if given is not None:
            values[name] = given
            continue
        default = globals()[variable]
        if default is None or default == [] or default == '':
            values[name] = None
            continue
        try:
            values[name] = parse(default)
        except ValueError as error:
            raise UsageError('%s = %r at the top of %s: %s' % (variable, default, SCRIPT_NAME, error))
    if values['specmodes'] is None:
        values['specmodes'] = list(SPECMODE_ORDER)
    if values['uvtaper'] == []:
        values['uvtaper'] = None
    return ImagingRequest(
        mitigation=bool(MITIGATION) and not getattr(options, 'no_mitigation', False),
        engine=getattr(options, 'engine', None) or 'auto',
        allow_cubes_with_continuum=bool(getattr(options, 'allow_cubes_with_continuum', False)),
        all_products=bool(getattr(options, 'all_products', False)),
        reuse_images=bool(getattr(options, 'reuse_images', False)),
        **values)


def check_imaging_options(options):
    """Imaging flags need --image; every imaging value is valid (flags and the script's block)."""
    if options.image is None:
        given = ['--' + name.replace('_', '-') for name, _variable, _parse in IMAGING_PARAMETERS
                 if getattr(options, name, None) is not None]
        given += ['--' + name.replace('_', '-') for name in IMAGING_FLAGS if getattr(options, name, None)]
        if given:
            raise UsageError('%s only apply to --image — add --image [DIR]' % ', '.join(given))
        return None
    request = imaging_request(options)
    if request.mitigation is False and any(getattr(request, n) is not None
                                           for n in ('maxproductsize', 'maxcubesize', 'maxcubelimit')):
        raise UsageError('--maxproductsize/--maxcubesize/--maxcubelimit are limits for the mitigation that '
                         '--no-mitigation switches off — use one or the other')
    return request


def choose_imaging_engine(requested):
    """'pipeline' or 'casa': auto takes the pipeline when this Python can import it."""
    if requested == 'casa':
        return 'casa'
    available = 'pipeline' in sys.modules or pipeline_is_installed()
    if requested == 'pipeline' and not available:
        raise ReprocessingError('--engine pipeline: the ALMA pipeline cannot be imported in this Python (%s) — '
                                'run inside "casa --pipeline", or use --engine casa' % sys.executable)
    return 'pipeline' if available else 'casa'


# --- Pipeline engine: the task calls (pure), then running them ------------------

PipelineCall = collections.namedtuple('PipelineCall', 'task arguments optional')
PipelineCall.__doc__ = """One pipeline task call.  `optional` names arguments that may be left out
when the release's task does not take them (parallel, dbservice); any other argument the release
does not take stops the run before the pipeline starts."""

REGCAL_CONTLINE = {'data': 'regcal_contline'}
SELFCAL_CONTLINE = {'data': 'regcal_contline', 'corrected': 'selfcal_contline'}
REGCAL_LINE = {'data': 'regcal_line'}
SELFCAL_LINE = {'data': 'regcal_line', 'corrected': 'selfcal_line'}


def pipeline_task_calls(request, *, targets, targets_line=(), selfcal=(), parallel=False):
    """The pipeline task calls that make the requested images, in order.

    targets/targets_line: paths of the MSes to import; selfcal: those of them
    with a CORRECTED column (Cycle 10+ self-calibrated data).  Every imaging
    parameter the user set reaches hif_makeimlist (robust=0.0 included); the
    ones not set are left out, so the pipeline's heuristics decide them.
    """
    def datacolumns(ms, regcal, selfcal_columns):
        return dict(selfcal_columns if str(ms) in {str(s) for s in selfcal} else regcal)

    calls = [PipelineCall('h_init', {}, ())]
    groups = [(list(targets), REGCAL_CONTLINE, SELFCAL_CONTLINE, ('dbservice', 'datacolumns')),
              (list(targets_line), REGCAL_LINE, SELFCAL_LINE, ('dbservice',))]
    for group, regcal, selfcal_columns, optional in groups:
        # one import per set of data columns: hifa_importdata applies one datacolumns to all its vis
        by_columns = collections.OrderedDict()
        for ms in group:
            key = json.dumps(datacolumns(ms, regcal, selfcal_columns), sort_keys=True)
            by_columns.setdefault(key, []).append(str(ms))
        for key, vis in by_columns.items():
            calls.append(PipelineCall('hifa_importdata', {'vis': vis, 'dbservice': False,
                                                          'datacolumns': json.loads(key)}, optional))
    parallel_argument = {'parallel': 'automatic'} if parallel else {}
    calls.append(PipelineCall('hifa_imageprecheck', dict(parallel_argument), ('parallel',)))
    if request.mitigation:
        limits = {name: getattr(request, name) for name in ('maxproductsize', 'maxcubesize', 'maxcubelimit')
                  if getattr(request, name) is not None}
        limits.update(parallel_argument)
        calls.append(PipelineCall('hif_checkproductsize', limits, ('parallel',)))
    for specmode in request.specmodes:
        arguments = {'specmode': specmode}
        arguments.update(makeimlist_arguments(request, specmode))
        arguments.update(parallel_argument)
        calls.append(PipelineCall('hif_makeimlist', arguments, ('parallel',)))
        calls.append(PipelineCall('hif_makeimages', dict(parallel_argument), ('parallel',)))
    return calls


def makeimlist_arguments(request, specmode):
    """hif_makeimlist's name for every parameter the user set (None: left to the pipeline)."""
    mapping = (('robust', 'robust'), ('uvtaper', 'uvtaper'), ('uvrange', 'uvrange'), ('field', 'field'),
               ('spw', 'spw'), ('phasecenter', 'phasecenter'), ('imsize', 'hm_imsize'), ('cell', 'hm_cell'))
    arguments = {}
    for ours, theirs in mapping:
        value = getattr(request, ours)
        if value is not None:
            arguments[theirs] = value
    if request.nbins is not None and specmode == 'cube':
        # repBW's binning is the representative bandwidth: the pipeline computes it
        arguments['nbins'] = request.nbins
    return arguments


_MISSING_ARGUMENT_HINTS = {
    'datacolumns': 'it cannot tell continuum-subtracted line MSes from the others: use --engine casa, or '
                   '--specmodes mfs,cont',
}


def fit_call_to_release(call, accepted):
    """call.arguments the release takes; optional ones it lacks are dropped, others stop the run."""
    if accepted is None:
        return dict(call.arguments)
    arguments = {}
    for name, value in call.arguments.items():
        if name in accepted:
            arguments[name] = value
        elif name not in call.optional:
            raise ReprocessingError('this pipeline release\'s %s does not take "%s" — %s' % (
                call.task, name, _MISSING_ARGUMENT_HINTS.get(name, 'leave that option out, or use --engine casa')))
    return arguments


def check_pipeline_release(calls, tasks):
    """Every call fits the release: checked before h_init, so nothing runs when one does not."""
    missing = sorted({call.task for call in calls if call.task not in tasks})
    if missing:
        raise ReprocessingError('this pipeline release has no %s — use a release from Cycle 10 or later, or '
                                '--engine casa' % ', '.join(missing))
    return [fit_call_to_release(call, task_parameter_names(tasks[call.task])) for call in calls]


def _is_casa_image(path):
    """A CASA image is a table directory whose table.info says Type = Image."""
    info = Path(path) / 'table.info'
    try:
        with open(str(info)) as handle:
            return 'Image' in handle.readline()
    except OSError:
        return False


def run_pipeline_imaging(plan, state, casa, request, *, inputs, work_dir):
    """h_init .. h_save in work_dir; returns the products each hif_makeimages made."""
    calls = pipeline_task_calls(request, targets=inputs['targets'], targets_line=inputs['targets_line'],
                                selfcal=inputs['selfcal'], parallel=mpi_info().size > 1)
    revision, tasks = load_pipeline_tasks(sorted({call.task for call in calls} | {'h_save'}),
                                          work_dir=plan.delivery.work_dir)
    arguments = check_pipeline_release(calls + [PipelineCall('h_save', {}, ())], tasks)[:-1]
    say('  pipeline %s (%s), working in %s' % (revision, pipeline_release_name(revision), work_dir))
    products = []
    previous_dir = os.getcwd()
    change_directory(work_dir)  # the pipeline writes its context, weblog and images where it runs (MPI servers too)
    initialised = False
    specmode = None
    try:
        for call, kwargs in zip(calls, arguments):
            say('  pipeline: %s(%s)' % (call.task, ', '.join('%s=%r' % item for item in sorted(kwargs.items())
                                                             if item[0] != 'vis')))
            if call.task == 'hif_makeimlist':
                specmode = kwargs['specmode']
            before = set(os.listdir('.'))
            try:
                tasks[call.task](**kwargs)
            except Exception as error:
                raise ReprocessingError('pipeline task %s failed (%s) — see the CASA log %s and the weblog '
                                        'in %s' % (call.task, _one_line(error), state.casa_logfile, work_dir))
            initialised = initialised or call.task == 'h_init'
            if call.task == 'hif_makeimages':
                made = sorted(name for name in set(os.listdir('.')) - before if _is_casa_image(name))
                products.extend(ImageProduct.from_working_name(work_dir / name, specmode=specmode)
                                for name in made)
                say('    %s: %d images' % (specmode, len(made)))
    finally:
        try:
            if initialised:
                tasks['h_save']()
        except Exception as error:  # never hide the error that brought us here
            warn('h_save failed (%s); the pipeline context in %s may be incomplete' % (_one_line(error), work_dir))
        finally:
            change_directory(previous_dir)
    return products


# --- Image products: named like the pipeline's, recorded as they are made -------

_IMAGE_NAME = (r'^(?P<ous>[^.]+)\.(?:s(?P<stage>[0-9]+)_(?P<substage>[0-9]+)\.)?(?P<target>.+?_[a-z]+)'
               r'\.spw(?P<spw>[0-9_]+)\.(?P<specmode>mfs|cont|cube|repBW)(?P<datatype>\.regcal|\.selfcal)?'
               r'\.(?P<stokes>[IQUV]+)\.iter(?P<iteration>[0-9]+)\.(?P<ext>.+)$')
# What a user gets by default, per image (its last iteration): the extensions kept as CASA images
# and exported to FITS.  Multi-term (mtmfs) images keep their tt0 terms and the spectral index.
FINAL_EXTENSIONS = ('image.pbcor', 'pb', 'mask', 'image.tt0.pbcor', 'pb.tt0', 'alpha', 'alpha.error')
UNKNOWN_OUS = 'oussid'  # what the pipeline calls an OUS it does not know


class ImageProduct(object):
    """One CASA image an engine made, parsed from its pipeline-style name."""

    def __init__(self, path, *, ous, stage, target, spw, specmode, datatype, stokes, iteration, ext):
        self.path = Path(path)
        self.ous, self.stage, self.target, self.spw = ous, stage, target, spw
        self.specmode, self.datatype, self.stokes = specmode, datatype, stokes
        self.iteration, self.ext = int(iteration), ext

    @classmethod
    def from_working_name(cls, path, *, specmode=None):
        import re
        match = re.match(_IMAGE_NAME, Path(path).name)
        if match is None:
            # not named like a pipeline image: kept (with --all-products) but never called final
            return cls(path, ous='', stage=None, target=Path(path).name, spw='', specmode=specmode or '',
                       datatype='', stokes='', iteration=-1, ext='')
        parts = match.groupdict()
        return cls(path, ous=parts['ous'], stage=parts['stage'], target=parts['target'], spw=parts['spw'],
                   specmode=parts['specmode'], datatype=parts['datatype'] or '', stokes=parts['stokes'],
                   iteration=parts['iteration'], ext=parts['ext'])

    @property
    def image_key(self):
        """Products of the same image (all iterations and extensions) share this key."""
        return (self.target, self.spw, self.specmode, self.datatype, self.stokes)

    @property
    def field(self):
        return self.target.rsplit('_', 1)[0]

    def archive_stem(self, ous=None):
        """<ous>.<field>_sci.spw<ids>.<specmode>[.regcal|.selfcal].I — the archive's name for this image."""
        if ous is None or self.ous not in ('', UNKNOWN_OUS):
            ous = self.ous
        return '%s.%s.spw%s.%s%s.%s' % (ous, self.target, self.spw, self.specmode, self.datatype, self.stokes)

    def fits_name(self, ous=None):
        """The archive's FITS name: the working name without stage and iteration, image.* shortened
        (image.pbcor -> pbcor, image.tt0.pbcor -> tt0.pbcor, image.pbcor.mom0_fc -> mom0_fc)."""
        suffix = self.ext
        for prefix in ('image.pbcor.', 'image.'):
            if suffix.startswith(prefix):
                suffix = suffix[len(prefix):]
                break
        return '%s.%s.fits' % (self.archive_stem(ous), suffix)


def final_products(products):
    """Of each image, the last iteration's pbcor image, pb and mask (+ tt0/alpha, moment maps)."""
    last = {}
    for product in products:
        if product.iteration >= 0:
            last[product.image_key] = max(last.get(product.image_key, -1), product.iteration)
    return [p for p in products
            if p.iteration >= 0 and p.iteration == last[p.image_key]
            and (p.ext in FINAL_EXTENSIONS or '.mom' in '.' + p.ext)]


def ous_from_path(root):
    """The member OUS uid from the delivery's path (member.uid___A001_X1_X2/...), else the pipeline's 'oussid'."""
    import re
    for part in reversed(Path(root).resolve().parts):
        match = re.match(r'^(?:member\.)?(uid___A00[0-9]_X[0-9a-fA-F]+_X[0-9a-fA-F]+)$', part)
        if match:
            return match.group(1)
    return UNKNOWN_OUS


def products_destinations(products, *, all_products, ous):
    """[(product, CASA image name, FITS name or None)] of what goes into the images folder."""
    finals = {id(p) for p in final_products(products)}
    placed = []
    for product in products:
        is_final = id(product) in finals
        if not (is_final or all_products):
            continue
        placed.append((product, product.path.name, product.fits_name(ous) if is_final else None))
    return placed


def check_no_collisions(images_dir, names):
    """A product name already in the images folder is an error (never overwritten)."""
    taken = sorted(name for name in names if (Path(images_dir) / name).exists())
    if taken:
        raise ReprocessingError('%s already holds %s — choose another --image DIR, or move them away'
                                % (images_dir, ', '.join(taken[:5]) + (' ...' if len(taken) > 5 else '')))


def check_reused_images_dir(images_dir, specmodes):
    """With --reuse-images: no image of a requested specmode may be in the folder already."""
    import re
    clashes = []
    if Path(images_dir).is_dir():
        for entry in sorted(os.listdir(str(images_dir))):
            for specmode in specmodes:
                if re.search(r'\.spw[0-9_]+\.%s[.]' % specmode, entry):
                    clashes.append(entry)
    if clashes:
        raise ReprocessingError('%s already holds %s images (%s) that this run would make again — choose '
                                'another --image DIR, or move them away'
                                % (images_dir, '/'.join(specmodes), ', '.join(clashes[:3])))


def publish_products(state, products, *, images_dir, all_products, ous, casa):
    """Move the products into images_dir (written under a partial name first) and export FITS."""
    images_dir = Path(images_dir)
    placed = products_destinations(products, all_products=all_products, ous=ous)
    names = [n for _p, casa_name, fits_name in placed for n in (casa_name, fits_name) if n]
    if len(set(names)) != len(names):
        raise ReprocessingError('two products would get the same name in %s — report this (names: %s)'
                                % (images_dir, ', '.join(sorted(n for n in names if names.count(n) > 1))))
    check_no_collisions(images_dir, names)
    partial = state.partial_name(images_dir)
    state.will_create(partial)
    try:
        partial.mkdir(parents=True)
    except OSError as error:
        raise ReprocessingError('cannot create %s (%s) — check that you may write in %s'
                                % (partial, error.strerror, partial.parent))
    for product, casa_name, fits_name in placed:
        if fits_name:
            export_fits(casa, product.path, partial / fits_name)
        _move(product.path, partial / casa_name)
        product.path = partial / casa_name
    if images_dir.is_dir() and not any(images_dir.iterdir()):
        images_dir.rmdir()  # the empty folder the plan allowed
    if not images_dir.exists():
        state.publish(partial, images_dir)
    else:  # --reuse-images: add ours, name by name, to what is there
        for name in names:
            _move(partial / name, images_dir / name)
        _remove_tree(partial)
        state.created_for_good(partial)
    for product, casa_name, _fits in placed:
        product.path = images_dir / casa_name
    return [(product, images_dir / casa_name, images_dir / fits_name if fits_name else None)
            for product, casa_name, fits_name in placed]


def _move(source, destination):
    if Path(destination).exists():
        raise ReprocessingError('%s already exists — not overwriting it; move it away and rerun' % destination)
    try:
        os.rename(str(source), str(destination))
    except OSError:
        try:  # another file system: copy, then remove
            if Path(source).is_dir():
                shutil.copytree(str(source), str(destination), symlinks=True)
            else:
                shutil.copy2(str(source), str(destination))
        except OSError as error:
            raise ReprocessingError('cannot copy %s to %s (%s) — check the free space and permissions'
                                    % (source, destination, error))
        _remove_tree(source)


def export_fits(casa, image, fits_path):
    casa.casatasks.exportfits(imagename=str(image), fitsimage=str(fits_path), dropdeg=False, overwrite=False)
    if not Path(fits_path).is_file():
        raise ReprocessingError('exportfits did not write %s — see the CASA log' % fits_path)


def describe_image(casa, pbcor, pb=None):
    """Beam, cell, shape, peak and rms of a primary-beam corrected image (rms where pb > 0.5)."""
    import math
    image = casa.casatools.image()
    image.open(str(pbcor))
    try:
        shape = [int(n) for n in image.shape()]
        coordinates = image.coordsys()
        increments = coordinates.increment(type='direction')['numeric']
        cell_arcsec = abs(float(increments[0])) * 180.0 / math.pi * 3600.0
        spectral_axis = coordinates.findcoordinate('spectral')
        nchan = shape[int(spectral_axis['pixel'][0])] if spectral_axis['return'] else 1
        coordinates.done()
        beam = image.restoringbeam()
        if 'major' not in beam:
            beam = image.commonbeam()
        mask = ''
        if pb is not None and Path(pb).exists():
            mask = '"%s" > 0.5' % str(pb).replace('"', '\\"')
        stats = image.statistics(robust=True, mask=mask, verbose=False, list=False)
    finally:
        image.close()
        image.done()
    quanta = casa.casatools.quanta()

    def arcsec(quantity):
        return quanta.convert(quantity, 'arcsec')['value']
    angle = beam.get('positionangle', beam.get('pa', {'value': 0.0}))  # commonbeam() calls it pa
    return {'beam_arcsec': (round(arcsec(beam['major']), 4), round(arcsec(beam['minor']), 4),
                            round(float(angle['value']), 1)),
            'cell_arcsec': round(cell_arcsec, 5), 'imsize': shape[:2], 'nchan': nchan,
            'peak_jy': float(stats['max'][0]) if len(stats.get('max', [])) else float('nan'),
            'rms_jy': 1.4826 * float(stats['medabsdevmed'][0]) if len(stats.get('medabsdevmed', []))
            else float('nan')}


def image_table(casa, placed, *, ous, thumbnails_dir=None):
    """One row per image: its final products and what they show (and a PNG of it in thumbnails_dir)."""
    rows = collections.OrderedDict()
    for product, casa_path, fits_path in placed:
        if product.iteration < 0:
            continue
        row = rows.setdefault(product.image_key, {'image': product.archive_stem(ous), 'specmode': product.specmode,
                                                  'field': product.field, 'spw': product.spw.replace('_', ','),
                                                  'bytes': 0, 'files': []})
        for path in (casa_path, fits_path):
            if path is not None:
                row['bytes'] += directory_bytes(path)
                row['files'].append(path.name)
        if product.ext in ('image.pbcor', 'image.tt0.pbcor'):
            row['pbcor'] = casa_path
        if product.ext in ('pb', 'pb.tt0'):
            row['pb'] = casa_path
    table = []
    for row in rows.values():
        pbcor, pb = row.pop('pbcor', None), row.pop('pb', None)
        if pbcor is not None:
            row.update(describe_image(casa, pbcor, pb))
            if thumbnails_dir is not None:
                row['thumbnail'] = _thumbnail_or_warning(casa, pbcor, Path(thumbnails_dir) / (row['image'] + '.png'))
        table.append(row)
    return table


def format_image_table(rows):
    header = ('image', 'specmode', 'field', 'spw', 'beam (")', 'cell (")', 'imsize x nchan', 'peak (Jy/beam)',
              'rms (Jy/beam)', 'size')
    lines = [header]
    for row in rows:
        beam = row.get('beam_arcsec')
        lines.append((row['image'], row['specmode'], row['field'], row['spw'],
                      '%.3g x %.3g' % beam[:2] if beam else '-',
                      '%.3g' % row['cell_arcsec'] if 'cell_arcsec' in row else '-',
                      '%dx%d x %d' % (row['imsize'][0], row['imsize'][1], row['nchan']) if 'imsize' in row else '-',
                      '%.4g' % row['peak_jy'] if 'peak_jy' in row else '-',
                      '%.3g' % row['rms_jy'] if 'rms_jy' in row else '-', human_bytes(row['bytes'])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return ['  ' + '  '.join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip()
            for line in lines]


# --- Pipeline-free engine: what the measurement sets hold -----------------------

SPEED_OF_LIGHT = 299792458.0
ARCSEC_PER_RADIAN = 180.0 * 3600.0 / 3.141592653589793
TARGET_INTENT_PREFIX = 'OBSERVE_TARGET'

ImagingPointing = collections.namedtuple('ImagingPointing', 'field_id ra dec frame')
ImagingSpw = collections.namedtuple('ImagingSpw', 'spw_id name nchan freqs width centre')
MsForImaging = collections.namedtuple(
    'MsForImaging', 'path name layout fields spws min_diameter baselines_m datacolumn science_goals')


def read_ms_for_imaging(casa, ms):
    """Science fields (with their pointings), science spws, dishes and baselines of one MS."""
    import numpy
    layout = read_ms_layout(casa, ms)
    msmd = casa.casatools.msmetadata()
    table = casa.casatools.table()
    msmd.open(str(ms))
    try:
        target_ids = set()
        for intent in msmd.intents():
            if intent.startswith(TARGET_INTENT_PREFIX):
                target_ids.update(int(i) for i in msmd.fieldsforintent(intent))
        if not target_ids:  # a targets MS whose STATE table lost its intents: all fields with data
            target_ids = {int(i) for i in msmd.fieldsforscans(msmd.scannumbers())}
        names = msmd.fieldnames()
        fields = collections.OrderedDict()
        for field_id in sorted(target_ids):
            direction = msmd.phasecenter(field_id)
            fields.setdefault(names[field_id], []).append(ImagingPointing(
                field_id, float(direction['m0']['value']), float(direction['m1']['value']), direction['refer']))
        spws = collections.OrderedDict()
        for spw_id, spw in layout.spws.items():  # the spws with data
            if spw.nchan <= 4:  # channel-averaged and WVR windows are not imaged
                continue
            freqs = [float(f) for f in msmd.chanfreqs(spw_id)]
            width = abs(float(msmd.chanwidths(spw_id)[0]))
            spws[spw_id] = ImagingSpw(spw_id, spw.name, spw.nchan, freqs, width, (min(freqs) + max(freqs)) / 2.0)
        present = numpy.array(msmd.baselines(), dtype=bool)
    finally:
        msmd.done()
    table.open(str(Path(ms) / 'ANTENNA'))
    try:
        positions = numpy.array(table.getcol('POSITION')).T
        diameters = numpy.array(table.getcol('DISH_DIAMETER'))
    finally:
        table.close()
    numpy.fill_diagonal(present, False)
    first, second = numpy.nonzero(numpy.triu(present))
    if len(first) == 0:
        raise ReprocessingError('%s has no cross-correlation data to image — check the MS' % ms)
    baselines = numpy.sqrt(((positions[first] - positions[second]) ** 2).sum(axis=1))
    used = sorted(set(first.tolist()) | set(second.tolist()))
    table.open(str(ms))
    try:
        datacolumn = 'corrected' if 'CORRECTED_DATA' in table.colnames() else 'data'
    finally:
        table.close()
    return MsForImaging(Path(ms), Path(ms).name, layout, fields, spws,
                        float(diameters[used].min()), sorted(float(b) for b in baselines), datacolumn,
                        read_science_goals(casa, ms))


def read_science_goals(casa, ms):
    """{'representativeFrequency': Hz, 'representativeBandwidth': Hz, ...} from ASDM_SBSUMMARY, or {}."""
    path = Path(ms) / 'ASDM_SBSUMMARY'
    if not path.is_dir():
        return {}
    table = casa.casatools.table()
    quanta = casa.casatools.quanta()
    goals = {}
    try:
        table.open(str(path))
        try:
            entries = table.getcol('scienceGoal')
        finally:
            table.close()
    except RuntimeError:
        return {}
    for entry in [str(e) for e in entries.flatten()]:
        if '=' not in entry:
            continue
        key, value = [part.strip() for part in entry.split('=', 1)]
        if key in ('representativeFrequency', 'representativeBandwidth'):
            try:
                hertz = quanta.convert(quanta.quantity(value.replace(' ', '')), 'Hz')['value']
            except Exception:  # a value without a frequency unit: not usable
                continue
            if hertz > 0:
                goals[key] = float(hertz)
        elif key in ('representativeSource', 'representativeWindow'):
            goals[key] = value
    return goals


def virtual_spw_map(infos):
    """{virtual spw id: {ms name: ImagingSpw}}: ids of the first MS, matched in the others by spw name."""
    reference = infos[0]
    mapping = collections.OrderedDict((spw_id, {}) for spw_id in reference.spws)
    for info in infos:
        by_name = {spw.name: spw for spw in info.spws.values() if spw.name}
        for spw_id, reference_spw in reference.spws.items():
            match = by_name.get(reference_spw.name) if reference_spw.name else None
            if match is None:
                match = info.spws.get(spw_id)
            if match is not None:
                mapping[spw_id][info.name] = match
    return mapping


# --- Pipeline-free engine: the pipeline's imaging heuristics (pure) -------------

def primary_beam_radius_arcsec(frequency_hz, diameter_m):
    """Radius to the first null, 1.22 lambda / D, as the pipeline's primary_beam_size."""
    return 1.22 * SPEED_OF_LIGHT / frequency_hz / diameter_m * ARCSEC_PER_RADIAN


def synthesized_beam_arcsec(frequency_hz, l80_m):
    """Briggs robust 0.5 beam from the 80th-percentile baseline: 0.574 lambda / L80 (ALMA Technical Handbook)."""
    return 0.574 * SPEED_OF_LIGHT / frequency_hz / l80_m * ARCSEC_PER_RADIAN


def baseline_percentile(infos, percentile):
    """The pipeline's representative baseline: the median over the MSes of each one's percentile."""
    import numpy
    return float(numpy.median([numpy.percentile(info.baselines_m, percentile) for info in infos]))


def heuristic_cell_arcsec(beam_arcsec, pixels_per_beam=5.0):
    """A fifth of the beam, to two significant digits, as the pipeline's cell heuristic."""
    return float('%.2g' % (beam_arcsec / pixels_per_beam))


def single_field_pixels(pb_radius_arcsec, cell_arcsec, pb_level=0.2):
    """Pixels across a single field out to pb_level of the primary beam, with the pipeline's 10% margin."""
    import math
    fwhp = 1.12 / 1.22 * pb_radius_arcsec
    return int(math.floor(1.1 * fwhp * math.sqrt(-math.log(pb_level) / math.log(2.0)) / cell_arcsec + 0.5))


def mosaic_pixels(pb_radius_arcsec, spread_arcsec, cell_arcsec, n_pointings):
    """The pipeline's mosaic size: the pointings' spread plus a primary-beam border (wider for 2-3 pointings)."""
    border = 1.65 if n_pointings <= 3 else 1.5
    return int((border * pb_radius_arcsec + spread_arcsec) / cell_arcsec)


def autobox_parameters(specmode, *, l75_m, diameter_m):
    """auto-multithresh values of the ALMA pipeline for science targets (by array and baseline length)."""
    cube = specmode in ('cube', 'repBW')
    if diameter_m < 10.0:  # 7 m array
        values = dict(sidelobethreshold=1.25, noisethreshold=5.0, lownoisethreshold=2.0, minbeamfrac=0.1,
                      growiterations=75, negativethreshold=0.0)
    elif l75_m < 300.0:
        values = dict(sidelobethreshold=2.0, noisethreshold=4.25, lownoisethreshold=1.5, minbeamfrac=0.3,
                      negativethreshold=15.0 if cube else 0.0, growiterations=50 if cube else 75)
    else:
        values = dict(sidelobethreshold=2.0 if l75_m < 400.0 else 2.5, noisethreshold=5.0, lownoisethreshold=1.5,
                      minbeamfrac=0.3, negativethreshold=7.0 if cube else 0.0, growiterations=50 if cube else 75)
    values.update(dogrowprune=True, minpercentchange=1.0, fastnoise=diameter_m >= 10.0 and l75_m > 400.0)
    return values


def fractional_bandwidth(low_hz, high_hz):
    return 2.0 * (high_hz - low_hz) / (high_hz + low_hz)


def mtmfs_reffreq_hz(ranges_hz):
    """The pipeline's reference frequency for mtmfs: sum(f_hi^2 - f_lo^2) / (2 sum(f_hi - f_lo))."""
    numerator = sum(high ** 2 - low ** 2 for low, high in ranges_hz)
    denominator = 2.0 * sum(high - low for low, high in ranges_hz)
    return numerator / denominator


def pointing_geometry(pointings):
    """(centre ra, centre dec, x spread arcsec, y spread arcsec) of a field's pointings (small angles)."""
    import math
    ra0, dec0 = pointings[0].ra, pointings[0].dec
    xs = [(p.ra - ra0) * math.cos(dec0) * ARCSEC_PER_RADIAN for p in pointings]
    ys = [(p.dec - dec0) * ARCSEC_PER_RADIAN for p in pointings]
    x_centre, y_centre = (max(xs) + min(xs)) / 2.0, (max(ys) + min(ys)) / 2.0
    return (ra0 + x_centre / ARCSEC_PER_RADIAN / math.cos(dec0), dec0 + y_centre / ARCSEC_PER_RADIAN,
            max(xs) - min(xs), max(ys) - min(ys))


def distinct_pointings(pointings, tolerance_arcsec=0.01):
    """One pointing per direction: execution blocks repeat the same pointings."""
    distinct = []
    for pointing in pointings:
        if all(abs(pointing.ra - d.ra) * ARCSEC_PER_RADIAN > tolerance_arcsec
               or abs(pointing.dec - d.dec) * ARCSEC_PER_RADIAN > tolerance_arcsec for d in distinct):
            distinct.append(pointing)
    return distinct


def sanitize_name(text):
    """As the pipeline's file namer: characters other than letters, digits, _ . + - become _."""
    import re
    return re.sub(r'[^A-Za-z0-9_.+-]', '_', text)


# --- Pipeline-free engine: one tclean call per image -----------------------------

ImageJob = collections.namedtuple(
    'ImageJob', 'name specmode field spw_ids vis field_ids spw_selection datacolumn imsize cell cell_arcsec '
                'phasecenter gridder deconvolver nterms reffreq spectral autobox nchan beam_arcsec')

TCLEAN_NITER = 1000000  # a cap that is never reached: cleaning stops at TCLEAN_NSIGMA x the residual's rms
TCLEAN_NSIGMA = 2.0     # the pipeline's tlimit: clean to twice the noise, inside the automatic mask
PB_LIMIT = 0.2          # image out to the 0.2 level of the primary beam (the pipeline's pblimit)
PB_MASK = 0.3           # automasking only where the primary beam is above 0.3 (the pipeline's cleanmask limit)


def image_name(ous, field, spw_ids, specmode, iteration=1):
    """The pipeline's image name without the stage: <ous>.<field>_sci.spw<ids>.<specmode>.I.iter<N>."""
    return '%s.%s_sci.spw%s.%s.I.iter%d' % (ous, sanitize_name(field), '_'.join(str(i) for i in sorted(spw_ids)),
                                           specmode, iteration)


def image_geometry(casa, request, *, infos, pointings, beam_frequency_hz, pb_frequency_hz):
    """(imsize, cell strings, cell arcsec, phasecenter, gridder, beam arcsec) by the pipeline's rules."""
    import math
    quanta = casa.casatools.quanta()
    beam = synthesized_beam_arcsec(beam_frequency_hz, baseline_percentile(infos, 80.0))
    if isinstance(request.cell, list):
        cell = [str(c) for c in request.cell]
        cell_arcsec = float(quanta.convert(quanta.quantity(cell[0]), 'arcsec')['value'])
    else:
        per_beam = float(request.cell[:-len('ppb')]) if request.cell else 5.0
        cell_arcsec = heuristic_cell_arcsec(beam, per_beam)
        cell = ['%garcsec' % cell_arcsec]
    pb_radius = primary_beam_radius_arcsec(pb_frequency_hz, min(info.min_diameter for info in infos))
    distinct = distinct_pointings(pointings)
    if len(distinct) > 1:
        ra, dec, x_spread, y_spread = pointing_geometry(distinct)
        pixels = [mosaic_pixels(pb_radius, x_spread, cell_arcsec, len(distinct)),
                  mosaic_pixels(pb_radius, y_spread, cell_arcsec, len(distinct))]
        phasecenter = '%s %.10fdeg %.10fdeg' % (distinct[0].frame, math.degrees(ra), math.degrees(dec))
        gridder = 'mosaic'
    else:
        level = float(request.imsize[:-len('pb')]) if isinstance(request.imsize, str) else PB_LIMIT
        pixels = [single_field_pixels(pb_radius, cell_arcsec, level)] * 2
        phasecenter, gridder = '', 'standard'
    if isinstance(request.imsize, list):
        imsize = list(request.imsize)
    else:
        utils = casa.casatools.synthesisutils()
        try:
            imsize = [int(utils.getOptimumSize(max(int(n), 16))) for n in pixels]
        finally:
            utils.done()
    return imsize, cell, cell_arcsec, phasecenter, gridder, beam


def _datacolumn(infos):
    """'corrected' (self-calibrated) only when every MS has it; tclean takes one column for all."""
    return 'corrected' if all(info.datacolumn == 'corrected' for info in infos) else 'data'


def continuum_job(casa, request, specmode, field, virtual_ids, *, infos, spw_map, channels_for, contdat, ous):
    """The mfs (one spw) or cont (all spws) image of a field, from the continuum channels of cont.dat."""
    vis, field_ids, selections, used, pointings, notes = [], [], [], [], [], []
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        parts = []
        for virtual_id in virtual_ids:
            spw = spw_map[virtual_id].get(info.name)
            if not ids or spw is None or not info.layout.has_data(ids, spw.spw_id):
                continue
            channels, note = channels_for(info, field, spw.spw_id, virtual_id)
            parts.append('%d:%s' % (spw.spw_id, channels) if channels else str(spw.spw_id))
            if note and note not in notes:
                notes.append(note)
        if parts:
            vis.append(str(info.path))
            field_ids.append(','.join(str(i) for i in ids))
            selections.append(','.join(parts))
            used.append(info)
            pointings.extend(info.fields[field])
    if not vis:
        return None, ['no data of field %s in spw %s' % (field, ','.join(str(i) for i in virtual_ids))]
    reference = [next(iter(spw_map[v].values())) for v in virtual_ids if spw_map[v]]
    low = min(min(s.freqs) - s.width / 2.0 for s in reference)
    high = max(max(s.freqs) + s.width / 2.0 for s in reference)
    centres = [s.centre for s in reference]
    deconvolver, nterms, reffreq = 'hogbom', None, None
    if specmode == 'cont' and fractional_bandwidth(low, high) > 0.1:
        deconvolver, nterms = 'mtmfs', 2
        ranges = _contdat_ranges(contdat, field, virtual_ids) or [(min(s.freqs), max(s.freqs)) for s in reference]
        reffreq = '%.6fGHz' % (mtmfs_reffreq_hz(ranges) / 1e9)
    beam_frequency = sum(centres) / len(centres)
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = image_geometry(
        casa, request, infos=used, pointings=pointings, beam_frequency_hz=beam_frequency,
        pb_frequency_hz=min(centres))
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, virtual_ids, specmode), specmode, field, list(virtual_ids), vis, field_ids,
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, deconvolver,
                   nterms, reffreq, None, autobox, 1, beam)
    return job, notes


def _contdat_ranges(contdat, field, virtual_ids):
    """cont.dat's (low, high) Hz of a field's spws, for the mtmfs reference frequency."""
    if contdat is None or field not in contdat.fields:
        return []
    blocks = contdat.fields[field].spws
    return [(r.lo_hz, r.hi_hz) for v in virtual_ids if v in blocks for r in blocks[v].ranges]


def cube_job(casa, request, specmode, field, virtual_id, nbins, *, infos, spw_map, ous):
    """A cube of one spw in LSRK over the frequencies every execution block covers, nbins channels binned."""
    converter = ChannelConverter(casa)
    vis, field_ids, selections, used, pointings, coverage = [], [], [], [], [], []
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        spw = spw_map[virtual_id].get(info.name)
        if not ids or spw is None or not info.layout.has_data(ids, spw.spw_id):
            continue
        vis.append(str(info.path))
        field_ids.append(','.join(str(i) for i in ids))
        selections.append(str(spw.spw_id))
        used.append(info)
        pointings.extend(info.fields[field])
        coverage.append(sorted(converter.coverage(info.path, ids[0], spw.spw_id, 'LSRK')))
    if not vis:
        return None, ['no data of field %s in spw %d' % (field, virtual_id)]
    reference = spw_map[virtual_id][used[0].name]
    low, high = max(c[0] for c in coverage), min(c[1] for c in coverage)
    width = reference.width * nbins
    nchan = int((high - low) / width + 1e-6)
    if nchan < 1:
        return None, ['spw %d of field %s: the execution blocks share no LSRK frequencies' % (virtual_id, field)]
    start = low + (high - low - nchan * width) / 2.0 + width / 2.0
    spectral = {'nchan': nchan, 'start': '%.3fHz' % start, 'width': '%.3fHz' % width,
                'restfreq': ['%.3fHz' % ((low + high) / 2.0)]}
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = image_geometry(
        casa, request, infos=used, pointings=pointings, beam_frequency_hz=reference.centre,
        pb_frequency_hz=reference.centre)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, [virtual_id], specmode), specmode, field, [virtual_id], vis, field_ids,
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, 'hogbom', None,
                   None, spectral, autobox, nchan, beam)
    return job, []


def representative_spw(info, spw_map):
    """(virtual spw, nbins) of the repBW image, or (None, why it is not made)."""
    goals = info.science_goals
    frequency, bandwidth = goals.get('representativeFrequency'), goals.get('representativeBandwidth')
    if not frequency or not bandwidth:
        return None, ('repBW skipped: the measurement sets record no representative bandwidth (no science goals '
                      'in an ASDM_SBSUMMARY table)')
    spws = [(v, next(iter(m.values()))) for v, m in spw_map.items() if m]
    inside = [(v, s) for v, s in spws if min(s.freqs) - s.width <= frequency <= max(s.freqs) + s.width]
    virtual_id, spw = (inside or sorted(spws, key=lambda item: abs(item[1].centre - frequency)))[0]
    spw_bandwidth = spw.nchan * spw.width
    aggregate = sum(s.nchan * s.width for _v, s in spws)
    if bandwidth > spw_bandwidth or bandwidth > 0.9 * aggregate:
        return None, ('repBW skipped: the representative bandwidth (%.4g MHz) is wider than a spw, so the cont '
                      'image is the representative-bandwidth image' % (bandwidth / 1e6))
    nbins = int(bandwidth / spw.width + 0.5)
    if nbins <= 1:
        return None, ('repBW skipped: the representative bandwidth (%.4g MHz) is not wider than a channel '
                      '(%.4g MHz), so the cube already has it' % (bandwidth / 1e6, spw.width / 1e6))
    return (virtual_id, nbins), None


def plan_casa_images(casa, request, *, targets, lines, channels_for, contdat, ous):
    """The tclean jobs for the requested specmodes, and notes on what was skipped and why."""
    spw_map = virtual_spw_map(targets)
    known_fields = []
    for info in targets:
        known_fields.extend(name for name in info.fields if name not in known_fields)
    fields = known_fields
    if request.field:
        fields = [name.strip() for name in request.field.split(',')]
        unknown = [name for name in fields if name not in known_fields]
        if unknown:
            raise ReprocessingError('--field %s: not a science field of these measurement sets (they have %s) — '
                                    'correct the name' % (', '.join(unknown), ', '.join(known_fields)))
    spw_ids = list(spw_map)
    if request.spw:
        spw_ids = [int(i) for i in request.spw.split(',')]
        unknown = [str(i) for i in spw_ids if i not in spw_map]
        if unknown:
            raise ReprocessingError('--spw %s: no such science spw in %s (it has %s) — use the ids of the first '
                                    'execution block' % (','.join(unknown), targets[0].name,
                                                         ','.join(str(i) for i in spw_map)))
    cube_infos = lines or targets
    cube_map = virtual_spw_map(cube_infos) if lines else spw_map
    jobs, notes = [], []

    def add(job_and_notes):
        job, job_notes = job_and_notes
        if job is not None:
            jobs.append(job)
        notes.extend(n for n in job_notes if n not in notes)

    for specmode in request.specmodes:
        for field in fields:
            if specmode == 'mfs':
                for spw_id in spw_ids:
                    add(continuum_job(casa, request, 'mfs', field, [spw_id], infos=targets, spw_map=spw_map,
                                      channels_for=channels_for, contdat=contdat, ous=ous))
            elif specmode == 'cont':
                add(continuum_job(casa, request, 'cont', field, spw_ids, infos=targets, spw_map=spw_map,
                                  channels_for=channels_for, contdat=contdat, ous=ous))
            elif specmode == 'cube':
                for spw_id in spw_ids:
                    if spw_id in cube_map:
                        add(cube_job(casa, request, 'cube', field, spw_id, nbins_for_spw(request.nbins, spw_id),
                                     infos=cube_infos, spw_map=cube_map, ous=ous))
            elif specmode == 'repBW':
                representative, why = representative_spw(targets[0], cube_map)
                if representative is None:
                    if why not in notes:
                        notes.append(why)
                elif representative[0] in spw_ids:
                    add(cube_job(casa, request, 'repBW', field, representative[0], representative[1],
                                 infos=cube_infos, spw_map=cube_map, ous=ous))
    return jobs, notes


def tclean_arguments(job, request, *, imagename, parallel=False):
    """The tclean call of one job: the job's geometry and selection, the user's weighting (pure)."""
    phasecenter = request.phasecenter or job.phasecenter
    if isinstance(phasecenter, str) and phasecenter.isdigit():
        phasecenter = int(phasecenter)
    arguments = dict(
        vis=list(job.vis), field=list(job.field_ids), spw=list(job.spw_selection), datacolumn=job.datacolumn,
        imagename=str(imagename), imsize=list(job.imsize), cell=list(job.cell), phasecenter=phasecenter,
        stokes='I', specmode='cube' if job.spectral else 'mfs', gridder=job.gridder,
        mosweight=job.gridder == 'mosaic', pblimit=PB_LIMIT, deconvolver=job.deconvolver, weighting='briggs',
        robust=0.5 if request.robust is None else request.robust, uvtaper=list(request.uvtaper or ['']),
        uvrange=request.uvrange or '', niter=TCLEAN_NITER, threshold='0.0mJy', nsigma=TCLEAN_NSIGMA,
        usemask='auto-multithresh', pbmask=PB_MASK, restoration=True, pbcor=True, savemodel='none',
        interactive=False, parallel=bool(parallel))
    arguments.update(job.autobox)
    if job.deconvolver == 'mtmfs':
        arguments.update(nterms=job.nterms, reffreq=job.reffreq)
    if job.spectral:
        arguments.update(job.spectral)
        arguments.update(outframe='LSRK', veltype='radio', interpolation='linear', perchanweightdensity=True)
    return arguments


# Bytes a CASA image directory and a FITS file take beyond their pixels (tables, logtable, header).
CASA_IMAGE_OVERHEAD = 40000
FITS_OVERHEAD = 20000


def estimate_image_bytes(jobs, *, all_products=False, iterations=1):
    """(bytes of the products delivered, bytes needed on disk at the peak of the run).

    pixels x channels x 4 bytes per product; iterations: the pipeline keeps a dirty iter0 beside
    each cleaned image, so its working products are twice ours.
    """
    delivered = peak = 0
    for job in jobs:
        plane = job.imsize[0] * job.imsize[1] * job.nchan * 4
        finals = 5 if job.deconvolver == 'mtmfs' else 3  # pbcor, pb, mask (+ alpha, alpha.error)
        working = (12 if job.deconvolver == 'mtmfs' else 8) * iterations  # + psf, residual, model, sumwt, ...
        fits = finals * (plane + FITS_OVERHEAD)
        kept = (working if all_products else finals) * (plane + CASA_IMAGE_OVERHEAD)
        delivered += fits + kept
        peak += fits + working * (plane + CASA_IMAGE_OVERHEAD)
    return delivered, peak


_STOP_REASONS = {0: 'not cleaned', 1: 'iteration limit', 2: 'threshold', 3: 'stopped', 4: 'no change',
                 5: 'residual grew', 6: 'diverged', 7: 'no automask found: dirty image', 8: 'noise threshold'}


def run_tclean_jobs(casa, request, jobs, *, work_dir, state):
    """Run each job's tclean in work_dir; the products are what each call added to it."""
    products = []
    previous_dir = os.getcwd()
    change_directory(work_dir)  # tclean (and monolithic CASA's .last files) write into the working directory
    try:
        for number, job in enumerate(jobs, 1):
            arguments = tclean_arguments(job, request, imagename=work_dir / job.name, parallel=tclean_parallel(job))
            before = set(os.listdir('.'))
            started = time.time()
            say('  [%d/%d] %s: %s, %dx%d%s, cell %s, %s%s' % (
                number, len(jobs), job.name, job.specmode, job.imsize[0], job.imsize[1],
                ' x %d channels' % job.nchan if job.spectral else '', job.cell[0], job.gridder,
                ', %s nterms=%d' % (job.deconvolver, job.nterms) if job.nterms else ''))
            pause_point('tclean', state)
            try:
                summary = casa.casatasks.tclean(**arguments)
            except Exception as error:
                raise ReprocessingError('tclean failed for %s (%s) — see the CASA log %s'
                                        % (job.name, _one_line(error), state.casa_logfile))
            made = sorted(name for name in set(os.listdir('.')) - before if _is_casa_image(name))
            if not any(name in made for name in (job.name + '.image', job.name + '.image.tt0')):
                raise ReprocessingError('tclean made no image for %s — see the CASA log %s'
                                        % (job.name, state.casa_logfile))
            stop = summary.get('stopcode') if isinstance(summary, dict) else None
            iterations = int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
            if stop == NO_AUTOMASK_STOPCODE and not job.spectral:
                summary = _clean_in_primary_beam_mask(casa, job, arguments, state)
                stop = summary.get('stopcode') if isinstance(summary, dict) else stop
                iterations += int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
            products.extend(ImageProduct.from_working_name(work_dir / name) for name in made)
            say('        %d clean iterations, stopped by %s, %.0f s' % (
                iterations, _STOP_REASONS.get(stop, 'code %s' % stop), time.time() - started))
    finally:
        change_directory(previous_dir)
    return products


NO_AUTOMASK_STOPCODE = 7


def _clean_in_primary_beam_mask(casa, job, arguments, state):
    """The pipeline's fallback when automasking finds nothing in a continuum image with a clear source.

    Sparse uv coverage (few antennas, snapshots) gives high PSF sidelobes, and the sidelobe threshold
    then masks nothing.  Like hif_makeimages, a continuum image whose residual peak is over 10x its
    noise is cleaned again inside the primary beam above 0.3, to a 4 sigma threshold (tlimit 4).
    Cubes are left dirty, with a note, as the pipeline does.
    """
    peak, rms = residual_peak_and_rms(casa, arguments['imagename'] + ('.residual.tt0' if job.nterms else '.residual'))
    if not rms or peak / rms <= 10.0:
        return {}
    say('        no automatic mask was found (residual peak %.3g Jy/beam = %.0f x noise): cleaning inside the '
        'primary beam above %.1f to 4 sigma, as the pipeline does' % (peak, peak / rms, PB_MASK))
    again = dict(arguments, usemask='pb', pbmask=PB_MASK, nsigma=4.0, calcpsf=False, calcres=False, restart=True)
    for name in ('sidelobethreshold', 'noisethreshold', 'lownoisethreshold', 'negativethreshold', 'minbeamfrac',
                 'growiterations', 'dogrowprune', 'minpercentchange', 'fastnoise'):
        again.pop(name, None)
    try:
        return casa.casatasks.tclean(**again)
    except Exception as error:
        raise ReprocessingError('tclean failed for %s (%s) — see the CASA log %s'
                                % (job.name, _one_line(error), state.casa_logfile))


def residual_peak_and_rms(casa, residual):
    """Peak and robust rms (1.4826 x MAD) of a residual image."""
    image = casa.casatools.image()
    try:
        image.open(str(residual))
        stats = image.statistics(robust=True, verbose=False, list=False)
    except RuntimeError:
        return 0.0, 0.0
    finally:
        image.close()
        image.done()
    if not len(stats.get('max', [])):
        return 0.0, 0.0
    return float(max(abs(stats['max'][0]), abs(stats['min'][0]))), 1.4826 * float(stats['medabsdevmed'][0])


# --- The image step --------------------------------------------------------------

def file_states(paths):
    """{file: (size, mtime)} of every file below paths: a cheap witness that nothing wrote into them."""
    states = {}
    for path in paths:
        for root, _dirs, files in os.walk(str(path)):
            for name in files:
                full = os.path.join(root, name)
                info = os.lstat(full)
                states[full] = (info.st_size, info.st_mtime)
    return states


def _changed_files(before):
    changed = []
    for path, state in before.items():
        try:
            info = os.lstat(path)
        except OSError:
            changed.append(path)
            continue
        if (info.st_size, info.st_mtime) != state:
            changed.append(path)
    return changed


def _say_notes(notes):
    for note in notes:
        say('  note: ' + note)


def _continuum_channel_finder(plan, casa):
    """(info, field, real spw, virtual spw) -> (TOPO channels of cont.dat's ranges or '' for all, note)."""
    delivery = plan.delivery
    if not delivery.contdat.is_file():
        def without_contdat(info, field, spw_id, virtual_id):
            return '', 'no cont.dat: mfs/cont images use every channel, lines included'
        return without_contdat, None
    analysis = contdat_preflight(plan, casa)
    by_ms = {Path(path).name: selections for path, selections in analysis.selections.items()}

    def channels(info, field, spw_id, virtual_id):
        for selection in by_ms.get(info.name, []):
            if selection.field_name == field and selection.spw_id == spw_id:
                if selection.chan:
                    return selection.chan, None
                return '', ('cont.dat gives no continuum ranges for field %s spw %d (%s): its mfs/cont images use '
                            'every channel, as the pipeline does' % (field, virtual_id, selection.reason))
        return '', ('cont.dat has no block for field %s spw %d: its mfs/cont images use every channel, as the '
                    'pipeline does' % (field, virtual_id))
    return channels, analysis.contdat


def run_image(plan, state, step, casa):
    """Make the images with the chosen engine, then publish the products into the images folder."""
    request, engine = plan.imaging, plan.imaging_engine
    delivery = Delivery(plan.delivery.root)  # listed again: --contsub may have just made the line MSes
    images_dir = step.outputs[0]
    lines = list(delivery.targets_line)
    if {'cube', 'repBW'} & set(request.specmodes) and not lines and not request.allow_cubes_with_continuum:
        raise ReprocessingError('no uid*_targets_line.ms, so cube images would contain the continuum — make them '
                                'with --contsub_fast (or --contsub), or add --allow-cubes-with-continuum')
    user_files = file_states(list(delivery.targets) + lines)
    ous = ous_from_path(delivery.root)
    say('  engine: %s; specmodes %s' % ('ALMA pipeline' if engine == 'pipeline' else 'CASA tclean (no pipeline)',
                                         ','.join(request.specmodes)))
    if engine == 'pipeline':
        # plotms keeps the directory of the first pipeline step of this process, and the pipeline
        # gives it relative paths: after --contsub, imaging must run where the contsub ran.
        work_dir = state.pipeline_dir or delivery.work_dir / (
            'pipeline-image-%s' % datetime.datetime.now().strftime('%Y%m%dT%H%M%S'))
        work_dir.mkdir(parents=True, exist_ok=True)
        if delivery.contdat.is_file():  # hif_makeimlist reads the continuum ranges where it runs
            shutil.copyfile(str(delivery.contdat), str(work_dir / 'cont.dat'))
        # hifa_importdata writes into what it imports: it gets shadows (stand-ins) in its working directory
        targets = list(stage_for_pipeline_contsub(state, delivery.targets, work_dir, copy=False).values())
        line_shadows = list(stage_for_pipeline_contsub(state, lines, work_dir, copy=False).values())
        selfcal = [shadow for shadow in targets + line_shadows if _has_column(casa, shadow, 'CORRECTED_DATA')]
        inputs = {'targets': targets, 'targets_line': line_shadows, 'selfcal': selfcal}
        products = run_pipeline_imaging(plan, state, casa, request, inputs=inputs, work_dir=work_dir)
        notes = []
    else:
        work_dir = delivery.work_dir / 'imaging'
        if work_dir.exists():
            say('  removing %s/ left by an earlier run (its products were published then, or never)'
                % _relative(work_dir, delivery.root))
            _remove_tree(work_dir)
        state.will_create(work_dir)
        staging = state.staging_dir / 'image'
        state.will_create(staging)
        work_dir.mkdir(parents=True)
        target_shadows = [make_shadow(ms, staging / ms.name) for ms in delivery.targets]
        line_shadows = [make_shadow(ms, staging / ms.name) for ms in lines]
        say('  reading %d measurement sets' % (len(target_shadows) + len(line_shadows)))
        targets = sorted((read_ms_for_imaging(casa, ms) for ms in target_shadows), key=_observed_first)
        line_infos = sorted((read_ms_for_imaging(casa, ms) for ms in line_shadows), key=_observed_first)
        channels_for, contdat = None, None
        if {'mfs', 'cont'} & set(request.specmodes):
            channels_for, contdat = _continuum_channel_finder(plan, casa)
        jobs, notes = plan_casa_images(casa, request, targets=targets, lines=line_infos, channels_for=channels_for,
                                       contdat=contdat, ous=ous)
        _say_notes(notes)
        if not jobs:
            raise ReprocessingError('nothing to image with --specmodes %s (see the notes above) — choose other '
                                    'specmodes, fields or spws' % ','.join(request.specmodes))
        _check_image_space(jobs, request, images_dir, delivery)
        if request.reuse_images:
            expected = _expected_finals(jobs)
            check_no_collisions(images_dir, [p.fits_name(ous) for p in expected] + [p.path.name for p in expected])
        products = run_tclean_jobs(casa, request, jobs, work_dir=work_dir, state=state)
    if not products:
        raise ReprocessingError('the %s made no images — see the CASA log %s' % (engine, state.casa_logfile))
    placed = publish_products(state, products, images_dir=images_dir, all_products=request.all_products,
                              ous=ous, casa=casa)
    if engine != 'pipeline':
        _remove_tree(staging)
        state.created_for_good(staging)
        _remove_tree(work_dir)  # the intermediates (psf, residual, model, ...) unless they were kept
        state.created_for_good(work_dir)
    changed = _changed_files(user_files)
    if changed:
        raise ReprocessingError('files of your measurement sets changed during imaging (%s) — this must never '
                                'happen: restore them from the delivery and report it' % ', '.join(changed[:3]))
    table = image_table(casa, placed, ous=ous, thumbnails_dir=_report_root(delivery) / 'images')
    fits_count = sum(1 for _p, _c, fits in placed if fits)
    total = sum(directory_bytes(path) for _p, casa_path, fits in placed for path in (casa_path, fits) if path)
    say('  %d images: %d FITS files and %d CASA images, %s, in %s' % (
        len(table), fits_count, len(placed), human_bytes(total), _relative(images_dir, delivery.root)))
    for line in format_image_table(table):
        say(line)
    return {'outputs': [str(images_dir)], 'engine': engine, 'images': table, 'notes': notes, 'bytes': total,
            'fits': fits_count, 'casa_images': len(placed)}


def _observed_first(info):
    return (info.layout.start, info.name)


def _has_column(casa, ms, column):
    table = casa.casatools.table()
    table.open(str(ms))
    try:
        return column in table.colnames()
    finally:
        table.close()


def _expected_finals(jobs):
    """The final products the jobs will make, named as they will be (for collision checks)."""
    products = []
    for job in jobs:
        extensions = ('image.tt0.pbcor', 'pb.tt0', 'mask', 'alpha', 'alpha.error') \
            if job.deconvolver == 'mtmfs' else ('image.pbcor', 'pb', 'mask')
        products.extend(ImageProduct.from_working_name(Path(job.name + '.' + ext)) for ext in extensions)
    return products


def _check_image_space(jobs, request, images_dir, delivery):
    delivered, peak = estimate_image_bytes(jobs, all_products=request.all_products)
    available = free_bytes(delivery.root)
    say('  %d images to make: about %s of products (%s on disk while imaging), %s free'
        % (len(jobs), human_bytes(delivered), human_bytes(peak), human_bytes(available)))
    if peak * 1.1 > available:
        raise ReprocessingError('not enough free disk in %s for the images: about %s needed, %s free — free some '
                                'space, or image less (--specmodes, --field, --spw, --nbins)'
                                % (delivery.root, human_bytes(peak * 1.1), human_bytes(available)))


# --- The plan's pre-flight: what the images will take, before the first long step --

ImageEstimate = collections.namedtuple('ImageEstimate', 'images delivered peak available engine')


def preflight_images(plan):
    """Size the image products from the MS metadata while planning (--dry-run too); stop if they cannot fit.

    Called by run() right after make_plan (which stays free of CASA), before the first step.
    CASA is loaded to read the measurement sets' metadata (read-only) and logs nowhere: a plan
    writes no file, and the run's log is chosen when its first step starts.  The images are sized
    with the pipeline-free engine's heuristics, which follow the pipeline's, so the pipeline engine
    gets the same estimate (with its iter0 images), before any size mitigation of its own.
    """
    delivery, request, engine = plan.delivery, plan.imaging, plan.imaging_engine
    casa = _casa_for_planning()
    makes_line_ms = plan.options.contsub or plan.options.contsub_fast
    try:
        with native_output_into(os.devnull), _native_stdout_silenced():
            targets = sorted((read_ms_for_imaging(casa, ms) for ms in delivery.targets), key=_observed_first)
            # line MSes this run makes have the spws and channels of the targets MSes they come from
            lines = [] if makes_line_ms else sorted(
                (read_ms_for_imaging(casa, ms) for ms in delivery.targets_line), key=_observed_first)
            jobs, _notes = plan_casa_images(casa, request, targets=targets, lines=lines,
                                            channels_for=_every_channel, contdat=None,
                                            ous=ous_from_path(delivery.root))
    except RuntimeError as error:
        raise ReprocessingError('cannot read the measurement sets\' metadata to plan the images (%s) — check '
                                'the measurement sets in %s' % (_one_line(error), delivery.ms_dir))
    if not jobs and engine == 'casa':
        raise ReprocessingError('nothing to image with --specmodes %s in these measurement sets — choose other '
                                'specmodes, fields or spws' % ','.join(request.specmodes))
    delivered, peak = estimate_image_bytes(jobs, all_products=request.all_products,
                                           iterations=2 if engine == 'pipeline' else 1)
    plan.image_estimate = ImageEstimate(len(jobs), delivered, peak, free_bytes(delivery.root), engine)
    if peak * 1.1 > plan.image_estimate.available:
        raise ReprocessingError('not enough free disk in %s for the images: about %s needed, %s free — free some '
                                'space, or image less (--specmodes, --field, --spw, --nbins)'
                                % (delivery.root, human_bytes(peak * 1.1), human_bytes(plan.image_estimate.available)))
    images_dir = delivery.root / plan.options.image
    if images_dir.is_dir():  # --reuse-images: none of this run's names may be taken
        expected = _expected_finals(jobs)
        ous = ous_from_path(delivery.root)
        names = [p.fits_name(ous) for p in expected]
        if engine == 'casa':  # the pipeline's CASA images carry its stage number, known only when it runs
            names += [p.path.name for p in expected]
        check_no_collisions(images_dir, names)
    # the whole plan's free-disk check, again, with the images (beside, e.g., this run's line MSes)
    plan.steps[:] = [step._replace(extra_bytes=peak) if step.function is run_image else step
                     for step in plan.steps]
    _check_free_space(plan)
    return plan.image_estimate


def _every_channel(info, field, spw_id, virtual_id):
    """Channel selection while sizing images: the channels do not change an mfs image's size."""
    return '', None


def _casa_for_planning():
    if _is_monolithic_casa() or 'casatools' in sys.modules:
        return load_casa()
    return load_casa(logfile=os.devnull)


def describe_image_estimate(estimate):
    text = 'Images: %d to make, about %s of products (%s on disk while imaging), %s free' % (
        estimate.images, human_bytes(estimate.delivered), human_bytes(estimate.peak), human_bytes(estimate.available))
    if estimate.engine == 'pipeline':
        text += ' (sized by the pipeline\'s heuristics, before its size mitigation)'
    return text


def _thumbnail_or_warning(casa, image, png_path):
    """The report's picture of an image (a view of a finished result: a failure is only a warning)."""
    try:
        render_image_thumbnail(image_path=image, png_path=png_path, casa=casa)
    except Exception as error:
        warn('no report thumbnail for %s (%s) — the image is complete' % (Path(image).name, _one_line(error)))
        return None
    return str(png_path)


# ---------------------------------------------------------------------------
# Weblog server and the reprocessing report
# ---------------------------------------------------------------------------

REPORT_DIR_NAME = 'report'
WEBLOG_PORTS = (30000, 32767)   # the range the pipeline's own h_weblog uses
PORT_ATTEMPTS = 50

# A weblog to serve: `root` is the only directory the server shows, `start` the page to open in it.
Weblog = collections.namedtuple('Weblog', 'name root start modified')


def _port_number(text):
    """argparse type of --port."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('--port needs a number, got "%s"' % text)
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError('--port must be between 1024 and 65535, got %d' % port)
    return port


def _plan_weblog(plan):
    """On its own, --weblog must find what to serve now; after other steps, a NAME must exist already."""
    delivery, name = plan.delivery, plan.options.weblog
    alone = not plan.steps
    if name == 'report':
        if alone:
            report_weblog(delivery)
        summary = 'serve the reprocessing report'
    elif name == 'latest' and not alone:
        summary = 'serve the weblog this run makes (or the reprocessing report)'
    else:
        weblog = choose_weblog(delivery, name)
        summary = 'serve the weblog %s' % weblog.name
    plan.steps.append(Step('weblog', summary, [], [], 0, run_weblog))


def run_weblog(plan, state, step, casa):
    """Serve a weblog until Ctrl-C; it never needs CASA or the pipeline, only the files."""
    options, delivery = plan.options, plan.delivery
    made_here = [s for s in plan.steps if s.name != 'weblog']
    if made_here:
        # The report of this run must exist before it can be served; the final one is written at the end.
        write_report(plan, state, status='running')
    if options.weblog == 'latest' and made_here:
        weblog = _weblog_made_since(delivery, state.started) or _this_runs_report(delivery, state)
    elif options.weblog == 'report':
        weblog = _this_runs_report(delivery, state) if made_here else report_weblog(delivery)
    else:
        weblog = choose_weblog(delivery, options.weblog)
    return serve_weblog(weblog, port=options.port, open_browser=not options.no_browser)


def find_weblogs(delivery):
    """Pipeline weblogs of this delivery, newest first.

    A weblog is a ``pipeline-*`` folder holding ``html/index.html`` (or
    ``html/t1-1.html``).  They are looked for where this tool runs the
    pipeline (below working_reprocess/), and where a delivered weblog is
    unpacked: in calibrated_final/ itself, or in the ``qa/`` folder beside it
    (an ALMA delivery's member directory holds ``qa/*.weblog.tgz``).
    """
    places = ((delivery.work_dir, 3), (delivery.root, 1), (delivery.root.parent / 'qa', 2))
    found = {}
    for top, depth in places:
        for folder in _pipeline_folders(top, depth):
            start = _weblog_start_page(folder)
            if start is not None:
                modified = (folder / start).stat().st_mtime
                found[folder] = Weblog(_relative(folder, delivery.root), folder, start, modified)
    return sorted(found.values(), key=lambda weblog: weblog.modified, reverse=True)


def _pipeline_folders(top, depth):
    """``pipeline-*`` directories at most `depth` levels below top; links and measurement sets are not entered."""
    if depth < 1 or not top.is_dir() or top.is_symlink():
        return
    try:
        entries = sorted(top.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name.startswith('pipeline-'):
            yield entry
        elif not entry.name.endswith('.ms') and entry.name not in ('staging', REPORT_DIR_NAME):
            for found in _pipeline_folders(entry, depth - 1):
                yield found


def _weblog_start_page(folder):
    for start in ('html/index.html', 'html/t1-1.html'):
        if (folder / start).is_file():
            return start
    return None


def choose_weblog(delivery, name):
    """The weblog called `name` ('latest', 'report', a folder name or a path), or an error listing the others."""
    if name == 'report':
        return report_weblog(delivery)
    weblogs = find_weblogs(delivery)
    if name == 'latest':
        if weblogs:
            return weblogs[0]
        raise ReprocessingError('no pipeline weblog found in %s — %s' % (delivery.root, _what_exists(delivery, [])))
    matches = [w for w in weblogs if name.rstrip('/') in (w.root.name, w.name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReprocessingError('several weblogs are called %s: %s — give the path of the one you want'
                                % (name, ', '.join(w.name for w in matches)))
    raise ReprocessingError('no weblog called "%s" — %s' % (name, _what_exists(delivery, weblogs)))


def _what_exists(delivery, weblogs):
    """One sentence listing what --weblog could serve instead."""
    offers = ['%s (%s)' % (w.name, _now_from(w.modified)) for w in weblogs]
    if (_report_root(delivery) / 'index.html').is_file():
        offers.append('report (the reprocessing report)')
    packed = sorted(delivery.root.glob('*weblog.tgz')) + sorted((delivery.root.parent / 'qa').glob('*weblog.tgz'))
    if offers:
        advice = 'choose one of: --weblog ' + ', --weblog '.join(offers)
    else:
        advice = 'the pipeline writes one when it runs (--contsub, --image), and every run writes the report'
    if packed:
        advice += '; the delivered weblog %s is still packed: unpack it with "tar -xzf %s -C %s"' % (
            packed[0].name, packed[0], packed[0].parent)
    return advice


def _weblog_made_since(delivery, since):
    made = [w for w in find_weblogs(delivery) if since is not None and w.modified >= since - 1]
    return made[0] if made else None


def report_weblog(delivery):
    root = _report_root(delivery)
    if not (root / 'index.html').is_file():
        raise ReprocessingError('no reprocessing report yet in %s — every run of this script (except --dry-run) '
                                'writes one; run an action first' % root)
    return Weblog('the reprocessing report', root, 'index.html', (root / 'index.html').stat().st_mtime)


def _this_runs_report(delivery, state):
    """The report, opened at this run's page."""
    report = report_weblog(delivery)
    if state.report_dir is not None and (state.report_dir / 'index.html').is_file():
        report = report._replace(start=state.report_dir.name + '/index.html')
    return report


def _report_root(delivery):
    return delivery.work_dir / REPORT_DIR_NAME


def _now_from(timestamp):
    return datetime.datetime.fromtimestamp(timestamp).strftime('%Y-%m-%d %H:%M:%S')


# -- the HTTP server -----------------------------------------------------------

def serve_weblog(weblog, *, port=None, open_browser=True):
    """Serve weblog.root on 127.0.0.1 until Ctrl-C; returns what was served, for the report."""
    server, busy = bind_weblog_server(weblog.root, first_port=port)
    port = server.server_address[1]
    url = 'http://127.0.0.1:%d/%s' % (port, weblog.start)
    # From the moment the address is printed, Ctrl-C means "stop serving", a normal end.
    restore = _interrupt_on_ctrl_c()
    try:
        if busy:
            say('  port%s %s in use, so port %d is used' % ('s' if len(busy) > 1 else '',
                                                             ', '.join(str(p) for p in busy), port))
        say('  serving %s (%s)' % (weblog.name, weblog.root))
        say('  open %s' % url)
        if _is_remote_session() or not _has_display():
            say('  from your own computer, first open a tunnel to this machine in another terminal:')
            say('    ssh -N -L %d:localhost:%d %s@%s' % (port, port, _user_name(), _full_host_name()))
            say('  then open http://localhost:%d/%s' % (port, weblog.start))
        if open_browser:
            say('  ' + _open_browser(url))
        say('  Ctrl-C stops the server (the delivery stays locked for other runs until then).')
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, Interrupted):
        say('')
        say('  stopped serving %s' % weblog.name)
    finally:
        server.server_close()
        restore()
    return {'served': str(weblog.root), 'url': url}


def bind_weblog_server(root, *, first_port=None):
    """An HTTP server over root bound to 127.0.0.1 on the first free port; also the busy ports skipped."""
    server_class = _weblog_server_class()
    handler = _weblog_request_handler(root)
    busy = []
    for port in _candidate_ports(first_port):
        try:
            return server_class(('127.0.0.1', port), handler), busy
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise ReprocessingError('cannot serve the weblog on port %d (%s) — choose another port with '
                                        '--port' % (port, error.strerror or error))
            busy.append(port)
    raise ReprocessingError('ports %d to %d are all in use — choose a free one with --port'
                            % (busy[0], busy[-1]))


def _candidate_ports(first_port):
    """From --port upwards; else from a random port of the pipeline's range, so users of one host rarely collide."""
    low, high = WEBLOG_PORTS
    if first_port is not None:
        return list(range(first_port, min(first_port + PORT_ATTEMPTS, 65536)))
    import random
    start = random.randint(low, high)
    return [low + (start - low + offset) % (high - low + 1) for offset in range(PORT_ATTEMPTS)]


def _weblog_server_class():
    import http.server
    import socketserver
    base = getattr(http.server, 'ThreadingHTTPServer', None)  # Python >= 3.7
    if base is None:
        class ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
        base = ThreadingHTTPServer

    class WeblogServer(base):
        # Without SO_REUSEADDR a port someone else listens on is always "in use", on macOS too.
        allow_reuse_address = False
        daemon_threads = True

        def handle_error(self, request, client_address):
            error = sys.exc_info()[1]
            if not isinstance(error, (ConnectionError, TimeoutError)):  # a browser closing a tab is normal
                base.handle_error(self, request, client_address)

    return WeblogServer


def _weblog_request_handler(root):
    """A file handler that shows root and nothing outside it, whatever the URL or a link inside says."""
    import http.server
    import posixpath
    import urllib.parse
    real_root = os.path.realpath(str(root))

    class WeblogRequestHandler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            # The standard one serves the current directory; Python 3.6 has no `directory` argument.
            path = path.split('?', 1)[0].split('#', 1)[0]
            trailing_slash = path.rstrip().endswith('/')
            path = posixpath.normpath(urllib.parse.unquote(path))
            parts = [part for part in path.split('/') if part not in ('', '.', '..')]
            translated = os.path.join(real_root, *parts)
            return translated + '/' if trailing_slash else translated

        def send_head(self):
            try:
                real = os.path.realpath(self.translate_path(self.path))
            except ValueError:  # e.g. a NUL byte in the path
                self.send_error(400, 'Bad path')
                return None
            if not _is_inside(real, real_root):
                self.send_error(403, 'Outside the weblog')  # a link pointing out of the weblog
                return None
            return http.server.SimpleHTTPRequestHandler.send_head(self)

        def log_message(self, format, *args):
            pass  # one line per file would bury the address and the ssh line

        def log_error(self, format, *args):
            if args and args[0] not in (404,):
                sys.stderr.write('  weblog server: %s\n' % (format % args))

    return WeblogRequestHandler


def _interrupt_on_ctrl_c():
    """Make Ctrl-C raise KeyboardInterrupt while serving, even where SIGINT was ignored; returns the undo."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGINT, previous)


def _has_display():
    return sys.platform == 'darwin' or bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def _is_remote_session():
    return any(os.environ.get(name) for name in ('SSH_CONNECTION', 'SSH_CLIENT', 'SSH_TTY'))


def _user_name():
    import getpass
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return 'USER'


def _full_host_name():
    """The name others reach this host by; getfqdn() says 'localhost' where /etc/hosts lists the host there."""
    import socket
    name = socket.getfqdn()
    return socket.gethostname() if not name or name.startswith('localhost') else name


def _open_browser(url):
    """Open url in a graphical browser when there is one; say what happened, never fail."""
    if not _has_display():
        return 'no display here, so no browser was opened'
    import webbrowser
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return 'no web browser found, so none was opened'
    if type(browser) is webbrowser.GenericBrowser:
        # A text browser (lynx, w3m) would take over this terminal before the server starts.
        return 'only a text browser found, so none was opened'
    try:
        opened = browser.open(url)
    except Exception as error:  # a browser that fails to start must not stop the server
        return 'the browser did not start (%s)' % error
    return 'opened it in the browser' if opened else 'the browser did not start'


# -- the reprocessing report -------------------------------------------------

REPORT_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.5em;
text-align: left; vertical-align: top; } th { background: #f0f0f0; }
.succeeded { color: #176617; font-weight: bold; } .failed, .interrupted { color: #b00000; font-weight: bold; }
.running { color: #a06000; font-weight: bold; } .muted { color: #777; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.5em; overflow-x: auto; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; }
"""
STATUS_LABELS = {'succeeded': 'succeeded', 'failed': 'FAILED', 'interrupted': 'INTERRUPTED',
                 'running': 'running (or killed)'}
# Result keys the report shows in their own sections; any other key is listed beside its step.
_RESULT_KEYS_SHOWN = ('step', 'seconds', 'started', 'ended', 'outputs', 'spectra', 'images', 'contdat_problems',
                      'problems')


def write_report(plan, state, *, status, error=None):
    """Write this run's page and the index of runs; a problem with the report never fails the run.

    Runs that only serve a weblog add no page, and neither does a successful
    --cleanup (it removed working_reprocess/ on purpose).
    """
    if [step.name for step in plan.steps] == ['weblog']:
        return None
    if any(result.get('step') == 'cleanup' for result in state.results):
        return None
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        status = 'interrupted'
    try:
        return _write_report(plan, state, status=status, error=error)
    except Exception as problem:  # the run's own outcome matters more than its report
        warn('could not write the reprocessing report (%s) — the run itself is not affected' % problem)
        return None


def _write_report(plan, state, *, status, error):
    report_root = _report_root(plan.delivery)
    run_dir = _report_run_dir(state, report_root)
    ended = time.time()
    started = state.started or ended
    steps = _step_rows(plan, state, ended=ended, status=status)
    assets = _ReportAssets(run_dir)
    summary = {
        'run': run_dir.name, 'status': status, 'command': state.command or '',
        'started': _now_from(started), 'ended': _now_from(ended) if status != 'running' else '',
        'seconds': round(ended - started, 1), 'error': str(error) if error is not None else '',
        'steps': [row['step'] for row in steps]}
    page = _run_page(plan, state, summary, steps, assets)
    _write_atomically(run_dir / 'index.html', page)
    _write_atomically(run_dir / 'run.json', json.dumps(summary, indent=1))
    _write_atomically(report_root / 'index.html', _runs_index_page(plan.delivery, report_root))
    _sweep_report_temporaries(report_root)
    return run_dir / 'index.html'


def _report_run_dir(state, report_root):
    """This run's folder, chosen once per run: run-<start time>, with a suffix if that is taken."""
    run_dir = state.report_dir
    if run_dir is None:
        started = state.started or time.time()
        base = 'run-' + datetime.datetime.fromtimestamp(started).strftime('%Y%m%d-%H%M%S')
        run_dir = report_root / base
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = report_root / ('%s-%d' % (base, suffix))
        state.report_dir = run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _step_rows(plan, state, *, ended, status):
    """One row per planned step: done (with its result), failed or running, or not run."""
    results = {result.get('step'): result for result in state.results}
    current = state.current_step or {}
    rows = []
    for step in plan.steps:
        result = results.get(step.name)
        row = {'step': step.name, 'summary': step.summary, 'result': result or {}}
        if result is not None:
            row.update(state='done', started=result.get('started'), ended=result.get('ended'),
                       seconds=result.get('seconds'))
        elif current.get('step') == step.name:
            began = current.get('started')
            row.update(state='running' if status == 'running' else status, started=began,
                       ended=None if status == 'running' else ended,
                       seconds=round(ended - began, 1) if began else None)
        else:
            row.update(state='not run', started=None, ended=None, seconds=None)
        rows.append(row)
    return rows


class _ReportAssets(object):
    """PNGs shown by the report, copied into the run's folder so the page (and its server) is self-contained."""

    def __init__(self, run_dir):
        self.folder = run_dir / 'assets'
        self.used = {}

    def link(self, source):
        """The page-relative path of a copy of source, or None when source is missing."""
        source = Path(str(source))
        if not source.is_file():
            return None
        key = str(source.resolve())
        if key not in self.used:
            name = source.name
            taken = set(self.used.values())
            counter = 1
            while 'assets/' + name in taken:
                counter += 1
                name = '%s-%d%s' % (source.stem, counter, source.suffix)
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = self.folder / ('.%s%s%d' % (name, PARTIAL_TAG, os.getpid()))
            shutil.copyfile(str(source), str(temporary))
            os.replace(str(temporary), str(self.folder / name))
            self.used[key] = 'assets/' + name
        return self.used[key]


def _run_page(plan, state, summary, steps, assets):
    from html import escape
    delivery = plan.delivery
    status = summary['status']
    parts = [
        '<h1>Reprocessing report: %s</h1>' % escape(str(delivery.root)),
        '<p><a href="../index.html">all runs of this delivery</a></p>',
        _table([], [
            ['Status', _Markup('<span class="%s">%s</span>%s' % (
                status, escape(STATUS_LABELS.get(status, status)),
                ': ' + escape(summary['error']) if summary['error'] else ''))],
            ['Command', _Markup('<code>%s</code>' % escape(summary['command']))],
            ['Started', summary['started']],
            ['Ended', summary['ended'] or 'still running'],
            ['Duration', _duration(summary['seconds'])],
            ['Environment', describe_environment().replace('Environment: ', '', 1)],
            ['Engine', _engine_description()],
            ['Host', '%s@%s' % (_user_name(), _full_host_name())],
        ]),
        '<h2>Steps</h2>',
        _table(['#', 'step', 'what', 'started', 'ended', 'duration', 'status', 'details'], [
            [str(number), row['step'], row['summary'], _now_from(row['started']) if row['started'] else '',
             _now_from(row['ended']) if row['ended'] else '', _duration(row['seconds']), row['state'],
             _result_details(row['result'])]
            for number, row in enumerate(steps, 1)]),
    ]
    parts.extend(_inputs_section(plan))
    parts.extend(_outputs_section(plan, state))
    parts.extend(_contdat_section(plan, state))
    parts.extend(_spectra_section(state, assets))
    parts.extend(_images_section(state, assets))
    title = 'Reprocessing report %s' % summary['run']
    return _html_page(title, '\n'.join(parts))


def _inputs_section(plan):
    from html import escape
    inputs = []
    for step in plan.steps:
        for path in step.inputs:
            if str(path).endswith('.ms') and path not in inputs:
                inputs.append(path)
    if not inputs:
        return []
    casatools = sys.modules.get('casatools')  # only when this run loaded CASA anyway: the report never loads it
    rows = []
    for ms in inputs:
        size = human_bytes(directory_bytes(ms)) if Path(ms).exists() else 'missing'
        fields, spws = '', ''
        if casatools is not None and Path(ms).is_dir():
            try:
                description = describe_measurement_set(ms, casatools=casatools)
                fields = ', '.join(description['fields'])
                spws = _Markup('<br>'.join(escape('%s %s: %.4f–%.4f GHz, %d channels' % (
                    spw['id'], spw['name'], spw['low_ghz'], spw['high_ghz'], spw['nchan']))
                    for spw in description['spws']))
            except Exception as error:  # an unreadable MS is worth a note, not a lost report
                fields = 'not readable: %s' % (str(error).strip().splitlines() or ['?'])[0][:200]
        rows.append([_relative(ms, plan.delivery.root), size, fields, spws])
    note = '' if casatools is not None else (
        '<p class="muted">Fields and spectral windows are listed when the run loads CASA.</p>')
    return ['<h2>Inputs</h2>', _table(['measurement set', 'size', 'fields', 'spectral windows (TOPO)'], rows), note]


def describe_measurement_set(ms, *, casatools):
    """Fields and spectral windows (id, name, channels, frequency range) that hold data in an MS, read only.

    An ALMA MS keeps the rows of the fields and spws split away (spw ids 0-24
    before science spw 25), so only the ids used by the main table are listed.
    """
    import numpy
    table = casatools.table()

    def column(subtable, name):
        table.open(str(Path(ms) / subtable) if subtable else str(ms), nomodify=True)
        try:
            if name == 'CHAN_FREQ':  # one array per spw, of different lengths
                return [table.getcell(name, row) for row in range(table.nrows())]
            return table.getcol(name)
        finally:
            table.close()

    names = column('SPECTRAL_WINDOW', 'NAME')
    frequencies = column('SPECTRAL_WINDOW', 'CHAN_FREQ')
    spw_of_description = column('DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')
    spw_ids = sorted(set(int(spw_of_description[i]) for i in numpy.unique(column('', 'DATA_DESC_ID'))))
    field_names = column('FIELD', 'NAME')
    fields = [str(field_names[i]) for i in numpy.unique(column('', 'FIELD_ID'))]
    spws = [{'id': spw_id, 'name': str(names[spw_id]), 'nchan': len(frequencies[spw_id]),
             'low_ghz': float(min(frequencies[spw_id])) / 1e9, 'high_ghz': float(max(frequencies[spw_id])) / 1e9}
            for spw_id in spw_ids]
    return {'fields': fields, 'spws': spws}


def _outputs_section(plan, state):
    outputs = []
    for step in plan.steps:
        outputs.extend(step.outputs)
    for result in state.results:
        outputs.extend(Path(p) for p in result.get('outputs', []) or [])
    rows, seen = [], set()
    for path in outputs:
        if str(path) in seen:
            continue
        seen.add(str(path))
        size = human_bytes(directory_bytes(path)) if Path(path).exists() else 'not made'
        rows.append([_relative(path, plan.delivery.root), size])
    if not rows:
        return []
    return ['<h2>Outputs</h2>', _table(['path (relative to the delivery)', 'size'], rows)]


def _contdat_section(plan, state):
    from html import escape
    uses_contdat = any(step.name in ('contsub', 'check') for step in plan.steps)
    problems, checked = _contdat_problems(plan, state)
    contdat = plan.delivery.contdat
    if not (uses_contdat or problems) or not contdat.is_file():
        return []
    parts = ['<h2>cont.dat in use</h2>', '<p>%s</p>' % escape(str(contdat))]
    if problems:
        parts.append('<p>Problems the check found:</p><ul>%s</ul>'
                     % ''.join('<li>%s</li>' % escape(problem) for problem in problems))
    elif checked:
        parts.append('<p>The check found no problem.</p>')
    try:
        text = contdat.read_text(errors='replace')
    except OSError as error:
        text = '(cannot read it: %s)' % error
    parts.append('<pre>%s</pre>' % escape(text))
    return parts


def _contdat_problems(plan, state):
    """The cont.dat checker's findings as text, and whether it ran at all.

    They are the plan's analysis when the check ran in this run (also when it
    stopped the run), else what the steps returned ('contdat_problems' of
    the contsub step, 'problems' of the check step).
    """
    found = []
    analysis = getattr(plan, 'contdat_analysis', None)
    if analysis is not None:
        found.extend(getattr(analysis, 'problems', None) or [])
    for result in state.results:
        found.extend(result.get('contdat_problems') or [])
        if result.get('step') == 'check':
            found.extend(result.get('problems') or [])
    checked = analysis is not None or any(
        'contdat_problems' in result or result.get('step') == 'check' for result in state.results)
    texts = []
    for problem in found:
        text = _problem_text(problem)
        if text not in texts:
            texts.append(text)
    return texts, checked


def _problem_text(problem):
    """'path:line: severity: message' from a checker Problem, a dict with those keys, or a string."""
    if hasattr(problem, '_asdict'):
        problem = problem._asdict()
    if isinstance(problem, dict) and 'message' in problem:
        where = '%s:%s' % (problem.get('path', ''), problem['line']) if problem.get('line') else problem.get('path')
        return ': '.join(str(part) for part in (where, problem.get('severity'), problem['message']) if part)
    return str(problem)


def _spectra_section(state, assets):
    from html import escape
    figures = []
    for result in state.results:
        for png in result.get('spectra') or []:
            link = assets.link(png)
            caption = escape(Path(str(png)).name)
            figures.append('<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>'
                           % (escape(link), caption, caption) if link else
                           '<p class="muted">missing spectrum: %s</p>' % escape(str(png)))
    if not figures:
        return []
    return ['<h2>Continuum subtraction: spectra before and after (cont.dat ranges shaded)</h2>'] + figures


# Columns of the image table, each with the keys an image's dict may give it under (the imaging step's first).
IMAGE_COLUMNS = collections.OrderedDict([
    ('image', ('image', 'name')), ('specmode', ('specmode',)), ('field', ('field',)), ('spw', ('spw',)),
    ('beam', ('beam_arcsec', 'beam')), ('cell', ('cell_arcsec', 'cell')), ('imsize', ('imsize',)),
    ('nchan', ('nchan',)), ('peak', ('peak_jy', 'peak')), ('rms', ('rms_jy', 'rms')), ('size', ('bytes', 'size'))])


def _images_section(state, assets):
    """The images steps made: dicts with IMAGE_COLUMNS (beam and cell in arcsec, peak and rms in Jy/beam,
    or text) and a 'thumbnail' PNG."""
    from html import escape
    images = [image for result in state.results for image in (result.get('images') or [])]
    if not images:
        return []
    rows, figures = [], []
    for image in images:
        values = dict((column, next((image[key] for key in keys if image.get(key) is not None), None))
                      for column, keys in IMAGE_COLUMNS.items())
        rows.append([_format_value(column, values[column]) for column in IMAGE_COLUMNS])
        if image.get('thumbnail'):
            link = assets.link(image['thumbnail'])
            caption = escape(str(values['image'] or ''))
            figures.append('<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>'
                           % (escape(link), caption, caption) if link else
                           '<p class="muted">missing thumbnail: %s</p>' % escape(str(image['thumbnail'])))
    return ['<h2>Images</h2>', _table(list(IMAGE_COLUMNS), rows)] + figures


def _format_value(column, value):
    if value is None:
        return ''
    if column == 'beam' and isinstance(value, dict):
        value = (value.get('major', 0), value.get('minor', 0), value.get('pa', 0))
    if column == 'beam' and isinstance(value, (list, tuple)) and len(value) == 3:
        return '%.3g" × %.3g", %.1f°' % tuple(value)
    if column == 'cell' and isinstance(value, (int, float)):
        return '%.3g"' % value
    if column == 'size' and isinstance(value, (int, float)):
        return human_bytes(value)
    if column in ('peak', 'rms') and isinstance(value, (int, float)):
        return '%.3g mJy/beam' % (value * 1e3)
    if isinstance(value, float):
        return '%.4g' % value
    if isinstance(value, (list, tuple)):
        return ' × '.join(str(v) for v in value) if column == 'imsize' else ', '.join(str(v) for v in value)
    return str(value)


def _result_details(result, *, longest=160):
    """What a step made that has no section of its own, as 'key: value' pairs (long values cut short)."""
    pairs = []
    for key, value in sorted(result.items()):
        if key not in _RESULT_KEYS_SHOWN:
            text = _format_value(key, value)
            pairs.append('%s: %s' % (key, text if len(text) <= longest else text[:longest - 1] + '…'))
    return '; '.join(pairs)


def _engine_description():
    parts = []
    casatools = sys.modules.get('casatools')
    if casatools is not None:
        parts.append('CASA %s (%s)' % (casatools.version_string(),
                                       'monolithic' if _is_monolithic_casa() else 'modular'))
    if 'pipeline' in sys.modules:
        parts.append('ALMA pipeline')
    if not parts:
        parts.append('no CASA (no step of this run needed it)')
    return ', '.join(parts) + '; ' + _mpi_description()


def _duration(seconds):
    if seconds is None:
        return ''
    seconds = int(round(seconds))
    if seconds < 60:
        return '%d s' % seconds
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return '%d min %02d s' % (minutes, seconds)
    hours, minutes = divmod(minutes, 60)
    return '%d h %02d min' % (hours, minutes)


def _runs_index_page(delivery, report_root):
    """Every run recorded in report_root, newest first."""
    from html import escape
    runs = []
    for folder in report_root.glob('run-*'):
        try:
            with open(str(folder / 'run.json')) as handle:
                runs.append(json.load(handle))
        except (OSError, ValueError):
            continue  # a folder without a complete summary is not listed
    runs.sort(key=lambda run: (run.get('started', ''), run.get('run', '')), reverse=True)
    rows = [[_Markup('<a href="%s/index.html">%s</a>' % (escape(run['run']), escape(run.get('started', '')))),
             _Markup('<span class="%s">%s</span>' % (
                 escape(run.get('status', '')), escape(STATUS_LABELS.get(run.get('status'), run.get('status', ''))))),
             _duration(run.get('seconds')), ', '.join(run.get('steps', [])),
             _Markup('<code>%s</code>' % escape(run.get('command', '')) + (
                 '<br><span class="muted">%s</span>' % escape(run['error']) if run.get('error') else ''))]
            for run in runs if run.get('run')]
    body = '\n'.join([
        '<h1>Reprocessing runs: %s</h1>' % escape(str(delivery.root)),
        '<p>One page per run of %s in this delivery, newest first.</p>' % SCRIPT_NAME,
        _table(['run', 'status', 'duration', 'steps', 'command'], rows)])
    return _html_page('Reprocessing runs', body)


class _Markup(str):
    """Text that is HTML already (built from escaped parts), so a table does not escape it again."""


def _table(header, rows):
    """An HTML table; cells are escaped unless they are _Markup.  Without a header, the first column is one."""
    from html import escape

    def cell(value):
        return value if isinstance(value, _Markup) else escape(str(value))
    head = '<tr>%s</tr>' % ''.join('<th>%s</th>' % escape(h) for h in header) if header else ''
    body = ''.join('<tr>%s</tr>' % ''.join(
        ('<th>%s</th>' if index == 0 and not header else '<td>%s</td>') % cell(value)
        for index, value in enumerate(row)) for row in rows)
    return '<table>%s%s</table>' % (head, body)


def _html_page(title, body):
    from html import escape
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>%s</title>\n'
            '<style>%s</style></head>\n<body>\n%s\n<p class="muted">Written by %s on %s.</p>\n</body></html>\n'
            % (escape(title), REPORT_STYLE, body, SCRIPT_NAME, _now()))


def _write_atomically(path, text):
    """Write text so that path is always either the old or the new complete file."""
    path = Path(path)
    temporary = path.with_name('.%s%s%d' % (path.name, PARTIAL_TAG, os.getpid()))
    with open(str(temporary), 'w', encoding='utf-8') as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(str(temporary), str(path))


def _sweep_report_temporaries(report_root):
    """Temporaries left by a run killed while writing its report."""
    for temporary in list(report_root.glob('.*' + PARTIAL_TAG + '*')) + list(
            report_root.glob('run-*/.*' + PARTIAL_TAG + '*')) + list(
            report_root.glob('run-*/assets/.*' + PARTIAL_TAG + '*')):
        if not temporary.name.endswith(PARTIAL_TAG + str(os.getpid())):
            _remove_file(temporary)


def render_image_thumbnail(*, image_path, png_path, casa):
    """A PNG of a CASA image (of a cube: its brightest plane) with the beam, a colour bar, peak and rms.

    Returns {'peak', 'rms' (in the image's unit, e.g. Jy/beam), 'unit', 'beam' ({'major', 'minor'} in
    arcsec, 'pa' in degrees, or None), 'plane'}.  The rms is robust (1.4826 × the median absolute
    deviation of the plane shown), so a bright source does not inflate it.
    """
    import numpy
    plane, mask, info = _read_brightest_plane(image_path, casa)
    values = plane[mask & numpy.isfinite(plane)]
    peak = float(values.max()) if values.size else float('nan')
    rms = float(1.4826 * numpy.median(numpy.abs(values - numpy.median(values)))) if values.size else float('nan')
    shown = numpy.where(mask, plane, numpy.nan)
    _plot_thumbnail(shown, info, peak=peak, rms=rms, title=Path(str(image_path)).name, png_path=Path(png_path))
    return {'peak': peak, 'rms': rms, 'unit': info['unit'], 'beam': info['beam'], 'plane': info['plane']}


def _read_brightest_plane(image_path, casa):
    """The (x, y) plane with the highest peak, its mask, and what the plot needs to know."""
    import numpy
    image = casa.casatools.image()
    image.open(str(image_path))
    try:
        shape = [int(n) for n in image.shape()]
        plane_index = [0] * len(shape)
        if int(numpy.prod(shape[2:])) > 1:
            statistics = image.statistics(axes=[0, 1], list=False, verbose=False)
            maxima = numpy.asarray(statistics.get('max', []), dtype=float)
            if maxima.size == int(numpy.prod(shape[2:])):
                if maxima.shape != tuple(shape[2:]):
                    maxima = maxima.reshape(shape[2:], order='F')  # CASA's own axis order
                flat = int(numpy.nanargmax(numpy.where(numpy.isfinite(maxima), maxima, -numpy.inf)))
                plane_index[2:] = [int(i) for i in numpy.unravel_index(flat, maxima.shape)]
        blc = [0, 0] + plane_index[2:]
        trc = [shape[0] - 1, shape[1] - 1] + plane_index[2:]
        plane = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True), dtype=float).reshape(shape[:2])
        mask = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True, getmask=True),
                             dtype=bool).reshape(shape[:2])
        quanta = casa.casatools.quanta()
        coordinates = image.coordsys()
        try:
            increments = coordinates.increment(type='direction', format='q')['quantity']
        finally:
            coordinates.done()
        info = {'unit': image.brightnessunit() or '', 'beam': _image_beam(image, quanta), 'plane': plane_index[2:],
                'arcsec_per_pixel': [quanta.convert(increments[axis], 'arcsec')['value'] for axis in ('*1', '*2')]}
    finally:
        image.close()
    return plane, mask, info


def _image_beam(image, quanta):
    """The image's (common) restoring beam in arcsec and degrees, or None when it has none."""
    if not image.restoringbeam():
        return None  # a model, pb or mask image
    beam = image.commonbeam()  # the largest of a cube's per-channel beams
    return {'major': quanta.convert(beam['major'], 'arcsec')['value'],
            'minor': quanta.convert(beam['minor'], 'arcsec')['value'],
            'pa': quanta.convert(beam.get('pa', beam.get('positionangle')), 'deg')['value']}


def _plot_thumbnail(plane, info, *, peak, rms, title, png_path):
    import numpy
    # The object interface with the Agg canvas: no pyplot, so no display and no clash with CASA's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    nx, ny = plane.shape
    dx, dy = info['arcsec_per_pixel']
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    # Offsets from the centre in arcsec; dx < 0, so east (larger RA) is on the left as on the sky.
    extent = [(-0.5 - cx) * dx, (nx - 0.5 - cx) * dx, (-0.5 - cy) * dy, (ny - 0.5 - cy) * dy]
    unit = info['unit']
    scale, shown_unit = (1e3, 'mJy/beam') if unit == 'Jy/beam' else (1.0, unit)
    figure = Figure(figsize=(4.6, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    finite = plane[numpy.isfinite(plane)]
    low = float(numpy.percentile(finite, 0.5)) * scale if finite.size else None
    picture = axes.imshow(plane.T * scale, origin='lower', extent=extent, cmap='inferno', vmin=low,
                          interpolation='nearest')
    figure.colorbar(picture, ax=axes, label=shown_unit)
    beam = info['beam']
    if beam:
        width, height = extent[1] - extent[0], extent[3] - extent[2]
        size = max(beam['major'], beam['minor'])
        centre = (extent[0] + 0.1 * width + numpy.sign(width) * size / 2, extent[2] + 0.1 * height + size / 2)
        # PA runs from north through east; with RA growing to the left that is clockwise in data coordinates.
        axes.add_patch(Ellipse(centre, width=beam['minor'], height=beam['major'], angle=-beam['pa'],
                               facecolor='none', edgecolor='cyan', linewidth=1.2))
    axes.set_xlabel('RA offset (arcsec)')
    axes.set_ylabel('Dec offset (arcsec)')
    beam_text = ', beam %.2f" × %.2f"' % (beam['major'], beam['minor']) if beam else ''
    axes.set_title('%s\npeak %.3g %s, rms %.2g %s%s' % (title, peak * scale, shown_unit, rms * scale, shown_unit,
                                                        beam_text), fontsize=8)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = png_path.with_name('.%s%s%d' % (png_path.name, PARTIAL_TAG, os.getpid()))
    figure.savefig(str(temporary), format='png')
    os.replace(str(temporary), str(png_path))


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
    """Real uid*_target(s).ms directories below work_dir: not links, shadows or staged copies."""
    found = []
    for root, dirs, _files in os.walk(str(work_dir)):
        for name in list(dirs):
            full = Path(root) / name
            if full.is_symlink():
                dirs.remove(name)
                continue
            if fnmatch.fnmatch(name, 'uid*_target*.ms'):
                # shadows and the pipeline's staged copies are this tool's stand-ins, not user data
                made_here = (full / SHADOW_MARKER).exists() or (full / STAGED_COPY_MARKER).exists()
                # a pipeline weblog has html/session*/<MS name>/ folders too: plots, no table.dat
                is_ms = (full / 'table.dat').is_file() and not (full / 'table.dat').is_symlink()
                if not made_here and is_ms:
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
        _configure_modular_casa(logfile=logfile)
    try:
        import casatools
        import casatasks
    except ImportError as error:
        raise ReprocessingError('CASA failed to import (%s) — install "six" with pip if it is missing, '
                                'or check the CASA installation' % error)
    # The terminal gets this script's own progress lines; CASA's messages go to its log.
    casatasks.casalog.showconsole(False)
    return CasaModules(casatools, casatasks, casatools.version_string(), 'modular')


def _configure_modular_casa(*, logfile=None):
    """Point modular CASA at casadata's measures, offline; to be done before casatools is first imported."""
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
    """MPI as CASA uses it: casampi's view once it is loaded, before that the launcher's environment."""
    environment = sys.modules.get('casampi.MPIEnvironment')
    if environment is not None:
        mpi = environment.MPIEnvironment
        if mpi.is_mpi_enabled:
            return MpiInfo(mpi.mpi_world_size, mpi.mpi_processor_rank, mpi.is_mpi_client)
        return MpiInfo(1, 0, True)  # casampi found no usable MPI: CASA runs in this process alone
    size, rank = mpi_launch()
    return MpiInfo(size, rank, rank == 0)


def mpi_launch():
    """(size, rank) of the MPI job this process was started in, from the launcher's environment; (1, 0) if none."""
    for size_var, rank_var in (('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'), ('PMI_SIZE', 'PMI_RANK')):
        if size_var in os.environ:
            try:
                return int(os.environ[size_var]), int(os.environ.get(rank_var, '0'))
            except ValueError:
                break
    return 1, 0


def _mpi_description():
    mpi = mpi_info()
    if mpi.size <= 1:
        size, _rank = mpi_launch()
        return 'MPI: none' if size <= 1 else 'MPI: started with %d processes, casampi not running' % size
    if not mpi.is_client:
        return 'MPI: %d ranks, this is server rank %d' % (mpi.size, mpi.rank)
    return 'MPI: %d ranks (rank 0 drives, %d casampi servers)' % (mpi.size, mpi.size - 1)


def mpi_servers_available():
    """True on rank 0 of an MPI job whose casampi servers can take CASA work (mpicasa, or mpirun + casampi)."""
    mpi = mpi_info()
    return mpi.size > 1 and mpi.is_client and 'casampi.MPIEnvironment' in sys.modules


def change_directory(path):
    """os.chdir here, and on the MPI servers too when there are some.

    CASA work sent to the servers uses their own working directory: tclean's temporary tables, the
    pipeline's parallel products (the pipeline works around the same problem in hif_selfcal).
    Without this they would land in the directory mpirun was started from.
    """
    os.chdir(str(path))
    if mpi_servers_available():
        from casampi.MPIEnvironment import MPIEnvironment
        from casampi.MPICommandClient import MPICommandClient
        client = MPICommandClient()
        client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
        client.push_command_request('os.chdir(%r)' % os.getcwd(), block=True,
                                    target_server=MPIEnvironment.mpi_server_rank_list())


def tclean_parallel(job):
    """tclean's parallel= for one imaging job: True for cubes and mosaics when MPI servers are there.

    Cubes spread their channels over the servers, mosaics their major cycles.  A single-pointing
    continuum image is gridded on rank 0: partitioning its data costs more than it gains.
    """
    return mpi_servers_available() and (bool(job.spectral) or job.gridder == 'mosaic')


# -- MPI with modular CASA: casampi's servers under "mpirun -n N python scriptForReprocessing.py" ---
#
# Under "mpicasa -n N casa -c scriptForReprocessing.py" (monolithic CASA), casashell makes ranks
# 1..N-1 casampi servers before the script starts, and only rank 0 runs it.  Under mpirun with
# modular CASA every rank starts this script; casa_mpi_job() then makes ranks 1..N-1 servers the
# same way: they serve inside the import of casampi.private.start_mpi and end the process there,
# never returning into the steps.  Rank 0 drives: it alone plans, takes the lock, writes the
# journal and outputs, and sends CASA work to the servers (tclean parallel=True, the pipeline's
# parallel='automatic', one execution block per server for --contsub_fast: MpiEbServers).
# casampi must be imported before casatasks on a server: importing casatasks under mpirun starts
# the servers too, but then inside casatasks' own import, where a task's "import casatasks" on a
# server waits forever for that import to finish (measured with casatasks 6.7 + casampi 0.6).

_MPI_JOB = {'client': None}


@contextlib.contextmanager
def casa_mpi_job():
    """Around a run: under mpirun with several ranks, ranks > 0 serve CASA here and exit; rank 0 continues.

    Rank 0 stops the servers when the body ends, also on errors, so that mpirun exits with rank
    0's status.  Without MPI, and in monolithic CASA (servers started by casashell), nothing happens.
    """
    size, rank = mpi_launch()
    if size <= 1 or _is_monolithic_casa():
        yield
        return
    client = _join_casampi(size, rank)  # a server never comes back from here
    _MPI_JOB['client'] = client
    try:
        yield
    except BaseException:
        _MPI_JOB['client'] = None
        _stop_mpi_servers(client, interrupt=True)
        raise
    _MPI_JOB['client'] = None
    _stop_mpi_servers(client, interrupt=False)


MPI_STOP_SECONDS = 60


def _stop_mpi_servers(client, *, interrupt):
    """Stop the servers and finalise MPI on every rank, so that mpirun exits with rank 0's status.

    After an error or a signal the servers may be busy, or gone (mpirun passes SIGTERM to every
    rank): they are told to drop what they do, and rank 0 waits at most MPI_STOP_SECONDS; if they
    have not answered by then, rank 0 exits anyway and mpirun ends the remaining ranks.
    """
    import atexit
    atexit.unregister(client.stop_services)  # casampi's own stop at exit would only warn "finalized", or wait
    if not interrupt:
        client.stop_services()  # the servers are idle: a few seconds
        return
    import threading
    stopper = threading.Thread(target=client.stop_services, kwargs={'force_command_request_interruption': True})
    stopper.daemon = True
    stopper.start()
    stopper.join(MPI_STOP_SECONDS)


def _join_casampi(size, rank):
    import importlib.util
    missing = [name for name in ('casampi', 'mpi4py') if importlib.util.find_spec(name) is None]
    if missing:
        raise ReprocessingError(
            'this run was started by mpirun with %d processes, but %s %s not installed in this Python (%s) — '
            'install them with "pip install casampi mpi4py" (and Open MPI), or run without mpirun'
            % (size, ' and '.join(missing), 'is' if len(missing) == 1 else 'are', sys.executable))
    if 'OMPI_COMM_WORLD_RANK' not in os.environ:
        raise ReprocessingError('this run was started by an MPI launcher other than Open MPI, which casampi does '
                                'not support — start it with Open MPI\'s mpirun (or mpicasa)')
    # casampi imports casatools, so CASA is configured first.  CASA's log goes nowhere until rank 0
    # has chosen the run's log (share_logs_with_mpi_servers): no casa-*.log lands in the user's directory.
    _configure_modular_casa(logfile=os.devnull)
    from casampi.MPIEnvironment import MPIEnvironment  # initialises MPI on this rank
    if not MPIEnvironment.is_mpi_enabled:
        reason = str(getattr(MPIEnvironment, 'mpi_error_msg', 'unknown reason')).strip().splitlines()
        raise ReprocessingError('casampi could not use MPI (%s) — check the Open MPI and mpi4py installation, '
                                'or run without mpirun' % (reason[-1] if reason else 'unknown reason'))
    _shorten_casampi_polling(MPIEnvironment)
    if rank != 0:
        _serve_until_stopped(rank)
    import casampi.private.start_mpi  # noqa: F401  (on rank 0: the client's side of the servers)
    from casampi.MPICommandClient import MPICommandClient
    client = MPICommandClient()
    client.set_log_mode('unified')
    client.start_services()
    return client


def _serve_until_stopped(rank):
    """An MPI server: run what rank 0 sends until it says stop; then end this process, whatever happens."""
    try:
        import casampi.private.start_mpi  # noqa: F401  (serves, then ends the process with status 0)
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; rank 0 reports it
        pass
    except BaseException as error:
        print('ERROR: MPI server rank %d stopped (%s: %s)' % (rank, type(error).__name__, _one_line(error)),
              file=sys.stderr, flush=True)
    os._exit(EXIT_FAILED)


def _shorten_casampi_polling(environment):
    """casampi's services poll every 3-5 s, which makes stopping the servers take ~17 s; 0.5-1 s is plenty.

    Set on every rank before the servers start (both sides read them); the timeouts that declare a
    server lost were computed from the defaults and stay as they are.
    """
    for name, seconds in (('mpi_stop_service_sleep_time', 0.5), ('mpi_monitor_status_service_heartbeat', 1.0),
                          ('mpi_ping_status_request_handler_service_sleep_time', 0.5),
                          ('mpi_ping_status_response_handler_service_sleep_time', 0.5)):
        if isinstance(getattr(environment, name, None), (int, float)):
            setattr(environment, name, min(getattr(environment, name), seconds))


def share_logs_with_mpi_servers(casa, logfile, console_log=None):
    """The MPI servers log where rank 0 does: the run's CASA log, and its console log for what C++ prints.

    Under mpirun, CASA was loaded before the run chose its log, so rank 0 switches too; under
    mpicasa, CASA's log is unified already.  A server's file descriptor 2 (casacore's and the
    imager's own WARN/SEVERE lines) goes to the console log, as rank 0's does during the steps.
    """
    if not mpi_servers_available():
        return
    from casampi.MPIEnvironment import MPIEnvironment
    from casampi.MPICommandClient import MPICommandClient
    client = MPICommandClient()
    client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
    commands = []
    if _MPI_JOB['client'] is not None and logfile is not None:
        casa.casatasks.casalog.setlogfile(str(logfile))
        commands.append('casalog.setlogfile(%r)' % str(logfile))
    if console_log is not None:
        commands.append('import os as _reprocessing_os\n'
                        '_reprocessing_fd = _reprocessing_os.open(%r, _reprocessing_os.O_WRONLY | '
                        '_reprocessing_os.O_APPEND | _reprocessing_os.O_CREAT, 0o644)\n'
                        '_reprocessing_os.dup2(_reprocessing_fd, 2)\n'
                        '_reprocessing_os.close(_reprocessing_fd)\n' % str(console_log))
    for command in commands:
        client.push_command_request(command, block=True, target_server=MPIEnvironment.mpi_server_rank_list())


# -- execution-block tasks on MPI servers -------------------------------------------------------------

MPI_SERVER_MODULE = 'scriptForReprocessing_on_mpi_server'
# Run once on every server (casampi executes it in its own namespace): load this script as a module
# from its path, without running main, so that the servers can call its execution-block tasks.
_MPI_SERVER_LOADER = '''
import importlib.util as _reprocessing_import, sys as _reprocessing_sys
if %(name)r not in _reprocessing_sys.modules:
    _reprocessing_spec = _reprocessing_import.spec_from_file_location(%(name)r, %(path)r)
    _reprocessing_module = _reprocessing_import.module_from_spec(_reprocessing_spec)
    _reprocessing_spec.loader.exec_module(_reprocessing_module)
    _reprocessing_sys.modules[%(name)r] = _reprocessing_module
'''


@contextlib.contextmanager
def eb_workers(jobs, *, state):
    """Where execution-block tasks run: on the MPI servers under MPI, else in `jobs` processes (EbWorkers)."""
    if mpi_servers_available():
        yield MpiEbServers.connect()
        return
    with EbWorkers.started(jobs, state=state) as workers:
        yield workers


class MpiEbServers(object):
    """Execution-block tasks (see eb_task) on casampi's servers, one execution block per server at a time.

    Same interface as EbWorkers (count, run).  Rank 0 keeps the journal: the tasks only write the
    temporary outputs rank 0 registered.  A server's progress lines come back with its result and
    are printed prefixed with the execution block's name.
    """
    POLL_SECONDS = 0.2

    def __init__(self, client, servers):
        self.client = client
        self.servers = list(servers)
        self.count = len(self.servers)
        self.loaded = False

    @classmethod
    def connect(cls):
        from casampi.MPIEnvironment import MPIEnvironment
        from casampi.MPICommandClient import MPICommandClient
        client = MPICommandClient()
        client.start_services()  # running already under mpirun; under mpicasa perhaps not yet
        return cls(client, MPIEnvironment.mpi_server_rank_list())

    def run(self, tasks, *, casa):
        """Results of the tasks, in their order; after a failure no new task starts, and the first is raised."""
        self._load_script_on_servers()
        queue, idle = list(enumerate(tasks)), list(self.servers)
        running = {}  # request id -> (index, task, server)
        results, failures = [None] * len(tasks), []
        while queue or running:
            while queue and idle and not failures:
                index, task = queue.pop(0)
                server = idle.pop(0)
                running[self._push(task, server)] = (index, task, server)
                say('  [%s] on MPI server %d' % (task['eb'], server))
            if not running:
                break
            time.sleep(self.POLL_SECONDS)
            for response in self.client.get_command_response(list(running), block=False, verbose=False):
                index, task, server = running.pop(response['id'])
                idle.append(server)
                answer = self._answer(response, task, server)
                for line in answer.get('lines', []):
                    say('  [%s] %s' % (task['eb'], line))
                if answer.get('ok'):
                    results[index] = answer['result']
                else:
                    failures.append(answer.get('error', 'unknown error'))
        if failures:
            raise ReprocessingError(failures[0])
        return results

    def _load_script_on_servers(self):
        if self.loaded:
            return
        script = _script_path()
        if script is None:
            raise ReprocessingError('cannot find this script\'s own path, which the MPI servers need to load it — '
                                    'run it by its path (python /path/to/%s ...)' % SCRIPT_NAME)
        loader = _MPI_SERVER_LOADER % {'name': MPI_SERVER_MODULE, 'path': str(script)}
        responses = self.client.push_command_request(loader, block=True, target_server=self.servers) or []
        failed = [r for r in responses if not r.get('successful')]
        if failed or len(responses) != len(self.servers):
            detail = _one_line(failed[0].get('traceback') or 'no answer') if failed else 'no answer'
            raise ReprocessingError('the MPI servers cannot load %s (%s) — it must be readable at the same path on '
                                    'every node' % (script, detail))
        self.loaded = True

    def _push(self, task, server):
        command = '__import__(%r).modules[%r].run_eb_task_on_mpi_server(%r)' % (
            'sys', MPI_SERVER_MODULE, json.dumps(task))
        ids = self.client.push_command_request(command, block=False, target_server=[server])
        if not ids:
            raise ReprocessingError('MPI server %d did not accept the work on %s — see the CASA log'
                                    % (server, task['eb']))
        return ids[0]

    @staticmethod
    def _answer(response, task, server):
        if response.get('successful'):
            try:
                return json.loads(response.get('ret'))
            except (TypeError, ValueError):
                pass
        detail = str(response.get('traceback') or response.get('status') or 'no answer').strip().splitlines()
        return {'ok': False, 'error': '%s on %s failed on MPI server %d (%s) — see the CASA log' % (
            task['function'], task['eb'], server, detail[-1] if detail else 'no answer')}


def run_eb_task_on_mpi_server(task_json):
    """On an MPI server: one execution-block task; the answer (JSON) carries its progress lines."""
    task = json.loads(task_json)
    lines = []
    try:
        casa = load_casa()
        answer = {'ok': True, 'result': EB_TASKS[task['function']](casa, lines.append, **task['arguments'])}
    except ReprocessingError as error:
        answer = {'ok': False, 'error': str(error)}
    except Exception as error:
        answer = {'ok': False, 'error': '%s failed on %s (%s: %s) — see the CASA log' % (
            task.get('function'), task.get('eb'), type(error).__name__, _one_line(error))}
    answer['lines'] = lines
    return json.dumps(answer)


# ===========================================================================
# main
# ===========================================================================

STEP_ORDER = ('check', 'contsub', 'image', 'calibrated_final', 'calibrated_final_line', 'cleanup', 'weblog')


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
    if script_arguments(argv)[:1] == [EB_WORKER_FLAG]:
        return run_eb_worker(script_arguments(argv)[1:])  # a worker process of a parallel --contsub_fast
    try:
        try:
            options = build_parser().parse_args(script_arguments(argv))
        except SystemExit as finished:  # --help
            return finished.code or EXIT_OK
        check_combinations(options)
        with casa_mpi_job():  # under mpirun: ranks > 0 serve CASA in here and never come back
            return run(options, argv)
    except UsageError as error:
        if mpi_launch()[1] == 0:  # under mpirun every rank reads the same command line: say it once
            report_error(str(error))
        return EXIT_USAGE
    except ReprocessingError as error:
        report_error(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        report_error('interrupted — partial outputs were removed; run the same command again')
        return EXIT_FAILED


def run(options, argv):
    root = options.delivery or Path.cwd().resolve()
    delivery = Delivery(root)
    if not mpi_info().is_client:  # a server rank that casa_mpi_job did not keep: never run steps there
        raise ReprocessingError('MPI rank %d reached the steps, which only rank 0 runs — start the run with mpirun '
                                'and casampi installed, or without mpirun' % mpi_info().rank)
    plan = make_plan(options, delivery)
    if options.image is not None:
        preflight_images(plan)  # reads the MSes' metadata with CASA: after every check that does not need it
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
            report_status, report_error = 'failed', None
            try:
                _run_steps(plan, state)
                report_status = 'succeeded'
            except BaseException as error:
                report_error = error
                raise
            finally:
                write_report(plan, state, status=report_status, error=report_error)
                state.finish()
    finally:
        state.release()
    say('Done.')
    return EXIT_OK


def _run_steps(plan, state):
    casa = None
    for number, step in enumerate(plan.steps, 1):
        say('[%d/%d] %s' % (number, len(plan.steps), step.summary))
        state.current_step = {'step': step.name, 'started': time.time()}
        if casa is None and step.name not in ('cleanup', 'weblog'):
            casa = _start_casa(plan, state)
        started = time.time()
        with contextlib.ExitStack() as console:
            if casa is not None and step.name != 'weblog':
                console.enter_context(native_output_into(state.console_log))
            result = step.function(plan, state, step, casa) or {}
        ended = time.time()
        result.update(step=step.name, seconds=round(ended - started, 1), started=started, ended=ended)
        state.results.append(result)
        state.current_step = None


@contextlib.contextmanager
def native_output_into(path):
    """Send what CASA's C++ layer prints straight to the terminal into a file.

    casalog.showconsole(False) silences CASA's logger, but casacore and the
    imager still print WARN/SEVERE lines on file descriptor 2 (an old leap-second
    table, "No regions found by automasking"), which would bury the script's own
    progress lines.  They are kept, in the console log (console-<time>.log) beside the CASA log.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(str(path), 'a') as console:
            os.dup2(console.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _start_casa(plan, state):
    logfile = None
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    state.logs_dir.mkdir(parents=True, exist_ok=True)
    state.console_log = state.logs_dir / ('console-%s.log' % stamp)
    if not _is_monolithic_casa():
        logfile = state.logs_dir / ('casa-%s.log' % stamp)
    casa = load_casa(logfile=logfile)
    if logfile is not None and casa.casatasks.casalog.logfile() == os.devnull:
        casa.casatasks.casalog.setlogfile(str(logfile))  # loaded by the plan (preflight_images), logging nowhere
    share_logs_with_mpi_servers(casa, logfile, state.console_log)
    state.casa_logfile = Path(casa.casatasks.casalog.logfile()).resolve()
    record_created_log(plan.delivery, state.casa_logfile)
    say('  CASA log: %s (messages CASA prints itself: %s)' % (state.casa_logfile, state.console_log.name))
    return casa


if __name__ == '__main__':
    sys.exit(main())
