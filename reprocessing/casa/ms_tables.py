"""Measurement-set metadata read with the table tool: the one MS reader (MsLayout) and row counts.

Each MS's metadata is read once per run: ms_metadata keeps every answer read from an MS (its
layout, columns, data descriptions, ...) with the state of the MS's files, and reads it again only
when the MS changed.

Also the one rule for finding the same spectral window in another execution block (same_window):
cont.dat blocks, imaging and the spectra all match spws through it; and the one numbering of the
windows of all execution blocks (virtual_spws), which cont.dat and --spw use.
"""

import collections
import os
import time
from pathlib import Path

from .casa_engine import opened_table
from ..core.fileops import relative_path
from ..core.messages import ReprocessingError, one_line
from ..core.layout import eb_name


# -- each MS's metadata, read once per run -----------------------------------------------------------
#
# The plan's checks, cont.dat's check, the column survey, the fits' checks, imaging and the report
# ask the same MSes the same questions.  Each answer is kept here (in this process) with the state
# of the MS it was read from: size, modification time and inode of every file of its main table and
# of its subtables.  Any write to the MS (rows, a column, a subtable's cell) changes that state, so
# a changed MS is read again, never served an old answer.  An answer read from an MS written in the
# last FRESH_SECONDS is not kept: a second write within the clock's resolution would not show.

_MS_METADATA = {}
FRESH_SECONDS = 2.0


def ms_metadata(ms, question, read):
    """read()'s answer about ms, read once while ms does not change.

    question: what read() reads (hashable, e.g. 'layout'), the other half of the key; the path is
    taken as given (an MsLayout keeps the spelling it was read with).
    """
    key = (str(ms), question)
    state = ms_state(ms)
    kept = _MS_METADATA.get(key)
    if state is not None and kept is not None and kept[0] == state:
        return kept[1]
    answer = read()
    if state is not None and _settled(state):
        _MS_METADATA[key] = (state, answer)
    return answer


def settled_ms_state(ms):
    """ms_state(ms) when no file of ms was written in the last FRESH_SECONDS (what is kept under it stays
    true while the state stays the same), else None."""
    state = ms_state(ms)
    return state if state is not None and _settled(state) else None


def _settled(state):
    return max(entry[2] for entry in state) < (time.time() - FRESH_SECONDS) * 1e9


def ms_state(ms):
    """((name, bytes, mtime ns, inode), ...) of the files of an MS's main table and of its subtables;
    None when ms is not a readable directory (the reader then says what is wrong)."""
    state = []
    try:
        with os.scandir(str(ms)) as entries:
            for entry in entries:
                if entry.is_dir():
                    with os.scandir(entry.path) as files:
                        state.extend(_file_state(entry.name + '/' + inner.name, inner) for inner in files
                                     if not inner.name.endswith('.lock') and inner.is_file())
                elif not entry.name.endswith('.lock'):  # opening a table, even to read, writes its lock
                    state.append(_file_state(entry.name, entry))
    except OSError:
        return None
    return tuple(sorted(state)) or None


def _file_state(name, entry):
    info = entry.stat()
    return (name, info.st_size, info.st_mtime_ns, info.st_ino)


def forget_ms_metadata():
    """Forget every answer kept (tests; a long-lived process that knows the MSes were rewritten)."""
    _MS_METADATA.clear()


# -- what the checker and the fit need to know of each measurement set ------------------------------

# Rows of the main table read at once where a column of every row is needed (2 int columns: 16 MB).
ROWS_PER_CHUNK = 1000000

SpwInfo = collections.namedtuple('SpwInfo', 'id name nchan low_hz high_hz')
SpwInfo.__new__.__defaults__ = (None, None)  # the frequency range: unknown where a test builds one by hand


# MEAS_FREQ_REF codes of casacore's MFrequency
FREQUENCY_FRAMES = {0: 'REST', 1: 'LSRK', 2: 'LSRD', 3: 'BARY', 4: 'GEO', 5: 'TOPO', 6: 'GALACTO', 7: 'LGROUP', 8: 'CMB'}

