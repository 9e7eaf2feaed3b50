"""The new images beside the archive's: twins matched by field, spw and specmode, with the images table's numbers.

The archive's products are the FITS files of the MOUS's product/ folder
(``<ous>.<field>_sci.spw<ids>.<specmode>.I.pbcor.fits`` with ``.pb.fits`` and ``.mask.fits``), found in
the delivery's own folder, its parent or grandparent (a member.uid___... folder holds calibrated/ and
product/ side by side), or where --archive-products points.  Each twin is described by describe_image,
as the images table is (one definition of peak and rms: pb > 0.5), plus the flux inside the clean
mask of a continuum image.
"""

import re
from pathlib import Path

from .casa_engine import opened_tool
from .image_publish import describe_image
from .image_stats import flux_text
from .messages import ReprocessingError, one_line, warn

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
        if int(image.shape()[3] if len(image.shape()) > 3 else 1) > 1:
            return None
        stats = image.statistics(mask='"%s" > 0.5' % str(mask).replace('"', '\\"'), verbose=False, list=False)
    if not len(stats.get('flux', [])) or not stats.get('npts', [0])[0]:
        return None
    return float(stats['flux'][0])


def compare_with_archive(casa, placed, archive_dir, *, ous):
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
            new = describe_image(casa, files['image'], files.get('pb'))
            new['flux_jy'] = flux_in_mask(casa, files['image'], files.get('mask'))
            old = describe_image(casa, twin['pbcor'], twin['pb'])
            old['flux_jy'] = flux_in_mask(casa, twin['pbcor'], twin['mask'])
        except Exception as error:  # the comparison is a view: a damaged archive file is only a warning
            warn('cannot compare %s with the archive\'s %s (%s)' % (product.archive_stem(), twin['pbcor'].name,
                                                                 one_line(error)))
            continue
        rows.append({'image': product.archive_stem(ous), 'archive': twin['pbcor'].name, 'new': new, 'old': old})
    return rows


def comparison_cells(side):
    """The numbers of one version of an image, as the terminal and the report print them."""
    beam = side.get('beam_arcsec')
    return ['%.3g" × %.3g"' % tuple(beam[:2]) if beam else '—', '%.3g"' % side['cell_arcsec'],
            '%d × %d × %d' % (side['imsize'][0], side['imsize'][1], side['nchan']),
            flux_text(side['peak_jy']), flux_text(side['rms_jy']),
            '%.4g mJy' % (side['flux_jy'] * 1e3) if side.get('flux_jy') is not None else '—']


COMPARISON_HEADER = ['image', 'version', 'beam', 'cell', 'size', 'peak', 'rms (pb > 0.5)', 'flux in mask']


def format_comparison(rows):
    """The terminal's short table: one line per version of each image."""
    lines = [COMPARISON_HEADER]
    for row in rows:
        lines.append([row['image'], 'new'] + comparison_cells(row['new']))
        lines.append(['', 'archive'] + comparison_cells(row['old']))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COMPARISON_HEADER))]
    return ['  ' + '  '.join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]
