"""Publishing images: final products moved into the images folder with archive FITS beside them."""

import collections
import os
from pathlib import Path

from ..casa.casa_engine import casa_task, opened_tool
from ..core.fileops import directory_bytes, human_bytes, link_tree, move_tree, remove_tree, require_free_space
from .image_casa import IMAGE_SPACE_ADVICE
from .image_stats import image_statistics
from ..run.run_state import pause_point
from ..core.messages import ReprocessingError
from .products import products_destinations
from .thumbnails import thumbnail_or_warning
from .cube_pictures import cube_pictures


def check_no_collisions(images_dir, names):
    """A product name already in the images folder is an error (never overwritten)."""
    taken = sorted(name for name in names if (Path(images_dir) / name).exists())
    if taken:
        raise ReprocessingError('%s already holds %s — choose another --image DIR, or move them away'
                                % (images_dir, ', '.join(taken[:5]) + (' ...' if len(taken) > 5 else '')))


def check_reused_images_dir(images_dir, specmodes):
    """With --reuse-images: no image of a requested specmode may be in the folder already."""
    import re
    clashes = []
    if Path(images_dir).is_dir():
        for entry in sorted(os.listdir(str(images_dir))):
            for specmode in specmodes:
                if re.search(r'\.spw[0-9_]+\.%s[.]' % specmode, entry):
                    clashes.append(entry)
    if clashes:
        raise ReprocessingError('%s already holds %s images (%s) that this run would make again — choose '
                                'another --image DIR, or move them away'
                                % (images_dir, '/'.join(specmodes), ', '.join(clashes[:3])))


def publish_products(state, products, *, images_dir, all_products, ous, casa, before_naming=None):
    """Put the products into images_dir (written under a partial name first) and export FITS.  The CASA images are
    linked, not moved (link_tree): until images_dir has its name, a stopped run leaves them where a resumed run
    takes them (image_resume), and a kill while FITS files are written loses no image.  before_naming(folder,
    placed there): called when a new images folder is complete but for what is written about its products (their
    provenance records), which then appear with them."""
    images_dir = Path(images_dir)
    placed = products_destinations(products, all_products=all_products, ous=ous)
    names = [n for _p, casa_name, fits_name in placed for n in (casa_name, fits_name) if n]
    if len(set(names)) != len(names):
        raise ReprocessingError('two products would get the same name in %s — report this (names: %s)'
                                % (images_dir, ', '.join(sorted(n for n in names if names.count(n) > 1))))
    check_no_collisions(images_dir, names)
    partial = state.partial_name(images_dir)
    state.will_create(partial)
    try:
        partial.mkdir(parents=True)
    except OSError as error:
        raise ReprocessingError('cannot create %s (%s) — check that you may write in %s'
                                % (partial, error.strerror, partial.parent))
    for product, casa_name, fits_name in placed:
        # before each product: its FITS file, and the CASA image itself where the link is a copy
        size = directory_bytes(product.path)
        copied = os.stat(str(product.path)).st_dev != os.stat(str(partial)).st_dev
        require_free_space(partial, size * ((1 if fits_name else 0) + (1 if copied else 0)),
                           what=casa_name, advice=IMAGE_SPACE_ADVICE)
        if fits_name:
            export_fits(casa, product.path, partial / fits_name)
            pause_point('fits-written', state)  # test-only: a stop while the products are published
        link_tree(product.path, partial / casa_name)
        product.path = partial / casa_name
    if images_dir.is_dir() and not any(images_dir.iterdir()):
        images_dir.rmdir()  # the empty folder the plan allowed
    if not images_dir.exists():
        if before_naming is not None:
            before_naming(partial, [(product, partial / casa_name, partial / fits_name if fits_name else None)
                                    for product, casa_name, fits_name in placed])
        state.publish(partial, images_dir)
    else:  # --reuse-images: add ours, name by name, to what is there
        for name in names:
            state.image_set_adding(partial / name, name)  # --update: a rollback removes it (inode), no other
            move_tree(partial / name, images_dir / name)
            pause_point('image-published', state)
        remove_tree(partial)
        state.created_for_good(partial)
    for product, casa_name, _fits in placed:
        product.path = images_dir / casa_name
    return [(product, images_dir / casa_name, images_dir / fits_name if fits_name else None)
            for product, casa_name, fits_name in placed]


def export_fits(casa, image, fits_path):
    casa_task(casa, 'exportfits', about=Path(image).name, imagename=str(image), fitsimage=str(fits_path),
              dropdeg=False, overwrite=False)
    if not Path(fits_path).is_file():
        raise ReprocessingError('exportfits did not write %s — see the CASA log' % fits_path)


