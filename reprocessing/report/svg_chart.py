"""Line charts as SVG text: panels stacked on one x axis, shaded spans, a legend (no matplotlib).

Why not matplotlib: on the 240-channel bench delivery importing it and drawing the four before/after
spectra with Agg cost 0.4 + 0.56 s of an 8 s `--contsub_fast --jobs 1`, the largest part of what the
tool adds to the bare uvcontsub calls; writing the same charts as SVG takes milliseconds, and browsers
show SVG in the report as they show PNG.  A curve longer than the chart is wide keeps, per pixel
column, its first, lowest, highest and last point, so a narrow line or a spike stays visible and the
file stays small however many channels the data have.
"""

import math
from html import escape as _html_escape


def escape(text):
    """&, < and > as entities (what xml.sax.saxutils.escape does: its import pulls in urllib and email,
    37 ms of every run's start, measured with python -X importtime)."""
    return _html_escape(text, quote=False)


# matplotlib's default cycle ("tab10"), so curves keep the colours users know from the pipeline's plots
PALETTE = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
           '#17becf')
SPAN_COLOUR = '#2ca02c'
FONT = 'font-family="DejaVu Sans, Arial, Helvetica, sans-serif"'


def nice_ticks(low, high, count=6):
    """Round tick values (1, 2 or 5 x 10^k apart) covering low..high, about count of them."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    # multiples of step, rounded so that 216.93 is not written 216.92999999999998
    digits = max(0, 2 - int(math.floor(math.log10(step))))
    return [round(index * step, digits) + 0.0 for index in range(int(first), int(last) + 1)]


def tick_text(value, ticks):
    """value written with the fewest decimals that show the ticks' step exactly (0.02 -> 2 decimals)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 0.0
    if not step:
        return '%g' % value
    decimals = 0
    while decimals < 12 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return '%.*f' % (decimals, value)


def thinned(points, x_to_pixel):
    """points (sorted by x) reduced to first/min/max/last per pixel column, in x order."""
    columns = {}
    order = []
    for x, y in points:
        column = int(x_to_pixel(x))
        if column not in columns:
            columns[column] = [(x, y), (x, y), (x, y), (x, y)]
            order.append(column)
            continue
        first, lowest, highest, _ = columns[column]
        columns[column] = [first, min(lowest, (x, y), key=lambda p: p[1]), max(highest, (x, y), key=lambda p: p[1]),
                           (x, y)]
    kept = []
    for column in order:
        for point in sorted(set(columns[column])):
            kept.append(point)
    return kept


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def _limits(values, pad=0.05):
    values = _finite(values)
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high == low:
        low, high = low - (abs(low) or 1.0) * 0.5, high + (abs(high) or 1.0) * 0.5
    margin = (high - low) * pad
    return low - margin, high + margin


