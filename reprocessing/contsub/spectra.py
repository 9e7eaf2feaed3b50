"""Before/after spectra of a continuum subtraction: measured on a sample of the data, drawn as SVG charts."""

import collections
from pathlib import Path

from ..casa.casa_engine import opened_table
from ..casa.data_columns import SELFCAL_COLUMN, has_selfcal_column
from ..casa.frequencies import lsrk_channel_frequencies
from ..casa.ms_tables import ROWS_PER_CHUNK, dd_ids_by_spw, read_ms_layout, same_window, spw_name
from ..contdat.against_ms import analyse_contdat
from ..contdat.channels import ChannelConverter
from ..contdat.grammar import ContRange
from ..core.fileops import relative_path, write_atomically
from ..core.layout import eb_name
from ..core.messages import ReprocessingError, one_line, say, warn
from ..report.svg_chart import stacked_line_chart


# -- spectra before and after -----------------------------------------------------------------------

# A spectrum averages a sample of its field's and spw's rows: time windows spread over the
# observation (the plot says what share of the integrations it shows).  The sample is at most
# SPECTRUM_BUDGET values (rows x correlations x channels; 2e6 keep the plots' noise ~1/30 of one
# visibility's for 2000 channels and 2 correlations) and at most 1/SPECTRUM_SHARE of the rows, so that
# reading it before and after costs a few % of the fit (which reads and writes every row) at any size;
# at least SPECTRUM_MIN_ROWS rows (all of a smaller MS).  Each window is at least SPECTRUM_WINDOW_ROWS
# rows long, at most SPECTRUM_WINDOWS of them: a window costs a tile of DATA and one of FLAG
# (measured: 8 windows per spw cost 3x one window of the same rows).
SPECTRUM_BUDGET = 2000000
SPECTRUM_SHARE = 16
SPECTRUM_MIN_ROWS = 64
SPECTRUM_WINDOWS = 4
SPECTRUM_WINDOW_ROWS = 128


def spectrum_requests(casa, analysis, ms):
    """What to measure for one MS: one entry per field and spw it fits, with cont.dat's ranges and the
    channels' LSRK frequencies.

    The frequencies are converted here, where the run plans its fits, for every MS in a row: a CASA task
    in between (uvcontsub) lets the measures tables go, and converting after each fit cost 50-60 ms per MS
    to read them again (0.22 s of a 9 s --contsub_fast at 240 channels; here 3 ms per MS after the first).
    """
    requests = []
    selections = analysis.selections[str(ms)]
    axes = lsrk_channel_frequencies(casa, ms, [(selection.field_ids[0], selection.spw_id) for selection in selections])
    for selection, frequencies in zip(selections, axes):
        block = analysis.contdat.fields[selection.field_name].spws.get(selection.virtual_id)
        ranges = [[r.lo_hz, r.hi_hz, r.frame] for r in block.ranges] if block is not None else []
        requests.append({'field_name': selection.field_name, 'field_ids': list(selection.field_ids),
                         'spw_id': selection.spw_id, 'virtual_id': selection.virtual_id, 'ranges': ranges,
                         'after_field_ids': list(selection.field_ids), 'after_spw_id': selection.spw_id,
                         'frequency_hz': frequencies})
    return requests


def measure_spectra_pair(casa, *, before_ms, after_ms, requests, column='DATA'):
    """For each request (spectrum_requests): LSRK frequency, |<V>| before and after, and the cont.dat ranges on
    that axis.

    column: the data column both spectra show (CORRECTED_DATA: the self-calibrated data).  Each MS
    is read in one pass for all requests (average_spectra).
    """
    measured = []
    converter = ChannelConverter(casa)
    all_frequencies = [r['frequency_hz'] for r in requests]
    befores = average_spectra(casa, before_ms, [(r['field_ids'], r['spw_id']) for r in requests], column=column)
    afters = average_spectra(casa, after_ms, [(r['after_field_ids'], r['after_spw_id']) for r in requests],
                             column=column)
    for request, frequencies, (before, fraction), (after, _) in zip(requests, all_frequencies, befores, afters):
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
                         'spw_name': spw_name(casa, before_ms, request['spw_id']),
                         'frequency_hz': list(frequencies), 'before': before, 'after': after, 'shade_hz': shade,
                         'fraction': fraction, 'frames': sorted({r[2] for r in request['ranges']}),
                         'column': column})
    return measured


