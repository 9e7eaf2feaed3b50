"""HTML pieces of the report: escaped markup, tables, value formatting, the page frame (pure)."""

from ..core.fileops import human_bytes
from ..core.host import now_text
from ..core.layout import SCRIPT_NAME
from ..imaging.image_stats import flux_text


REPORT_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 80em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; max-width: 100%; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } .long { overflow-wrap: anywhere; }
table.sub { font-size: 0.9em; margin: 0.2em 0 0.8em 0; } h3 { font-size: 1em; margin: 1em 0 0.2em 0; }
ul.notes { margin: 0.2em 0; padding-left: 1.4em; } .kept { color: #176617; } .remade { color: #a06000; }
.succeeded { color: #176617; font-weight: bold; } .failed, .interrupted { color: #b00000; font-weight: bold; }
.running { color: #a06000; font-weight: bold; } .muted { color: #777; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.5em; overflow-x: auto; }
figure { display: inline-block; margin: 0.5em; max-width: 100%; vertical-align: top; }
figcaption { font-size: 0.85em; overflow-wrap: anywhere; }
img { max-width: 100%; border: 1px solid #ddd; }
"""

# A step result's value is shown in the steps table when it is this short and no list or dict.
SHORT_DETAIL = 60

# Names of the levels of nested results (outer key first), for their sub-tables' headers.
NESTED_LEVELS = {'fitspec': ('execution block', 'field ids', 'spw'), 'seconds_per_eb': ('execution block',),
                 'update': ('product',)}

VALUE_NAMES = {'seconds_per_eb': 'seconds', 'update': '--update: kept, or made and why'}

LONG_WORD = 24


def _format_value(column, value):
    if value is None:
        return ''
    if column == 'beam' and isinstance(value, dict):
        value = (value.get('major', 0), value.get('minor', 0), value.get('pa', 0))
    if column == 'beam' and isinstance(value, (list, tuple)) and len(value) == 3:
        return '%.3g" × %.3g", %.1f°' % tuple(value)
    if column == 'cell' and isinstance(value, (int, float)):
        return '%.3g"' % value
    if column in ('size', 'bytes') and isinstance(value, (int, float)):
        return human_bytes(value)
    if column in ('peak', 'rms') and isinstance(value, (int, float)):
        return flux_text(value)  # as the thumbnails print it
    if isinstance(value, float):
        return '%.4g' % value
    if isinstance(value, (list, tuple)):
        return ' × '.join(str(v) for v in value) if column == 'imsize' else ', '.join(str(v) for v in value)
    return str(value)


def _is_short(value):
    return not isinstance(value, (dict, list, tuple)) and len(str(value)) <= SHORT_DETAIL


def _detail_html(key, value):
    """One long result value as HTML: text, a list, or a table of its nested dicts' leaves."""
    from html import escape
    if isinstance(value, (list, tuple)):
        if all(_is_short(item) or isinstance(item, str) for item in value):
            return '<ul class="notes">%s</ul>' % ''.join('<li>%s</li>' % escape(str(item)) for item in value)
        return '<ul class="notes">%s</ul>' % ''.join('<li>%s</li>' % _detail_html(key, item) for item in value)
    if not isinstance(value, dict):
        return ': ' + escape(_format_value(key, value))
    rows = list(_leaves(value, ()))
    if rows == [((), value)]:  # a dict of plain values: one row per key
        rows = [((str(k),), v) for k, v in value.items()]
    depth = max(len(path) for path, _leaf in rows) if rows else 0
    leaf_keys = []
    for _path, leaf in rows:
        if isinstance(leaf, dict):
            leaf_keys.extend(k for k in leaf if k not in leaf_keys)
    names = list(NESTED_LEVELS.get(key, ()))[:depth]
    names += ['key %d' % level for level in range(len(names) + 1, depth + 1)]
    header = names + (leaf_keys or [VALUE_NAMES.get(key, 'value')])
    table_rows = []
    for path, leaf in rows:
        cells = list(path) + [''] * (depth - len(path))
        if isinstance(leaf, dict):
            cells += [_format_value(k, leaf[k]) if k in leaf else '' for k in leaf_keys]
        else:
            cells += [_format_value(key, leaf)] + [''] * (len(leaf_keys) - 1 if leaf_keys else 0)
        table_rows.append(cells)
    return _table(header, table_rows).replace('<table>', '<table class="sub">', 1)


def _leaves(value, path):
    """(path of keys, leaf) of a nested dict: a leaf is a value that is no dict, or a dict of plain values."""
    if isinstance(value, dict) and value and any(isinstance(v, dict) for v in value.values()):
        for key, inner in value.items():
            for found in _leaves(inner, path + (str(key),)):
                yield found
    else:
        yield path, value


class _Markup(str):
    """Text that is HTML already (built from escaped parts), so a table does not escape it again."""


def _table(header, rows):
    """An HTML table; cells are escaped unless they are _Markup.  Without a header, the first column is one."""
    from html import escape

    def cell(value):
        return value if isinstance(value, _Markup) else escape(str(value))

    def opening(tag, value):
        # A word longer than LONG_WORD (a path, a command, an image name) may break anywhere, so that no
        # table is wider than the page; shorter ones never break ("contsub" stays whole).
        words = str(value).replace('<br>', ' ').split()
        return '<%s class="long">' % tag if any(len(word) > LONG_WORD for word in words) else '<%s>' % tag
    head = '<tr>%s</tr>' % ''.join('<th>%s</th>' % escape(h) for h in header) if header else ''
    body = ''.join('<tr>%s</tr>' % ''.join(
        ('%s%s</th>' % (opening('th', value), cell(value)) if index == 0 and not header else
         '%s%s</td>' % (opening('td', value), cell(value)))
        for index, value in enumerate(row)) for row in rows)
    return '<table>%s%s</table>' % (head, body)


def _html_page(title, body):
    from html import escape
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>%s</title>\n'
            '<style>%s</style></head>\n<body>\n%s\n<p class="muted">Written by %s on %s.</p>\n</body></html>\n'
            % (escape(title), REPORT_STYLE, body, SCRIPT_NAME, now_text()))
