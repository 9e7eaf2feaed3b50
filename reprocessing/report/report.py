"""The reprocessing report: a static HTML page per run (steps, inputs, outputs, spectra, images)."""

import collections
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..casa.casa_engine import load_casa
from ..casa.environment import describe_environment, engine_description
from ..casa.ms_tables import read_ms_layout
from ..core.fileops import PARTIAL_TAG, atomic_file, directory_bytes, human_bytes, relative_path, remove_file, write_atomically
from ..core.host import full_host_name, time_text, user_name
from ..core.layout import SCRIPT_NAME
from ..core.messages import Interrupted, duration_text, warn
from ..imaging.archive_compare import COMPARISON_HEADER, comparison_cells
from .combination import combination_section
from .cubes import cubes_section
from .html import _Markup, _detail_html, _format_value, _html_page, _is_short, _table


# -- the reprocessing report -------------------------------------------------

STATUS_LABELS = {'succeeded': 'succeeded', 'failed': 'FAILED', 'interrupted': 'INTERRUPTED',
                 'running': 'running (or killed)'}
# Result keys the report shows in their own sections; any other key is listed beside its step.
_RESULT_KEYS_SHOWN = ('step', 'seconds', 'started', 'ended', 'outputs', 'spectra', 'images', 'contdat_problems',
                      'problems', 'archive_comparison', 'combination')


def write_report(plan, state, *, status, error=None):
    """Write this run's page and the index of runs; a problem with the report never fails the run.

    Runs that only serve a weblog add no page, and neither does a successful
    --cleanup (it removed working_reprocess/ on purpose).
    """
    if [step.name for step in plan.steps] == ['weblog']:
        return None
    if any(result.get('step') == 'cleanup' for result in state.results):
        return None
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        status = 'interrupted'
    try:
        return _write_report(plan, state, status=status, error=error)
    except Exception as problem:  # the run's own outcome matters more than its report
        warn('could not write the reprocessing report (%s) — the run itself is not affected' % problem)
        return None


def _write_report(plan, state, *, status, error):
    report_root = plan.delivery.report_dir
    run_dir = _report_run_dir(state, report_root)
    ended = time.time()
    started = state.started or ended
    steps = _step_rows(plan, state, ended=ended, status=status)
    assets = _ReportAssets(run_dir)
    summary = {
        'run': run_dir.name, 'status': status, 'command': state.command or '',
        'started': time_text(started), 'ended': time_text(ended) if status != 'running' else '',
        'seconds': round(ended - started, 1), 'error': str(error) if error is not None else '',
        'steps': [row['step'] for row in steps]}
    page = _run_page(plan, state, summary, steps, assets)
    write_atomically(run_dir / 'index.html', page)
    write_atomically(run_dir / 'run.json', json.dumps(summary, indent=1))
    write_atomically(report_root / 'index.html', _runs_index_page(plan.delivery, report_root))
    _sweep_report_temporaries(report_root)
    return run_dir / 'index.html'


def _report_run_dir(state, report_root):
    """This run's folder, chosen once per run: run-<start time>, with a suffix if that is taken."""
    run_dir = state.report_dir
    if run_dir is None:
        started = state.started or time.time()
        base = 'run-' + datetime.datetime.fromtimestamp(started).strftime('%Y%m%d-%H%M%S')
        run_dir = report_root / base
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = report_root / ('%s-%d' % (base, suffix))
        state.report_dir = run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _step_rows(plan, state, *, ended, status):
    """One row per planned step: done (with its result), failed or running, or not run."""
    results = {result.get('step'): result for result in state.results}
    current = state.current_step or {}
    rows = []
    for step in plan.steps:
        result = results.get(step.name)
        row = {'step': step.name, 'summary': step.summary, 'result': result or {}}
        if result is not None:
            row.update(state='done', started=result.get('started'), ended=result.get('ended'),
                       seconds=result.get('seconds'))
        elif current.get('step') == step.name:
            began = current.get('started')
            row.update(state='running' if status == 'running' else status, started=began,
                       ended=None if status == 'running' else ended,
                       seconds=round(ended - began, 1) if began else None)
        else:
            row.update(state='not run', started=None, ended=None, seconds=None)
        rows.append(row)
    return rows


