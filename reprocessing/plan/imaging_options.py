"""Imaging options: every --image value parsed and validated (command line and defaults block), pure."""

import argparse
from pathlib import Path

from ..core.defaults import BEAM, CELL, FIELD, IMSIZE, MAXCUBELIMIT, MAXCUBESIZE, MAXPRODUCTSIZE, MITIGATION, MOMENTS, NBINS, NCHAN, OUTFRAME, PHASECENTER, RESTFREQ, ROBUST, SPECMODES, SPW, START, UVRANGE, UVTAPER, VELTYPE, WIDTH
from ..core.layout import SCRIPT_NAME
from ..core.messages import UsageError
from ..core.requests import ImagingRequest
from ..imaging.beams import parse_beam
from ..imaging.moments import parse_moments
from ..imaging.spectral_grid import parse_nchan, parse_outframe, parse_restfreq, parse_start, parse_veltype, parse_width


#
# Two engines make the same four kinds of image (specmodes mfs, cont, cube, repBW):
# the ALMA pipeline (h_init .. hif_makeimages .. h_save), and, when the pipeline is absent,
# tclean with the pipeline's heuristics re-implemented here (cell, imsize, mosaics, robust,
# automasking, pbcor).  Either way the products are recorded as they are made (never globbed),
# named like the pipeline's, and published with their archive FITS names into the images folder.

# --- What the user asks for: imaging options, validated before anything runs ----

SPECMODE_ORDER = ('mfs', 'cont', 'cube', 'repBW')
IMAGING_ENGINES = ('auto', 'pipeline', 'casa')
_NUMBER = r'[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?'
_ANGLE_UNITS = ('arcsec', 'arcmin', 'deg', 'rad', 'mas')
_UV_UNITS = ('lambda', 'klambda', 'Mlambda', 'm', 'km')


def parse_specmodes(value):
    """'mfs,cube' or ['mfs', 'cube'] -> the specmodes in the order they are made."""
    items = value.split(',') if isinstance(value, str) else list(value or [])
    wanted = set()
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        canonical = {mode.lower(): mode for mode in SPECMODE_ORDER}.get(item.lower())
        if canonical is None:
            raise ValueError('unknown specmode "%s" — choose from %s' % (item, ','.join(SPECMODE_ORDER)))
        wanted.add(canonical)
    if not wanted:
        raise ValueError('no specmode given — choose from %s' % ','.join(SPECMODE_ORDER))
    return [mode for mode in SPECMODE_ORDER if mode in wanted]


def parse_robust(value):
    try:
        robust = float(value)
    except (TypeError, ValueError):
        raise ValueError('robust must be a number between -2 and 2, got "%s"' % (value,))
    if not -2.0 <= robust <= 2.0:
        raise ValueError('robust must be between -2 and 2 (Briggs weighting), got %s' % (value,))
    return robust


def parse_uvtaper(value):
    """'0.5arcsec' or '0.5arcsec,0.3arcsec,45deg' or '200klambda' -> a list for tclean/hif_makeimlist."""
    import re
    items = value.split(',') if isinstance(value, str) else list(value or [])
    items = [str(i).strip() for i in items if str(i).strip()]
    if len(items) > 3:
        raise ValueError('uvtaper takes at most 3 values (major, minor, position angle), got %d' % len(items))
    units = '|'.join(_ANGLE_UNITS + _UV_UNITS)
    for item in items:
        if not re.match(r'^%s(%s)$' % (_NUMBER, units), item):
            raise ValueError('uvtaper "%s" is not a size with a unit — e.g. 0.5arcsec or 200klambda' % item)
    return items


def parse_uvrange(value):
    """CASA uv-range syntax: '>20klambda', '0~300m', '<50klambda', comma-separated."""
    import re
    text = str(value).strip()
    units = '|'.join(_UV_UNITS)
    single = r'\s*(?:[<>]\s*%s|%s\s*~\s*%s|%s)\s*(?:%s)?\s*' % (_NUMBER, _NUMBER, _NUMBER, _NUMBER, units)
    if not text or not all(re.match('^%s$' % single, part) for part in text.split(',')):
        raise ValueError('uvrange "%s" is not CASA uv-range syntax — e.g. ">20klambda" or "0~300m"' % text)
    return text


def parse_field(value):
    text = str(value).strip()
    if not text or any(not name.strip() for name in text.split(',')):
        raise ValueError('field "%s" must be one or more field names separated by commas' % text)
    return text


