"""The new images beside the archive's: twins matched by field, spw and specmode, with the images table's numbers.

The archive's products are the FITS files of the MOUS's product/ folder
(``<ous>.<field>_sci.spw<ids>.<specmode>.I.pbcor.fits`` with ``.pb.fits`` and ``.mask.fits``), found in
the delivery's own folder, its parent or grandparent (a member.uid___... folder holds calibrated/ and
product/ side by side), or where --archive-products points.  Each twin is described by describe_image,
as the images table is (one definition of peak and rms: image_stats, pb > 0.5, the rms outside the clean
mask), plus the flux inside the clean mask of a continuum image.
"""

import re
from pathlib import Path

from ..casa.casa_engine import opened_tool
from .image_publish import describe_image
from ..core.fileops import atomic_file
from .image_stats import MAD_TO_RMS, MIN_NOISE_PIXELS, flux_text, image_statistics, noise_mask_expression
from ..core.messages import ReprocessingError, one_line, warn

_ARCHIVE_NAME = re.compile(r'^(?P<ous>[^.]+)\.(?P<target>.+?_[a-z]+)\.spw(?P<spw>[0-9_]+)\.(?P<specmode>mfs|cont|cube|repBW)'
                           r'(?P<datatype>\.regcal|\.selfcal)?\.I\.pbcor\.fits$')


def find_archive_products(delivery_root, option=None):
    """The folder of the archive's FITS products, or None; option: --archive-products (must hold some)."""
    if option is not None:
        folder = Path(option)
        if not folder.is_absolute():
            folder = Path(delivery_root) / folder
        if not archive_twins(folder):
            raise ReprocessingError('--archive-products %s holds no *_sci.spw*.{mfs,cont,cube,repBW}.I.pbcor.fits — '
                                    'point it at the product/ folder of the MOUS' % option)
        return folder
    root = Path(delivery_root).resolve()
    for candidate in (root / 'product', root.parent / 'product', root.parent.parent / 'product'):
        if candidate.is_dir() and archive_twins(candidate):
            return candidate
    return None


def archive_twins(folder):
    """{(target, spw, specmode, datatype): {'pbcor', 'pb', 'mask'}} of an archive folder's FITS images."""
    twins = {}
    if not Path(folder).is_dir():
        return twins
    for path in sorted(Path(folder).iterdir()):
        match = _ARCHIVE_NAME.match(path.name)
        if match is None:
            continue
        stem = path.name[:-len('.pbcor.fits')]
        parts = match.groupdict()
        twins[(parts['target'], parts['spw'], parts['specmode'], parts['datatype'] or '')] = {
            'pbcor': path, 'pb': _existing(path.with_name(stem + '.pb.fits')),
            'mask': _existing(path.with_name(stem + '.mask.fits'))}
    return twins


def _existing(path):
    return path if path.exists() else None


def flux_in_mask(casa, pbcor, mask):
    """Flux density (Jy) inside the clean mask of a continuum image (CASA's statistics 'flux', which divides
    by the beam area); None for a cube, without a mask, or with an empty one."""
    if mask is None:
        return None
    with opened_tool(casa.casatools.image(), pbcor) as image:
        if int(image.shape()[_spectral_axis(image)[0]]) > 1:
            return None
        stats = image.statistics(mask='"%s" > 0.5' % str(mask).replace('"', '\\"'), verbose=False, list=False)
    if not len(stats.get('flux', [])) or not stats.get('npts', [0])[0]:
        return None
    return float(stats['flux'][0])