class _ReportAssets(object):
    """Pictures (PNG, SVG) shown by the report, copied into the run's folder so the page (and its server) is self-contained."""

    def __init__(self, run_dir):
        self.folder = run_dir / 'assets'
        self.used = {}

    def link(self, source):
        """The page-relative path of a copy of source, or None when source is missing."""
        source = Path(str(source))
        if not source.is_file():
            return None
        key = str(source.resolve())
        if key not in self.used:
            name = source.name
            taken = set(self.used.values())
            counter = 1
            while 'assets/' + name in taken:
                counter += 1
                name = '%s-%d%s' % (source.stem, counter, source.suffix)
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.folder / name) as temporary:
                shutil.copyfile(str(source), str(temporary))
            self.used[key] = 'assets/' + name
        return self.used[key]


def _run_page(plan, state, summary, steps, assets):
    from html import escape
    delivery = plan.delivery
    status = summary['status']
    parts = [
        '<h1>Reprocessing report: %s</h1>' % escape(str(delivery.root)),
        '<p><a href="../index.html">all runs of this delivery</a></p>',
        _table([], [
            ['Status', _Markup('<span class="%s">%s</span>%s' % (
                status, escape(STATUS_LABELS.get(status, status)),
                ': ' + escape(summary['error']) if summary['error'] else ''))],
            ['Command', _Markup('<code>%s</code>' % escape(summary['command']))],
            ['Started', summary['started']],
            ['Ended', summary['ended'] or 'still running'],
            ['Duration', duration_text(summary['seconds'])],
            ['Environment', describe_environment().replace('Environment: ', '', 1)],
            ['Engine', engine_description()],
            ['Host', '%s@%s' % (user_name(), full_host_name())],
        ]),
        '<h2>Steps</h2>',
        _table(['#', 'step', 'what', 'started', 'ended', 'duration', 'status', 'details'], [
            [str(number), row['step'], row['summary'], time_text(row['started']) if row['started'] else '',
             time_text(row['ended']) if row['ended'] else '', duration_text(row['seconds']), row['state'],
             _result_details(row['result'])]
            for number, row in enumerate(steps, 1)]),
    ]
    parts.extend(_step_details_section(steps))
    parts.extend(_inputs_section(plan))
    parts.extend(_outputs_section(plan, state))
    parts.extend(_contdat_section(plan, state))
    parts.extend(_spectra_section(state, assets))
    parts.extend(_images_section(state, assets))
    parts.extend(cubes_section(state, assets))
    parts.extend(combination_section(state, assets))
    parts.extend(_archive_section(state, assets))
    title = 'Reprocessing report %s' % summary['run']
    return _html_page(title, '\n'.join(parts))


def _inputs_section(plan):
    from html import escape
    inputs = []
    for step in plan.steps:
        for path in step.inputs:
            if str(path).endswith('.ms') and path not in inputs:
                inputs.append(path)
    if not inputs:
        return []
    casa = load_casa() if 'casatools' in sys.modules else None  # only when this run loaded CASA anyway
    rows = []
    for ms in inputs:
        size = human_bytes(directory_bytes(ms)) if Path(ms).exists() else 'missing'
        fields, spws = '', ''
        if casa is not None and Path(ms).is_dir():
            try:
                description = describe_measurement_set(ms, casa=casa)
                fields = ', '.join(description['fields'])
                spws = _Markup('<br>'.join(escape('%s %s: %.4f–%.4f GHz, %d channels' % (
                    spw['id'], spw['name'], spw['low_ghz'], spw['high_ghz'], spw['nchan']))
                    for spw in description['spws']))
            except Exception as error:  # an unreadable MS is worth a note, not a lost report
                fields = 'not readable: %s' % (str(error).strip().splitlines() or ['?'])[0][:200]
        rows.append([relative_path(ms, plan.delivery.root), size, fields, spws])
    note = '' if casa is not None else (
        '<p class="muted">Fields and spectral windows are listed when the run loads CASA.</p>')
    return ['<h2>Inputs</h2>', _table(['measurement set', 'size', 'fields', 'spectral windows (TOPO)'], rows), note]


def describe_measurement_set(ms, *, casa):
    """Fields and spectral windows (id, name, channels, frequency range) that hold data in an MS, read only.

    An ALMA MS keeps the rows of the fields and spws split away (spw ids 0-24
    before science spw 25), so only the ids used by the main table are listed.
    """
    layout = read_ms_layout(casa, ms)
    spws = [{'id': spw.id, 'name': spw.name, 'nchan': spw.nchan, 'low_ghz': spw.low_hz / 1e9,
             'high_ghz': spw.high_hz / 1e9} for spw in layout.spws.values()]
    return {'fields': list(layout.fields), 'spws': spws}