def average_spectra(casa, ms, selections, *, budget=SPECTRUM_BUDGET, column='DATA'):
    """For each (field ids, spw id) of selections: (|<V>| per channel over baselines, time and correlations,
    fraction of rows used), all read in one pass over the MS.

    Flagged visibilities are left out (TaQL's masked arrays); channels with no unflagged data are
    None.  Each selection is sampled in time windows spread over the observation (sample_rows).  The
    rows of each selection are found from the FIELD_ID and DATA_DESC_ID columns (read once); one
    query for all selections, grouped by field and data description, reads the FLAG and data tiles
    of the windows once (a tile may hold the rows of every spw) instead of once per selection.
    """
    import numpy
    if '"' in str(ms):
        raise ReprocessingError('the path %s contains a double quote — rename it' % ms)
    dd_ids_of = dd_ids_by_spw(casa, ms)
    keys = [(int(f), dd) for field_ids, spw_id in selections for f in field_ids for dd in dd_ids_of.get(int(spw_id), [])]
    if len(keys) != len(set(keys)):  # selections sharing a field and spw: each its own pass, its own windows
        return [average_spectra(casa, ms, [selection], budget=budget, column=column)[0] for selection in selections]
    clauses, wanted = [], []
    with opened_table(casa, ms) as table:
        field_column, dd_column = _field_and_dd_columns(table)
        for field_ids, spw_id in selections:
            field_ids, dd_ids = [int(f) for f in field_ids], dd_ids_of.get(int(spw_id), [])
            rows = numpy.flatnonzero(numpy.isin(field_column, field_ids) & numpy.isin(dd_column, dd_ids))
            if not len(rows):
                wanted.append(None)
                continue
            shape = table.getcolshapestring(column, startrow=int(rows[0]), nrow=1)[0]
            values = int(numpy.prod([int(n) for n in shape.strip('[]').split(',')]))
            windows = _time_windows(rows, sample_rows(len(rows), values, budget=budget))
            used = sum(last - first + 1 for first, last in windows)
            clauses.append('(FIELD_ID IN [%s] AND DATA_DESC_ID IN [%s] AND (%s))' % (
                ','.join(str(f) for f in field_ids), ','.join(str(dd) for dd in dd_ids),
                ' OR '.join('(ROWID() >= %d AND ROWID() <= %d)' % (rows[first], rows[last]) for first, last in windows)))
            wanted.append((set(field_ids), set(dd_ids), float(used) / len(rows)))
        groups = {}  # (field id, data description id) -> (mean per correlation and channel, unflagged count)
        if clauses:
            # DATA[FLAG] is a masked array: flagged values are left out of the mean.  TaQL's Int64 results
            # do not convert (getcol: "Unknown casa DataType"), so getcell reads them.
            result = table.taql('SELECT FIELD_ID AS FLD, DATA_DESC_ID AS DDID, GMEANS(' + column + '[FLAG]) AS AVERAGE, '
                                'GSUMS(IIF(FLAG, 0.0, 1.0)) AS UNFLAGGED FROM "%s" WHERE %s GROUPBY FIELD_ID, '
                                'DATA_DESC_ID' % (ms, ' OR '.join(clauses)))
            try:
                for row in range(result.nrows()):
                    groups[(int(result.getcell('FLD', row)), int(result.getcell('DDID', row)))] = (
                        numpy.asarray(result.getcell('AVERAGE', row)), numpy.asarray(result.getcell('UNFLAGGED', row)))
            finally:
                result.close()
    spectra = []
    for selection in wanted:
        if selection is None:
            spectra.append(([], 0.0))
            continue
        field_ids, dd_ids, fraction = selection
        parts = [groups[key] for key in sorted(groups) if key[0] in field_ids and key[1] in dd_ids]
        if not parts:
            spectra.append(([], fraction))
            continue
        total = sum(count.sum(axis=0) for _mean, count in parts)
        combined = sum((mean * count).sum(axis=0) for mean, count in parts) / numpy.where(total > 0, total, 1)
        spectra.append(([float(abs(value)) if weight > 0 else None for value, weight in zip(combined, total)],
                        fraction))
    return spectra


def _field_and_dd_columns(table):
    """FIELD_ID and DATA_DESC_ID of every row (int32), read a chunk of rows at a time."""
    import numpy
    fields, dds = [], []
    for start in range(0, table.nrows(), ROWS_PER_CHUNK):
        fields.append(numpy.asarray(table.getcol('FIELD_ID', startrow=start, nrow=ROWS_PER_CHUNK), dtype=numpy.int32))
        dds.append(numpy.asarray(table.getcol('DATA_DESC_ID', startrow=start, nrow=ROWS_PER_CHUNK), dtype=numpy.int32))
    if not fields:
        return numpy.zeros(0, dtype=numpy.int32), numpy.zeros(0, dtype=numpy.int32)
    return numpy.concatenate(fields), numpy.concatenate(dds)