def compare_with_archive(casa, placed, archive_dir, *, ous, pictures_dir=None):
    """[{'image', 'archive', 'new', 'old'}] for each new image with an archive twin; new/old: describe_image
    plus 'flux_jy'.  A twin that cannot be read is a warning, not a failed run."""
    twins = archive_twins(archive_dir)
    by_stem = {}
    for product, casa_path, _fits in placed:
        if product.ext in ('image.pbcor', 'image.tt0.pbcor', 'pb', 'pb.tt0', 'mask'):
            by_stem.setdefault(product.image_key, {'product': product})[product.ext.split('.')[0]] = casa_path
    rows = []
    for files in by_stem.values():
        product = files['product']
        twin = twins.get((product.target, product.spw, product.specmode, product.datatype))
        if twin is None or 'image' not in files:
            continue
        try:
            new = describe_image(casa, files['image'], files.get('pb'), files.get('mask'))
            new['flux_jy'] = flux_in_mask(casa, files['image'], files.get('mask'))
            old = describe_image(casa, twin['pbcor'], twin['pb'], twin['mask'])
            old['flux_jy'] = flux_in_mask(casa, twin['pbcor'], twin['mask'])
        except Exception as error:  # the comparison is a view: a damaged archive file is only a warning
            warn('cannot compare %s with the archive\'s %s (%s)' % (product.archive_stem(), twin['pbcor'].name,
                                                                 one_line(error)))
            continue
        row = {'image': product.archive_stem(ous), 'archive': twin['pbcor'].name, 'new': new, 'old': old}
        if pictures_dir is not None:
            row['picture'] = comparison_picture_or_warning(
                casa, row, {'new': (files['image'], files.get('pb'), files.get('mask')),
                            'old': (twin['pbcor'], twin['pb'], twin['mask'])},
                Path(pictures_dir) / (row['image'] + '.archive.png'))
        rows.append(row)
    return rows


def comparison_cells(side):
    """The numbers of one version of an image, as the terminal and the report print them."""
    beam = side.get('beam_arcsec')
    return ['%.3g" × %.3g"' % tuple(beam[:2]) if beam else '—', '%.3g"' % side['cell_arcsec'],
            '%d × %d × %d' % (side['imsize'][0], side['imsize'][1], side['nchan']),
            flux_text(side['peak_jy']), flux_text(side['rms_jy']),
            '%.4g mJy' % (side['flux_jy'] * 1e3) if side.get('flux_jy') is not None else '—']


COMPARISON_HEADER = ['image', 'version', 'beam', 'cell', 'size', 'peak', 'rms (pb > 0.5, outside the mask)',
                     'flux in mask']


def format_comparison(rows):
    """The terminal's short table: one line per version of each image."""
    lines = [COMPARISON_HEADER]
    for row in rows:
        lines.append([row['image'], 'new'] + comparison_cells(row['new']))
        lines.append(['', 'archive'] + comparison_cells(row['old']))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COMPARISON_HEADER))]
    return ['  ' + '  '.join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]


def comparison_picture_or_warning(casa, row, files, png_path):
    """The picture of one twin pair (None and a warning when it cannot be drawn: it is a view)."""
    try:
        render_comparison(casa, row, files, Path(png_path))
    except Exception as error:
        warn('no comparison picture for %s (%s) — the images are complete' % (row['image'], one_line(error)))
        return None
    return str(png_path)