def _outputs_section(plan, state):
    outputs = []
    for step in plan.steps:
        outputs.extend(step.outputs)
    for result in state.results:
        outputs.extend(Path(p) for p in result.get('outputs', []) or [])
    rows, seen = [], set()
    for path in outputs:
        if str(path) in seen:
            continue
        seen.add(str(path))
        size = human_bytes(directory_bytes(path)) if Path(path).exists() else 'not made'
        rows.append([relative_path(path, plan.delivery.root), size])
    if not rows:
        return []
    return ['<h2>Outputs</h2>', _table(['path (relative to the delivery)', 'size'], rows)]


def _contdat_section(plan, state):
    from html import escape
    uses_contdat = any(step.name in ('contsub', 'check') for step in plan.steps)
    problems, checked = _contdat_problems(plan, state)
    contdat = plan.delivery.contdat
    if not (uses_contdat or problems) or not contdat.is_file():
        return []
    parts = ['<h2>cont.dat in use</h2>', '<p>%s</p>' % escape(str(contdat))]
    if problems:
        parts.append('<p>Problems the check found:</p><ul>%s</ul>'
                     % ''.join('<li>%s</li>' % escape(problem) for problem in problems))
    elif checked:
        parts.append('<p>The check found no problem.</p>')
    try:
        text = contdat.read_text(errors='replace')
    except OSError as error:
        text = '(cannot read it: %s)' % error
    parts.append('<pre>%s</pre>' % escape(text))
    return parts


def _contdat_problems(plan, state):
    """The cont.dat checker's findings as text, and whether it ran at all.

    They are the plan's analysis when the check ran in this run (also when it
    stopped the run), else what the steps returned ('contdat_problems' of
    the contsub step, 'problems' of the check step).
    """
    found = []
    analysis = getattr(plan, 'contdat_analysis', None)
    if analysis is not None:
        found.extend(getattr(analysis, 'problems', None) or [])
    for result in state.results:
        found.extend(result.get('contdat_problems') or [])
        if result.get('step') == 'check':
            found.extend(result.get('problems') or [])
    checked = analysis is not None or any(
        'contdat_problems' in result or result.get('step') == 'check' for result in state.results)
    texts = []
    for problem in found:
        text = _problem_text(problem)
        if text not in texts:
            texts.append(text)
    return texts, checked


def _problem_text(problem):
    """'path:line: severity: message' from a checker Problem, a dict with those keys, or a string."""
    if hasattr(problem, '_asdict'):
        problem = problem._asdict()
    if isinstance(problem, dict) and 'message' in problem:
        where = '%s:%s' % (problem.get('path', ''), problem['line']) if problem.get('line') else problem.get('path')
        return ': '.join(str(part) for part in (where, problem.get('severity'), problem['message']) if part)
    return str(problem)


def _spectra_section(state, assets):
    from html import escape
    figures = []
    for result in state.results:
        for picture in result.get('spectra') or []:
            link = assets.link(picture)
            caption = escape(Path(str(picture)).name)
            figures.append('<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>'
                           % (escape(link), caption, caption) if link else
                           '<p class="muted">missing spectrum: %s</p>' % escape(str(picture)))
    if not figures:
        return []
    return ['<h2>Continuum subtraction: spectra before and after (cont.dat ranges shaded)</h2>'] + figures


# Columns of the image table, each with the keys an image's dict may give it under (the imaging step's first).
IMAGE_COLUMNS = collections.OrderedDict([
    ('image', ('image', 'name')), ('specmode', ('specmode',)), ('field', ('field',)), ('spw', ('spw',)),
    ('beam', ('beam_arcsec', 'beam')), ('cell', ('cell_arcsec', 'cell')), ('imsize', ('imsize',)),
    ('nchan', ('nchan',)), ('peak', ('peak_jy', 'peak')), ('rms', ('rms_jy', 'rms')), ('size', ('bytes', 'size'))])


def _images_section(state, assets):
    """The images steps made: dicts with IMAGE_COLUMNS (beam and cell in arcsec, peak and rms in Jy/beam,
    or text) and a 'thumbnail' PNG."""
    from html import escape
    images = [image for result in state.results for image in (result.get('images') or [])]
    if not images:
        return []
    rows, figures = [], []
    for image in images:
        values = dict((column, next((image[key] for key in keys if image.get(key) is not None), None))
                      for column, keys in IMAGE_COLUMNS.items())
        rows.append([_format_value(column, values[column]) for column in IMAGE_COLUMNS])
        if image.get('thumbnail'):
            link = assets.link(image['thumbnail'])
            # the picture's own title: its numbers are the table's, printed the same way
            caption = escape(str(image.get('thumbnail_title') or values['image'] or '')).replace('\n', '<br>')
            figures.append('<figure><img src="%s" alt="%s"><figcaption>%s</figcaption></figure>'
                           % (escape(link), escape(str(values['image'] or '')), caption) if link else
                           '<p class="muted">missing thumbnail: %s</p>' % escape(str(image['thumbnail'])))
    return ['<h2>Images</h2>', _table(list(IMAGE_COLUMNS), rows)] + figures


