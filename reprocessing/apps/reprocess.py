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

import argparse
import contextlib
import datetime
import os
import time
from pathlib import Path

from ..casa.casa_engine import CASA_CWD_LIMIT, LONGEST_PATH_BELOW_DELIVERY, PATH_LIMIT, casa_safe_directory, is_monolithic_casa, leave_directory_too_long_for_casa, load_casa, native_output_into
from ..casa.environment import describe_environment
from ..casa.mpi import casa_mpi_job, mpi_info, mpi_launch, share_logs_with_mpi_servers
from ..casa.pipeline_engine import pipeline_call_log
from ..casa.workers import EB_WORKER_FLAG, run_eb_worker
from ..core.defaults import IMAGES_DIR, SPECMODES, WEBLOG
from ..core.fileops import relative_path
from ..core.host import process_started_at
from ..core.layout import Delivery, SCRIPT_NAME, WORK_DIR_NAME
from ..core.messages import EXIT_OK, exit_as_finished, Interrupted, raise_if_stopped, ReprocessingError, stop_behind, UsageError, say
from ..core.script import script_arguments
from ..imaging.beams import parse_beam
from ..imaging.image_resume import kept_for_next_run
from ..imaging.moments import parse_moments
from ..imaging.spectral_grid import parse_nchan, parse_outframe, parse_restfreq, parse_start, parse_veltype, parse_width
from ..plan.imaging_options import IMAGING_ENGINES, argparse_type, check_imaging_options, parse_cell, parse_field, parse_gigabytes, parse_imsize, parse_nbins, parse_phasecenter, parse_robust, parse_specmodes, parse_spw, parse_uvrange, parse_uvtaper
from ..plan.image_plan import preflight_images, preview_update
from ..plan.plan import check_measurement_sets, describe_plan, make_plan, preflight_combination, preflight_data_columns
from ..plan.requests import chosen_actions, run_request
from ..report.report import write_report
from ..run.interrupted import forget_kept, new_outputs, output_identities, remember_kept
from ..run.run_state import RunState
from ..steps.cleanup import record_created_log
from ..steps.weblog import WEBLOG_PORTS
from .parser import OneLineParser, existing_directory
from .runner import run_main