# Of every spw: CHAN_FREQ (numpy, Hz) and its frame; of every field: PHASE_DIR's first term (radians) in
# its frame (direction_frames), and whether it has an ephemeris; the OBSERVATION's telescope name.
# (chan_width: every spw's CHAN_WIDTH; polynomial: a field whose PHASE_DIR has more than one term; telescope:
# '' where OBSERVATION's rows name different telescopes)
FrequencyFrames = collections.namedtuple('FrequencyFrames', 'chan_freq chan_width spw_frames directions '
                                                            'direction_frames ephemeris polynomial telescope')


class MsLayout(object):
    """Fields, science spws and (field, spw) pairs with data of one MS, read once with the table tool."""

    def __init__(self, *, path, start, fields, spws, pairs, rows, ephemeris_fields=(), fields_without_rows=(),
                 frames=None):
        self.path = Path(path)
        self.name = self.path.name
        self.eb = eb_name(self.path)
        self.start = start
        self.fields = fields  # OrderedDict field name -> [field ids]
        self.spws = spws      # OrderedDict spw id -> SpwInfo, only spws with data
        self.pairs = pairs    # {(field id, spw id)} with rows
        self.rows = rows
        self.ephemeris_fields = set(ephemeris_fields)  # names of fields with an ephemeris (EPHEMERIS_ID >= 0)
        # names in FIELD with no rows (calibrators importasdm keeps in the FIELD table of a target's data)
        self.fields_without_rows = set(fields_without_rows) - set(fields)
        self.frames = frames  # FrequencyFrames: what converting its channel frequencies to LSRK needs

    def spw_ids_by_name(self, name):
        """The ids of the windows called name; else of those whose name is another form of it (same_window_name)."""
        exact = [spw.id for spw in self.spws.values() if spw.name == name]
        return exact or [spw.id for spw in self.spws.values() if same_window_name(spw.name, name)]

    def has_data(self, field_ids, spw_id):
        return any((field_id, spw_id) in self.pairs for field_id in field_ids)


def read_ms_layout(casa, ms):
    """The MsLayout of one MS: its subtables and the FIELD_ID / DATA_DESC_ID columns, read once."""
    return ms_metadata(ms, 'layout', lambda: _read_ms_layout(casa, ms))


# Columns whose cells may differ in shape from row to row (a window's channels, a field's polynomial terms)
CELL_BY_CELL = ('CHAN_FREQ', 'CHAN_WIDTH', 'PHASE_DIR')


def _row_frames(table, column, rows):
    """The reference frame of each row of a measure column: the column's one frame, or, where the column
    keeps one per row (importasdm's PHASE_DIR: MEASINFO's VarRefCol PhaseDir_Ref, e.g. ICRS rows), each row's."""
    info = table.getcolkeyword(column, 'MEASINFO')
    if 'VarRefCol' not in info:
        return [str(info.get('Ref', 'J2000'))] * rows
    names = dict(zip((int(code) for code in info['TabRefCodes']), (str(name) for name in info['TabRefTypes'])))
    return [names[int(code)] for code in table.getcol(info['VarRefCol'])] if rows else []


