"""The pipeline engine's cubes: on the user's grid (hif_makeimlist's start/width/nchan), then --beam and --moments."""

import os

from ..casa.casa_engine import opened_tool
from ..casa.ms_imaging import read_ms_for_imaging
from ..casa.pipeline_calls import grid_options_given, group_cube_grids, makeimlist_grid
from ..core.messages import say
from .image_casa import plan_casa_images
from .products import ImageProduct, is_casa_image
from .spectral_grid import value_for_spw
from .tclean_run import cube_products


def pipeline_cube_grids(casa, request, *, targets, targets_line, ous):
    """(hif_makeimlist calls of specmode cube or None for one call of them all, {(field, spw id): rest frequency
    Hz}, the (field, spw id) given a grid) for the user's grid options; (None, {}, set()) without any.

    The grid of each field and spw is the CASA engine's (the same checks, the same rest frequency rule), given
    to the pipeline as frequencies (makeimlist_grid says why) where --start, --width or --nchan ask for one for
    that spw; with only --restfreq the pipeline keeps its grid and the rest frequency goes into the header.
    """
    if 'cube' not in request.specmodes or not grid_options_given(request):
        return None, {}, set()
    cube_request = request._replace(specmodes=['cube'])
    infos = [read_ms_for_imaging(casa, ms) for ms in targets]
    lines = [read_ms_for_imaging(casa, ms) for ms in targets_line]
    jobs, notes = plan_casa_images(casa, cube_request, targets=infos, lines=lines, channels_for=None, contdat=None,
                                   ous=ous)
    grids, restfreqs, fields, gridded = [], {}, [], set()
    for job in jobs:
        spw = job.spw_ids[0]
        grid, restfreq = makeimlist_grid(job.spectral, native_hz=job.spectral.get('native_hz'))
        if not any(value_for_spw(getattr(request, name), spw) for name in ('start', 'width', 'nchan')):
            grid = None  # the pipeline's own grid
        else:
            gridded.add((job.field, spw))
        grids.append((job.field, spw, grid))
        restfreqs[(job.field, spw)] = restfreq
        if job.field not in fields:
            fields.append(job.field)
    for note in notes:
        say('  note: ' + note)
    return (group_cube_grids(grids, fields) if gridded else None), restfreqs, gridded


def set_rest_frequencies(casa, products, restfreqs):
    """Write the rest frequency the grid was made with into the pipeline's cubes of those fields and spws.

    hif_makeimlist takes no restfreq, so the pipeline's tclean picks its own; velocities (the header, moment 1)
    must be those of the user's rest frequency.  Only header values change."""
    changed = 0
    for product in products:
        if product.specmode != 'cube' or not product.spw.isdigit():
            continue
        matches = [hz for (field, spw), hz in restfreqs.items()
                   if spw == int(product.spw) and same_field(field, product.field)]
        if len(set(matches)) != 1:
            continue
        with opened_tool(casa.casatools.image(), product.path) as image:
            coordinates = image.coordsys()
            try:
                if abs(coordinates.restfrequency()['value'][0] - matches[0]) > 1.0:
                    coordinates.setrestfrequency(value='%.3fHz' % matches[0])
                    image.setcoordsys(coordinates.torecord())
                    changed += 1
            finally:
                coordinates.done()
    return changed


def same_field(field, image_field):
    """The pipeline names images after the field with characters outside [A-Za-z0-9+-._] replaced by '_'."""
    import re
    return image_field in (field, re.sub(r'[^A-Za-z0-9+\-._]', '_', field))


def pipeline_cube_products(casa, request, products, *, work_dir):
    """--beam and --moments for each cube the pipeline made (its last iteration), as the CASA engine does for
    its own; returns the products then: the moment maps added (the pipeline's own whole-cube .image.mom0 and
    .image.mom8 stay, published as <cube>.pipeline_mom0/8.fits: ImageProduct.fits_name)."""
    if not (request.beam or request.moments):
        return list(products)
    last = {}
    for product in products:
        if product.specmode in ('cube', 'repBW') and product.ext == 'image' and product.iteration >= 0:
            if product.iteration >= last.get(product.image_key, (-1, None))[0]:
                last[product.image_key] = (product.iteration, product)
    known = {str(p.path) for p in products}
    added = []
    for _iteration, product in last.values():
        stem = str(product.path)[:-len('.image')]
        if not (os.path.isdir(stem + '.image.pbcor') and os.path.isdir(stem + '.pb')):
            say('    %s: no .image.pbcor or .pb beside it, so no --beam or --moments' % os.path.basename(stem))
            continue
        say('    %s:' % os.path.basename(stem))
        cube_products(casa, lambda line: say('      ' + line), imagename=stem, beam=request.beam,
                      moments=request.moments)
        prefix = os.path.basename(stem) + '.'
        for name in sorted(os.listdir(str(work_dir))):
            path = work_dir / name
            if name.startswith(prefix) and str(path) not in known and is_casa_image(path):
                added.append(ImageProduct.from_working_name(path, specmode=product.specmode))
                known.add(str(path))
    return list(products) + added
