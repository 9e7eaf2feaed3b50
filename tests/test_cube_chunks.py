"""Channel chunks of a cube (imaging/cube_chunks.py): the planning, pure (no CASA).

The chunks must tile the cube's channels exactly (no gap, no overlap, in order), keep the whole cube's
spectral grid (each chunk's start is the whole cube's start plus whole channel widths), and never be a
single channel (tclean's briggsbwtaper refuses a cube of one channel: "fractional bandwidth is not a
valid value, 0.0", measured with CASA 6.7).
"""
import pytest

import scriptForReprocessing as sfr


@pytest.mark.parametrize('nchan, size', [(126, 32), (509, 32), (64, 30), (7, 3), (4, 3), (10, 10), (10, 100), (2, 5)])
def test_chunks_tile_the_channels_in_order_and_are_as_even_as_possible(nchan, size):
    ranges = sfr.chunk_ranges(nchan, size)
    assert ranges[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # no gap, no overlap
    assert sum(count for _first, count in ranges) == nchan
    assert max(count for _f, count in ranges) <= size
    assert max(count for _f, count in ranges) - min(count for _f, count in ranges) <= 1
    assert len(ranges) == -(-nchan // size)  # as few chunks as the size allows
    assert min(count for _f, count in ranges) >= 2


def test_no_chunk_has_one_channel_even_when_asked_for_smaller_chunks():
    assert sfr.chunk_ranges(7, 1) == [(0, 3), (3, 2), (5, 2)]
    assert sfr.chunk_ranges(3, 2) == [(0, 3)]
    assert sfr.chunk_ranges(1, 5) == [(0, 1)]  # a one-channel cube stays what it is


def test_a_chunk_keeps_the_whole_cubes_grid():
    job = sfr.ImageJob(*([None] * len(sfr.ImageJob._fields)))._replace(
        name='x.cube.I.iter1', nchan=126,
        spectral={'nchan': 126, 'start': '216.6771904376GHz', 'width': '3.9058405MHz', 'restfreq': ['1Hz']})
    chunk = sfr.chunk_job(job, 2, 64, 31)
    assert chunk.name == 'x.cube.I.iter1.chunk002' and chunk.nchan == 31 and chunk.spectral['nchan'] == 31
    assert chunk.spectral['width'] == '3.9058405MHz' and chunk.spectral['restfreq'] == ['1Hz']
    assert abs(sfr.hz_of(chunk.spectral['start']) - (216.6771904376e9 + 64 * 3.9058405e6)) < 0.1
    # tclean moved the whole cube's start (by half a native channel): the chunks follow the cube it made
    moved = sfr.chunk_job(job, 1, 32, 32, start_hz=216677678667.69)
    assert abs(sfr.hz_of(moved.spectral['start']) - (216677678667.69 + 32 * 3.9058405e6)) < 0.1
    assert job.spectral['start'] == '216.6771904376GHz'  # the whole cube's job is unchanged


def cube(imsize, nchan):
    return sfr.ImageJob(*([None] * len(sfr.ImageJob._fields)))._replace(
        name='x.cube.I.iter1', nchan=nchan, imsize=[imsize, imsize], deconvolver='hogbom',
        spectral={'nchan': nchan, 'start': '216.6771904376GHz', 'width': '3.9058405MHz'})


def test_a_cube_that_does_not_fit_is_split_in_chunks_that_fit_and_no_larger_for_a_longer_cube():
    gb = 1000 ** 3
    job = cube(1000, 1000)
    assert sfr.job_memory(job) > 4 * gb  # 0.5 GB + 24 x 4 bytes x 10^6 pixels x 1000 channels = 96.5 GB
    ranges = sfr.cube_chunking(job, split='auto', limit=4 * gb)
    largest = max(count for _first, count in ranges)
    # each chunk fits, and one more channel would not: the chunks are as large as the memory allows
    assert sfr.job_memory(job._replace(nchan=largest)) <= 4 * gb
    assert sfr.job_memory(job._replace(nchan=largest + 2)) > 4 * gb
    assert sum(count for _f, count in ranges) == 1000 and len(ranges) == -(-1000 // largest)
    # four times the channels: four times the chunks, none larger (the memory per worker stays)
    longer = sfr.cube_chunking(cube(1000, 4000), split='auto', limit=4 * gb)
    assert max(count for _f, count in longer) <= largest and len(longer) >= 4 * len(ranges) - 1
    # it fits: made whole, unless chunks are asked for (at least N, for the workers)
    assert sfr.cube_chunking(cube(100, 64), split='auto', limit=4 * gb) is None
    assert sfr.cube_chunking(cube(100, 64), split=2, limit=4 * gb) == [(0, 32), (32, 32)]
    assert sfr.cube_chunking(cube(100, 64), split=3, limit=None) == [(0, 22), (22, 21), (43, 21)]
    assert sfr.cube_chunking(job, split='no', limit=4 * gb) is None  # never: the plan refuses it
    # not even three channels fit: [] (the plan refuses in one line)
    assert sfr.cube_chunking(cube(20000, 100), split='auto', limit=2 * gb) == []
    # not a cube: never split
    assert sfr.cube_chunking(job._replace(spectral=None), split=4, limit=gb) is None


def test_a_long_split_cube_gets_several_chunks_per_worker_within_the_start_up_budget():
    # --split-cube 2 on 2 workers: a kill would lose half of a long cube; 8 chunks a worker lose at most one each
    long_cube = cube(1000, 1000)  # job_seconds: about 2.6 hours
    ranges = sfr.cube_chunking(long_cube, split=2, limit=None, workers=2)
    assert len(ranges) == 16 == 8 * 2 and sum(count for _f, count in ranges) == 1000
    assert len(sfr.cube_chunking(long_cube, split=2, limit=None, workers=1)) == 8
    # the chunks' start-ups (1.6 s each) within 5 % of the cube's estimated time: fewer for a shorter cube
    shorter = cube(300, 200)  # about 178 s: 5 chunks' start-ups fit in 5 %
    assert len(sfr.cube_chunking(shorter, split=2, limit=None, workers=2)) == 5
    assert 5 * 1.6 <= 0.05 * sfr.job_seconds(shorter) < 6 * 1.6
    # bench_split_run's cube (about 24 s estimated): as asked, no more
    assert len(sfr.cube_chunking(cube(144, 61), split=4, limit=None, workers=2)) == 4
    # a cube that fits stays whole (one tclean's product), however long
    assert sfr.cube_chunking(long_cube, split='auto', limit=None, workers=2) is None
    # the memory's chunks, when more, are kept
    gb = 1000 ** 3
    assert len(sfr.cube_chunking(long_cube, split='auto', limit=4 * gb, workers=2)) == len(
        sfr.cube_chunking(long_cube, split='auto', limit=4 * gb))


def test_frequencies_are_read_in_their_units():
    assert sfr.hz_of('216.6771904376GHz') == pytest.approx(216.6771904376e9)
    assert sfr.hz_of('3.9058405MHz') == pytest.approx(3.9058405e6)
    assert sfr.hz_of('976.5kHz') == pytest.approx(976.5e3) and sfr.hz_of('12Hz') == 12.0
    with pytest.raises(ValueError):
        sfr.hz_of('5km/s')
