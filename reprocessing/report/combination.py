"""The report's section on a combination (--combine): what was combined (each delivery's array, MSes, antennas,
paired spws), each product's beam, the uv coverage per array as a picture (uv_coverage.svg, drawn by the step
beside the products) and the flux each product recovers compared with each array alone (flux_recovered.csv)."""

from pathlib import Path

from ..imaging.combine_flux import versus_text
from ..core.fileops import write_atomically
from .cubes import _figure
from .html import _table
from .svg_chart import square_scatter_chart

def draw_uv_coverage(samples, svg_path, *, title):
    """An SVG of the uv plane: samples [(label, u klambda, v klambda, rows read, rows of the MSes)] drawn in one
    colour per array, each point with its conjugate (-u, -v); the legend says how many points of how many rows.
    SVG (svg_chart) rather than matplotlib's PNG: on bench/bench_combine.py's goal (2 x 20000 rows) importing
    matplotlib and drawing took 1.02 s CPU, the SVG 0.04 s in the run."""
    import numpy
    reach = 0.0
    series = []
    for label, u, v, read, rows in samples:  # the most compact array last: its points stay visible
        u, v = numpy.asarray(u, dtype=float), numpy.asarray(v, dtype=float)
        series.append(('%s: %d of %d rows' % (label, read, rows), numpy.concatenate([u, -u]),
                       numpy.concatenate([v, -v])))
        if len(u):
            reach = max(reach, float(numpy.abs(numpy.concatenate([u, v])).max()))
    write_atomically(svg_path, square_scatter_chart(title=title, series=series, x_label=u'u (k\u03bb)',
                                                    y_label=u'v (k\u03bb)', reach=1.05 * reach, mirror_x=True))
    return str(svg_path)


def combination_section(state, assets):
    """HTML parts for the combine step's result ({'combination': {...}}); [] when the run combined nothing."""
    from html import escape
    found = [result['combination'] for result in state.results if result.get('combination')]
    if not found:
        return []
    parts = []
    for combination in found:
        parts.append('<h2>Combination: %s</h2>' % escape(combination['label']))
        parts.append('<p>Imaged jointly with the CASA engine (tclean\'s mosaic gridder: each antenna\'s own primary '
                     'beam), fields %s, this delivery\'s spws %s%s.</p>' % (
                         escape(', '.join(combination['fields'])), escape(', '.join(
                             str(k) for k in combination['spws'])),
                         ', feathered with %s' % escape(combination['feather']) if combination.get('feather') else ''))
        parts.append(_table(['array', 'delivery', 'MSes', 'antennas', 'its spws', 'uv coverage'], [
            [part['label'], part['delivery'], ', '.join(part['mses']), str(part['antennas']),
             ', '.join(str(k) for k in part['spws']), part['uv'] + _sampled(part)] for part in combination['parts']]))
        if combination.get('uv_picture'):
            parts.append(_figure(assets, combination['uv_picture'], 'uv coverage per array (a sample of the rows of '
                                                                 'every MS: every p-th row, p prime; '
                                                                 'cross-correlations)'))
        flux = combination.get('flux') or []
        if flux:
            radii = combination['radii']
            arrays = combination['arrays']
            parts.append('<p class="muted">Continuum products (pb-corrected): flux within each array\'s primary-beam '
                         'half-power radius of the field centre (%s), the fitted peak of the brightest compact source '
                         'of the joint image (measured at the same place in every product), and each against the '
                         'same array alone (same grid, cell, weighting).</p>' % escape(', '.join(
                             '%s: %.1f"' % (name, radius) for name, radius in radii)))
            header = ['field', 'product', 'beam'] + ['within %s (Jy)' % name for name, _r in radii] + \
                ['point peak (Jy)'] + ['vs %s alone' % label for label in arrays]
            rows = []
            for row in flux:
                cells = [row['field'], row['product'], '%.2f" x %.2f"' % tuple(row['beam'][:2])]
                cells += ['%.4f' % row['within'][name] for name, _r in radii]
                cells += ['%.4f at (%+.1f", %+.1f")' % (row['point']['peak_jy'], row['point']['offset_arcsec'][0],
                                                         row['point']['offset_arcsec'][1])]
                for label in arrays:
                    versus = row.get('versus', {}).get(label)
                    cells.append('' if not versus else '%s; point %s' % (
                        versus_text(versus, [name for name, _r in radii]),
                        '%.2f x' % versus['point'] if versus.get('point') is not None else '-'))
                rows.append(cells)
            parts.append(_table(header, rows))
            if combination.get('flux_csv'):
                link = assets.link(combination['flux_csv'])
                if link:
                    parts.append('<p><a href="%s">%s</a></p>' % (escape(link), escape(Path(link).name)))
        if combination.get('cubes'):
            parts.append('<p>Cubes: %s</p>' % escape(', '.join(
                '%s (%d channels of %.4g kHz)' % (Path(cube['fits']).name, cube['grid']['nchan'],
                                                  cube['grid']['width_hz'] / 1e3) for cube in combination['cubes'])))
    return parts


def _sampled(part):
    """'; drawn: 1200 of 97200 rows, uv distance 9.1-33.0 klambda (5th percentile 10.2)'."""
    if not part.get('uv_klambda'):
        return ''
    low, p5, high = part['uv_klambda']
    return u'; drawn: %d of %d rows, uv distance %.1f-%.1f k\u03bb (5th percentile %.1f)' % (
        part['uv_rows_read'], part['uv_rows'], low, high, p5)
