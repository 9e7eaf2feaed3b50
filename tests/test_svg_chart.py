"""The SVG charts of the before/after spectra (report/svg_chart.py): valid SVG, ticks, thinning."""
import math
import xml.etree.ElementTree as ElementTree

import scriptForReprocessing as sfr

SVG = '{http://www.w3.org/2000/svg}'


def polyline_points(svg_text):
    root = ElementTree.fromstring(svg_text)
    return [[tuple(float(v) for v in pair.split(',')) for pair in line.get('points').split()]
            for line in root.iter(SVG + 'polyline')]


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = sfr.nice_ticks(216.8937, 216.9571, count=8)
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert steps == {0.01}, ticks
    assert ticks[0] >= 216.8937 and ticks[-1] <= 216.9571 and ticks[0] - 216.8937 < 0.01
    assert [sfr.tick_text(t, ticks) for t in ticks[:2]] == ['216.90', '216.91']
    assert sfr.nice_ticks(-0.0123, 0.0456, count=8) == [-0.01, 0.0, 0.01, 0.02, 0.03, 0.04]


def test_a_long_curve_is_thinned_but_keeps_its_spike():
    xs = [216.9 + i * 1e-6 for i in range(20000)]
    ys = [math.sin(i / 500.0) * 0.01 for i in range(20000)]
    ys[12345] = 5.0    # one channel of a narrow line: must stay visible
    svg = sfr.stacked_line_chart(title_lines=['t'], x_label='GHz', panels=[
        {'title': 'before', 'y_label': 'Jy', 'curves': [('eb1', list(zip(xs, ys)))], 'spans': [(216.905, 216.91)]}])
    (points,) = polyline_points(svg)
    assert len(points) <= 4 * 900, len(points)   # at most 4 per pixel column of a 900-pixel chart
    top = min(y for _, y in points)              # SVG's y grows downwards: the spike is the smallest y
    assert top < 100, "the spike was lost in thinning"
    assert sum(1 for _, y in points if y < 100) == 1


def test_two_panels_share_the_x_axis_and_escape_text():
    curve = [(1.0, 0.0), (2.0, 1.0), (3.0, 0.5)]
    svg = sfr.stacked_line_chart(title_lines=['field <A&B> \u2014 spw 25'], x_label='LSRK frequency (GHz)', panels=[
        {'title': 'before', 'y_label': 'Amplitude (Jy)', 'curves': [('uid_A', curve), ('uid_B', curve)],
         'spans': []},
        {'title': 'after', 'y_label': 'Amplitude (Jy)', 'curves': [('uid_A', curve), ('uid_B', curve)],
         'spans': [(1.5, 2.5)]}])
    root = ElementTree.fromstring(svg)   # well-formed despite the < & > in the field name
    texts = [t.text for t in root.iter(SVG + 'text')]
    assert 'field <A&B> \u2014 spw 25' in texts and texts.count('uid_A') == 1   # legend in the first panel only
    lines = polyline_points(svg)
    assert len(lines) == 4
    assert [x for x, _ in lines[0]] == [x for x, _ in lines[2]], 'the panels do not share the x axis'
    assert len(list(root.iter(SVG + 'rect'))) >= 4   # background, 2 frames, the shaded span


def test_the_uv_scatter_puts_east_on_the_left_and_keeps_one_dot_per_pixel():
    """square_scatter_chart (the combination's uv picture): with mirror_x a point at +u is drawn left of the
    centre (u grows east, to the left, as the sky); 10000 copies of one point make one dot; the SVG parses."""
    import numpy
    svg = sfr.square_scatter_chart(title='uv & co', reach=10.0, mirror_x=True, x_label='u', y_label='v', series=[
        ('east', numpy.full(10000, 5.0), numpy.zeros(10000)), ('west', numpy.array([-5.0]), numpy.array([0.0]))])
    root = ElementTree.fromstring(svg)
    paths = [p.get('d') for p in root.iter(SVG + 'path')]
    assert [d.count('M') for d in paths] == [1, 1], paths
    (east_x, east_y), (west_x, west_y) = [[int(n) for n in d[1:].split('h')[0].split()] for d in paths]
    assert east_x < west_x and east_y == west_y, paths
    frame = [r for r in root.iter(SVG + 'rect') if r.get('fill') == 'none'][0]
    centre = float(frame.get('x')) + float(frame.get('width')) / 2
    assert east_x < centre < west_x