def build_parser():
    parser = OneLineParser(
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
    actions.add_argument('--combine', nargs='+', type=existing_directory, default=None, metavar='DIR',
                         help='image this delivery jointly with the other deliveries of its science goal (their '
                              'calibrated_final/ folders: 7 m, another 12 m configuration), CASA engine, into combined/')
    actions.add_argument('--feather', default=None, metavar='TP_IMAGE',
                         help='with --combine: feather the joint image with this total-power image (FITS or CASA, '
                              'Jy/beam)')
    actions.add_argument('--contdat', default=None, metavar='FILE|merge',
                         help='with --combine: the line-free ranges (LSRK) for every delivery\'s continuum '
                              'subtraction: a cont.dat covering all (blocks in each delivery\'s spw ids, or in this '
                              'delivery\'s), or "merge": the intersection of the deliveries\' own cont.dat '
                              '(default: each delivery its own)')
    general = parser.add_argument_group('general')
    general.add_argument('--delivery', type=existing_directory, default=None, metavar='DIR',
                         help='the calibrated_final/ directory to work on (default: the current directory)')
    general.add_argument('--dry-run', action='store_true',
                         help='print the plan (steps, inputs, outputs, disk needed) and exit without touching anything')
    general.add_argument('--port', type=_port_number, default=None, metavar='N',
                         help='with --weblog: the first port to try (default: a free one in %d-%d)' % WEBLOG_PORTS)
    general.add_argument('--no-browser', action='store_true',
                         help='with --weblog: only print the address, do not open a browser')
    general.add_argument('--update', action='store_true',
                         help='with --image DIR (and --contsub_fast): DIR may hold the images of an earlier run; '
                              'keep each requested image (and line MS) whose recorded inputs and parameters are '
                              'unchanged, remake only the others and say why; with --dry-run: only say it')
    general.add_argument('--jobs', type=_job_count, default=None, metavar='N',
                         help='worker processes of every step: execution blocks of --contsub_fast and images of '
                              '--image (CASA engine) made at the same time, each in its own process (default: the '
                              'number of cores, at most the number of execution blocks or images; under mpirun the '
                              'MPI servers are the workers)')
    general.add_argument('--memory-per-worker', type=_memory_size, default=None, metavar='SIZE',
                         help='with --image: the memory each worker process may use, e.g. 4GB or 500MB (default: '
                              'the available memory divided by the workers); an image that needs more is refused '
                              'before any work, unless it is a cube that channel chunks can make (--split-cube)')
    general.add_argument('--split-cube', type=_split_cube, default='auto', metavar='auto|no|N',
                         help='with --image (CASA engine, no MPI): make a cube as channel chunks, each its own tclean '
                              'in a worker, joined into one cube. auto (default): only a cube that does not fit '
                              '--memory-per-worker in one process; N: every cube in at least N chunks, over the '
                              '--jobs workers (for speed); no: never. A split cube differs slightly from the '
                              'one-process cube (README: "One cube over several workers")')
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
    add_imaging_arguments(parser)
    return parser


def _fit_order(text):
    if not text.isdigit() or int(text) > 3:
        raise argparse.ArgumentTypeError('%s is not a fit order: give 0, 1, 2 or 3' % text)
    return int(text)


def _split_cube(text):
    if text in ('auto', 'no'):
        return text
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError('%s: give auto, no, or a number of chunks of 2 or more' % text)
    return int(text)


def _job_count(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError('%s is not a number of jobs: give 1 or more' % text)
    return int(text)


_SIZE_UNITS = {'': 1e9, 'B': 1, 'KB': 1e3, 'MB': 1e6, 'GB': 1e9, 'TB': 1e12, 'K': 1e3, 'M': 1e6, 'G': 1e9,
               'T': 1e12, 'KIB': 2 ** 10, 'MIB': 2 ** 20, 'GIB': 2 ** 30, 'TIB': 2 ** 40}


def _memory_size(text):
    """Bytes of '4GB', '500MB', '1.5G', '2GiB' (a bare number is GB)."""
    number = text.strip().rstrip('bBiIkKmMgGtT')
    unit = text.strip()[len(number):].upper()
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError('%s is not a memory size: give e.g. 4GB or 500MB' % text)
    if size < 1e6:
        raise argparse.ArgumentTypeError('%s is too little memory for a worker: give e.g. 4GB or 500MB' % text)
    return int(size)


def check_combinations(options):
    """Rules that depend on the flags alone."""
    actions = chosen_actions(options)
    if not actions:
        raise UsageError('no action given — add at least one of --contsub, --contsub_fast, --check, --image, '
                         '--calibrated_final, --calibrated_final_line, --cleanup, --weblog, --combine')
    for flag, given in (('--refit', options.refit), ('--fitorder', options.fitorder is not None)):
        if given and not options.contsub_fast:
            raise UsageError('%s only applies to --contsub_fast — add it' % flag)
    if options.jobs is not None and not (options.contsub_fast or options.image is not None):
        raise UsageError('--jobs only applies to --contsub_fast and --image (the steps that run in worker '
                         'processes) — add one of them')
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
    if options.memory_per_worker is not None and options.image is None:
        raise UsageError('--memory-per-worker is checked against the images of --image — add --image [DIR]')
    if options.split_cube != 'auto' and options.image is None:
        raise UsageError('--split-cube splits the cubes of --image — add --image [DIR]')
    if options.overwrite_line and not (options.contsub or options.contsub_fast):
        raise UsageError('--overwrite-line only applies to --contsub or --contsub_fast — add one of them')
    if options.update:
        if options.image is None and not options.contsub_fast:
            raise UsageError('--update keeps the images (and line MSes) that are up to date — add --image DIR '
                             '(and --contsub_fast)')
        if options.contsub:
            raise UsageError('--update works with --contsub_fast, whose line MSes record what they were made '
                             'from; the pipeline\'s --contsub does not — use --contsub_fast')
        if options.reuse_images:
            raise UsageError('--update and --reuse-images both allow an existing images folder — choose one')
        if options.engine == 'pipeline':
            raise UsageError('--update works with --engine casa (the pipeline\'s imaging parameters are not '
                             'recorded) — add --engine casa')
    if options.image is not None:
        _check_relative_output_name(options.image, '--image')
    elif options.archive_products is not None:
        raise UsageError('--archive-products compares the images of --image with the archive\'s — add --image [DIR]')
    if options.feather is not None and not options.combine:
        raise UsageError('--feather adds total power to the joint image of --combine — add --combine DIR')
    if options.contdat is not None and not options.combine:
        raise UsageError('--contdat gives the line-free ranges of the deliveries of --combine — add --combine DIR '
                         '(a delivery alone uses its caltables/cont.dat)')
    if options.contdat not in (None, 'merge') and not os.path.isfile(os.path.expanduser(options.contdat)):
        raise UsageError('--contdat %s is not a file — give a cont.dat, or "merge" to intersect the deliveries\' own'
                         % options.contdat)
    check_imaging_options(options)


def _check_relative_output_name(name, flag):
    if not name or name.startswith('-'):
        raise UsageError('%s needs a directory name, got "%s" — e.g. %s images' % (flag, name, flag))


def add_imaging_arguments(parser):
    group = parser.add_argument_group(
        'imaging (with --image; defaults: the block at the top of this script, else the heuristics)')
    add = group.add_argument
    add('--specmodes', type=argparse_type(parse_specmodes), metavar='LIST',
        help='images to make, any of mfs,cont,cube,repBW (default: %s)' % ','.join(SPECMODES))
    add('--robust', type=argparse_type(parse_robust), metavar='R', help='Briggs robust, -2..2 (default 0.5)')
    add('--uvtaper', type=argparse_type(parse_uvtaper), metavar='TAPER', help='e.g. 0.5arcsec or 200klambda')
    add('--uvrange', type=argparse_type(parse_uvrange), metavar='RANGE', help='e.g. ">20klambda"')
    add('--field', type=argparse_type(parse_field), metavar='NAMES', help='science fields to image (names)')
    add('--spw', type=argparse_type(parse_spw), metavar='IDS', help='spws to image, e.g. 25,27')
    add('--phasecenter', type=argparse_type(parse_phasecenter), metavar='DIRECTION',
        help='image centre, e.g. "ICRS 16:32:22.6 -24.28.33"')
    add('--imsize', type=argparse_type(parse_imsize), metavar='SIZE', help='pixels (512 or 512,512) or 0.3pb')
    add('--cell', type=argparse_type(parse_cell), metavar='CELL', help='e.g. 0.05arcsec or 3ppb')
    add('--nbins', type=argparse_type(parse_nbins), metavar='SPW:N,...',
        help='channel binning for cubes, e.g. 25:2,*:4')
    add('--start', type=argparse_type(parse_start), metavar='[SPW:]V',
        help='a cube\'s first channel, a velocity or frequency, e.g. -20km/s or 25:-20km/s,27:230.5GHz')
    add('--width', type=argparse_type(parse_width), metavar='[SPW:]W', help='a cube\'s channel width: 0.5km/s, 1MHz or 2 (channels)')
    add('--nchan', type=argparse_type(parse_nchan), metavar='[SPW:]N', help='a cube\'s number of channels')
    add('--restfreq', type=argparse_type(parse_restfreq), metavar='[SPW:]F',
        help='rest frequency for velocities (default: the SOURCE table\'s, else the cube\'s centre)')
    add('--outframe', type=argparse_type(parse_outframe), metavar='FRAME', help='LSRK (default), BARY, TOPO or SOURCE')
    add('--veltype', type=argparse_type(parse_veltype), metavar='TYPE', help='radio (default) or optical')
    add('--moments', type=argparse_type(parse_moments), metavar='LIST', help='moment maps of every cube: any of 0,1,2,8')
    add('--beam', type=argparse_type(parse_beam), metavar='BEAM',
        help='common (one beam per cube), round, or a resolution like 0.5arcsec')
    add('--no-mitigation', action='store_true', help='pipeline: skip hif_checkproductsize')
    add('--maxproductsize', type=argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 500)')
    add('--maxcubesize', type=argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 40)')
    add('--maxcubelimit', type=argparse_type(parse_gigabytes), metavar='GB',
        help='pipeline mitigation limit (its default: 60)')
    add('--engine', choices=IMAGING_ENGINES, default=None,
        help='imaging engine: the ALMA pipeline, or CASA tclean without it '
             '(default auto: the pipeline when it can be imported)')
    add('--allow-cubes-with-continuum', action='store_true',
        help='make cube/repBW images from uid*_targets.ms when no continuum-subtracted line MS exists')
    add('--all-products', action='store_true',
        help='keep every image the engine made (psf, residual, model, iter0, ...), not only the final ones')
    add('--archive-products', metavar='DIR', default=None,
        help='the archive\'s image products (*_sci.spw*.I.pbcor.fits) to compare the new images with (default: '
             'a product/ folder beside the delivery, when there is one)')
    add('--reuse-images', action='store_true',
        help='allow an existing, non-empty images directory (no product name may already be in it)')


def _port_number(text):
    """argparse type of --port."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('--port needs a number, got "%s"' % text)
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError('--port must be between 1024 and 65535, got %d' % port)
    return port


def main(argv=None):
    """Run the script; returns the exit status (0 success, 1 failure, 2 usage error)."""
    args = script_arguments(argv, script=SCRIPT_NAME)
    if args[:1] == [EB_WORKER_FLAG]:
        return run_eb_worker(args[1:])  # a worker process of a parallel --contsub_fast

    def checked_run(options):
        check_combinations(options)
        avoid_long_paths(options)
        with casa_mpi_job():  # under mpirun: ranks > 0 serve CASA in here and never come back
            return run(options, args)
    # Under mpirun every rank reads the same command line; rank 0 says a usage error once and exits 2.  A
    # server rank that exited 2 first made mpirun kill rank 0 before it printed (seen with Python 3.12),
    # so the others end quietly and mpirun passes on rank 0's status.
    return run_main(lambda: build_parser().parse_args(args), checked_run, script=SCRIPT_NAME,
                    usage_said_elsewhere=lambda: mpi_launch()[1] != 0)


def avoid_long_paths(options):
    """Before CASA is imported: a path CASA cannot work in is refused in one line, and a current directory
    too long for it (CASA_CWD_LIMIT) is left for a short one, every path of the run being absolute."""
    here = os.getcwd()
    root = options.delivery or Path(here).resolve()
    writes = set(chosen_actions(options)) - {'check', 'weblog', 'cleanup'}
    if writes and len(str(root)) + LONGEST_PATH_BELOW_DELIVERY > PATH_LIMIT:
        raise ReprocessingError('the delivery\'s path is %d characters long: the files this tool writes in it '
                                'would pass the system\'s limit of %d — move the delivery to a shorter path'
                                % (len(str(root)), PATH_LIMIT))
    work_dir = root / WORK_DIR_NAME / 'pipeline-image-YYYYMMDDTHHMMSS'
    if (options.contsub or options.image is not None) and len(str(work_dir)) >= CASA_CWD_LIMIT:
        raise ReprocessingError('the delivery\'s path is %d characters long: CASA cannot work in a directory '
                                'of more than %d characters, and %s runs in %s/ — move the delivery to a '
                                'shorter path (--check, --contsub_fast and --calibrated_final work from it as it is)'
                                % (len(str(root)), CASA_CWD_LIMIT, '--contsub' if options.contsub else '--image',
                                   WORK_DIR_NAME))
    if casa_safe_directory(here) != here:  # every path of the run made absolute before leaving
        options.delivery = root
        if options.archive_products is not None:
            options.archive_products = os.path.abspath(options.archive_products)
    leave_directory_too_long_for_casa()


def run(options, args):
    root = options.delivery or Path.cwd().resolve()
    delivery = Delivery(root)
    request = run_request(options, root)
    if not mpi_info().is_client:  # a server rank that casa_mpi_job did not keep: never run steps there
        raise ReprocessingError('MPI rank %d reached the steps, which only rank 0 runs — start the run with mpirun '
                                'and casampi installed, or without mpirun' % mpi_info().rank)
    plan = make_plan(request, delivery)
    check_measurement_sets(plan)  # opens every input MS with CASA (metadata only), --dry-run too
    if {'contsub', 'contsub_fast', 'image'} & set(request.actions):
        preflight_data_columns(plan)  # which MSes are self-calibrated: CASA reads their columns (read-only)
    if request.image is not None:
        preflight_images(plan)  # reads the MSes' metadata with CASA: after every check that does not need it
    if request.combine is not None:
        preflight_combination(plan)  # every delivery's MSes (metadata): what combines, or one line why not
    say(describe_environment())
    if request.dry_run:
        say(describe_plan(plan))
        if request.update:
            preview_update(plan)
        say('Dry run: nothing was changed.')
        return EXIT_OK
    for note in plan.notes:
        say('Note: ' + note)
    state = RunState(delivery)
    state.acquire()
    outputs_before = {}
    try:
        state.recover()
        outputs_before = output_identities([output for step in plan.steps for output in step.outputs])
        state.begin(' '.join([SCRIPT_NAME] + args))
        status, failure = 'failed', None
        try:
            _run_steps(plan, state)
            status = 'succeeded'
            forget_kept(delivery)
        except BaseException as error:
            failure = stop_behind(error) or error
            if failure is not error:  # a stop signal's exception that came back as another
                raise failure
            raise
        finally:
            write_report(plan, state, status=status, error=failure)
            state.finish()
    except (Interrupted, KeyboardInterrupt) as stop:
        raise Interrupted(getattr(stop, 'number', 2), describe_interruption(stop, state, outputs_before))
    finally:
        state.release()
    say('Done.')
    return EXIT_OK


def describe_interruption(stop, state, outputs_before):
    """What a stopped run left on disk, and what to do next: true of what is there now.

    outputs_before: the identities of the plan's final outputs when the run began; an output there now
    under a new identity was completed by this run, even when the signal came between its rename and
    the run's note of it.  Those are remembered, so that the same command run again keeps them.
    """
    what = 'interrupted (Ctrl-C)' if isinstance(stop, KeyboardInterrupt) else str(stop)
    made = new_outputs(outputs_before, state.published)
    pieces = _kept_pieces(state.delivery)
    if not made and pieces:
        return '%s — %s kept in %s; run the same command again: it makes only the rest' % (
            what, pieces, relative_path(state.delivery.work_dir, state.delivery.root))
    if not made:
        return '%s — nothing of this run was kept; run the same command again' % what
    if pieces:
        what = '%s (%s kept in %s for the same command)' % (
            what, pieces, relative_path(state.delivery.work_dir, state.delivery.root))
    remember_kept(state.delivery, state.command, made)
    names = ', '.join(relative_path(path, state.delivery.root) for path in made)
    if all(path.endswith('.ms') for path in made):  # the plan keeps measurement sets a stopped run completed
        return ('%s — these outputs were complete and are kept: %s; unfinished ones were removed. Run the same '
                'command again: it keeps them and makes the rest' % (what, names))
    return ('%s — these outputs were complete and are kept: %s; unfinished ones were removed. Run the command '
            'again without the steps that made them (or move them away first)' % (what, names))


def _kept_pieces(delivery):
    """'2 finished images and 5 chunks of split cubes' a stopped run keeps for the same command (image_resume), or ''."""
    images, chunks = kept_for_next_run(delivery.finished_images_dir, delivery.chunks_dir)
    parts = ['%d finished image%s' % (images, '' if images == 1 else 's')] if images else []
    if chunks:
        parts.append('%d chunk%s of split cubes' % (chunks, '' if chunks == 1 else 's'))
    return ' and '.join(parts)


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
        raise_if_stopped()  # a stop that an error handler of the step took for an error and carried on


def _start_casa(plan, state):
    logfile = None
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    state.logs_dir.mkdir(parents=True, exist_ok=True)
    state.console_log = state.logs_dir / ('console-%s.log' % stamp)
    if not is_monolithic_casa():
        logfile = state.logs_dir / ('casa-%s.log' % stamp)
    casa = load_casa(logfile=logfile)
    if logfile is not None and casa.casalog.logfile() == os.devnull:
        casa.casalog.setlogfile(str(logfile))  # loaded by the plan (preflight_images), logging nowhere
    share_logs_with_mpi_servers(casa, logfile, state.console_log)
    state.casa_logfile = Path(casa.casalog.logfile()).resolve()
    state.record_logs(state.console_log, state.casa_logfile)
    record_created_log(plan.delivery, state.casa_logfile)
    calls = pipeline_call_log()  # opened by "casa --pipeline" at its start, in the user's folder
    if calls is not None and calls.is_file() and calls.stat().st_mtime >= process_started_at():
        record_created_log(plan.delivery, calls)
    say('  CASA log: %s (messages CASA prints itself: %s)' % (state.casa_logfile, state.console_log.name))
    return casa


if __name__ == '__main__':
    exit_as_finished(main())
