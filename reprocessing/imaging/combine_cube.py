"""Joint cubes of several deliveries of one science goal (--combine): one common LSRK grid for every array, tclean's
mosaic gridder over their continuum-subtracted line MSes, and with --feather the total-power cube put on that grid and
feathered.

The grid (issue 29): the arrays' channel widths and counts differ (e.g. 12 m 64 x 976.6 kHz, 7 m 32 x 1953.1 kHz), so
by default the cube has the COARSEST native channel width of the paired spws, over the LSRK frequencies EVERY
execution block of every delivery covers, laid out as the pipeline lays out a cube (one channel left at each edge:
imaging/heuristics.cube_channel_grid).  --start/--width/--nchan/--restfreq/--veltype (in this delivery's spw ids) give
another grid, checked against that common coverage; a width finer than the coarsest native channel is refused, as it
would interpolate the coarser array's channels.  tclean regrids every MS onto the grid (interpolation='linear').
"""

import collections
import shutil

from .combine_image import joint_grid, tp_work_images
from .spectral_grid import cube_spectral, read_source_rest_frequencies


def spw_groups_of(combination, part):
    """{reference spw id: (this part's spw id, its name)} of the shared spws."""
    names = dict((s.spw_id, s.name) for s in part.mses[0].spws)
    return collections.OrderedDict((k, (part.spw_map[k], names.get(part.spw_map[k])))
                                   for k in combination.spw_groups)


def common_coverage(combination, reference_id):
    """(low Hz, high Hz, coarsest native width Hz) of a spw group: the LSRK frequencies every MS of every part covers."""
    spws = [next(s for s in m.spws if s.spw_id == part.spw_map[reference_id])
            for part in combination.parts for m in part.mses]
    return max(s.lsrk_lo for s in spws), min(s.lsrk_hi for s in spws), max(abs(s.width_hz) for s in spws)


def common_cube_grid(casa, combination, reference_id, field):
    """(tclean's spectral keywords, one line for the plan and the log) of the joint cube of one spw group."""
    request = combination.request
    low, high, native = common_coverage(combination, reference_id)
    reference = combination.parts[0].mses[0]
    others = dict((s.spw_id, (s.lsrk_lo, s.lsrk_hi)) for s in reference.spws)
    spectral, note = cube_spectral(spw_id=reference_id, field=field, low_hz=low, high_hz=high, native_hz=native,
                                   nbin=None, start=request.start, width=request.width, nchan=request.nchan,
                                   restfreq=request.restfreq, veltype=request.veltype,
                                   source_table=read_source_rest_frequencies(casa, reference.path), other_spws=others)
    widths = ', '.join('%s %.4g kHz' % (p.label, abs(next(s for s in p.mses[0].spws
                                                          if s.spw_id == p.spw_map[reference_id]).width_hz) / 1e3)
                       for p in combination.parts)
    note += ' — common to %s (native channels %s; the coarsest is the default width), LSRK %.6f-%.6f GHz' % (
        '+'.join(p.label for p in combination.parts), widths, low / 1e9, high / 1e9)
    return spectral, note


# At most this many major cycles (where tclean has nmajor, CASA 6.6.4+): on the test goal's cube the minor cycles
# reached 3 sigma in every channel by the 4th, then tclean went on with a few components per cycle (the line channel's
# peak residual 0.41 -> 0.28 mJy over cycles 5-9, 45 s each on a loaded machine).
CUBE_NMAJOR = 6


def cube_tclean_parameters(combination, field, selections, imagename, spectral, *, phasecenter, robust=0.5,
                           nsigma=3.0, niter=20000, pbmask=0.3, casa=None):
    """tclean keywords for the joint cube of field; selections: [(line ms path, spw id)]."""
    cell, size = joint_grid(combination)
    extra = {'nmajor': CUBE_NMAJOR} if casa is not None and _tclean_takes(casa, 'nmajor') else {}
    return dict(extra, vis=[str(ms) for ms, _spw in selections], spw=[str(spw) for _ms, spw in selections], field=field,
                imagename=str(imagename), specmode='cube', gridder='mosaic', imsize=[size, size],
                cell='%garcsec' % cell, phasecenter=phasecenter, nchan=spectral['nchan'], start=spectral['start'],
                width=spectral['width'], restfreq=spectral['restfreq'], outframe='LSRK', veltype=spectral['veltype'],
                interpolation='linear', perchanweightdensity=True, weighting='briggs', robust=robust, niter=niter,
                nsigma=nsigma, usemask='pb', pbmask=pbmask, deconvolver='hogbom', pbcor=True, pblimit=0.1,
                savemodel='none', restoringbeam='common')


