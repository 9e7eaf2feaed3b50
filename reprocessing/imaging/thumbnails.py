"""Report pictures of images: a map (a cube's peak-intensity map) and a cube's spectrum at its peak.

Every number a picture prints (peak, rms) is the image table's: image_statistics, given by the caller
or computed here the same way, and formatted by image_stats.flux_text as the page prints them.
"""

from pathlib import Path

from ..casa.casa_engine import opened_tool
from ..core.fileops import atomic_file
from .image_stats import PB_STATISTICS_LEVEL, flux_text, image_statistics, statistics_region_text
from ..core.messages import one_line, warn


def thumbnail_or_warning(casa, image, png_path, *, pb=None, statistics=None):
    """The report's picture of an image, or None (a view of a finished result: a failure is only a warning).

    Returns {'png', 'title'} — the title as printed on the picture, so the page can show the same text."""
    try:
        found = render_image_thumbnail(image_path=image, png_path=png_path, casa=casa, pb=pb, statistics=statistics)
    except Exception as error:
        warn('no report thumbnail for %s (%s) — the image is complete' % (Path(image).name, one_line(error)))
        return None
    return {'png': str(png_path), 'title': found['title']}


def render_image_thumbnail(*, image_path, png_path, casa, pb=None, statistics=None):
    """A PNG of a primary-beam corrected CASA image: the sky without the primary-beam correction (pbcor x pb:
    flat noise, so the edges do not outshine the source), for a cube the peak-intensity (moment 8) map of
    it and beside it the pbcor spectrum at the peak pixel; the pb > PB_STATISTICS_LEVEL contour the
    statistics use, the peak marked, the beam, a colour bar, and the table's peak and rms in the title.

    Returns {'peak', 'rms' (the image's unit, e.g. Jy/beam), 'unit', 'beam' ({'major', 'minor'} arcsec,
    'pa' deg, or None), 'peak_position' (pixel), 'map_peak' and 'map_peak_position' (the map's brightest
    pixel), 'title'}.
    """
    statistics = statistics or image_statistics(casa, image_path, pb=pb)
    pb = pb if pb is not None and Path(str(pb)).exists() else None
    picture = _read_picture(image_path, pb, casa, statistics.get('peak_position'))
    title = '%s\npeak %s, rms %s%s' % (
        Path(str(image_path)).name, flux_text(statistics['peak'], picture['unit']),
        flux_text(statistics['rms'], picture['unit']), statistics_region_text(
            pb=pb is not None, outside_mask=bool(statistics.get('rms_outside_mask'))))
    _plot_thumbnail(picture, title=title, png_path=Path(png_path))
    import numpy
    finite = picture['map'][numpy.isfinite(picture['map'])]
    return {'peak': statistics['peak'], 'rms': statistics['rms'], 'unit': picture['unit'], 'beam': picture['beam'],
            'peak_position': statistics.get('peak_position'), 'title': title,
            'map_peak': float(finite.max()) if finite.size else float('nan'),
            'map_peak_position': [int(i) for i in numpy.unravel_index(
                numpy.nanargmax(picture['map']), picture['map'].shape)] if finite.size else None}


def _read_picture(image_path, pb, casa, peak_position):
    """The map (moment 8 over channels of pbcor x pb), the pb map, the spectrum at the peak, and axes."""
    import numpy
    with opened_tool(casa.casatools.image(), image_path) as image:
        shape = [int(n) for n in image.shape()]
        coordinates = image.coordsys()
        try:
            spectral = coordinates.findcoordinate('spectral')
            axis = int(spectral['pixel'][0]) if spectral['return'] else None
            increments = coordinates.increment(type='direction', format='q')['quantity']
            frequencies = None
            if axis is not None and shape[axis] > 1:
                reference = coordinates.referencepixel(type='spectral')['numeric'][0]
                value = coordinates.referencevalue(type='spectral')['numeric'][0]
                step = coordinates.increment(type='spectral')['numeric'][0]
                frequencies = [(value + (channel - reference) * step) / 1e9 for channel in range(shape[axis])]
        finally:
            coordinates.done()
        quanta = casa.casatools.quanta()
        info = {'unit': image.brightnessunit() or '', 'beam': _image_beam(image, quanta),
                'arcsec_per_pixel': [quanta.convert(increments[key], 'arcsec')['value'] for key in ('*1', '*2')]}
        planes = [0] * len(shape)
        others = [index for index in range(2, len(shape)) if index != axis]
        channels = shape[axis] if axis is not None else 1
        pb_tool = casa.casatools.image() if pb is not None else None
        try:
            if pb_tool is not None:
                pb_tool.open(str(pb))
            peak_map, pb_map = None, None
            block = max(1, int(BLOCK_BYTES // (8 * shape[0] * shape[1])))
            for first in range(0, channels, block):  # blocks of planes: a cube never has to fit in memory
                blc = list(planes)
                trc = [shape[0] - 1, shape[1] - 1] + blc[2:]
                if axis is not None:
                    blc[axis], trc[axis] = first, min(channels, first + block) - 1
                values = _planes(image, blc, trc, shape)
                if pb_tool is not None:
                    response = _planes(pb_tool, blc, trc, shape)
                    values = values * response
                    response = numpy.fmax.reduce(response, axis=2)
                    pb_map = response if pb_map is None else numpy.fmax(pb_map, response)
                values = numpy.fmax.reduce(values, axis=2)
                peak_map = values if peak_map is None else numpy.fmax(peak_map, values)
        finally:
            if pb_tool is not None:
                pb_tool.close()
        spectrum = None
        if frequencies is not None and peak_position is not None:
            blc = [int(i) for i in peak_position[:2]] + [0] * (len(shape) - 2)
            for index in others:
                blc[index] = int(peak_position[index]) if index < len(peak_position) else 0
            trc = list(blc)
            trc[axis] = shape[axis] - 1
            values = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True), dtype=float).ravel()
            valid = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True, getmask=True), dtype=bool).ravel()
            spectrum = (frequencies, numpy.where(valid, values, numpy.nan))
    info.update(map=peak_map, pb=pb_map, spectrum=spectrum, peak_position=peak_position, cube=frequencies is not None)
    return info


