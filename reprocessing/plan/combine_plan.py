"""--combine: which of the other deliveries of a science goal can be imaged with this one, decided at plan time.

Fields are shared when their names match and their positions agree within a tenth of the smallest primary beam;
spectral windows are paired across deliveries by their LSRK coverage (their ids and names differ between arrays);
the arrays are told apart by their dishes.  Every delivery that cannot add anything gets one line saying why; when
nothing at all can be combined the run stops with one line.
"""

import collections
import math
from pathlib import Path

from ..casa.ms_combine import read_ms_for_combination
from ..contdat.grammar import read_contdat
from ..contdat.merge import blocks_of, find_block, merge_contdats, merged_contdat_text, parse_text
from ..core.fileops import relative_path
from ..core.layout import Delivery, eb_name
from ..core.requests import CombineRequest
from ..imaging.combine_cube import common_cube_grid, spw_groups_of
from ..imaging.combine_image import ARCSEC, C_M_S, array_order, describe_uv_coverage, distinct_label
from ..core.messages import ReprocessingError


CombinePart = collections.namedtuple('CombinePart', 'root label mses spw_map notes')
Combination = collections.namedtuple('Combination', 'parts fields spw_groups label notes feather contdats written '
                                                    'request grids')
Combination.__new__.__defaults__ = (None, (), None, None)
# grids: {(field, reference spw id): (tclean's spectral keywords, a line saying the grid)} of the cubes;
# contdats: per part, the ContDat its continuum is fitted from (None: all channels); written: [(path, text)] of the
# cont.dat files this run writes (the merge, or --contdat told in another delivery's spw ids); request: CombineRequest


def array_label(dish_m):
    """'12m', '7m', ... from the smallest dish of a delivery."""
    return '%dm' % int(round(dish_m))


def separation_arcsec(a, b):
    """Angle between two (ra, dec) directions in radians, in arcsec."""
    cos = (math.sin(a[1]) * math.sin(b[1]) + math.cos(a[1]) * math.cos(b[1]) * math.cos(a[0] - b[0]))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))) * 3600.0


def overlap_fraction(a, b):
    """Fraction of spw a's LSRK coverage that spw b covers too."""
    low, high = max(a.lsrk_lo, b.lsrk_lo), min(a.lsrk_hi, b.lsrk_hi)
    return max(0.0, high - low) / (a.lsrk_hi - a.lsrk_lo)


def pair_spws(reference, other):
    """{reference spw id: other spw id} of the other's spw covering most of each reference spw (> 0)."""
    pairs = {}
    for spw in reference:
        best = max(other, key=lambda o: overlap_fraction(spw, o), default=None)
        if best is not None and overlap_fraction(spw, best) > 0.0:
            pairs[spw.spw_id] = best.spw_id
    return pairs


def shared_fields(reference, other, tolerance_arcsec):
    """Names of the fields both have, at positions within tolerance."""
    return [name for name, position in reference.items()
            if name in other and separation_arcsec(position, other[name]) <= tolerance_arcsec]


def describe_ms_set(label, mses):
    first = mses[0]
    return '%s: %d MS, %d antennas (%s dishes), spws %s, %s; %s' % (
        label, len(mses), len(first.antennas), array_label(min(m.dish_m for m in mses)),
        ', '.join('%d (%s, %d x %.4g MHz)' % (s.spw_id, s.name, s.nchan, s.width_hz / 1e6) for s in first.spws),
        ', '.join(sorted(set(m.date for m in mses))), describe_uv_coverage(mses))


