"""Report pictures of images, and the one image-statistics definition (peak, robust rms) everyone uses."""

from pathlib import Path

from .casa_engine import opened_tool
from .fileops import atomic_file
from .image_stats import image_statistics
from .messages import one_line, warn


def thumbnail_or_warning(casa, image, png_path, *, statistics=None):
    """The report's picture of an image (a view of a finished result: a failure is only a warning)."""
    try:
        render_image_thumbnail(image_path=image, png_path=png_path, casa=casa, statistics=statistics)
    except Exception as error:
        warn('no report thumbnail for %s (%s) — the image is complete' % (Path(image).name, one_line(error)))
        return None
    return str(png_path)


def render_image_thumbnail(*, image_path, png_path, casa, statistics=None):
    """A PNG of a CASA image (of a cube: its brightest plane) with the beam, a colour bar, peak and rms.

    Returns {'peak', 'rms' (in the image's unit, e.g. Jy/beam), 'unit', 'beam' ({'major', 'minor'} in
    arcsec, 'pa' in degrees, or None), 'plane'}.  peak and rms are the image table's (statistics, or
    image_statistics of the image when not given): one computation for every number shown.
    """
    import numpy
    plane, mask, info = _read_brightest_plane(image_path, casa)
    statistics = statistics or image_statistics(casa, image_path)
    peak, rms = statistics['peak'], statistics['rms']
    shown = numpy.where(mask, plane, numpy.nan)
    _plot_thumbnail(shown, info, peak=peak, rms=rms, title=Path(str(image_path)).name, png_path=Path(png_path))
    return {'peak': peak, 'rms': rms, 'unit': info['unit'], 'beam': info['beam'], 'plane': info['plane']}


def _read_brightest_plane(image_path, casa):
    """The (x, y) plane with the highest peak, its mask, and what the plot needs to know."""
    import numpy
    with opened_tool(casa.casatools.image(), image_path) as image:
        shape = [int(n) for n in image.shape()]
        plane_index = [0] * len(shape)
        if int(numpy.prod(shape[2:])) > 1:
            statistics = image.statistics(axes=[0, 1], list=False, verbose=False)
            maxima = numpy.asarray(statistics.get('max', []), dtype=float)
            if maxima.size == int(numpy.prod(shape[2:])):
                if maxima.shape != tuple(shape[2:]):
                    maxima = maxima.reshape(shape[2:], order='F')  # CASA's own axis order
                flat = int(numpy.nanargmax(numpy.where(numpy.isfinite(maxima), maxima, -numpy.inf)))
                plane_index[2:] = [int(i) for i in numpy.unravel_index(flat, maxima.shape)]
        blc = [0, 0] + plane_index[2:]
        trc = [shape[0] - 1, shape[1] - 1] + plane_index[2:]
        plane = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True), dtype=float).reshape(shape[:2])
        mask = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True, getmask=True),
                             dtype=bool).reshape(shape[:2])
        quanta = casa.casatools.quanta()
        coordinates = image.coordsys()
        try:
            increments = coordinates.increment(type='direction', format='q')['quantity']
        finally:
            coordinates.done()
        info = {'unit': image.brightnessunit() or '', 'beam': _image_beam(image, quanta), 'plane': plane_index[2:],
                'arcsec_per_pixel': [quanta.convert(increments[axis], 'arcsec')['value'] for axis in ('*1', '*2')]}
    return plane, mask, info


def _image_beam(image, quanta):
    """The image's (common) restoring beam in arcsec and degrees, or None when it has none."""
    if not image.restoringbeam():
        return None  # a model, pb or mask image
    beam = image.commonbeam()  # the largest of a cube's per-channel beams
    return {'major': quanta.convert(beam['major'], 'arcsec')['value'],
            'minor': quanta.convert(beam['minor'], 'arcsec')['value'],
            'pa': quanta.convert(beam.get('pa', beam.get('positionangle')), 'deg')['value']}


def _plot_thumbnail(plane, info, *, peak, rms, title, png_path):
    import numpy
    # The object interface with the Agg canvas: no pyplot, so no display and no clash with CASA's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    nx, ny = plane.shape
    dx, dy = info['arcsec_per_pixel']
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    # Offsets from the centre in arcsec; dx < 0, so east (larger RA) is on the left as on the sky.
    extent = [(-0.5 - cx) * dx, (nx - 0.5 - cx) * dx, (-0.5 - cy) * dy, (ny - 0.5 - cy) * dy]
    unit = info['unit']
    scale, shown_unit = (1e3, 'mJy/beam') if unit == 'Jy/beam' else (1.0, unit)
    figure = Figure(figsize=(4.6, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    finite = plane[numpy.isfinite(plane)]
    low = float(numpy.percentile(finite, 0.5)) * scale if finite.size else None
    picture = axes.imshow(plane.T * scale, origin='lower', extent=extent, cmap='inferno', vmin=low,
                          interpolation='nearest')
    figure.colorbar(picture, ax=axes, label=shown_unit)
    beam = info['beam']
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
    axes.set_title('%s\npeak %.3g %s, rms %.2g %s%s' % (title, peak * scale, shown_unit, rms * scale, shown_unit,
                                                        beam_text), fontsize=8)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png_path) as temporary:
        figure.savefig(str(temporary), format='png')