def stacked_line_chart(*, title_lines, panels, x_label, width=900, height=585, legend_limit=8):
    """An SVG document (text): one panel per entry of panels, top to bottom, sharing the x axis.

    panels: dicts with 'title', 'y_label', 'curves' ([(label, [(x, y)], ...)]), 'spans' ([(x_low, x_high)])
    and optionally 'zero_line' (True).  The legend (curve labels) is drawn in the first panel when there
    are at most legend_limit curves.
    """
    left, right, top = 78, 18, 24 + 16 * len(title_lines)
    bottom_margin, gap = 46, 34
    panel_height = (height - top - bottom_margin - gap * (len(panels) - 1)) / float(max(1, len(panels)))
    xs = [x for panel in panels for _, points in panel['curves'] for x, _ in points]
    xs += [x for panel in panels for span in panel.get('spans', ()) for x in span]
    x_low, x_high = _limits(xs, pad=0.01)
    plot_width = width - left - right

    def x_pixel(x):
        return left + (x - x_low) / (x_high - x_low) * plot_width

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s font-size="11">'
           % (width, height, width, height, FONT),
           '<rect width="100%" height="100%" fill="white"/>']
    for index, line in enumerate(title_lines):
        out.append('<text x="%d" y="%d" text-anchor="middle" font-size="12">%s</text>'
                   % (width // 2, 18 + 16 * index, escape(line)))
    x_ticks = nice_ticks(x_low, x_high, count=8)
    for number, panel in enumerate(panels):
        y0 = top + number * (panel_height + gap)
        y_low, y_high = _limits([y for _, points in panel['curves'] for _, y in points] +
                                ([0.0] if panel.get('zero_line', True) else []))

        def y_pixel(y, y0=y0, y_low=y_low, y_high=y_high):
            return y0 + panel_height - (y - y_low) / (y_high - y_low) * panel_height
        clip = 'panel%d' % number
        out.append('<clipPath id="%s"><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/></clipPath>'
                   % (clip, left, y0, plot_width, panel_height))
        for low, high in panel.get('spans', ()):
            a, b = sorted((x_pixel(low), x_pixel(high)))
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.18" '
                       'clip-path="url(#%s)"/>' % (a, y0, max(b - a, 0.5), panel_height, SPAN_COLOUR, clip))
        y_ticks = nice_ticks(y_low, y_high, count=5)
        for tick in x_ticks:
            out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#000" stroke-opacity="0.12"/>'
                       % (x_pixel(tick), x_pixel(tick), y0, y0 + panel_height))
        for tick in y_ticks:
            out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#000" stroke-opacity="0.12"/>'
                       % (left, left + plot_width, y_pixel(tick), y_pixel(tick)))
            out.append('<text x="%.1f" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>'
                       % (left - 5, y_pixel(tick), tick_text(tick, y_ticks)))
        if panel.get('zero_line', True) and y_low < 0.0 < y_high:
            out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#999" stroke-width="0.6"/>'
                       % (left, left + plot_width, y_pixel(0.0), y_pixel(0.0)))
        for index, (_, points) in enumerate(panel['curves']):
            points = thinned(sorted(p for p in points if p[1] is not None and math.isfinite(p[1])), x_pixel)
            if points:
                out.append('<polyline fill="none" stroke="%s" stroke-width="1" clip-path="url(#%s)" points="%s"/>'
                           % (PALETTE[index % len(PALETTE)], clip,
                              ' '.join('%.1f,%.1f' % (x_pixel(x), y_pixel(y)) for x, y in points)))
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#000" stroke-width="0.8"/>'
                   % (left, y0, plot_width, panel_height))
        out.append('<text x="%.1f" y="%.1f">%s</text>' % (left, y0 - 5, escape(panel['title'])))
        out.append('<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>'
                   % (y0 + panel_height / 2, escape(panel['y_label'])))
        if number == 0 and panel['curves'] and len(panel['curves']) <= legend_limit:
            # right-aligned box sized from the longest label (about 6.2 px per character at 11 px)
            text_width = 6.2 * max(len(label) for label, _ in panel['curves'])
            x = max(left + 4, left + plot_width - text_width - 42)
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" fill-opacity="0.85" '
                       'stroke="#ccc"/>' % (x, y0 + 4, left + plot_width - x - 4, 15 * len(panel['curves']) + 6))
            for index, (label, _) in enumerate(panel['curves']):
                y = y0 + 14 + 15 * index
                out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>'
                           % (x + 6, x + 28, y, y, PALETTE[index % len(PALETTE)]))
                out.append('<text x="%.1f" y="%.1f" dominant-baseline="middle">%s</text>' % (x + 34, y, escape(label)))
        if number == len(panels) - 1:
            for tick in x_ticks:
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
                           % (x_pixel(tick), y0 + panel_height + 15, tick_text(tick, x_ticks)))
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
                       % (left + plot_width / 2, y0 + panel_height + 36, escape(x_label)))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def square_scatter_chart(*, title, series, x_label, y_label, reach, size=500, mirror_x=False):
    """An SVG document (text): points of each series [(label, xs, ys)] (numpy arrays) in its colour on a square
    plot from -reach to reach on both axes (mirror_x: x grows to the left, as u on the sky).  Each series keeps one
    2-pixel dot per occupied pixel (the uv picture's 2 x 40000 points make about 6000 dots, 90 kB), drawn in
    order, so the last series stays visible over the others; the legend gives each label."""
    import numpy
    left, top, right, bottom = 62, 30, 12, 46
    plot = float(size - left - right)
    height = int(top + plot + bottom)
    reach = float(reach) or 1.0

    def x_pixel(x):
        return left + (0.5 - 0.5 * x / reach if mirror_x else 0.5 + 0.5 * x / reach) * plot

    def y_pixel(y):
        return top + (0.5 - 0.5 * y / reach) * plot
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s font-size="11">'
           % (size, height, size, height, FONT), '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" text-anchor="middle" font-size="11">%s</text>' % (size // 2, escape(title))]
    ticks = nice_ticks(-reach, reach, count=7)
    for tick in ticks:
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#000" stroke-opacity="0.12"/>'
                   % (x_pixel(tick), x_pixel(tick), top, top + plot))
        out.append('<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#000" stroke-opacity="0.12"/>'
                   % (left, left + plot, y_pixel(tick), y_pixel(tick)))
        out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
                   % (x_pixel(tick), top + plot + 15, tick_text(tick, ticks)))
        out.append('<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>'
                   % (left - 5, y_pixel(tick), tick_text(tick, ticks)))
    for index, (_label, xs, ys) in enumerate(series):
        xs, ys = numpy.asarray(xs, dtype=float), numpy.asarray(ys, dtype=float)
        keep = numpy.isfinite(xs) & numpy.isfinite(ys) & (numpy.abs(xs) <= reach) & (numpy.abs(ys) <= reach)
        pixels = numpy.unique(numpy.stack([numpy.floor(x_pixel(xs[keep])), numpy.floor(y_pixel(ys[keep]))],
                                          axis=1).astype(int), axis=0) if keep.any() else []
        out.append('<path fill="%s" d="%s"/>' % (PALETTE[index % len(PALETTE)], ''.join(
            'M%d %dh2v2h-2z' % (x, y) for x, y in pixels)))
    out.append('<rect x="%d" y="%d" width="%.1f" height="%.1f" fill="none" stroke="#000" stroke-width="0.8"/>'
               % (left, top, plot, plot))
    text_width = 6.2 * max([len(label) for label, _x, _y in series] or [0])
    x = left + plot - text_width - 30
    out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="white" fill-opacity="0.85" stroke="#ccc"/>'
               % (x, top + 4, text_width + 26, 15 * len(series) + 6))
    for index, (label, _xs, _ys) in enumerate(series):
        y = top + 14 + 15 * index
        out.append('<rect x="%.1f" y="%d" width="8" height="8" fill="%s"/>' % (x + 6, y - 4,
                                                                            PALETTE[index % len(PALETTE)]))
        out.append('<text x="%.1f" y="%d" dominant-baseline="middle">%s</text>' % (x + 20, y, escape(label)))
    out.append('<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>' % (left + plot / 2, top + plot + 36,
                                                                          escape(x_label)))
    out.append('<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>'
               % (top + plot / 2, escape(y_label)))
    out.append('</svg>')
    return '\n'.join(out) + '\n'
