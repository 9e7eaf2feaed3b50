"""Provenance of line MSes: the record beside each uid*_targets_line.ms, and --update's keep-or-remake of them.

A line MS is kept by --update when its record says it was made from the same targets MS (unchanged),
by the same method, with the same continuum fit in every spw (cont.dat's channels and fit order per
field), and the line MS itself is unchanged since the record was written.  Otherwise it is made again
(continuum subtraction is quick); images of the spws whose fit did not change are still kept, since an
image records only its own spws' fits.
"""

import collections
from pathlib import Path

from ..core.fileops import remove_file
from ..core.layout import line_ms_path
from ..core.messages import say
from ..run.provenance import line_ms_differences, line_ms_record, line_ms_record_path, ms_identity, read_record, same_ms, write_record


def continuum_by_spw(analysis, ms, *, fitorder=None):
    """{spw name: {'spw': virtual id, 'fields': {field: {'chan', 'fitorder'}}}} of what uvcontsub fits in ms."""
    layout = next((layout for layout in analysis.layouts if str(layout.path) == str(ms)), None)
    continuum = collections.OrderedDict()
    for selection in analysis.selections.get(str(ms), []):
        spw = layout.spws.get(selection.spw_id) if layout is not None else None
        name = spw.name if spw is not None else str(selection.spw_id)
        entry = continuum.setdefault(name, {'spw': selection.virtual_id, 'fields': {}})
        order = selection.fitorder if fitorder is None else fitorder
        entry['fields'][selection.field_name] = {'chan': selection.chan, 'fitorder': int(order)}
    return continuum


def expected_line_record(ms, *, method, continuum, tables=()):
    """What the record of ms's line MS would say if it were made now (no identity, no duration)."""
    return {'product': 'line MS', 'source': ms_identity(ms), 'method': method, 'continuum': continuum,
            'tables': [ms_identity(table) for table in tables]}


def line_ms_decision(ms, expected):
    """(True, None) when the existing line MS of ms matches expected; else (False, why: one line)."""
    line = line_ms_path(ms)
    if not line.exists():
        return False, 'not made yet'
    record, why = read_record(line_ms_record_path(line))
    if record is None:
        return False, why
    if not same_ms(record.get('identity'), ms_identity(line)):
        return False, 'it changed since its record was written'
    reasons = line_ms_differences(record, expected)
    if not reasons:
        return True, None
    return False, '; '.join(reason for key in sorted(reasons) for reason in reasons[key])


def is_recorded_line_ms(line):
    """True when a line MS has a readable record: this tool made it (--update may replace it)."""
    return read_record(line_ms_record_path(line))[0] is not None


def say_line_decisions(decisions, delivery):
    """decisions: [(ms, keep, why)]."""
    for ms, keep, why in decisions:
        line = line_ms_path(ms).name
        say('  --update: %s %s' % (line, 'kept: its source MS and continuum fits are unchanged' if keep
                                   else 'to make: %s' % why))


def forget_line_record(line):
    """Before a line MS is replaced: its old record goes first, so it can never describe the new one."""
    remove_file(line_ms_record_path(line))


def write_line_record(ms, expected, *, seconds):
    """Beside a line MS just published: its record (written atomically)."""
    line = line_ms_path(ms)
    record = line_ms_record(source=ms, method=expected['method'], continuum=expected['continuum'],
                            seconds=seconds, line_ms=line, tables=[Path(t['path']) for t in expected['tables']])
    write_record(line_ms_record_path(line), record)