def describe_image(casa, pbcor, pb=None, mask=None):
    """Beam, cell, shape, peak and rms of a primary-beam corrected image (image_statistics: where pb > 0.5,
    the rms outside the clean mask when it is given)."""
    import math
    with opened_tool(casa.casatools.image(), pbcor) as image:
        shape = [int(n) for n in image.shape()]
        coordinates = image.coordsys()
        increments = coordinates.increment(type='direction')['numeric']
        cell_arcsec = abs(float(increments[0])) * 180.0 / math.pi * 3600.0
        spectral_axis = coordinates.findcoordinate('spectral')
        nchan = shape[int(spectral_axis['pixel'][0])] if spectral_axis['return'] else 1
        coordinates.done()
        beam = image.restoringbeam()
        if 'major' not in beam:
            beam = image.commonbeam()
    stats = image_statistics(casa, pbcor, pb=pb, clean_mask=mask)
    quanta = casa.casatools.quanta()

    def arcsec(quantity):
        return quanta.convert(quantity, 'arcsec')['value']
    angle = beam.get('positionangle', beam.get('pa', {'value': 0.0}))  # commonbeam() calls it pa
    return {'beam_arcsec': (round(arcsec(beam['major']), 4), round(arcsec(beam['minor']), 4),
                            round(float(angle['value']), 1)),
            'cell_arcsec': round(cell_arcsec, 5), 'imsize': shape[:2], 'nchan': nchan,
            'peak_jy': stats['peak'], 'rms_jy': stats['rms'], 'peak_pixel': stats['peak_position'],
            'rms_outside_mask': stats['rms_outside_mask']}


def image_table(casa, placed, *, ous, thumbnails_dir=None, redone=None):
    """One row per image: its final products and what they show (and a PNG of it in thumbnails_dir; a cube's
    moment maps and its spectrum at the moment-0 peak too).  redone: {image (archive stem): [[channel, why]]} of
    the channels cube health cleaned again."""
    import re
    rows = collections.OrderedDict()
    moments = {}
    for product, casa_path, fits_path in placed:
        if product.iteration < 0:
            continue
        row = rows.setdefault(product.image_key, {'image': product.archive_stem(ous), 'specmode': product.specmode,
                                                  'field': product.field, 'spw': product.spw.replace('_', ','),
                                                  'bytes': 0, 'files': []})
        for path in (casa_path, fits_path):
            if path is not None:
                row['bytes'] += directory_bytes(path)
                row['files'].append(path.name)
        if product.ext in ('image.pbcor', 'image.tt0.pbcor'):
            row['pbcor'] = casa_path
        if product.ext in ('pb', 'pb.tt0'):
            row['pb'] = casa_path
        if product.ext == 'mask':
            row['mask'] = casa_path
        moment = re.match(r'^image\.pbcor\.mom([0-9])$', product.ext)
        if moment:
            moments.setdefault(product.image_key, {})[int(moment.group(1))] = casa_path
    table = []
    for key, row in rows.items():
        pbcor, pb, mask = row.pop('pbcor', None), row.pop('pb', None), row.pop('mask', None)
        if (redone or {}).get(row['image']):
            row['redone_channels'] = [list(item) for item in redone[row['image']]]
        if pbcor is not None:
            row.update(describe_image(casa, pbcor, pb, mask))
            if thumbnails_dir is not None:  # the picture's numbers are the table's
                picture = thumbnail_or_warning(casa, pbcor, Path(thumbnails_dir) / (row['image'] + '.png'), pb=pb,
                                               statistics={'peak': row['peak_jy'], 'rms': row['rms_jy'],
                                                           'rms_outside_mask': row['rms_outside_mask'],
                                                           'peak_position': row['peak_pixel']})
                if picture is not None:
                    row.update(thumbnail=picture['png'], thumbnail_title=picture['title'])
                if key in moments:
                    row.update(cube_pictures(casa, pbcor=pbcor, moments=moments[key], folder=thumbnails_dir,
                                             stem=row['image'], redone=row.get('redone_channels'),
                                             peak_pixel=row.get('peak_pixel')))
        table.append(row)
    return table


def format_image_table(rows):
    header = ('image', 'specmode', 'field', 'spw', 'beam (")', 'cell (")', 'imsize x nchan', 'peak (Jy/beam)',
              'rms (Jy/beam)', 'size')
    lines = [header]
    for row in rows:
        beam = row.get('beam_arcsec')
        lines.append((row['image'], row['specmode'], row['field'], row['spw'],
                      '%.3g x %.3g' % beam[:2] if beam else '-',
                      '%.3g' % row['cell_arcsec'] if 'cell_arcsec' in row else '-',
                      '%dx%d x %d' % (row['imsize'][0], row['imsize'][1], row['nchan']) if 'imsize' in row else '-',
                      '%.4g' % row['peak_jy'] if 'peak_jy' in row else '-',
                      '%.3g' % row['rms_jy'] if 'rms_jy' in row else '-', human_bytes(row['bytes'])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return ['  ' + '  '.join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip()
            for line in lines]
