"""The report's pictures of a cube's products: each moment map, and the cube's spectrum at the moment-0 peak on
the cube's own velocity axis, with the channels cube health cleaned again marked (and written as CSV beside it).

The spectrum's pixel is the brightest of moment 0 (else of moment 8, else the image table's peak); its velocities
are the cube's channel centres in the cube's frame (LSRK, BARY, TOPO, SOURCE) and velocity type, about the cube's
rest frequency, as CASA's coordinate system converts them.  Read plane by plane: never the whole cube in memory.
"""

from pathlib import Path

from ..casa.casa_engine import opened_tool
from ..core.fileops import atomic_file
from ..core.messages import one_line, warn

MOMENT_TITLES = {0: 'moment 0: integrated intensity', 1: 'moment 1: velocity', 2: 'moment 2: velocity dispersion',
                 8: 'moment 8: peak intensity'}
# casacore's MDoppler types, as a spectral coordinate records them (velType)
DOPPLER_NAMES = {0: 'radio', 1: 'optical', 2: 'ratio', 3: 'relativistic', 4: 'gamma'}


def cube_pictures(casa, *, pbcor, moments, redone, folder, stem, peak_pixel=None):
    """{'moment_maps': [{'moment', 'png'}], 'spectrum': {...} or absent} for the report; a picture that fails is a
    warning, never a failed run.  moments: {moment number: CASA image}; redone: [[channel, why]]."""
    found = {'moment_maps': []}
    folder = Path(folder)
    peak_from = None
    # moment 0 (else 8) first: its brightest pixel is the spectrum's, marked on every map
    for moment in sorted(moments, key=lambda m: (m not in (0, 8), m)):
        try:
            picture = render_moment_map(casa, moments[moment], folder / ('%s.mom%d.png' % (stem, moment)),
                                        title='%s\n%s' % (stem, MOMENT_TITLES.get(moment, 'moment %d' % moment)),
                                        marker=None if (moment in (0, 8) and peak_from is None) else peak_pixel)
        except Exception as error:
            warn('no report picture of %s (%s) — the moment map is complete' % (Path(moments[moment]).name,
                                                                             one_line(error)))
            continue
        found['moment_maps'].append({'moment': moment, 'png': picture['png'], 'unit': picture['unit']})
        if moment in (0, 8) and picture['peak_pixel'] is not None and peak_from is None:
            peak_pixel, peak_from = picture['peak_pixel'], 'moment %d' % moment
    found['moment_maps'].sort(key=lambda item: item['moment'])
    if peak_pixel is not None:
        try:
            found['spectrum'] = render_peak_spectrum(
                casa, pbcor, pixel=peak_pixel, redone=redone, png_path=folder / (stem + '.spectrum.png'),
                csv_path=folder / (stem + '.spectrum.csv'), title=stem, pixel_from=peak_from or 'the image\'s peak')
        except Exception as error:
            warn('no report spectrum of %s (%s) — the cube is complete' % (Path(pbcor).name, one_line(error)))
    return found


def _finite_peak(plane):
    import numpy
    finite = numpy.isfinite(plane)
    if not finite.any():
        return None, float('nan')
    index = numpy.unravel_index(int(numpy.nanargmax(numpy.where(finite, plane, -numpy.inf))), plane.shape)
    return [int(i) for i in index], float(plane[index])


