"""Image products: pipeline-style image names parsed, the final ones chosen, archive FITS names (pure)."""

from pathlib import Path



def is_casa_image(path):
    """A CASA image is a table directory whose table.info says Type = Image."""
    info = Path(path) / 'table.info'
    try:
        with open(str(info)) as handle:
            return 'Image' in handle.readline()
    except OSError:
        return False


# --- Image products: named like the pipeline's, recorded as they are made -------

_IMAGE_NAME = (r'^(?P<ous>[^.]+)\.(?:s(?P<stage>[0-9]+)_(?P<substage>[0-9]+)\.)?(?P<target>.+?_[a-z]+)'
               r'\.spw(?P<spw>[0-9_]+)\.(?P<specmode>mfs|cont|cube|repBW)(?P<datatype>\.regcal|\.selfcal)?'
               r'\.(?P<stokes>[IQUV]+)\.iter(?P<iteration>[0-9]+)\.(?P<ext>.+)$')
# What a user gets by default, per image (its last iteration): the extensions kept as CASA images
# and exported to FITS.  Multi-term (mtmfs) images keep their tt0 terms and the spectral index.
FINAL_EXTENSIONS = ('image.pbcor', 'pb', 'mask', 'image.tt0.pbcor', 'pb.tt0', 'alpha', 'alpha.error')
UNKNOWN_OUS = 'oussid'  # what the pipeline calls an OUS it does not know


class ImageProduct(object):
    """One CASA image an engine made, parsed from its pipeline-style name."""

    def __init__(self, path, *, ous, stage, target, spw, specmode, datatype, stokes, iteration, ext):
        self.path = Path(path)
        self.ous, self.stage, self.target, self.spw = ous, stage, target, spw
        self.specmode, self.datatype, self.stokes = specmode, datatype, stokes
        self.iteration, self.ext = int(iteration), ext

    @classmethod
    def from_working_name(cls, path, *, specmode=None):
        import re
        match = re.match(_IMAGE_NAME, Path(path).name)
        if match is None:
            # not named like a pipeline image: kept (with --all-products) but never called final
            return cls(path, ous='', stage=None, target=Path(path).name, spw='', specmode=specmode or '',
                       datatype='', stokes='', iteration=-1, ext='')
        parts = match.groupdict()
        return cls(path, ous=parts['ous'], stage=parts['stage'], target=parts['target'], spw=parts['spw'],
                   specmode=parts['specmode'], datatype=parts['datatype'] or '', stokes=parts['stokes'],
                   iteration=parts['iteration'], ext=parts['ext'])

    @property
    def image_key(self):
        """Products of the same image (all iterations and extensions) share this key."""
        return (self.target, self.spw, self.specmode, self.datatype, self.stokes)

    @property
    def field(self):
        return self.target.rsplit('_', 1)[0]

    def archive_stem(self, ous=None):
        """<ous>.<field>_sci.spw<ids>.<specmode>[.regcal|.selfcal].I — the archive's name for this image."""
        if ous is None or self.ous not in ('', UNKNOWN_OUS):
            ous = self.ous
        return '%s.%s.spw%s.%s%s.%s' % (ous, self.target, self.spw, self.specmode, self.datatype, self.stokes)

    def fits_name(self, ous=None):
        """The archive's FITS name: the working name without stage and iteration, image.* shortened
        (image.pbcor -> pbcor, image.tt0.pbcor -> tt0.pbcor, image.pbcor.mom0_fc -> mom0_fc).  The pipeline's
        own whole-cube moments of the flat cube (image.mom0, image.mom8: its weblog's pictures, every channel,
        no mask) become pipeline_mom0, pipeline_mom8, never the name of a --moments map (image.pbcor.mom8 ->
        mom8)."""
        import re
        suffix = self.ext
        if re.match(r'^image\.mom[0-9]+$', suffix):
            return '%s.pipeline_%s.fits' % (self.archive_stem(ous), suffix[len('image.'):])
        for prefix in ('image.pbcor.', 'image.'):
            if suffix.startswith(prefix):
                suffix = suffix[len(prefix):]
                break
        return '%s.%s.fits' % (self.archive_stem(ous), suffix)


def final_products(products):
    """Of each image, the last iteration's pbcor image, pb and mask (+ tt0/alpha, moment maps)."""
    last = {}
    for product in products:
        if product.iteration >= 0:
            last[product.image_key] = max(last.get(product.image_key, -1), product.iteration)
    return [p for p in products
            if p.iteration >= 0 and p.iteration == last[p.image_key]
            and (p.ext in FINAL_EXTENSIONS or '.mom' in '.' + p.ext)]


def ous_from_path(root):
    """The member OUS uid from the delivery's path (member.uid___A001_X1_X2/...), else the pipeline's 'oussid'."""
    import re
    for part in reversed(Path(root).resolve().parts):
        match = re.match(r'^(?:member\.)?(uid___A00[0-9]_X[0-9a-fA-F]+_X[0-9a-fA-F]+)$', part)
        if match:
            return match.group(1)
    return UNKNOWN_OUS


def products_destinations(products, *, all_products, ous):
    """[(product, CASA image name, FITS name or None)] of what goes into the images folder."""
    finals = {id(p) for p in final_products(products)}
    placed = []
    for product in products:
        is_final = id(product) in finals
        if not (is_final or all_products):
            continue
        placed.append((product, product.path.name, product.fits_name(ous) if is_final else None))
    return placed
