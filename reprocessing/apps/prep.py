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
import os
import sys
from pathlib import Path

from ..casa.casa_engine import casa_log_path, leave_directory_too_long_for_casa, load_casa, native_output_into
from ..casa.data_columns import has_selfcal_column
from ..core.fileops import directory_bytes, free_bytes
from ..core.layout import PREP_SCRIPT_NAME, SCRIPT_NAME
from ..core.messages import EXIT_OK, exit_as_finished, ReprocessingError, say, warn
from ..core.prep_layout import DEFAULT_OUTPUT_NAME, MODE_COPY, MODE_LINK, MODE_MOVE
from ..core.script import script_arguments, script_path
from ..plan.prep_plan import _describe_missing_products, build_plan, check_free_space, check_move_is_possible, check_not_a_delivery, check_output_is_free, check_output_outside_sources, find_delivery_products, format_plan, leftover_partial_outputs, next_steps_text
from ..steps.prep_build import _os_error, casa_logfile_for, execute_plan
from .parser import OneLineParser, existing_directory
from .runner import run_main


def output_directory(text):
    if not text.strip():
        raise argparse.ArgumentTypeError('the output directory name is empty')
    # abspath, not resolve: the output does not exist yet, and its name must stay as given.
    return Path(os.path.abspath(os.path.expanduser(text)))


def build_parser():
    parser = OneLineParser(
        prog=PREP_SCRIPT_NAME,
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


def prepare(options):
    """Everything after the command line; raises ReprocessingError."""
    working = options.working or Path(os.getcwd()).resolve()
    output = options.output or working.parent / DEFAULT_OUTPUT_NAME
    leave_directory_too_long_for_casa()  # every path is absolute now
    check_not_a_delivery(working=working)
    check_output_is_free(output=output)
    products = find_delivery_products(working=working)
    if not products.targets_ms and not products.cycle8_conversions:
        raise ReprocessingError(_describe_missing_products(working=working))
    reprocessing_script = None
    script = script_path(PREP_SCRIPT_NAME)
    if script is not None and (script.parent / SCRIPT_NAME).is_file():
        reprocessing_script = script.parent / SCRIPT_NAME
    sources = (products.targets_ms + products.targets_line_ms + products.uvcont_tables
               + [c.source for c in products.cycle8_conversions]
               + ([products.cont_dat] if products.cont_dat else [])
               + ([reprocessing_script] if reprocessing_script else []))
    check_output_outside_sources(output=output, sources=[s.resolve() for s in sources])
    try:
        sizes = {source: directory_bytes(source, follow_links=True) for source in sources}
    except OSError as exc:
        raise _os_error('read', exc)

    casa_logfile = casa_logfile_for(working=working, output=output, dry_run=options.dry_run)
    corrected_column = {}
    casa = None
    if products.cycle8_conversions:
        casa = load_casa(logfile=casa_logfile)
        with native_output_into(casa_log_path(casa)):
            for conversion in products.cycle8_conversions:
                corrected_column[conversion.source] = has_selfcal_column(
                    casa, conversion.source, missing='check that it is a complete measurement set')

    plan = build_plan(working=working, output=output, mode=options.mode, products=products, sizes=sizes,
                      corrected_column=corrected_column, reprocessing_script=reprocessing_script,
                      pid=os.getpid())
    if os.path.lexists(str(plan.partial_output)):
        raise ReprocessingError('%s is left over from an interrupted run (with --move it may hold your measurement '
                        'sets) — move back what you need from it, then remove it' % plan.partial_output)
    for leftover in leftover_partial_outputs(output=output):
        warn('%s is left over from an interrupted run (with --move it may hold your measurement sets) — '
             'move back what you need from it, then remove it' % leftover, stream=sys.stderr)
    for message in plan.warnings:
        warn(message, stream=sys.stderr)
    say(format_plan(plan, free_bytes=free_bytes(output.parent)))
    check_free_space(plan=plan)
    if plan.mode == MODE_MOVE:
        check_move_is_possible(plan=plan)
    if options.dry_run:
        say('Dry run: nothing was changed.')
        return EXIT_OK
    if casa is not None:
        say('CASA log: %s' % casa_log_path(casa))
    execute_plan(plan, casa_logfile=casa_logfile, say=say)
    say('Done: %s is ready (%s mode).' % (output, plan.mode))
    say(next_steps_text(output=output, reprocessing_script_copied=reprocessing_script is not None))
    return EXIT_OK


def main(argv=None):
    """Run the script; returns the exit status (0 success, 1 failure, 2 usage error)."""
    args = script_arguments(argv, script=PREP_SCRIPT_NAME)
    return run_main(lambda: build_parser().parse_args(args), prepare, script=PREP_SCRIPT_NAME)


if __name__ == '__main__':
    exit_as_finished(main())
