"""Cycle 9 deliveries: apply the delivered continuum tables (caltables/*uvcont.tbl) with CASA."""

import collections
import os
import shutil
from pathlib import Path

from ..casa.casa_engine import casa_task, native_stdout_silenced, opened_table
from ..core.fileops import directory_bytes, human_bytes, relative_path, remove_tree
from ..core.layout import eb_name, line_ms_path
from ..core.messages import ReprocessingError, say
from ..casa.ms_tables import column_names, count_rows, count_selected_rows, dd_ids_by_spw, read_ms_layout
from ..run.run_state import publish_line_outputs


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
        selections[ms] = plan_uvcont_selection(layout, coverages, dd_ids=dd_ids_by_spw(casa, ms))
    scratch_dir = state.staging_dir / step.name
    state.will_create(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for ms, selection in selections.items():
        final = line_ms_path(ms)
        partial = state.partial_name(final)
        scratch = scratch_dir / (ms.name + '.scratch')
        state.will_create(partial)
        state.will_create(scratch)
        say('  %s: applying %s' % (ms.name, selection.description))
        for field_name, spw_id in selection.left_out:
            say('    field %s spw %d has no continuum solution: left out of the line MS' % (field_name, spw_id))
        apply_uvcont_tables(casa, ms=ms, selection=selection, scratch=scratch, output=partial)
        remove_tree(scratch)
        state.created_for_good(scratch)
        _check_uvcont_output(casa, ms=ms, selection=selection, output=partial)
        outputs.append((partial, final))
    publish_line_outputs(state, outputs, replace=plan.replace_line_ms)
    remove_tree(scratch_dir)
    state.created_for_good(scratch_dir)
    for _partial, final in outputs:
        say('  wrote %s (%s)' % (relative_path(final, delivery.root), human_bytes(directory_bytes(final))))
    return {'outputs': [str(final) for _partial, final in outputs], 'method': 'uvcont tables',
            'tables': [str(table) for found in by_ms.values() for table in found],
            'left_out': dict((ms.name, [list(pair) for pair in selection.left_out])
                             for ms, selection in selections.items() if selection.left_out)}


def read_uvcont_coverage(casa, table_path):
    """What a continuum table has solutions for; a table of another kind is an error."""
    display = 'caltables/%s' % Path(table_path).name
    remedy = 'restore it from the delivery, or remove it to fit the continuum from cont.dat'
    with opened_table(casa, table_path, missing=remedy) as table:
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
    with opened_table(casa, Path(table_path) / 'FIELD', missing=remedy) as table:
        field_names = dict(enumerate(str(name) for name in table.getcol('NAME')))
    with opened_table(casa, Path(table_path) / 'SPECTRAL_WINDOW', missing=remedy) as table:
        spw_names = dict(enumerate(str(name) for name in table.getcol('NAME')))
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


def apply_uvcont_tables(casa, *, ms, selection, scratch, output):
    """Split the covered data of ms into scratch, apply the tables there, split CORRECTED into output.

    Arguments as the Cycle 9 pipeline applied these tables (hif_uvcontsub): linear interpolation in
    time, calwt=False, applymode 'calflag', so that data whose solution is flagged are flagged
    rather than passed through with their continuum.  reindex=False keeps the spw and field ids.
    """
    def run(task_name, **arguments):
        casa_task(casa, task_name, about=ms.name, **arguments)

    run('mstransform', vis=str(ms), outputvis=str(scratch), datacolumn='data', field=selection.field,
        spw=selection.spw, taql=selection.taql, reindex=False)
    if not (scratch / 'table.dat').exists():
        raise ReprocessingError('mstransform selected no data of %s for the continuum tables — see the CASA log'
                                % ms.name)
    for application in selection.applications:
        with native_stdout_silenced():  # "The following MS spws have no corresponding cal spws": the empty ones
            run('applycal', vis=str(scratch), field=','.join(str(f) for f in application.field_ids),
                gaintable=[str(application.table)], interp=[''], calwt=[False], applymode='calflag',
                flagbackup=False)
    run('mstransform', vis=str(scratch), outputvis=str(output), datacolumn='corrected', reindex=False)
    for name in ('SpectralWindow.xml', 'DataDescription.xml'):
        # The pipeline copies these ASDM files into its line MSes; later pipeline stages read them.
        if (ms / name).is_file():
            shutil.copyfile(str(ms / name), str(output / name))


def _check_uvcont_output(casa, *, ms, selection, output):
    expected = count_selected_rows(casa, ms, selection.rows_where)
    written, columns = count_rows(casa, output), column_names(casa, output)
    if written != expected:
        raise ReprocessingError('the line MS made from %s has %d rows where %d were selected — it was not '
                                'published; see the CASA log' % (ms.name, written, expected))
    if 'CORRECTED_DATA' in columns or 'DATA' not in columns:
        raise ReprocessingError('the line MS made from %s has the columns %s instead of DATA alone — it was not '
                                'published; see the CASA log' % (ms.name, ', '.join(columns)))