def _read_ms_layout(casa, ms):
    import numpy
    missing = 'the measurement set %s is incomplete or not an MS: restore it from the delivery' % Path(ms).name

    def columns(subtable, *names):
        with opened_table(casa, Path(ms) / subtable if subtable else ms, missing=missing) as table:
            if not table.nrows():
                return [[] for _name in names]
            return [[table.getcell(name, row) for row in range(table.nrows())] if name in CELL_BY_CELL
                    else table.getcol(name) for name in names]

    field_names, phase_dir = columns('FIELD', 'NAME', 'PHASE_DIR')
    with opened_table(casa, Path(ms) / 'FIELD', missing=missing) as table:
        ephemeris_ids = (list(table.getcol('EPHEMERIS_ID')) if 'EPHEMERIS_ID' in table.colnames() and table.nrows()
                         else [-1] * len(field_names))
        direction_frames = _row_frames(table, 'PHASE_DIR', len(field_names))
    spw_names, spw_nchan, spw_freqs, spw_widths, spw_frames = columns('SPECTRAL_WINDOW', 'NAME', 'NUM_CHAN',
                                                                      'CHAN_FREQ', 'CHAN_WIDTH', 'MEAS_FREQ_REF')
    dd_spw, = columns('DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID')
    time_range, telescopes = columns('OBSERVATION', 'TIME_RANGE', 'TELESCOPE_NAME')
    pairs, rows = set(), 0
    with opened_table(casa, ms, missing=missing) as table:
        rows = table.nrows()
        # a chunk of rows at a time: memory bounded by the chunk, not by the MS
        for start in range(0, rows, ROWS_PER_CHUNK):
            field_ids = table.getcol('FIELD_ID', startrow=start, nrow=ROWS_PER_CHUNK)
            dd_ids = table.getcol('DATA_DESC_ID', startrow=start, nrow=ROWS_PER_CHUNK)
            combined = numpy.unique(numpy.asarray(field_ids, dtype=numpy.int64) * 100000 + numpy.asarray(dd_ids))
            pairs.update((int(value // 100000), int(dd_spw[value % 100000])) for value in combined)
    fields = collections.OrderedDict()
    for field_id, name in enumerate(field_names):
        if any(pair[0] == field_id for pair in pairs):
            fields.setdefault(str(name), []).append(field_id)
    spws = collections.OrderedDict(
        (spw_id, SpwInfo(spw_id, str(spw_names[spw_id]), int(spw_nchan[spw_id]),
                         float(numpy.min(spw_freqs[spw_id])), float(numpy.max(spw_freqs[spw_id]))))
        for spw_id in sorted({pair[1] for pair in pairs}))
    start = float(numpy.min(time_range)) if len(time_range) else 0.0
    ephemeris_fields = {str(name) for name, ephemeris in zip(field_names, ephemeris_ids) if ephemeris >= 0}
    frames = FrequencyFrames(
        chan_freq=[numpy.asarray(freqs, dtype=float) for freqs in spw_freqs],
        chan_width=[numpy.asarray(widths, dtype=float) for widths in spw_widths],
        spw_frames=[FREQUENCY_FRAMES.get(int(code), 'TOPO') for code in spw_frames],
        directions=[(float(cell[0][0]), float(cell[1][0])) for cell in phase_dir],
        direction_frames=direction_frames, ephemeris=[int(value) >= 0 for value in ephemeris_ids],
        polynomial=[numpy.shape(cell)[-1] > 1 for cell in phase_dir],
        telescope=str(telescopes[0]) if len(set(telescopes)) == 1 else '')
    return MsLayout(path=ms, start=start, fields=fields, spws=spws, pairs=pairs, rows=rows,
                    ephemeris_fields=ephemeris_fields, fields_without_rows={str(name) for name in field_names},
                    frames=frames)


def check_measurement_set(casa, ms, *, root=None):
    """Stop with one line naming what is wrong when ms cannot be read as an MS (its metadata only).

    An empty directory, a missing table.dat or a missing subtable (FIELD, ...) would otherwise end
    a step in CASA's "Table .../FIELD does not exist" once the run has begun.  The main table and
    every subtable its keywords name are opened; no column is read.
    """
    ms = Path(ms)
    shown = relative_path(ms, root) if root is not None else str(ms)
    advice = 'restore it from the delivery, or move it out of %s' % (ms.parent.name + '/')
    try:
        empty = not any(ms.iterdir())
    except OSError as error:
        raise ReprocessingError('cannot read %s (%s) — ask its owner for read permission, or reprocess a copy '
                                'of the delivery' % (shown, error.strerror or error))
    if empty:
        raise ReprocessingError('%s is an empty directory, not a measurement set — %s' % (shown, advice))
    if not (ms / 'table.dat').is_file():
        raise ReprocessingError('%s has no table.dat, so it is not a complete measurement set — %s'
                                % (shown, advice))
    with opened_table(casa, ms, refusal=lambda error: ReprocessingError(
            '%s cannot be opened as a measurement set (%s) — %s' % (shown, one_line(error), advice))) as table:
        keywords = table.getkeywords()
    subtables = [name for name, value in keywords.items() if str(value).startswith('Table: ')]
    for name in REQUIRED_SUBTABLES:
        if name not in subtables:
            raise ReprocessingError('%s has no %s subtable, so it is not a complete measurement set — %s'
                                    % (shown, name, advice))
    for name in subtables:
        def refusal(error, name=name):
            reason = 'missing' if not (ms / name / 'table.dat').is_file() else 'unreadable (%s)' % one_line(error)
            return ReprocessingError('the %s subtable of %s is %s — %s' % (name, shown, reason, advice))
        with opened_table(casa, ms / name, refusal=refusal):
            pass


def is_entirely_flagged(casa, ms, *, chunk=2000, first=64):
    """True when every visibility of ms is flagged (FLAG_ROW, or every FLAG of the row).  Read a chunk of rows
    at a time per data description (FLAG's shape differs between spws), stopping at the first unflagged
    sample: an MS with data costs a read of its first `first` rows per data description (the chunks then
    grow to `chunk` rows; decoding a tile of FLAG for 2000 rows cost 0.1 s CPU per run of 4 MSes)."""
    import numpy
    with opened_table(casa, ms) as table:
        if table.nrows() == 0 or 'FLAG' not in table.colnames():
            return False
        for dd in sorted(set(int(v) for v in table.getcol('DATA_DESC_ID'))):
            rows = table.query('DATA_DESC_ID==%d' % dd)
            try:
                start, size = 0, first
                while start < rows.nrows():
                    flag_row = rows.getcol('FLAG_ROW', startrow=start, nrow=size)
                    flags = rows.getcol('FLAG', startrow=start, nrow=size)
                    if not numpy.all(flags | flag_row[numpy.newaxis, numpy.newaxis, :]):
                        return False
                    start, size = start + size, min(chunk, size * 4)
            finally:
                rows.close()
    return True


# The subtables this tool reads from every MS (read_ms_layout and the tasks it runs).
REQUIRED_SUBTABLES = ('ANTENNA', 'DATA_DESCRIPTION', 'FIELD', 'OBSERVATION', 'POLARIZATION', 'SPECTRAL_WINDOW')


def spws_with_data(casa, ms):
    """Ids of the spectral windows that have rows in ms (not every SPECTRAL_WINDOW row has data)."""
    return list(read_ms_layout(casa, ms).spws)


# ALMA names a science window '<ids>#ALMA_RB_<band>#BB_<n>#SW-<nn>#<resolution>'.  The ids before
# ALMA_RB changed with Cycle 12 (PIPE-2697: 'X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES', with
# the GroupingID first, where Cycle 11 and earlier write 'X1068667655#ALMA_RB_03#BB_1#SW-01#FULL_RES'),
# and a cont.dat edited by hand or carried over may use either form.  Within one delivery (one science
# goal) the part from ALMA_RB on names the window.
_WINDOW_PART = '#ALMA_'


def window_part(name):
    """What names the window in an ALMA spw name: from 'ALMA_' on (the whole name when it has no '#ALMA_')."""
    index = (name or '').find(_WINDOW_PART)
    return name[index + 1:] if index >= 0 else name


def same_window_name(first, second):
    """Whether two spw names name the same window: equal, or equal from 'ALMA_' on (both ALMA names)."""
    if not first or not second:
        return False
    return first == second or (_WINDOW_PART in first and _WINDOW_PART in second
                               and window_part(first) == window_part(second))


def same_window(layout, *, name, spw_id, by_number=True):
    """The id in layout of the spectral window called `name` (numbered spw_id where it was found), or None.

    Execution blocks may number the same window differently, so a unique name decides; among
    several windows of that name the one with the same number; with no window of that name (or no
    name), the same number when by_number.
    """
    by_name = layout.spw_ids_by_name(name) if name else []
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        return spw_id if spw_id in by_name else None
    return spw_id if by_number and spw_id in layout.spws else None


def virtual_spws(layouts):
    """The pipeline's virtual spw ids: OrderedDict virtual id -> (layout, SpwInfo) of the window that defines it.

    layouts in time order.  The first execution block's windows keep their ids; a window of a later one
    that same_window finds for none of them (a target the first did not observe, in spws of its own)
    takes its own id, or one above all others when that is taken, as the pipeline's
    ObservingRun.add_measurement_set does.  cont.dat's spw numbers and --spw are these ids.
    """
    virtual = collections.OrderedDict()
    for layout in layouts:
        known = {same_window(layout, name=spw.name, spw_id=spw.id) for _defining, spw in virtual.values()}
        for spw_id, spw in layout.spws.items():
            if spw_id not in known:
                virtual[spw_id if spw_id not in virtual else max(virtual) + 1] = (layout, spw)
    return virtual


def count_rows(casa, ms, *, field_ids='', spw_ids=''):
    """Rows of ms, or of the given fields ('0,1') and spws ('25,27') of it."""
    return ms_metadata(ms, ('rows', str(field_ids), str(spw_ids)),
                       lambda: _count_rows(casa, ms, field_ids=field_ids, spw_ids=spw_ids))


def _count_rows(casa, ms, *, field_ids, spw_ids):
    if not field_ids and not spw_ids:
        with opened_table(casa, ms) as table:
            return table.nrows()
    wanted = {int(v) for v in str(spw_ids).split(',') if v.strip()}
    dd_ids = [dd for spw, dds in dd_ids_by_spw(casa, ms).items() if spw in wanted for dd in dds] or [-1]
    return count_selected_rows(casa, ms, 'FIELD_ID IN [%s] AND DATA_DESC_ID IN [%s]'
                               % (field_ids, ','.join(str(dd) for dd in sorted(dd_ids))))


def count_selected_rows(casa, ms, where):
    """Rows of ms that a TaQL WHERE clause selects."""
    with opened_table(casa, ms) as table:
        selected = table.query(where)
        try:
            return selected.nrows()
        finally:
            selected.close()


def spw_name(casa, ms, spw_id):
    """The name of a spectral window of ms (any row of SPECTRAL_WINDOW, with data or not)."""
    return ms_metadata(ms, 'spw names', lambda: _spw_names(casa, ms))[int(spw_id)]


def _spw_names(casa, ms):
    with opened_table(casa, Path(ms) / 'SPECTRAL_WINDOW') as table:
        return tuple(str(name) for name in table.getcol('NAME')) if table.nrows() else ()


def dd_ids_by_spw(casa, ms):
    """{spw id: [data description ids]} of an MS."""
    kept = ms_metadata(ms, 'dd ids', lambda: _dd_ids_by_spw(casa, ms))
    return dict((spw_id, list(dd_ids)) for spw_id, dd_ids in kept.items())  # the caller's own copy


def _dd_ids_by_spw(casa, ms):
    with opened_table(casa, Path(ms) / 'DATA_DESCRIPTION') as table:
        spw_of_dd = [int(spw) for spw in table.getcol('SPECTRAL_WINDOW_ID')] if table.nrows() else []
    dd_ids = collections.defaultdict(list)
    for dd_id, spw_id in enumerate(spw_of_dd):
        dd_ids[spw_id].append(dd_id)
    return dict(dd_ids)


def column_names(casa, ms, *, missing=None):
    """The main table's columns (missing: opened_table's advice when ms cannot be opened)."""
    return list(ms_metadata(ms, 'columns', lambda: _column_names(casa, ms, missing)))


def _column_names(casa, ms, missing):
    with opened_table(casa, ms, missing=missing) as table:
        return tuple(table.colnames())
