"""cont.dat across the deliveries of one science goal (--combine): several cont.dat merged into one, and one cont.dat
told in another delivery's spw ids (pure: no CASA).

The merge rule (--contdat merge), as ALMA-IMF's merge_contdotdat.py: for each field both deliveries observed and each
pair of spws matched by LSRK frequency, the merged line-free ranges are the INTERSECTION of every delivery's line-free
ranges, in LSRK frequency: a frequency is fitted as continuum only where every array's cont.dat says it is line-free
(a line the 7 m sees in extended emission and the 12 m filters out stays out of the fit).  ALL / ALLCONT (the whole
window is line-free) leave the others' ranges as they are; NONE (no line-free range found) makes the merged block
NONE.  Flags (LOWBANDWIDTH, LOWSPREAD: fit order 0) are kept when any delivery has them.  Ranges must be in LSRK:
TOPO or SOURCE ranges of different dates cannot be compared.
"""

import collections

from ..core.messages import ReprocessingError
from .grammar import parse_contdat

WHOLE_WINDOW = None  # line_free() of ALL / ALLCONT: every frequency of the window


def intersect_ranges(first, second):
    """The frequencies in both lists of (low, high) ranges (Hz), as sorted, disjoint (low, high); None is the whole
    window (the identity)."""
    if first is None:
        return None if second is None else merge_ranges(second)
    if second is None:
        return merge_ranges(first)
    result = []
    for a_low, a_high in merge_ranges(first):
        for b_low, b_high in merge_ranges(second):
            low, high = max(a_low, b_low), min(a_high, b_high)
            if high > low:
                result.append((low, high))
    return merge_ranges(result)


def merge_ranges(ranges):
    """Sorted, disjoint (low, high) ranges covering the same frequencies (touching or overlapping ones joined)."""
    merged = []
    for low, high in sorted((float(a), float(b)) for a, b in ranges):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def line_free(block, where):
    """A cont.dat spw block's line-free ranges [(low, high) Hz LSRK], WHOLE_WINDOW for ALL/ALLCONT, [] for NONE."""
    frames = sorted(set(r.frame for r in block.ranges) - {'LSRK'})
    if frames:
        raise ReprocessingError('%s gives %s ranges in %s (line %d); the deliveries of a goal are compared in LSRK '
                                'frequency — write that block in LSRK, or give --contdat FILE'
                                % (where, block.label(), '/'.join(frames), block.line))
    if block.ranges:
        return merge_ranges((r.lo_hz, r.hi_hz) for r in block.ranges)
    return WHOLE_WINDOW if block.selection_word in ('ALL', 'ALLCONT') else []


def find_block(contdat, field, spw_id, spw_name=None):
    """The spw block of field in contdat for spw_id (by id, else by window name), or None."""
    blocks = contdat.fields[field].spws if field in contdat.fields else {}
    if spw_id in blocks:
        return blocks[spw_id]
    return next((b for b in blocks.values() if spw_name and b.name and _same_name(b.name, spw_name)), None)


def _same_name(a, b):
    """Names equal, or equal from ALMA_RB on (cont.dat v3 and Cycle 12+ GroupingID names)."""
    tail = lambda name: name[name.find('ALMA_RB'):] if 'ALMA_RB' in name else name  # noqa: E731
    return a == b or tail(a) == tail(b)


MergedBlock = collections.namedtuple('MergedBlock', 'ranges flags')


def merge_contdats(contdats, fields, groups):
    """{field: {reference spw id: MergedBlock}} of the intersection of every delivery's line-free ranges.

    contdats: [(label, ContDat)]; groups: {reference spw id: [(spw id, spw name) in each delivery, in the order of
    contdats]}.  A delivery without a block for a shared spw is refused (one line)."""
    merged = collections.OrderedDict()
    for field in fields:
        merged[field] = collections.OrderedDict()
        for reference_id, members in groups.items():
            ranges, flags = WHOLE_WINDOW, []
            for (label, contdat), (spw_id, spw_name) in zip(contdats, members):
                block = find_block(contdat, field, spw_id, spw_name)
                where = '%s\'s %s' % (label, contdat.display)
                if block is None:
                    raise ReprocessingError('%s has no block for field %s spw %d, so the line-free ranges cannot be '
                                            'merged — add it, or give --contdat FILE' % (where, field, spw_id))
                ranges = intersect_ranges(ranges, line_free(block, where))
                flags += [f for f in block.flags if f in ('LOWBANDWIDTH', 'LOWSPREAD') and f not in flags]
            merged[field][reference_id] = MergedBlock(ranges, flags)
    return merged


def merged_contdat_text(blocks, spw_ids=None):
    """cont.dat text (v2, v3 when a block has flags) of {field: {spw id: MergedBlock}}; spw_ids {reference id: id}
    tells each block in another delivery's spw ids."""
    lines = []
    for field, spws in blocks.items():
        lines += ['Field: %s' % field, '']
        for reference_id, block in spws.items():
            lines.append('SpectralWindow: %d' % (spw_ids or {}).get(reference_id, reference_id))
            if block.flags:
                lines.append('Flags: %s' % ' '.join(block.flags))
            if block.ranges is WHOLE_WINDOW:
                lines.append('ALL')
            elif not block.ranges:
                lines.append('NONE')
            else:
                lines += ['%.10f~%.10fGHz LSRK' % (low / 1e9, high / 1e9) for low, high in block.ranges]
            lines.append('')
    return '\n'.join(lines) + '\n'


def blocks_of(contdat, fields, groups, where):
    """{field: {reference id: MergedBlock}} of one cont.dat (e.g. --contdat FILE) for one delivery: for each group,
    its block of the delivery's own spw id if it has one, else the reference delivery's (LSRK ranges carry over);
    groups: {reference id: (spw id, spw name)} of that delivery.  Refuses (one line) a shared spw it lacks."""
    result = collections.OrderedDict()
    for field in fields:
        result[field] = collections.OrderedDict()
        for reference_id, (spw_id, spw_name) in groups.items():
            block = find_block(contdat, field, spw_id, spw_name)
            if block is None and spw_id != reference_id:  # the reference's window told in this delivery's id
                block = find_block(contdat, field, reference_id)
            if block is None:
                raise ReprocessingError('%s has no block for field %s spw %d%s — add one, or leave --contdat out to '
                                        'use each delivery\'s own cont.dat' % (
                                            where, field, spw_id,
                                            ' (nor %d)' % reference_id if spw_id != reference_id else ''))
            result[field][reference_id] = MergedBlock(line_free(block, where), [
                f for f in block.flags if f in ('LOWBANDWIDTH', 'LOWSPREAD')])
    return result


def parse_text(text, display):
    """A cont.dat this tool wrote, read back (so that it is checked like any other)."""
    return parse_contdat(text, path=display, display=display)
