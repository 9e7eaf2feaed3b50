"""Step --calibrated_final(_line): concat of shadows into a temporary MS, checked, then published."""

import shutil
from pathlib import Path

from ..casa.casa_engine import casa_task, opened_table
from ..casa.data_columns import has_selfcal_column
from ..casa.ms_tables import ROWS_PER_CHUNK, read_ms_layout
from ..core.fileops import directory_bytes, human_bytes, make_user_writable, relative_path, remove_tree
from ..core.messages import ReprocessingError, say
from ..run.run_state import pause_point
from ..run.staging import make_stand_in_to_update, space_free_path


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
    input_layouts = [read_ms_layout(casa, ms) for ms in inputs]
    moved = put_back_merged_windows(casa, partial, input_layouts)
    summary = summarize_concat(casa, partial, input_layouts)
    state.publish(partial, output)
    remove_tree(staging)
    state.created_for_good(staging)
    say('  wrote %s: %d rows (the sum of the inputs), %s' % (
        relative_path(output, plan.delivery.root), summary['rows'], human_bytes(directory_bytes(output))))
    say('  spectral windows: %s' % ', '.join(str(i) for i in summary['spw_ids']))
    say('  data columns: %s' % summary['columns'])
    for wrong, right, rows in moved:
        say('  note: concat had filed %d rows of spw %d under spw %d (a calibration window with the same '
            'frequencies); they were put back under spw %d' % (rows, right, wrong, right))
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


def summarize_concat(casa, concatenated, input_layouts):
    """Rows and spw ids of the concatenated MS, checked against its inputs (their MsLayouts)."""
    input_rows = sum(layout.rows for layout in input_layouts)
    output = read_ms_layout(casa, concatenated)
    if output.rows != input_rows:
        raise ReprocessingError('the concatenated MS has %d rows but the inputs have %d — it was not '
                                'published; see the CASA log' % (output.rows, input_rows))
    # Renumbered: a window with data under an id that no input gives a window of its name.  (Not "an id the
    # first input has no data in": an execution block that did not observe a target lacks that target's
    # spws, which the later ones bring under their own ids.)
    input_windows = {(spw.id, spw.name) for layout in input_layouts for spw in layout.spws.values()}
    return {'rows': output.rows, 'spw_ids': list(output.spws),
            'renumbered': any((spw.id, spw.name) not in input_windows for spw in output.spws.values()),
            'columns': describe_concat_columns(casa, concatenated, [layout.path for layout in input_layouts])}


def describe_concat_columns(casa, concatenated, inputs):
    """Which data columns concat kept: the self-calibrated CORRECTED_DATA must survive it."""
    with_selfcal = [ms for ms in inputs if has_selfcal_column(casa, ms)]
    if not with_selfcal:
        return 'DATA (the inputs have no CORRECTED_DATA)'
    if not has_selfcal_column(casa, concatenated):
        raise ReprocessingError('concat dropped the self-calibrated CORRECTED_DATA of %s — it was not published; '
                                'see the CASA log' % ', '.join(ms.name for ms in with_selfcal))
    text = 'DATA (regular calibration) and CORRECTED_DATA (self-calibrated), both kept'
    if len(with_selfcal) < len(inputs):
        text += ('; %d input(s) without CORRECTED_DATA have their DATA there (concat fills it)'
                 % (len(inputs) - len(with_selfcal)))
    return text


def put_back_merged_windows(casa, concatenated, input_layouts, *, chunk=ROWS_PER_CHUNK):
    """Put rows that concat filed under a look-alike window back under the window of their name.

    concat files each input window under the first SPECTRAL_WINDOW row of the output with the same
    frequencies.  ALMA MSes keep the calibration windows (ATM, pointing) beside the science ones,
    and a 128-channel TDM science window can have exactly the frequencies of one of them: measured
    with CASA 6.7 on 4 EBs, the rows of spw 25 of EBs 2-4 landed under spw 1 (a calibration
    window with no data).  Returns [(wrong spw, right spw, rows moved)]; DATA_DESC_ID is rewritten
    a chunk of rows at a time.
    """
    import numpy
    names = {spw.name for layout in input_layouts for spw in layout.spws.values()}
    with opened_table(casa, Path(concatenated) / 'SPECTRAL_WINDOW') as table:
        spw_names = [str(n) for n in table.getcol('NAME')]
        setups = [(tuple(table.getcell('CHAN_FREQ', i)), tuple(table.getcell('CHAN_WIDTH', i)))
                  for i in range(table.nrows())]
    with opened_table(casa, Path(concatenated) / 'DATA_DESCRIPTION') as table:
        dd_rows = list(zip((int(v) for v in table.getcol('SPECTRAL_WINDOW_ID')),
                           (int(v) for v in table.getcol('POLARIZATION_ID'))))
    layout = read_ms_layout(casa, concatenated)
    remap, moved = {}, []
    for wrong in layout.spws:
        if spw_names[wrong] in names:
            continue
        right = [i for i, name in enumerate(spw_names) if name in names and setups[i] == setups[wrong]]
        if len(right) != 1:
            continue
        for dd, (spw, pol) in enumerate(dd_rows):
            if spw == wrong and (right[0], pol) in dd_rows:
                remap[dd] = dd_rows.index((right[0], pol))
        moved.append([wrong, right[0], 0])
    if not remap:
        return []
    with opened_table(casa, concatenated, writable=True) as table:
        for start in range(0, table.nrows(), chunk):
            dd = table.getcol('DATA_DESC_ID', startrow=start, nrow=chunk)
            changed = numpy.zeros(dd.shape, bool)
            for wrong_dd, right_dd in remap.items():
                here = dd == wrong_dd
                for entry in moved:
                    if dd_rows[wrong_dd][0] == entry[0]:
                        entry[2] += int(here.sum())
                changed |= here
                dd = numpy.where(here, right_dd, dd)
            if changed.any():
                table.putcol('DATA_DESC_ID', dd, startrow=start, nrow=chunk)
    return [tuple(entry) for entry in moved if entry[2]]