def render_comparison(casa, row, files, png_path):
    """A continuum image: new, archive and new − archive (same grid only) side by side.  A cube: the rms of
    each channel (as the table's rms) and the spectrum at each version's brightest pixel, both versions on one
    plot.  files: {'new': (pbcor, pb, mask), 'old': (pbcor, pb, mask)} (pb and mask may be None)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import numpy
    cube = row['new']['nchan'] > 1
    figure = Figure(figsize=(9.0, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    scale = 1e3
    if cube:
        for index, (title, reader) in enumerate((
                ('rms per channel (pb > 0.5, outside the mask)', channel_rms),
                ('spectrum at the brightest pixel', lambda casa, pbcor, pb, _mask: peak_spectrum(casa, pbcor, pb)))):
            axes = figure.add_subplot(1, 2, index + 1)
            for side, label, style in (('new', 'new', '-'), ('old', 'archive', '--')):
                frequencies, values = reader(casa, *files[side])
                axes.step(frequencies, [v * scale for v in values], where='mid', linestyle=style, label=label)
            axes.set_title(title, fontsize=8)
            axes.set_xlabel('frequency (GHz)')
            axes.set_ylabel('mJy/beam')
            axes.ticklabel_format(axis='x', useOffset=False)
            axes.legend(fontsize=7)
    else:
        new, old = _continuum_plane(casa, *files['new'][:2]), _continuum_plane(casa, *files['old'][:2])
        panels = [('new: peak %s, rms %s' % (flux_text(row['new']['peak_jy']), flux_text(row['new']['rms_jy'])), new),
                  ('archive: peak %s, rms %s' % (flux_text(row['old']['peak_jy']), flux_text(row['old']['rms_jy'])),
                   old)]
        if new.shape == old.shape and row['new']['cell_arcsec'] == row['old']['cell_arcsec']:
            panels.append(('new − archive', new - old))
        for index, (title, plane) in enumerate(panels):
            axes = figure.add_subplot(1, 3, index + 1)
            finite = plane[numpy.isfinite(plane)]
            limit = float(numpy.abs(finite).max()) * scale if finite.size else 1.0
            low = -limit if index == 2 else None
            picture = axes.imshow(plane.T * scale, origin='lower', cmap='RdBu_r' if index == 2 else 'inferno',
                                  vmin=low, vmax=limit if index == 2 else None, interpolation='nearest')
            figure.colorbar(picture, ax=axes, label='mJy/beam', shrink=0.8)
            axes.set_title(title, fontsize=7)
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle('%s: new and archive' % row['image'], fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(png_path) as temporary:
        figure.savefig(str(temporary), format='png')


def _continuum_plane(casa, pbcor, pb):
    """The (x, y) plane of a continuum image, NaN where masked or where pb < 0.2 (outside the image)."""
    import numpy
    with opened_tool(casa.casatools.image(), pbcor) as image:
        shape = [int(n) for n in image.shape()]
        values = numpy.asarray(image.getchunk(dropdeg=True), dtype=float).reshape(shape[:2])
        valid = numpy.asarray(image.getchunk(dropdeg=True, getmask=True), dtype=bool).reshape(shape[:2])
    if pb is not None:
        with opened_tool(casa.casatools.image(), pb) as image:
            valid &= numpy.asarray(image.getchunk(dropdeg=True), dtype=float).reshape(shape[:2]) >= 0.2
    return numpy.where(valid, values, numpy.nan)


def _spectral_axis(image):
    """(pixel axis of frequency, its channel frequencies in GHz): exportfits puts Stokes last (x, y, freq,
    stokes) while CASA images have (x, y, stokes, freq)."""
    coordinates = image.coordsys()
    try:
        axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
        reference = coordinates.referencepixel(type='spectral')['numeric'][0]
        value = coordinates.referencevalue(type='spectral')['numeric'][0]
        step = coordinates.increment(type='spectral')['numeric'][0]
    finally:
        coordinates.done()
    nchan = int(image.shape()[axis])
    return axis, [(value + (channel - reference) * step) / 1e9 for channel in range(nchan)]


def channel_rms(casa, pbcor, pb, mask=None):
    """(GHz, rms per channel): image_statistics' definition (robust, pb > 0.5, outside the clean mask), one
    channel at a time; a channel with fewer than MIN_NOISE_PIXELS outside its mask uses all of pb > 0.5."""
    import numpy
    with opened_tool(casa.casatools.image(), pbcor) as image:
        axis, frequencies = _spectral_axis(image)
        others = [index for index in range(len(image.shape())) if index != axis]

        def per_channel(expression):
            stats = image.statistics(axes=others, robust=True, mask=expression, verbose=False, list=False)
            mad = numpy.asarray(stats.get('medabsdevmed', []), dtype=float).ravel()
            npts = numpy.asarray(stats.get('npts', []), dtype=float).ravel()
            if mad.size != len(frequencies) or npts.size != len(frequencies):
                raise ValueError('no per-channel statistics')
            return mad, npts
        mad, _npts = per_channel(noise_mask_expression(pb))
        if mask is not None and Path(str(mask)).exists():
            outside, npts = per_channel(noise_mask_expression(pb, mask))
            mad = numpy.where(npts >= MIN_NOISE_PIXELS, outside, mad)
    return frequencies, list(MAD_TO_RMS * mad)


def peak_spectrum(casa, pbcor, pb):
    """(GHz, the spectrum at the pixel of the image's peak, image_statistics' peak_position)."""
    import numpy
    position = image_statistics(casa, pbcor, pb=pb)['peak_position']
    with opened_tool(casa.casatools.image(), pbcor) as image:
        axis, frequencies = _spectral_axis(image)
        blc = [int(i) for i in position]
        trc = list(blc)
        blc[axis], trc[axis] = 0, len(frequencies) - 1
        values = numpy.asarray(image.getchunk(blc=blc, trc=trc, dropdeg=True), dtype=float).ravel()
    return frequencies, list(values)
