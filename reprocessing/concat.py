"""Step --calibrated_final(_line): concat of shadows into a temporary MS, checked, then published."""

import shutil
from pathlib import Path

from .casa_engine import casa_task, opened_table
from .fileops import directory_bytes, human_bytes, make_user_writable, relative_path, remove_tree
from .messages import ReprocessingError, say
from .ms_tables import column_names, count_rows, spws_with_data
from .run_state import pause_point
from .staging import make_stand_in_to_update, space_free_path


def run_concat(plan, state, step, casa):
    """concat the inputs into a temporary MS, then give it its final name."""
    output = step.outputs[0]
    inputs = [Path(ms) for ms in step.inputs]
    missing = [str(ms) for ms in inputs if not ms.is_dir()]
    if missing:
        raise ReprocessingError('cannot concatenate: %s missing — make them first (--contsub_fast or --contsub)'
                                % ', '.join(missing))
    first, later = _earliest_first(casa, inputs)
    staging = state.staging_dir / step.name
    state.will_create(staging)
    # concat appends HISTORY rows to every input after the first: they get stand-ins (shadows, or
    # copies of read-only MSes), which CASA reaches by a path without spaces
    shadows = [make_stand_in_to_update(ms, staging / ms.name) for ms in later]
    reachable = space_free_path(state, staging) if shadows else staging
    shadows = [reachable / shadow.name for shadow in shadows]
    partial = state.partial_name(output)
    state.will_create(partial)
    say('  concatenating %d measurement sets into %s' % (len(inputs), relative_path(output, plan.delivery.root)))
    pause_point('concat', state)
    # concat would copy the first MS itself, with shutil.copytree, which keeps the modes: the copy of a
    # read-only MS (an archive copy, another user's data) could not be appended to ("table.dat: Permission
    # denied", CASA 6.7).  So the first MS is copied here and made writable, and concat appends the others
    # to it in their time order, as it does after its own copy.
    shutil.copytree(str(first), str(partial), symlinks=False)
    make_user_writable(partial)
    if shadows:
        casa_task(casa, 'concat', about='%d measurement sets' % len(inputs), vis=[str(s) for s in shadows],
                  concatvis=str(partial), copypointing=True)
    if not partial.is_dir():
        raise ReprocessingError('concat did not write %s — see the CASA log %s' % (partial, state.casa_logfile))
    pause_point('concat-written', state)
    summary = summarize_concat(casa, partial, inputs)
    state.publish(partial, output)
    remove_tree(staging)
    state.created_for_good(staging)
    say('  wrote %s: %d rows (the sum of the inputs), %s' % (
        relative_path(output, plan.delivery.root), summary['rows'], human_bytes(directory_bytes(output))))
    say('  spectral windows: %s' % ', '.join(str(i) for i in summary['spw_ids']))
    say('  data columns: %s' % summary['columns'])
    if summary['renumbered']:
        say('  note: concat gave later execution blocks new spw ids where their TOPO frequencies differ; '
            'select spws by name (e.g. spw="*FULL_RES*") rather than by id in this MS')
    return {'outputs': [str(output)], 'rows': summary['rows'], 'spw_ids': summary['spw_ids'],
            'columns': summary['columns']}


def _earliest_first(casa, inputs):
    """(the input with the earliest TIME, the others in time order): concat's own order (sort_mslist)."""
    def first_time(ms):
        with opened_table(casa, ms) as table:
            return float(table.getcol('TIME').min()) if table.nrows() else float('inf')
    ordered = sorted(inputs, key=first_time)
    return ordered[0], ordered[1:]


def summarize_concat(casa, concatenated, inputs):
    """Rows and spw ids of the concatenated MS, checked against its inputs."""
    input_rows = sum(count_rows(casa, ms) for ms in inputs)
    rows = count_rows(casa, concatenated)
    if rows != input_rows:
        raise ReprocessingError('the concatenated MS has %d rows but the inputs have %d — it was not '
                                'published; see the CASA log' % (rows, input_rows))
    spw_ids = spws_with_data(casa, concatenated)
    first_ids = set(spws_with_data(casa, inputs[0]))
    return {'rows': rows, 'spw_ids': spw_ids, 'renumbered': bool(set(spw_ids) - first_ids),
            'columns': describe_concat_columns(casa, concatenated, inputs)}


def describe_concat_columns(casa, concatenated, inputs):
    """Which data columns concat kept: the self-calibrated CORRECTED_DATA must survive it."""
    with_selfcal = [ms for ms in inputs if 'CORRECTED_DATA' in column_names(casa, ms)]
    if not with_selfcal:
        return 'DATA (the inputs have no CORRECTED_DATA)'
    if 'CORRECTED_DATA' not in column_names(casa, concatenated):
        raise ReprocessingError('concat dropped the self-calibrated CORRECTED_DATA of %s — it was not published; '
                                'see the CASA log' % ', '.join(ms.name for ms in with_selfcal))
    text = 'DATA (regular calibration) and CORRECTED_DATA (self-calibrated), both kept'
    if len(with_selfcal) < len(inputs):
        text += ('; %d input(s) without CORRECTED_DATA have their DATA there (concat fills it)'
                 % (len(inputs) - len(with_selfcal)))
    return text