def _tclean_takes(casa, name):
    import inspect
    try:
        return name in inspect.signature(casa.casatasks.tclean.__call__).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def feather_cube_with_tp(casa, image_base, tp_image, work, line_free_hz):
    """The TP cube put on the joint cube's grid and feathered with the pb-corrected cube (domain 'sky', as
    feather_with_tp); (output path, channels fitted, how many cube channels lie beyond the TP's first or last channel
    centre, within one TP channel, and take its value there), or (None, why, 0) when the TP cube does not cover the
    cube.

    On the grid: axes reordered as the cube's (imtrans), imregrid on the direction axes only, then each pixel's
    spectrum interpolated linearly (in LSRK frequency, each image's own frame) onto the cube's channels.  imregrid on
    the spectral axis is not used: with tclean's cube as template (CASA 6.7) it shifted the TP's channels by 20 MHz
    (27 km/s, a frame conversion of the template's) on the test goal.  Then the TP's continuum is subtracted over
    the line-free channels (imcontsub, order 1: the interferometric cube is continuum-free; a TP cube delivered
    baseline-subtracted loses nothing).  line_free_hz: [(low, high)] LSRK."""
    import numpy
    tk = casa.casatasks
    names, source = tp_work_images(casa, tp_image, work, 'tpcube', ('ordered', 'regrid', 'grid', 'line', 'cont'))
    order = axis_order(casa, source, image_base + '.image')
    if order is not None:  # e.g. a TP cube of (RA, Dec, Frequency, Stokes), tclean's are (RA, Dec, Stokes, Frequency)
        tk.imtrans(imagename=source, outfile=names['ordered'], order=order)
        source = names['ordered']
    tp_axis, tp_freqs = spectral_frequencies(casa, source)
    axis, freqs = spectral_frequencies(casa, image_base + '.image')
    tp_low, tp_high = sorted([tp_freqs[0], tp_freqs[-1]])
    tp_step = abs(tp_freqs[1] - tp_freqs[0]) if len(tp_freqs) > 1 else 0.0
    if freqs.min() < tp_low - tp_step or freqs.max() > tp_high + tp_step:  # more than one TP channel beyond its edge
        return None, 'the TP cube covers %.6f-%.6f GHz (LSRK channel centres), the cube %.6f-%.6f GHz' % (
            tp_low / 1e9, tp_high / 1e9, freqs.min() / 1e9, freqs.max() / 1e9), 0
    edge = int(((freqs < tp_low) | (freqs > tp_high)).sum())  # these take the TP's first or last channel
    tk.imregrid(imagename=source, template=image_base + '.image', output=names['regrid'], overwrite=True,
                axes=[0, 1])
    tool = casa.casatools.image()
    tool.open(names['regrid'])
    try:
        tp = numpy.nan_to_num(numpy.moveaxis(numpy.array(tool.getchunk(), dtype=float), tp_axis, -1))
        beam = tool.restoringbeam()
    finally:
        tool.close()
    rising = numpy.argsort(tp_freqs)
    upper = numpy.clip(numpy.searchsorted(tp_freqs[rising], freqs), 1, len(tp_freqs) - 1)
    f0, f1 = tp_freqs[rising][upper - 1], tp_freqs[rising][upper]
    weight = numpy.clip((freqs - f0) / (f1 - f0), 0.0, 1.0)
    gridded = tp[..., rising[upper - 1]] * (1.0 - weight) + tp[..., rising[upper]] * weight
    shutil.copytree(image_base + '.image', names['grid'])
    tool.open(names['grid'])
    try:
        tool.putchunk(numpy.moveaxis(gridded, -1, axis).astype(numpy.float32))
        tool.setbrightnessunit('Jy/beam')
        tool.setrestoringbeam(remove=True)
        tool.setrestoringbeam(beam=beam['beams']['*0']['*0'] if 'beams' in beam else beam)
    finally:
        tool.close()
    chans = line_free_channels(freqs, line_free_hz)
    lowres = names['grid']
    if chans:
        tk.imcontsub(imagename=names['grid'], linefile=names['line'], contfile=names['cont'], fitorder=1,
                     chans=chans)
        lowres = names['line']
    output = image_base + '.feather.image.pbcor'
    shutil.rmtree(output, ignore_errors=True)
    tk.feather(imagename=output, highres=image_base + '.image.pbcor', lowres=lowres)
    return output, chans, edge


def spectral_frequencies(casa, image):
    """(spectral axis index, channel centre frequencies Hz in the image's own frame) of an image."""
    import numpy
    tool = casa.casatools.image()
    tool.open(str(image))
    try:
        coords = tool.coordsys()
        coords.setconversiontype(spectral=coords.referencecode('spectral')[0])
        axis = int(coords.findcoordinate('spectral')['pixel'][0])
        nchan = tool.shape()[axis]
        value = coords.referencevalue(type='spectral')['numeric'][0]
        pixel = coords.referencepixel(type='spectral')['numeric'][0]
        step = coords.increment(type='spectral')['numeric'][0]
        coords.done()
    finally:
        tool.close()
    return axis, value + (numpy.arange(nchan) - pixel) * step


def line_free_channels(freqs, line_free_hz):
    """'a~b;c~d': the channels (centre frequencies freqs, evenly spaced) whose whole width lies in one of the (low,
    high) frequency ranges."""
    half = abs(freqs[1] - freqs[0]) / 2.0 if len(freqs) > 1 else 0.0
    chosen = [k for k, f in enumerate(freqs) if any(low <= f - half and f + half <= high for low, high in line_free_hz)]
    runs = []
    for k in chosen:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ';'.join('%d~%d' % (a, b) for a, b in runs)


def axis_order(casa, image, template):
    """imtrans's order ('0132') that puts image's axes in template's order; None when they already are (or cannot
    be: different axes, which imregrid then names)."""
    names = []
    for path in (image, template):
        tool = casa.casatools.image()
        tool.open(str(path))
        try:
            coords = tool.coordsys()
            names.append(list(coords.names()))
            coords.done()
        finally:
            tool.close()
    if names[0] == names[1] or sorted(names[0]) != sorted(names[1]):
        return None
    return ''.join(str(names[0].index(name)) for name in names[1])


def tp_channel_width_hz(casa, tp_image):
    """The TP image's channel width (Hz), or None without a spectral axis."""
    image = casa.casatools.image()
    image.open(str(tp_image))
    try:
        coords = image.coordsys()
        spectral = coords.findcoordinate('spectral')
        width = abs(coords.increment(type='spectral')['numeric'][0]) if spectral['return'] else None
        coords.done()
    finally:
        image.close()
    return width
