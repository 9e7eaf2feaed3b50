"""--combine's cont.dat rules (issue 29), pure: the intersection of line-free ranges, the merged file, and one cont.dat
told in another delivery's spw ids.  No CASA."""
import collections

import pytest

from reprocessing.contdat.grammar import parse_contdat
from reprocessing.contdat.merge import (WHOLE_WINDOW, blocks_of, intersect_ranges, merge_contdats, merged_contdat_text,
                                        parse_text)
from reprocessing.core.messages import ReprocessingError

GHZ = 1e9


def _contdat(text, display='cont.dat'):
    return parse_contdat(text, path=display, display=display)


def test_intersection_of_ranges():
    # overlaps are kept, the rest dropped; touching ranges of one list join first
    assert intersect_ranges([(1, 5), (7, 10)], [(2, 8)]) == [(2, 5), (7, 8)]
    assert intersect_ranges([(1, 3), (3, 6)], [(2, 4), (5, 9)]) == [(2, 4), (5, 6)]
    assert intersect_ranges([(1, 2)], [(3, 4)]) == []                    # disjoint: nothing line-free in both
    assert intersect_ranges([(1, 2)], [(2, 4)]) == []                    # a shared edge has no width
    assert intersect_ranges(WHOLE_WINDOW, [(4, 6), (1, 2)]) == [(1, 2), (4, 6)]   # ALL leaves the other as it is
    assert intersect_ranges(WHOLE_WINDOW, WHOLE_WINDOW) is WHOLE_WINDOW
    # commutative, and idempotent
    a, b = [(0.5, 3.0), (4.0, 9.0)], [(1.0, 5.0), (8.0, 12.0)]
    assert intersect_ranges(a, b) == intersect_ranges(b, a) == [(1.0, 3.0), (4.0, 5.0), (8.0, 9.0)]
    assert intersect_ranges(a, a) == a


TWELVE = """Field: IRAS_16293-2422

SpectralWindow: 25
216.8954600307~216.9191459911GHz LSRK
216.9408540089~216.9559999139GHz LSRK

SpectralWindow: 27
230.4939386093~230.5544784925GHz LSRK
"""
SEVEN = """Field: IRAS_16293-2422

SpectralWindow: 16
216.9026157668~216.9191459911GHz LSRK
216.9408540089~216.9612043053GHz LSRK

SpectralWindow: 18
230.5014817566~230.5600702952GHz LSRK
"""
FIELDS = ['IRAS_16293-2422']
GROUPS = collections.OrderedDict([(25, [(25, None), (16, None)]), (27, [(27, None), (18, None)])])


def test_merged_cont_dat_is_the_intersection_in_each_deliverys_ids():
    merged = merge_contdats([('12m', _contdat(TWELVE)), ('7m', _contdat(SEVEN))], FIELDS, GROUPS)
    blocks = merged['IRAS_16293-2422']
    assert [tuple(round(f / GHZ, 10) for f in r) for r in blocks[25].ranges] == [
        (216.9026157668, 216.9191459911), (216.9408540089, 216.9559999139)]
    assert [tuple(round(f / GHZ, 10) for f in r) for r in blocks[27].ranges] == [(230.5014817566, 230.5544784925)]
    # written as a cont.dat the tool reads back, in this delivery's ids and in the 7 m's
    for ids, spws in ((None, [25, 27]), ({25: 16, 27: 18}, [16, 18])):
        text = merged_contdat_text(merged, spw_ids=ids)
        back = parse_text(text, 'combined_cont.dat')
        assert list(back.fields['IRAS_16293-2422'].spws) == spws
        read = back.fields['IRAS_16293-2422'].spws[spws[0]].ranges
        assert [(r.frame, round(r.lo_hz / GHZ, 10), round(r.hi_hz / GHZ, 10)) for r in read] == [
            ('LSRK', 216.9026157668, 216.9191459911), ('LSRK', 216.9408540089, 216.9559999139)]


def test_merge_keywords_flags_and_refusals():
    all_text = TWELVE.replace('230.4939386093~230.5544784925GHz LSRK', 'ALL')
    none_text = SEVEN.replace('230.5014817566~230.5600702952GHz LSRK', 'NONE')
    merged = merge_contdats([('12m', _contdat(all_text)), ('7m', _contdat(SEVEN))], FIELDS, GROUPS)
    assert merged['IRAS_16293-2422'][27].ranges == [pytest.approx((230.5014817566e9, 230.5600702952e9))]  # ALL: the other's ranges
    merged = merge_contdats([('12m', _contdat(TWELVE)), ('7m', _contdat(none_text))], FIELDS, GROUPS)
    assert merged['IRAS_16293-2422'][27].ranges == []                # NONE anywhere: NONE
    assert '\nNONE\n' in merged_contdat_text(merged)
    flagged = SEVEN.replace('SpectralWindow: 18\n', 'SpectralWindow: 18\nFlags: LOWBANDWIDTH\n')
    merged = merge_contdats([('12m', _contdat(TWELVE)), ('7m', _contdat(flagged))], FIELDS, GROUPS)
    assert merged['IRAS_16293-2422'][27].flags == ['LOWBANDWIDTH']
    assert parse_text(merged_contdat_text(merged), 'x').fields['IRAS_16293-2422'].spws[27].low_bandwidth
    with pytest.raises(ReprocessingError, match=r"7m's cont.dat has no block for field IRAS_16293-2422 spw 18"):
        merge_contdats([('12m', _contdat(TWELVE)), ('7m', _contdat(SEVEN.split('SpectralWindow: 18')[0]))],
                       FIELDS, GROUPS)
    topo = SEVEN.replace('230.5600702952GHz LSRK', '230.5600702952GHz TOPO')
    with pytest.raises(ReprocessingError, match='in TOPO .*compared in LSRK'):
        merge_contdats([('12m', _contdat(TWELVE)), ('7m', _contdat(topo))], FIELDS, GROUPS)


def test_one_contdat_for_every_delivery():
    # --contdat FILE with this delivery's ids only: the 7 m gets the same LSRK ranges under its own ids
    given = _contdat(TWELVE)
    seven = blocks_of(given, FIELDS, collections.OrderedDict([(25, (16, None)), (27, (18, None))]), '--contdat F')
    text = merged_contdat_text(seven, spw_ids={25: 16, 27: 18})
    assert 'SpectralWindow: 16\n216.8954600307~216.9191459911GHz LSRK' in text, text
    # a block in the 7 m's own id wins over the reference's
    both = _contdat(TWELVE + '\n' + SEVEN.replace('Field: IRAS_16293-2422\n', ''))
    seven = blocks_of(both, FIELDS, collections.OrderedDict([(25, (16, None)), (27, (18, None))]), '--contdat F')
    assert seven['IRAS_16293-2422'][25].ranges[0][0] == pytest.approx(216.9026157668e9)
    with pytest.raises(ReprocessingError, match='--contdat F has no block for field IRAS_16293-2422 spw 18 '
                                                r'\(nor 27\)'):
        blocks_of(_contdat(TWELVE.split('SpectralWindow: 27')[0]), FIELDS,
                  collections.OrderedDict([(27, (18, None))]), '--contdat F')