def parse_spw(value):
    """'25,27' (virtual spw ids, as cont.dat numbers them: ms_tables.virtual_spws) -> '25,27'."""
    import re
    text = ','.join(str(v).strip() for v in value) if isinstance(value, (list, tuple)) else str(value)
    text = text.replace(' ', '')
    if not re.match(r'^[0-9]+(,[0-9]+)*$', text):
        raise ValueError('spw "%s" must be spw ids separated by commas — e.g. 25,27' % text)
    ids = text.split(',')
    twice = sorted({i for i in ids if ids.count(i) > 1}, key=int)
    if twice:
        raise ValueError('spw "%s" names spw %s more than once — give each spw once' % (text, ','.join(twice)))
    return text


def parse_phasecenter(value):
    """'ICRS 16:32:22.6 -24.28.33', 'J2000 248.1deg -24.5deg', a field id, or 'TRACKFIELD'."""
    text = ' '.join(str(value).split())
    frames = ('ICRS', 'J2000', 'B1950', 'GALACTIC', 'ECLIPTIC', 'AZEL')
    words = text.split(' ')
    if text.isdigit() or text == 'TRACKFIELD':
        return text
    if len(words) == 3 and words[0].upper() in frames:
        return text
    raise ValueError('phasecenter "%s" must look like "ICRS 16:32:22.6 -24.28.33", a field id, or '
                     'TRACKFIELD' % text)


# Measured (CASA 6.7, gridder standard): imsize 1, 2 and 4 fail in tclean ("number of pixels 6 on x axis is
# smaller that the gridding support 6"), 8 works; the mosaic gridder's support is larger: 16 at least.
MIN_IMSIZE = 16


def parse_imsize(value):
    """[n, n], n, 'n,m' or '0.3pb' (image edge at that primary-beam level)."""
    import re
    if isinstance(value, str):
        text = value.strip().strip('[]').replace(' ', '')
        match = re.match(r'^(%s)pb$' % _NUMBER, text)
        if match:
            level = float(match.group(1))
            if not 0.0 < level < 1.0:
                raise ValueError('imsize "%s": the primary-beam level must be between 0 and 1' % value)
            return text
        items = [t for t in text.split(',') if t]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value or [])
    try:
        sizes = [int(str(item)) for item in items]
    except ValueError:
        raise ValueError('imsize "%s" must be pixels ([512,512] or 512) or a primary-beam level (0.3pb)' % (value,))
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError('imsize "%s" must be one or two positive pixel counts, or e.g. 0.3pb' % (value,))
    if min(sizes) < MIN_IMSIZE:
        raise ValueError('imsize "%s" is smaller than tclean can grid: give at least %d pixels a side'
                         % (value, MIN_IMSIZE))
    return sizes


def parse_cell(value):
    """'0.5arcsec' / ['0.5arcsec'] / '0.5arcsec,0.4arcsec' or '3ppb' (pixels per synthesized beam)."""
    import re
    if isinstance(value, str):
        text = value.strip().strip('[]').replace(' ', '').replace("'", '')
        if text.startswith('-'):
            raise ValueError('cell "%s" must be positive — e.g. 0.05arcsec or 3ppb' % value)
        match = re.match(r'^(%s)ppb$' % _NUMBER, text)
        if match:
            if float(match.group(1)) <= 0:
                raise ValueError('cell "%s": pixels per beam must be positive' % value)
            return text
        items = [t for t in text.split(',') if t]
    else:
        items = [str(v).strip() for v in (value or [])]
    units = '|'.join(_ANGLE_UNITS)
    if not 1 <= len(items) <= 2 or not all(re.match(r'^%s(%s)$' % (_NUMBER, units), i) for i in items):
        raise ValueError('cell "%s" must be an angle (0.05arcsec) or pixels per beam (3ppb)' % (value,))
    if any(float(re.match(_NUMBER, i).group(0)) <= 0 for i in items):
        raise ValueError('cell "%s" must be positive' % (value,))
    return items


def parse_nbins(value):
    """Channel binning per spw, pipeline syntax: '25:2,27:4' or '*:2' (every spw)."""
    import re
    text = str(value).replace(' ', '')
    items = text.split(',')
    if not text or not all(re.match(r'^([0-9]+|\*):[0-9]+$', item) for item in items):
        raise ValueError('nbins "%s" must be SPW:N pairs separated by commas — e.g. 25:2,*:4' % value)
    if any(int(item.split(':')[1]) < 1 for item in items):
        raise ValueError('nbins "%s": the number of channels to bin must be at least 1' % value)
    return text


def parse_gigabytes(value):
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise ValueError('"%s" is not a size in GB' % (value,))
    if size <= 0:
        raise ValueError('a size limit must be positive (GB), got %s' % (value,))
    return size