def match_deliveries(reference, others):
    """Combination of the reference MSes ([CombineMs]) and others ([(root, [CombineMs])]), pure; raises
    ReprocessingError when nothing can be combined."""
    ref = reference[0]
    ref_label = array_label(min(m.dish_m for m in reference))
    smallest_dish = min([m.dish_m for m in reference] + [m.dish_m for _r, mses in others for m in mses])
    tolerance = 0.1 * 1.13 * C_M_S / max(s.lsrk_hi for s in ref.spws) / smallest_dish / ARCSEC
    parts = [CombinePart(None, ref_label, reference, dict((s.spw_id, s.spw_id) for s in ref.spws), [])]
    notes, refused = [describe_ms_set(ref_label, reference) + ' (this delivery)'], []
    fields = list(ref.fields)
    seen = dict((eb_name(m.path), 'this delivery') for m in reference)
    for root, mses in others:
        label = distinct_label(array_label(min(m.dish_m for m in mses)), {p.label for p in parts})
        first = mses[0]
        for ms in mses:  # an execution block imaged twice would count its data twice
            if eb_name(ms.path) in seen:
                raise ReprocessingError('--combine: %s holds the execution block %s, which is already in %s — give '
                                        'each delivery once' % (root, eb_name(ms.path), seen[eb_name(ms.path)]))
            seen[eb_name(ms.path)] = str(root)
        common = shared_fields(ref.fields, first.fields, tolerance)
        if not common:
            refused.append('%s (%s): no field shared with this delivery by name and position (this: %s; that: %s)'
                           % (root, label, ', '.join(ref.fields), ', '.join(first.fields)))
            continue
        spw_map = pair_spws(ref.spws, first.spws)
        if not spw_map:
            refused.append('%s (%s): no spectral window overlaps this delivery\'s in LSRK frequency (this: %s; '
                           'that: %s GHz)' % (root, label, _ranges(ref.spws), _ranges(first.spws)))
            continue
        fields = [name for name in fields if name in common]
        notes.append(describe_ms_set(label, mses))
        unpaired = [s.spw_id for s in ref.spws if s.spw_id not in spw_map]
        notes.append('%s: spws %s with this delivery\'s %s%s' % (
            label, ', '.join('%d' % spw_map[k] for k in sorted(spw_map)),
            ', '.join('%d' % k for k in sorted(spw_map)),
            '; this delivery\'s spws %s have no partner there' % unpaired if unpaired else ''))
        parts.append(CombinePart(Path(root), label, mses, spw_map, []))
    if len(parts) < 2:
        raise ReprocessingError('--combine: nothing can be combined with this delivery — %s' % '; '.join(refused))
    spw_groups = [k for k in (s.spw_id for s in ref.spws) if all(k in p.spw_map for p in parts)]
    if not spw_groups:
        raise ReprocessingError('--combine: no spectral window of this delivery overlaps one in every other delivery '
                                '— combine fewer deliveries')
    notes.extend('cannot combine ' + line for line in refused)
    labels = sorted(set(p.label for p in parts), key=array_order)
    return Combination(parts, fields, spw_groups, ''.join(labels), notes, None)


