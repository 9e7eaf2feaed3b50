"""reprocessing_prep.py's plan: what in a restored working/ belongs in calibrated_final/, and the steps.

Reads directory listings and sizes only (CASA is asked about pre-Cycle-9 MSes by the caller); the
checks run before anything is written.
"""

import collections
import os
from pathlib import Path
from pathlib import PurePosixPath

from ..core.fileops import FREE_SPACE_MARGIN, PARTIAL_TAG, human_bytes, require_free_space, with_free_space_margin
from ..core.layout import PREP_SCRIPT_NAME, SCRIPT_NAME
from ..core.messages import ReprocessingError
from ..core.prep_layout import ACTION_CONVERT, ACTION_COPY, ACTION_DELIVER, CALTABLES_DIR, MODE_COPY, MS_DIR, step_verb


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


def _measurement_sets(*, working, pattern):
    """The MS directories in working/ matching pattern; a matching name that is no MS is an error."""
    found = []
    for path in sorted(working.glob(pattern)):
        if not path.is_dir() or not (path / 'table.dat').is_file():
            raise ReprocessingError('%s looks like a measurement set but is not one (no table.dat) — restore it '
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
            'directory, or give it with --working DIR' % (working, PREP_SCRIPT_NAME))


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
                        % (SCRIPT_NAME, PREP_SCRIPT_NAME, output))
    else:
        steps.append(PlanStep(ACTION_COPY, reprocessing_script, PurePosixPath(SCRIPT_NAME),
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
    """Bytes the steps write to the output's file system, with the free-space margin."""
    return with_free_space_margin(sum(bytes_written(step, mode=mode) for step in steps))


def format_plan(plan, *, free_bytes):
    lines = ['Plan (mode: %s)' % plan.mode,
             '  from:  %s' % plan.working,
             '  into:  %s  (built as %s, renamed when complete)' % (plan.output, plan.partial_output.name)]
    verbs = [step_verb(step, mode=plan.mode) for step in plan.steps]
    width = max(len(verb) for verb in verbs)
    for verb, step in zip(verbs, plan.steps):
        source = step.source.name if step.source.parent == plan.working else str(step.source)
        lines.append('  %-*s  %s -> %s  (%s)' % (width, verb, source, step.destination,
                                                 human_bytes(step.size_bytes)))
    for note in plan.notes:
        lines.append('  note: %s' % note)
    lines.append('  disk space needed: {:,} bytes ({}, with a {}% margin); free: {:,} bytes ({}) in {}'.format(
                 plan.bytes_needed, human_bytes(plan.bytes_needed), round((FREE_SPACE_MARGIN - 1) * 100),
                 free_bytes, human_bytes(free_bytes), plan.output.parent))
    return '\n'.join(lines)


def next_steps_text(*, output, reprocessing_script_copied):
    lines = ['Next steps:', '  cd %s' % output]
    if not reprocessing_script_copied:
        lines.append('  cp /path/to/your/delivery/script/%s .' % SCRIPT_NAME)
    lines += [
        '  casa --pipeline -c %s --contsub          # redo the continuum subtraction with caltables/cont.dat'
        % SCRIPT_NAME,
        '  python3 %s --contsub_fast                # the same with CASA only, without the pipeline'
        % SCRIPT_NAME,
        '  casa --pipeline -c %s --image            # make new images' % SCRIPT_NAME,
        '  python3 %s --calibrated_final            # concatenate into measurement_sets/calibrated_final.ms'
        % SCRIPT_NAME,
    ]
    return '\n'.join(lines)


def check_not_a_delivery(*, working):
    """Refuse a working directory that is a delivery (calibrated_final/): its output would be the delivery itself."""
    working = Path(working)
    looks_like_delivery = (working / 'measurement_sets').is_dir() or (working / 'caltables' / 'cont.dat').is_file()
    if not looks_like_delivery:
        return
    sibling = working.parent / 'working'
    where = ('run it in %s' % sibling) if sibling.is_dir() else 'run it inside the restored pipeline working/ directory'
    raise ReprocessingError('%s is a delivery (it holds %s), not a pipeline working/ directory — %s, or give '
                            '--working DIR; to reprocess this delivery run scriptForReprocessing.py here instead'
                            % (working, 'measurement_sets/' if (working / 'measurement_sets').is_dir()
                               else 'caltables/', where))


def check_output_is_free(*, output):
    if os.path.lexists(str(output)):
        raise ReprocessingError('%s already exists — remove or rename it first, or choose another --output'
                        % output)
    if not output.parent.is_dir():
        raise ReprocessingError('the directory %s (where %s would go) does not exist — create it first, or choose '
                        'another --output' % (output.parent, output.name))


def check_output_outside_sources(*, output, sources):
    for source in sources:
        if source == output or source in output.parents:
            raise ReprocessingError('the output %s would be inside %s — choose an --output outside it'
                            % (output, source))


def check_move_is_possible(*, plan):
    """--move renames, which is atomic only within one filesystem: refuse what would need a copy."""
    output_device = os.stat(str(plan.output.parent)).st_dev
    for step in plan.steps:
        if step.action != ACTION_DELIVER:
            continue
        if step.source.is_symlink():
            raise ReprocessingError('%s is a symbolic link: --move would move only the link — use --link, or the '
                            'default copy mode' % step.source)
        if os.lstat(str(step.source)).st_dev != output_device:
            raise ReprocessingError('%s is on another filesystem than %s, so --move would have to copy — use the '
                            'default copy mode, or --link' % (step.source, plan.output.parent))


def check_free_space(*, plan):
    """The free bytes beside the output; stops unless the plan's writes (with the margin) fit there."""
    return require_free_space(plan.output.parent, plan.bytes_needed, what='this plan', margin_included=True,
                              advice='free some space, choose another --output, or use --link or --move')


def leftover_partial_outputs(*, output):
    return sorted(output.parent.glob(output.name + PARTIAL_TAG + '*'))