def argparse_type(parse):
    """argparse type= wrapper: a ValueError becomes argparse's one-line error."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))
    convert.__name__ = parse.__name__.replace('parse_', '')
    return convert


def imaging_parameters():
    """(option, name in the user-editable block, its value there now, parser) of every imaging value.

    A function, so that the block's values are read when asked: in the generated script they are the
    globals at its top, which the user may have edited; in the package, core/defaults.py's.
    """
    return (
        ('specmodes', 'SPECMODES', SPECMODES, parse_specmodes),
        ('robust', 'ROBUST', ROBUST, parse_robust),
        ('uvtaper', 'UVTAPER', UVTAPER, parse_uvtaper),
        ('uvrange', 'UVRANGE', UVRANGE, parse_uvrange),
        ('field', 'FIELD', FIELD, parse_field),
        ('spw', 'SPW', SPW, parse_spw),
        ('phasecenter', 'PHASECENTER', PHASECENTER, parse_phasecenter),
        ('imsize', 'IMSIZE', IMSIZE, parse_imsize),
        ('cell', 'CELL', CELL, parse_cell),
        ('nbins', 'NBINS', NBINS, parse_nbins),
        ('maxproductsize', 'MAXPRODUCTSIZE', MAXPRODUCTSIZE, parse_gigabytes),
        ('maxcubesize', 'MAXCUBESIZE', MAXCUBESIZE, parse_gigabytes),
        ('maxcubelimit', 'MAXCUBELIMIT', MAXCUBELIMIT, parse_gigabytes),
        ('start', 'START', START, parse_start),
        ('width', 'WIDTH', WIDTH, parse_width),
        ('nchan', 'NCHAN', NCHAN, parse_nchan),
        ('restfreq', 'RESTFREQ', RESTFREQ, parse_restfreq),
        ('outframe', 'OUTFRAME', OUTFRAME, parse_outframe),
        ('veltype', 'VELTYPE', VELTYPE, parse_veltype),
        ('moments', 'MOMENTS', MOMENTS, parse_moments),
        ('beam', 'BEAM', BEAM, parse_beam),
    )


IMAGING_FLAGS = ('no_mitigation', 'engine', 'allow_cubes_with_continuum', 'all_products', 'reuse_images')


def imaging_values(options):
    """The validated imaging parameters: the command line over the user-editable block.

    The block's values are validated too: a typo in the script is reported
    before anything runs, naming the variable to fix.
    """
    given_values = vars(options)
    values = {}
    for name, variable, default, parse in imaging_parameters():
        given = given_values.get(name)
        if given is not None:
            values[name] = given
            continue
        if default is None or default == [] or default == '':
            values[name] = None
            continue
        try:
            values[name] = parse(default)
        except ValueError as error:
            raise UsageError('%s = %r at the top of %s: %s' % (variable, default, SCRIPT_NAME, error))
    if values['specmodes'] is None:
        values['specmodes'] = list(SPECMODE_ORDER)
    if values['uvtaper'] == []:
        values['uvtaper'] = None
    values.update(mitigation=bool(MITIGATION) and not options.no_mitigation, engine=options.engine or 'auto',
                  allow_cubes_with_continuum=options.allow_cubes_with_continuum, all_products=options.all_products,
                  reuse_images=options.reuse_images)
    return values


def imaging_request(options, root):
    """--image's request: the values, DIR and --archive-products resolved against the delivery's root."""
    archive = options.archive_products
    return ImagingRequest(images_dir=Path(root) / options.image, update=options.update,
                          archive_products=None if archive is None else Path(archive).expanduser().resolve(),
                          **imaging_values(options))


# The imaging values --combine takes without --image (the cubes' common grid, and which products)
COMBINE_GRID_OPTIONS = ('start', 'width', 'nchan', 'restfreq', 'veltype')


def check_imaging_options(options):
    """Imaging flags need --image (--combine takes its products and cube grid); every imaging value is valid (flags
    and the script's block)."""
    if options.image is None:
        given_values = vars(options)
        combine = ('specmodes',) + COMBINE_GRID_OPTIONS if given_values.get('combine') else ()
        if combine and [m for m in options.specmodes or () if m not in ('mfs', 'cube')]:
            raise UsageError('--combine makes mfs and cube images (--specmodes %s) — choose from mfs,cube'
                             % ','.join(options.specmodes))
        given = ['--' + name.replace('_', '-') for name, _variable, _default, _parse in imaging_parameters()
                 if given_values.get(name) is not None and name not in combine]
        given += ['--' + name.replace('_', '-') for name in IMAGING_FLAGS if given_values.get(name)]
        if given:
            raise UsageError('%s only apply to --image — add --image [DIR]' % ', '.join(given))
        return None
    values = imaging_values(options)
    if values['mitigation'] is False and any(values[n] is not None
                                             for n in ('maxproductsize', 'maxcubesize', 'maxcubelimit')):
        raise UsageError('--maxproductsize/--maxcubesize/--maxcubelimit are limits for the mitigation that '
                         '--no-mitigation switches off — use one or the other')
    return values
