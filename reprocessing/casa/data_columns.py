"""What the data columns of a delivery's MSes hold, and how a line MS gets its self-calibrated column.

From pipeline 2024 on (Cycle 11+) hif_selfcal applies its solutions into CORRECTED_DATA of both
uid*_targets.ms (REGCAL_CONTLINE_SCIENCE in DATA -> SELFCAL_CONTLINE_SCIENCE in CORRECTED) and
uid*_targets_line.ms (REGCAL_LINE_SCIENCE -> SELFCAL_LINE_SCIENCE); pipeline/hif/tasks/selfcal/
selfcal.py.  So in a delivered uid*_targets.ms, DATA is the regular calibration and a CORRECTED_DATA
column is the self-calibrated data.  Where hif_selfcal left a field or spw alone, CORRECTED_DATA
equals DATA there: the survey finds that on a sample of rows and says so.
"""

import collections
from pathlib import Path

from .casa_engine import opened_table
from ..core.messages import ReprocessingError
from .ms_tables import column_names, dd_ids_by_spw, ms_metadata, read_ms_layout


SELFCAL_COLUMN = 'CORRECTED_DATA'

# Rows read (every k-th row) per MS to tell self-calibrated (field, spw) pairs from the others;
# the phase corrections of hif_selfcal change every row they touch, so a sample decides.
SURVEY_ROWS = 20000

# Visibilities copied per chunk when a line MS gets its CORRECTED_DATA: memory stays bounded by a
# chunk (2e6 complex64 values = 16 MB), not by the MS.
COPY_BUDGET = 2000000


def has_selfcal_column(casa, ms, *, missing=None):
    """Whether ms has the column self-calibrated data live in (CORRECTED_DATA): the one such test."""
    return SELFCAL_COLUMN in column_names(casa, ms, missing=missing)


ColumnSurvey = collections.namedtuple('ColumnSurvey', 'path has_selfcal selfcal_pairs regcal_pairs')
ColumnSurvey.__doc__ = """What one MS holds.  has_selfcal: it has a CORRECTED_DATA column;
selfcal_pairs / regcal_pairs: the (field name, spw id) pairs where that column differs from DATA
(self-calibrated) / equals it (not self-calibrated there)."""


def survey_data_columns(casa, ms, *, sample_rows=SURVEY_ROWS):
    """The ColumnSurvey of one MS: its columns, and a sample of rows comparing CORRECTED_DATA with DATA (read once a run)."""
    return ms_metadata(ms, ('column survey', sample_rows), lambda: _survey_data_columns(casa, ms, sample_rows))