# Planes read at once for a cube's map: one getchunk per block instead of per plane (a 254-channel cube of
# 144 x 144: 1.23 s plane by plane for the cube and its pb), within this many bytes of float64 pixels.
BLOCK_BYTES = 32 * 1024 * 1024


def _planes(image, blc, trc, shape):
    """The (x, y, plane) pixels between blc and trc of an image tool (one axis beyond x and y longer than one)
    as floats, NaN where masked."""
    import numpy
    values = numpy.asarray(image.getchunk(blc=blc, trc=trc), dtype=float).reshape(shape[0], shape[1], -1)
    valid = numpy.asarray(image.getchunk(blc=blc, trc=trc, getmask=True), dtype=bool).reshape(shape[0], shape[1], -1)
    return numpy.where(valid, values, numpy.nan)


def _image_beam(image, quanta):
    """The image's (common) restoring beam in arcsec and degrees, or None when it has none."""
    if not image.restoringbeam():
        return None  # a model, pb or mask image
    beam = image.commonbeam()  # the largest of a cube's per-channel beams
    return {'major': quanta.convert(beam['major'], 'arcsec')['value'],
            'minor': quanta.convert(beam['minor'], 'arcsec')['value'],
            'pa': quanta.convert(beam.get('pa', beam.get('positionangle')), 'deg')['value']}


def _plot_thumbnail(picture, *, title, png_path):
    import numpy
    # The object interface with the Agg canvas: no pyplot, so no display and no clash with CASA's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    from matplotlib.ticker import MaxNLocator
    plane = picture['map']
    nx, ny = plane.shape
    dx, dy = picture['arcsec_per_pixel']
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    # Offsets from the centre in arcsec; dx < 0, so east (larger RA) is on the left as on the sky.
    extent = [(-0.5 - cx) * dx, (nx - 0.5 - cx) * dx, (-0.5 - cy) * dy, (ny - 0.5 - cy) * dy]
    unit = picture['unit']
    scale, shown_unit = (1e3, 'mJy/beam') if unit == 'Jy/beam' else (1.0, unit)
    cube = picture['spectrum'] is not None
    figure = Figure(figsize=(8.6 if cube else 4.6, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2, 1) if cube else figure.add_subplot(1, 1, 1)
    finite = plane[numpy.isfinite(plane)]
    low = float(numpy.percentile(finite, 0.5)) * scale if finite.size else None
    image = axes.imshow(plane.T * scale, origin='lower', extent=extent, cmap='inferno', vmin=low,
                        interpolation='nearest')
    figure.colorbar(image, ax=axes, label=shown_unit + (' (not pb-corrected)' if picture['pb'] is not None else ''))
    axes.set_title('peak over channels (moment 8)' if cube else 'intensity', fontsize=8)
    if picture['pb'] is not None:
        x = (numpy.arange(nx) - cx) * dx
        y = (numpy.arange(ny) - cy) * dy
        axes.contour(x, y, numpy.nan_to_num(picture['pb']).T, levels=[PB_STATISTICS_LEVEL], colors='white',
                     linewidths=0.7, linestyles='dashed')
    position = picture['peak_position']
    if position is not None:
        axes.plot([(position[0] - cx) * dx], [(position[1] - cy) * dy], marker='+', color='cyan', markersize=10)
    beam = picture['beam']
    if beam:
        width, height = extent[1] - extent[0], extent[3] - extent[2]
        size = max(beam['major'], beam['minor'])
        centre = (extent[0] + 0.1 * width + numpy.sign(width) * size / 2, extent[2] + 0.1 * height + size / 2)
        # PA runs from north through east; with RA growing to the left that is clockwise in data coordinates.
        axes.add_patch(Ellipse(centre, width=beam['minor'], height=beam['major'], angle=-beam['pa'],
                               facecolor='none', edgecolor='cyan', linewidth=1.2))
    axes.set_xlabel('RA offset (arcsec)')
    axes.set_ylabel('Dec offset (arcsec)')
    beam_text = ', beam %.2f" × %.2f"' % (beam['major'], beam['minor']) if beam else ''
    figure.suptitle(title + beam_text, fontsize=8)
    if cube:
        frequencies, values = picture['spectrum']
        right = figure.add_subplot(1, 2, 2)
        right.step(frequencies, values * scale, where='mid', color='black', linewidth=0.9)
        right.set_xlabel('frequency (GHz)')
        right.set_ylabel('%s (pb-corrected)' % shown_unit)
        right.set_title('spectrum at the peak (+)', fontsize=8)
        right.ticklabel_format(axis='x', useOffset=False)
        right.xaxis.set_major_locator(MaxNLocator(4))
    # fixed margins, not tight_layout (which draws the figure once more: 0.36 s of bench/bench_grid.py's 26 s run)
    if cube:
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.8, wspace=0.42)
    else:
        figure.subplots_adjust(left=0.15, right=0.9, bottom=0.13, top=0.8)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png_path) as temporary:
        figure.savefig(str(temporary), format='png')
