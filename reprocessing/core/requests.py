"""Requests: what the user asked for, parsed and validated once by the plan, immutable (pure).

Steps and engines receive these, never the argparse Namespace: what a step does is decided by its request.
"""

import collections


ImagingRequest = collections.namedtuple(
    'ImagingRequest', 'specmodes robust uvtaper uvrange field spw phasecenter imsize cell nbins mitigation '
                      'maxproductsize maxcubesize maxcubelimit engine allow_cubes_with_continuum all_products '
                      'reuse_images')


def nbins_for_spw(nbins, spw_id):
    """The binning nbins gives spw_id (1 when none applies)."""
    if not nbins:
        return 1
    pairs = dict(item.split(':') for item in nbins.split(','))
    return int(pairs.get(str(spw_id), pairs.get('*', 1)))
