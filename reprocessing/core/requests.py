"""Requests: what the user asked for, parsed and validated once by the plan, immutable (pure).

The command line reaches the plan as argparse's Namespace and stops there: plan/requests.py turns it
into these, with every path resolved once against the delivery, and steps and engines receive them.
None of a RunRequest's parts is changed after it is made; what the plan decides from them (how many
processes, whether line MSes are replaced) is the plan's own field.
"""

import collections


# The whole run: which actions, and each one's request (None when that action was not asked for).
RunRequest = collections.namedtuple(
    'RunRequest', 'actions check contsub image concat_targets concat_lines cleanup weblog dry_run update combine '
                  'jobs memory_per_worker split_cube')
# jobs: --jobs as given, the worker processes of every step (None: the plan decides, Plan.contsub_jobs and
# Plan.image_jobs); memory_per_worker: --memory-per-worker in bytes (None: the available memory / workers);
# split_cube: --split-cube, 'auto' (a cube is split in channel chunks only when it does not fit a worker's
# memory), 'no' (never: what does not fit is refused) or N (every cube in at least N chunks).
RunRequest.__new__.__defaults__ = ('auto',)

# --contsub (engine 'pipeline') or --contsub_fast (engine 'casa').  fitorder: --fitorder (None: cont.dat's
# and the pipeline's rule); refit: fit although the delivered *uvcont.tbl could be applied (--refit or
# --fitorder); update: keep the line MSes whose record is unchanged.
ContsubRequest = collections.namedtuple('ContsubRequest', 'engine overwrite_line update refit fitorder')

# --image DIR: images_dir is DIR resolved against the delivery; archive_products the folder of the
# archive's images to compare with (None: looked for beside the delivery); update: --update.
ImagingRequest = collections.namedtuple(
    'ImagingRequest', 'specmodes robust uvtaper uvrange field spw phasecenter imsize cell nbins mitigation '
                      'maxproductsize maxcubesize maxcubelimit engine allow_cubes_with_continuum all_products '
                      'reuse_images images_dir archive_products update start width nchan restfreq outframe veltype moments beam')
# the products' options (issue 27) may be left out: None, as when not asked for
ImagingRequest.__new__.__defaults__ = (None,) * 8

# --weblog [NAME]: what to serve, on which first port, and whether to open a browser.
WeblogRequest = collections.namedtuple('WeblogRequest', 'name port open_browser')


def request_as_json(request):
    """A request's fields for json.dumps (worker processes and MPI servers get it so): paths as text."""
    return dict((name, str(value) if hasattr(value, 'as_posix') else value)
                for name, value in request._asdict().items())


# --combine DIR [DIR ...] (the other deliveries of the science goal, Paths), --feather TP_IMAGE (a Path or None),
# --contdat FILE|merge (None: each delivery's own cont.dat; 'merge'; or a Path), the products (specmodes: 'mfs',
# 'cube') and the cubes' common grid (the canonical per-spw texts of --start/--width/--nchan/--restfreq/--veltype, in
# this delivery's spw ids, or None)
CombineRequest = collections.namedtuple('CombineRequest', 'deliveries feather contdat specmodes start width nchan '
                                                          'restfreq veltype')
CombineRequest.__new__.__defaults__ = (None, ('mfs', 'cube'), None, None, None, None, None)


def nbins_for_spw(nbins, spw_id):
    """The binning nbins gives spw_id (1 when none applies)."""
    if not nbins:
        return 1
    pairs = dict(item.split(':') for item in nbins.split(','))
    return int(pairs.get(str(spw_id), pairs.get('*', 1)))