def _survey_data_columns(casa, ms, sample_rows):
    if SELFCAL_COLUMN not in column_names(casa, ms):
        return ColumnSurvey(Path(ms), False, frozenset(), frozenset())
    layout = read_ms_layout(casa, ms)
    name_of_field = dict((field_id, name) for name, ids in layout.fields.items() for field_id in ids)
    spw_of_dd = dict((dd_id, spw_id) for spw_id, dd_ids in dd_ids_by_spw(casa, ms).items() for dd_id in dd_ids)
    step = max(1, layout.rows // max(1, sample_rows))
    if '"' in str(ms):
        raise ReprocessingError('the path %s contains a double quote — rename it' % ms)
    differing, equal = set(), set()
    with opened_table(casa, ms) as table:
        # TaQL's Int64 results do not convert (getcol: "Unknown casa DataType"), so getcell reads them
        result = table.taql('SELECT FIELD_ID AS FLD, DATA_DESC_ID AS DDID, GMAX(MAX(ABS(CORRECTED_DATA - DATA))) AS '
                            'DIFF, GMAX(MAX(ABS(DATA))) AS AMP FROM "%s" WHERE ROWID() %% %d == 0 GROUPBY FIELD_ID, '
                            'DATA_DESC_ID' % (ms, step))
        try:
            for row in range(result.nrows()):
                pair = (name_of_field.get(int(result.getcell('FLD', row)), str(result.getcell('FLD', row))),
                        spw_of_dd[int(result.getcell('DDID', row))])
                scale = max(float(result.getcell('AMP', row)), 1e-30)
                (differing if float(result.getcell('DIFF', row)) > 1e-6 * scale else equal).add(pair)
        finally:
            result.close()
    return ColumnSurvey(Path(ms), True, frozenset(differing), frozenset(equal - differing))


def describe_selfcal(surveys, *, reader):
    """Plan lines for the MSes' data columns: which are self-calibrated, where not, and what `reader` reads."""
    with_selfcal = [s for s in surveys if s.has_selfcal]
    if not with_selfcal:
        return []
    lines = ['self-calibrated data (CORRECTED_DATA) in %d of %d execution blocks (DATA holds the regular '
             'calibration): %s' % (len(with_selfcal), len(surveys), reader)]
    for survey in surveys:
        if not survey.has_selfcal:
            lines.append('%s has no CORRECTED_DATA (not self-calibrated): its DATA is used' % survey.path.name)
        elif survey.regcal_pairs:
            lines.append('%s: CORRECTED_DATA equals DATA (not self-calibrated) for %s' % (
                survey.path.name, ', '.join('%s spw %d' % pair for pair in sorted(survey.regcal_pairs))))
    return lines


def add_selfcal_column(casa, *, line_ms, selfcal_fit):
    """Give line_ms a CORRECTED_DATA column holding the DATA of selfcal_fit, row for row.

    selfcal_fit: uvcontsub of the same MS with the same selection and fitspec, on CORRECTED_DATA,
    so its rows are the rows of line_ms in the same order (checked per data description: TIME,
    ANTENNA1, ANTENNA2, FIELD_ID).  The column is created by the calibrater (as clearcal does: its
    storage manager, DATA's shape), then overwritten per data description in chunks: getvarcol /
    putvarcol over mixed rows put spw 27's data into spw 25's rows here (CASA 6.7.0), so every copy
    goes through same-shaped selections.
    """
    import numpy
    if SELFCAL_COLUMN not in column_names(casa, line_ms):
        calibrater = casa.casatools.calibrater()
        try:
            calibrater.open(str(line_ms), compress=False, addcorr=True, addmodel=False)
            calibrater.close()
        finally:
            calibrater.done()
    with opened_table(casa, selfcal_fit) as source, opened_table(casa, line_ms, writable=True) as target:
        if source.nrows() != target.nrows():
            raise ReprocessingError('the self-calibrated fit of %s has %d rows where its line MS has %d — nothing '
                                    'was published; see the CASA log' % (Path(line_ms).name, source.nrows(),
                                                                        target.nrows()))
        dd_ids = sorted(set(int(dd) for dd in source.getcol('DATA_DESC_ID'))) if source.nrows() else []
        for dd_id in dd_ids:
            selected = [table.query('DATA_DESC_ID == %d' % dd_id) for table in (source, target)]
            try:
                source_rows, target_rows = selected
                for name in ('TIME', 'ANTENNA1', 'ANTENNA2', 'FIELD_ID'):
                    if not numpy.array_equal(source_rows.getcol(name), target_rows.getcol(name)):
                        raise ReprocessingError('the self-calibrated fit of %s has other rows (%s) than its line MS '
                                                '— nothing was published; see the CASA log'
                                                % (Path(line_ms).name, name))
                rows = source_rows.nrows()
                chunk = max(1, COPY_BUDGET // max(1, source_rows.getcell('DATA', 0).size)) if rows else 1
                for first in range(0, rows, chunk):
                    count = min(chunk, rows - first)
                    target_rows.putcol(SELFCAL_COLUMN, source_rows.getcol('DATA', first, count), first, count)
            finally:
                for table in selected:
                    table.close()
