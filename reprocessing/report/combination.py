"""The report's section on a combination (--combine): what was combined (each delivery's array, MSes, antennas,
paired spws), each product's beam, the uv coverage per array as a picture (uv_coverage.png, drawn by the step
beside the products) and the flux each product recovers compared with each array alone (flux_recovered.csv)."""

from pathlib import Path

from ..imaging.combine_flux import versus_text
from ..imaging.cube_pictures import _save
from .cubes import _figure
from .html import _table

ARRAY_COLOURS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown')


def draw_uv_coverage(samples, png_path, *, title):
    """A PNG of the uv plane: samples [(label, u klambda, v klambda, rows read, rows of the MSes)] drawn in one
    colour per array, each point with its conjugate (-u, -v); the legend says how many points of how many rows."""
    import numpy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5.0, 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    reach = 0.0
    # the most compact array last: its points (inside the others' hole) stay visible
    for number, (label, u, v, read, rows) in enumerate(samples):
        u, v = numpy.asarray(u, dtype=float), numpy.asarray(v, dtype=float)
        colour = ARRAY_COLOURS[number % len(ARRAY_COLOURS)]
        axes.plot(numpy.concatenate([u, -u]), numpy.concatenate([v, -v]), linestyle='none', marker='.',
                  markersize=1.0, color=colour, alpha=0.6,
                  label='%s: %d of %d rows' % (label, read, rows))
        if len(u):
            reach = max(reach, float(numpy.abs(numpy.concatenate([u, v])).max()))
    if reach:
        axes.set_xlim(1.05 * reach, -1.05 * reach)  # u increases to the left (east), as the sky
        axes.set_ylim(-1.05 * reach, 1.05 * reach)
    axes.set_aspect('equal')
    axes.set_xlabel(u'u (k\u03bb)')
    axes.set_ylabel(u'v (k\u03bb)')
    axes.set_title(title, fontsize=8)
    legend = axes.legend(loc='upper right', fontsize=7, markerscale=8)
    for handle in getattr(legend, 'legend_handles', None) or getattr(legend, 'legendHandles', []):
        handle.set_alpha(1.0)
    figure.tight_layout()
    _save(figure, png_path)
    return str(png_path)


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
        if combination.get('uv_png'):
            parts.append(_figure(assets, combination['uv_png'], 'uv coverage per array (a sample of the rows of '
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