def plan_contdats(combination, request, delivery):
    """The Combination with, per part, the cont.dat its continuum is fitted from (pure: cont.dat files read).

    Without --contdat each delivery's own caltables/cont.dat; cubes need it to cover every shared field and spw
    (refused in one line otherwise), a continuum image alone does without (all channels).  --contdat merge: the
    intersection of the deliveries' own (contdat/merge.py), written as working_reprocess/combined_cont.dat in this
    delivery's spw ids (and one file per other delivery in its ids).  --contdat FILE: that file for every delivery."""
    parts, cubes = combination.parts, 'cube' in request.specmodes
    roots = [Path(p.root or delivery.root) for p in parts]
    names = ['%s (%s)' % (p.label, root) for p, root in zip(parts, roots)]
    contdats, written, notes = [], [], list(combination.notes)
    if request.contdat is None or request.contdat == 'merge':
        own = []
        for part, root, name in zip(parts, roots, names):
            path = Delivery(root).contdat
            if not path.is_file():
                if cubes or request.contdat == 'merge':
                    raise ReprocessingError('--combine: %s has no caltables/cont.dat, so its continuum cannot be '
                                            'subtracted for the cubes — give --contdat FILE covering every delivery, or '
                                            '--specmodes mfs' % name)
                own.append(None)
                continue
            contdat = read_contdat(path, display='%s/caltables/cont.dat' % part.label)
            if cubes and request.contdat is None:
                for field in combination.fields:
                    for reference_id, (spw_id, spw_name) in spw_groups_of(combination, part).items():
                        if find_block(contdat, field, spw_id, spw_name) is None:
                            raise ReprocessingError(
                                '--combine: %s\'s cont.dat has no block for field %s spw %d (paired with this '
                                'delivery\'s spw %d), so its line MS cannot be made — add it, give --contdat FILE '
                                'covering every delivery, or --specmodes mfs' % (name, field, spw_id, reference_id))
            own.append(contdat)
        if request.contdat is None:
            notes.append('continuum: each delivery\'s own caltables/cont.dat')
            return combination._replace(contdats=own, notes=notes, request=request)
        blocks = merge_contdats([(p.label, c) for p, c in zip(parts, own)], combination.fields, collections.OrderedDict(
            (k, [spw_groups_of(combination, p)[k] for p in parts]) for k in combination.spw_groups))
        per_part = [blocks] * len(parts)
        what = 'the intersection of the deliveries\' line-free ranges (LSRK), --contdat merge'
    else:
        given = read_contdat(request.contdat)
        per_part = [blocks_of(given, combination.fields, spw_groups_of(combination, p), '--contdat %s' % request.contdat)
                    for p in parts]
        what = '--contdat %s' % request.contdat
    for number, (part, blocks) in enumerate(zip(parts, per_part)):
        name = 'combined_cont.dat' if number == 0 else 'combined_cont.%d-%s.dat' % (number, part.label)
        path = delivery.work_dir / name
        text = merged_contdat_text(blocks, spw_ids=dict((k, v[0]) for k, v in spw_groups_of(combination, part).items()))
        written.append((path, text))
        contdats.append(parse_text(text, relative_path(path, delivery.root)))
    notes.append('continuum of every delivery from %s: written to %s%s' % (
        what, relative_path(written[0][0], delivery.root),
        ' (in this delivery\'s spw ids; %s in the others\')' % ', '.join(p.name for p, _t in written[1:])
        if len(written) > 1 else ''))
    return combination._replace(contdats=contdats, written=written, notes=notes, request=request)


def _ranges(spws):
    return ', '.join('%d: %.3f-%.3f' % (s.spw_id, s.lsrk_lo / 1e9, s.lsrk_hi / 1e9) for s in spws)


def plan_combination(casa, delivery, other_roots, feather=None, request=None):
    """Read every delivery's targets MSes (metadata) and match them; the Combination to image."""
    reference = [read_ms_for_combination(casa, ms) for ms in delivery.targets]
    others = []
    for root in other_roots:
        other = Delivery(Path(root))
        if Path(root).resolve() == Path(delivery.root).resolve():
            raise ReprocessingError('--combine %s is this delivery — give the other deliveries of the science goal'
                                    % root)
        other.check_layout()
        others.append((Path(root), [read_ms_for_combination(casa, ms) for ms in other.targets]))
    combination = match_deliveries(reference, others)
    if feather is not None and not Path(feather).exists():
        raise ReprocessingError('--feather %s does not exist — give the TP image (FITS or CASA image)' % feather)
    if feather is not None:
        combination = combination._replace(label=combination.label + 'TP', feather=Path(feather))
    combination = plan_contdats(combination, request or CombineRequest(tuple(other_roots), feather), delivery)
    if 'cube' not in combination.request.specmodes:
        return combination
    grids = collections.OrderedDict()
    for field in combination.fields:
        for reference_id in combination.spw_groups:
            try:
                grids[(field, reference_id)] = common_cube_grid(casa, combination, reference_id, field)
            except ValueError as error:  # a grid outside what every delivery covers, finer than a channel, ...
                raise ReprocessingError('--combine: %s' % error)
    return combination._replace(grids=grids, notes=combination.notes + [
        '[%s] %s' % (field, note) for (field, _k), (_s, note) in grids.items()])