def render_moment_map(casa, image_path, png_path, *, title, marker=None):
    """A PNG of one moment map (masked pixels blank), its beam and marker (a pixel; by default its brightest);
    {'png', 'peak_pixel', 'peak', 'unit'}."""
    import math
    import numpy
    with opened_tool(casa.casatools.image(), image_path) as image:
        shape = [int(n) for n in image.shape()]
        values = numpy.asarray(image.getchunk(dropdeg=True), dtype=float).reshape(shape[0], shape[1])
        valid = numpy.asarray(image.getchunk(dropdeg=True, getmask=True), dtype=bool).reshape(shape[0], shape[1])
        unit = image.brightnessunit() or ''
        coordinates = image.coordsys()
        cell = abs(coordinates.increment(type='direction')['numeric'][0]) * 180 / math.pi * 3600
        coordinates.done()
        beam = image.restoringbeam()
        quanta = casa.casatools.quanta()
        beam = (quanta.convert(beam['major'], 'arcsec')['value'], quanta.convert(beam['minor'], 'arcsec')['value'],
                quanta.convert(beam['positionangle'], 'deg')['value']) if 'major' in beam else None
    plane = numpy.where(valid, values, numpy.nan)
    pixel, peak = _finite_peak(plane)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    figure = Figure(figsize=(4.6, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    nx, ny = plane.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    extent = [(cx + 0.5) * cell, -(nx - 0.5 - cx) * cell, -(cy + 0.5) * cell, (ny - 0.5 - cy) * cell]
    finite = plane[numpy.isfinite(plane)]
    velocity = 'km/s' == unit.strip()
    low, high = (numpy.percentile(finite, [2, 98]) if finite.size else (None, None))
    shown = axes.imshow(plane.T, origin='lower', extent=extent, interpolation='nearest',
                        cmap='RdBu_r' if velocity else 'inferno', vmin=low if velocity else None,
                        vmax=high if velocity else None)
    figure.colorbar(shown, ax=axes, label=unit)
    shown_pixel = marker or pixel
    if shown_pixel is not None:
        axes.plot([(cx - shown_pixel[0]) * cell], [(shown_pixel[1] - cy) * cell], marker='+', color='cyan', markersize=10)
    if beam:
        axes.add_patch(Ellipse((extent[0] - 0.1 * (extent[0] - extent[1]) - beam[0] / 2,
                                extent[2] + 0.1 * (extent[3] - extent[2]) + beam[0] / 2),
                               width=beam[1], height=beam[0], angle=-beam[2], facecolor='none', edgecolor='cyan'))
    axes.set_xlabel('RA offset (arcsec)')
    axes.set_ylabel('Dec offset (arcsec)')
    axes.set_title(title, fontsize=7)
    # fixed margins, not tight_layout (which draws the figure once more): 4 maps 0.43 s CPU instead of 0.68
    figure.subplots_adjust(left=0.17, right=0.95, bottom=0.12, top=0.92)
    _save(figure, png_path)
    return {'png': str(png_path), 'peak_pixel': pixel, 'peak': peak, 'unit': unit}


def spectral_axis(casa, image):
    """(channel centres Hz, velocities km/s or None without a rest frequency, frame, doppler, rest Hz, axis) of an
    open image tool's spectral axis."""
    coordinates = image.coordsys()
    try:
        axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
        count = int(image.shape()[axis])
        frame = coordinates.referencecode('spectral')[0]
        doppler = DOPPLER_NAMES.get(int(coordinates.torecord()['spectral2'].get('velType', 0)), 'radio')
        rest = float(coordinates.restfrequency()['value'][0])
        pixel = [0.0] * len(image.shape())
        frequencies = []
        for channel in range(count):
            pixel[axis] = channel
            frequencies.append(float(coordinates.toworld(pixel)['numeric'][axis]))
        velocities = [float(v) for v in coordinates.frequencytovelocity(frequencies, doppler=doppler, velunit='km/s')] \
            if rest > 0 else None
    finally:
        coordinates.done()
    return frequencies, velocities, frame, doppler, rest, axis


def render_peak_spectrum(casa, pbcor, *, pixel, redone, png_path, csv_path, title, pixel_from):
    """The cube's spectrum at pixel, against velocity in the cube's frame (frequency without a rest frequency),
    redone channels shaded; a CSV of it beside.  Returns what the report prints and the files."""
    import numpy
    with opened_tool(casa.casatools.image(), pbcor) as image:
        frequencies, velocities, frame, doppler, rest, axis = spectral_axis(casa, image)
        shape = [int(n) for n in image.shape()]
        blc = [int(pixel[0]), int(pixel[1])] + [0] * (len(shape) - 2)
        trc = list(blc)
        trc[axis] = shape[axis] - 1
        values = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True), dtype=float).ravel()
        valid = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True, getmask=True), dtype=bool).ravel()
        unit = image.brightnessunit() or ''
    values = numpy.where(valid, values, numpy.nan)
    axis_values = velocities if velocities is not None else [f / 1e9 for f in frequencies]
    axis_name = ('%s velocity (%s, km/s)' % (doppler, frame)) if velocities is not None else \
        'frequency (%s, GHz)' % frame
    why = dict((int(channel), text) for channel, text in redone or [])
    peak_channel = int(numpy.nanargmax(values)) if numpy.isfinite(values).any() else None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6.0, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    scale, shown_unit = (1e3, 'mJy/beam') if unit == 'Jy/beam' else (1.0, unit)
    axes.step(axis_values, values * scale, where='mid', color='black', linewidth=0.9)
    step = abs(axis_values[1] - axis_values[0]) if len(axis_values) > 1 else 1.0
    for number, channel in enumerate(sorted(why)):
        if 0 <= channel < len(axis_values):
            axes.axvspan(axis_values[channel] - step / 2, axis_values[channel] + step / 2, color='orange', alpha=0.4,
                         label='cleaned again (cube health)' if number == 0 else None)
    if why:
        axes.legend(fontsize=7, loc='upper right')
    axes.set_xlabel(axis_name)
    axes.set_ylabel('%s (pb-corrected)' % shown_unit)
    axes.set_title('%s\nspectrum at pixel (%d, %d), the %s peak' % (title, pixel[0], pixel[1], pixel_from), fontsize=7)
    axes.ticklabel_format(axis='x', useOffset=False)
    figure.tight_layout()
    _save(figure, png_path)
    lines = ['channel,frequency_hz,%s,%s,redone' % ('velocity_kms' if velocities is not None else 'velocity_kms_none',
                                                   'flux_' + unit.replace('/', '_per_'))]
    for channel, frequency in enumerate(frequencies):
        lines.append('%d,%.3f,%s,%.6g,%d' % (channel, frequency, '%.4f' % velocities[channel] if velocities else '',
                                             values[channel], int(channel in why)))
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(csv_path) as temporary:
        Path(str(temporary)).write_text('\n'.join(lines) + '\n')
    return {'png': str(png_path), 'csv': str(csv_path), 'pixel': [int(pixel[0]), int(pixel[1])],
            'pixel_from': pixel_from, 'frame': frame, 'doppler': doppler, 'restfreq_hz': rest,
            'peak_channel': peak_channel, 'peak_jy': float(values[peak_channel]) if peak_channel is not None else None,
            'peak_velocity_kms': velocities[peak_channel] if velocities and peak_channel is not None else None,
            'channel_width_kms': abs(velocities[1] - velocities[0]) if velocities and len(velocities) > 1 else None,
            'redone': [{'channel': channel, 'why': why[channel],
                        'velocity_kms': velocities[channel] if velocities and channel < len(velocities) else None}
                       for channel in sorted(why)]}


def _save(figure, png_path):
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png_path) as temporary:
        figure.savefig(str(temporary), format='png')