def sample_rows(rows, values_per_row, *, budget=SPECTRUM_BUDGET):
    """How many of a selection's rows a spectrum reads (pure): at most budget values and 1/SPECTRUM_SHARE of
    the rows, at least SPECTRUM_MIN_ROWS (all rows of a smaller selection)."""
    share = min(budget // max(1, values_per_row), rows // SPECTRUM_SHARE)
    return min(rows, max(SPECTRUM_MIN_ROWS, share))


def _time_windows(rows, limit):
    """[(first, last)] positions in rows (the selection's row numbers, in order) of up to SPECTRUM_WINDOWS
    windows spread over them, limit rows in all, each at least SPECTRUM_WINDOW_ROWS long (pure)."""
    count = len(rows)
    if count <= limit:
        return [(0, count - 1)] if count else []
    pieces = max(1, min(SPECTRUM_WINDOWS, limit // SPECTRUM_WINDOW_ROWS))
    size = max(1, limit // pieces)
    if pieces == 1:
        return [((count - size) // 2, (count - size) // 2 + size - 1)]  # mid-observation
    starts = sorted({int(i * (count - size) / float(pieces - 1)) for i in range(pieces)})
    return [(start, min(count - 1, start + size - 1)) for start in starts]


def plot_contsub_spectra(*, before_ms, after_ms, contdat, out_dir, casa):
    """SVG charts of |<V>| versus LSRK frequency before and after subtraction, cont.dat ranges shaded.

    before_ms / after_ms: an MS or a list of them, paired (uid*_targets.ms and its line MS).  One
    chart per science field and spw, with one curve per execution block.  Returns their paths.
    """
    befores = [Path(before_ms)] if isinstance(before_ms, (str, Path)) else [Path(p) for p in before_ms]
    afters = [Path(after_ms)] if isinstance(after_ms, (str, Path)) else [Path(p) for p in after_ms]
    analysis = analyse_contdat(contdat, befores, casa)
    spectra = []
    for before, after in zip(befores, afters):
        after_layout = read_ms_layout(casa, after)
        before_layout = analysis.layout(before)
        requests = []
        for request in spectrum_requests(casa, analysis, before):
            if request['field_name'] not in after_layout.fields:
                continue
            name = before_layout.spws[request['spw_id']].name
            after_spw = same_window(after_layout, name=name, spw_id=request['spw_id'])
            if after_spw is None:
                continue
            request['after_field_ids'] = after_layout.fields[request['field_name']]
            request['after_spw_id'] = after_spw
            requests.append(request)
        # the self-calibrated data where both MSes hold them, as imaging uses them
        column = SELFCAL_COLUMN if all(has_selfcal_column(casa, ms) for ms in (before, after)) else 'DATA'
        spectra.extend(measure_spectra_pair(casa, before_ms=before, after_ms=after, requests=requests, column=column))
    return draw_spectra(spectra, Path(out_dir))


def draw_spectra(spectra, out_dir):
    """One SVG per (field, cont.dat spw): before above, after below, one curve per EB (report/svg_chart)."""
    import re
    if not spectra:
        return []
    groups = collections.OrderedDict()
    for spectrum in spectra:
        groups.setdefault((spectrum['field_name'], spectrum['virtual_id']), []).append(spectrum)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for (field_name, virtual_id), items in groups.items():
        shown = describe_spectrum_columns(items)
        panels = []
        for key, title in (('before', 'before: uid*_targets.ms, ' + shown),
                           ('after', 'after: uid*_targets_line.ms (continuum subtracted), ' + shown)):
            curves = [(item['eb'] + ('' if item['fraction'] >= 0.999 else
                                     ' (%d%% of the integrations)' % round(100 * item['fraction'])),
                       [(f / 1e9, a) for f, a in zip(item['frequency_hz'], item[key]) if a is not None])
                      for item in items]
            panels.append({'title': title, 'y_label': 'Amplitude (Jy)', 'curves': curves,
                           'spans': [(lo_hz / 1e9, hi_hz / 1e9) for lo_hz, hi_hz in items[0]['shade_hz']]})
        frames = sorted({frame for item in items for frame in item['frames']})
        shaded = ('cont.dat ranges shaded (%s)' % ', '.join(frames) if frames
                  else 'no cont.dat ranges: all channels fitted')
        chart = stacked_line_chart(
            title_lines=['%s \u2014 spw %d %s' % (field_name, virtual_id, items[0]['spw_name']),
                         '|mean visibility| over baselines and time; %s' % shaded],
            panels=panels, x_label='LSRK frequency (GHz)')
        name = '%s_spw%d.svg' % (re.sub(r'[^A-Za-z0-9_.+-]+', '_', field_name), virtual_id)
        write_atomically(out_dir / name, chart)
        pictures.append(out_dir / name)
    return pictures


def describe_spectrum_columns(items):
    """Which data column the curves show ('CORRECTED_DATA (self-calibrated)'), per EB where they differ."""
    def name(column):
        return 'CORRECTED_DATA (self-calibrated)' if column == 'CORRECTED_DATA' else 'DATA'
    columns = sorted({item.get('column', 'DATA') for item in items})
    if len(columns) == 1:
        return name(columns[0])
    return '; '.join('%s: %s' % (name(column), ', '.join(item['eb'] for item in items
                                                          if item.get('column', 'DATA') == column))
                     for column in columns)


def plots_or_warning(make):
    """The plots are a view of a finished result: when they fail, say so and carry on."""
    try:
        return make()
    except Exception as error:
        warn('the spectra plots could not be made (%s) — the line MSes are complete; report this problem'
             % one_line(error))
        return []


def say_spectra(pictures, delivery):
    if pictures:
        say('  spectra before/after (%d SVG, one per field and spw): %s/' % (
            len(pictures), relative_path(Path(pictures[0]).parent, delivery.root)))