def _archive_section(state, assets):
    """Each new image beside its archive twin: the images table's numbers for both versions."""
    rows = [row for result in state.results for row in (result.get('archive_comparison') or [])]
    if not rows:
        return []
    cells = []
    for row in rows:
        cells.append([row['image'], 'new'] + comparison_cells(row['new']))
        cells.append([row['archive'], 'archive'] + comparison_cells(row['old']))
    from html import escape
    figures = []
    for row in rows:
        link = assets.link(row['picture']) if row.get('picture') else None
        if link:
            figures.append('<figure><img src="%s" alt="%s"><figcaption>%s: new and archive</figcaption></figure>'
                           % (escape(link), escape(row['image']), escape(row['image'])))
    return ['<h2>Compared with the archive\'s images</h2>',
            '<p class="muted">Peak and rms where the primary beam is above 0.5, the rms outside the clean mask, '
            'as in the images table; flux inside the clean mask (continuum images).</p>', _table(COMPARISON_HEADER, cells)] + figures




def _result_details(result):
    """What a step made that has no section of its own and is short, one 'key: value' per line; longer
    values, lists and dicts are in the step's sub-tables (_step_details_section)."""
    from html import escape
    pairs = [escape('%s: %s' % (key.replace('_', ' '), _format_value(key, value)))
             for key, value in sorted(result.items()) if key not in _RESULT_KEYS_SHOWN and _is_short(value)]
    return _Markup('<br>'.join(pairs))


def _step_details_section(steps):
    """Each step's long values as readable sub-tables: notes as a list, nested dicts flattened to rows."""
    from html import escape
    parts = []
    for number, row in enumerate(steps, 1):
        long_values = [(key, value) for key, value in sorted(row['result'].items())
                       if key not in _RESULT_KEYS_SHOWN and not _is_short(value) and value not in ([], {}, ())]
        if not long_values:
            continue
        parts.append('<h3>%d. %s</h3>' % (number, escape(row['step'])))
        for key, value in long_values:
            parts.append('<div><b>%s</b>%s</div>' % (escape(key.replace('_', ' ')), _detail_html(key, value)))
    return ['<h2>Step details</h2>'] + parts if parts else []


def _runs_index_page(delivery, report_root):
    """Every run recorded in report_root, newest first."""
    from html import escape
    runs = []
    for folder in report_root.glob('run-*'):
        try:
            with open(str(folder / 'run.json')) as handle:
                runs.append(json.load(handle))
        except (OSError, ValueError):
            continue  # a folder without a complete summary is not listed
    runs.sort(key=lambda run: (run.get('started', ''), run.get('run', '')), reverse=True)
    rows = [[_Markup('<a href="%s/index.html">%s</a>' % (escape(run['run']), escape(run.get('started', '')))),
             _Markup('<span class="%s">%s</span>' % (
                 escape(run.get('status', '')), escape(STATUS_LABELS.get(run.get('status'), run.get('status', ''))))),
             duration_text(run.get('seconds')), ', '.join(run.get('steps', [])),
             _Markup('<code>%s</code>' % escape(run.get('command', '')) + (
                 '<br><span class="muted">%s</span>' % escape(run['error']) if run.get('error') else ''))]
            for run in runs if run.get('run')]
    body = '\n'.join([
        '<h1>Reprocessing runs: %s</h1>' % escape(str(delivery.root)),
        '<p>One page per run of %s in this delivery, newest first.</p>' % SCRIPT_NAME,
        _table(['run', 'status', 'duration', 'steps', 'command'], rows)])
    return _html_page('Reprocessing runs', body)




def _sweep_report_temporaries(report_root):
    """Temporaries left by a run killed while writing its report."""
    for temporary in list(report_root.glob('.*' + PARTIAL_TAG + '*')) + list(
            report_root.glob('run-*/.*' + PARTIAL_TAG + '*')) + list(
            report_root.glob('run-*/assets/.*' + PARTIAL_TAG + '*')):
        if not temporary.name.endswith(PARTIAL_TAG + str(os.getpid())):
            remove_file(temporary)
