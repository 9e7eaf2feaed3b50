"""The pipeline-free engine's imaging heuristics against the ALMA pipeline's own numbers.

The numbers below were recorded from a real pipeline run (pipeline 2026.0.0.0+1377-gfbf19139c1,
CASA 6.7.5.18, ``--image --engine pipeline`` on the simulated delivery PIPELINE_DELIVERY): its
hif_makeimages tclean calls (cell, imsize, start, width, nchan, weighting).  The tests plan the
same delivery with the casa engine's heuristics (real CASA, no pipeline) and must find the same
numbers; a heuristic that drifts from the pipeline's (the beam from the uv coverage instead of a PSF,
another channel grid, other weighting) fails here.  bench/bench_engines.py compares the images.
"""

import pytest

import scriptForReprocessing as sfr
from conftest import requires_pipeline

PIPELINE_VERSION = '2026.0.0.0+1377-gfbf19139c1'
# what bench/bench_engines.py and tests/test_pipeline_end_to_end.py simulate (n_ebs=2, 20 antennas)
PIPELINE_DELIVERY = dict(n_ebs=2, n_antennas=20, seed=1, with_line_ms=True, pipeline_ready=True)


# ---------------------------------------------------------------------------------------------
# pure rules, with the pipeline's own examples
# ---------------------------------------------------------------------------------------------

def test_weighted_intersection_keeps_what_every_range_covers_on_the_grid_of_the_widest_channel():
    # utils.intersect_ranges_by_weight: the grid starts at the lowest edge, steps delta
    assert sfr.intersect_ranges_by_weight([(0.0, 10.0), (2.5, 12.0)], 1.0, 1.0) == (3.0, 10.0)
    assert sfr.intersect_ranges_by_weight([(0.0, 10.0)], 1.0, 1.0) == (0.0, 10.0)
    assert sfr.intersect_ranges_by_weight([(0.0, 1.0), (5.0, 6.0)], 1.0, 1.0) == ()
    # with three EBs, a threshold of 0.6 keeps what two of them cover
    assert sfr.intersect_ranges_by_weight([(0.0, 10.0), (0.0, 10.0), (4.0, 12.0)], 1.0, 0.6) == (0.0, 10.0)


def test_cube_grid_skips_an_edge_channel_and_bins_from_the_second_native_channel():
    # 100 channels of 1 MHz from 100 GHz: 98 channels, the first centred 1.5 channels above the edge
    assert sfr.cube_channel_grid(100e9, 100.1e9, 1e6) == ('100.0015000000GHz', '1.0000000MHz', 98)
    # binned by 4: round(100 / 4 - 2) = 23 channels of 4 MHz, still starting 1.5 *native* channels up
    assert sfr.cube_channel_grid(100e9, 100.1e9, 1e6, 4) == ('100.0015000000GHz', '4.0000000MHz', 23)


def test_repbw_cube_only_when_the_representative_bandwidth_is_over_four_cube_channels():
    assert sfr.representative_nbin(4.0e6, 1.0e6) is None
    assert sfr.representative_nbin(4.1e6, 1.0e6) == 4
    assert sfr.representative_nbin(9.6e6, 1.0e6) == 10
    assert sfr.representative_nbin(9.6e6, 1.0e6, default_nbin=3) is None


def test_cubes_are_weighted_briggsbwtaper_per_channel_and_continuum_briggs():
    assert sfr.cube_weighting('cube') == ('briggsbwtaper', True)
    assert sfr.cube_weighting('repBW') == ('briggsbwtaper', True)
    assert sfr.cube_weighting('mfs') == ('briggs', False)
    assert sfr.cube_weighting('cont') == ('briggs', False)


def test_cell_is_a_fifth_of_the_psf_minor_axis_to_two_digits():
    assert sfr.heuristic_cell_arcsec(sfr.round_beam_arcsec(0.63449)) == 0.13   # 0.634 / 5 = 0.1268
    assert sfr.heuristic_cell_arcsec(0.604) == 0.12
    assert sfr.psf_imaging_cell_arcsec(0.3) == 0.12                               # advise's 0.3 / 2.5


def test_mosaic_overlap_factor_is_the_pipelines():
    """The values of mosaicoverlap.py's own functions (pipeline 2026.0.0.0+1377-gfbf19139c1, primaryBeamArcsec
    and gaussianBeamResponse with fwhmfactor=1.13) for the same pointings."""
    from simulate_delivery import hexagonal_mosaic_offsets
    for offsets, frequency_hz, diameter_m, pipeline in (
            (hexagonal_mosaic_offsets(50, freq_ghz=217.0, dish_m=7.0), 217e9, 7.0, 1.5777471),
            ([(0.0, 0.0), (14.0, 0.0)], 230e9, 12.0, 1.0878547),
            (hexagonal_mosaic_offsets(7, freq_ghz=230.0, dish_m=12.0), 230e9, 12.0, 1.5525906),
            ([(0.0, 0.0)], 230e9, 12.0, 1.0)):
        assert sfr.mosaic_overlap_factor(offsets, frequency_hz, diameter_m) == pytest.approx(pipeline, rel=2e-4)
    # and what the real pipeline logged in hif_makeimages ("Dividing by mosaic overlap improvement factor of
    # 1.552893704986955 ... SPW 25") on bench_engines.py --mosaic 7 (7 pointings, spw 25 at 216.95 GHz)
    seven = hexagonal_mosaic_offsets(7, freq_ghz=217.0)
    assert sfr.mosaic_overlap_factor(seven, 216.95e9, 12.0) == pytest.approx(1.552893704986955, rel=2e-4)


# ---------------------------------------------------------------------------------------------
# the casa engine's plan of the pipeline's delivery, against the pipeline's recorded tclean calls
# ---------------------------------------------------------------------------------------------

# hif_makeimages' iter1 tclean calls of pipeline 2026.0.0.0+1377-gfbf19139c1 on PIPELINE_DELIVERY
RECORDED = {
    'spw25.mfs': dict(cell='0.29arcsec', imsize=[160, 160]),
    'spw27.mfs': dict(cell='0.29arcsec', imsize=[160, 160]),
    'spw25_27.cont': dict(cell='0.29arcsec', imsize=[160, 160]),
    'spw25.cube': dict(cell='0.29arcsec', imsize=[160, 160], start='216.8988455791GHz', width='0.9765193MHz',
                       nchan=58),
    'spw27.cube': dict(cell='0.29arcsec', imsize=[160, 160], start='230.4973221533GHz', width='0.9765229MHz',
                       nchan=58),
    # the representative bandwidth (7.8 MHz) binned from 0.977 MHz channels: nbin 8, the first bin centred on
    # the second native channel, so the same start as the cube's
    'spw25.repBW': dict(cell='0.3arcsec', imsize=[150, 150], start='216.8988455791GHz', width='7.8121544MHz',
                        nchan=5),
}
# its "Final sensitivity estimate" (mJy/beam) of each image's iter1 threshold
RECORDED_SENSITIVITY_MJY = {'spw25.mfs': 0.003804, 'spw27.mfs': 0.003776, 'spw25_27.cont': 0.002680,
                            'spw25.cube': 0.02376}


@pytest.fixture(scope='module')
def planned(delivery_cache, tmp_path_factory, casa):
    """The casa engine's jobs for all four specmodes of PIPELINE_DELIVERY, cells from makePSF."""
    from simulate_delivery import cached_delivery, copy_delivery
    delivery = tmp_path_factory.mktemp('heuristics') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **PIPELINE_DELIVERY), delivery)
    targets = [sfr.read_ms_for_imaging(casa, ms) for ms in sorted(delivery.glob('measurement_sets/*_targets.ms'))]
    lines = [sfr.read_ms_for_imaging(casa, ms) for ms in sorted(delivery.glob('measurement_sets/*_targets_line.ms'))]
    request = sfr.imaging_request(sfr.build_parser().parse_args(['--image', '--engine', 'casa']), delivery)
    work = tmp_path_factory.mktemp('psf')
    beam_for = sfr.psf_beam_finder(casa, request, infos=targets, spw_map=sfr.virtual_spw_map(targets), work_dir=work)
    # the continuum channels of the delivery's cont.dat, found as the image step finds them
    plan = sfr.Plan(None, sfr.Delivery(delivery))
    channels_for, contdat = sfr.continuum_channel_finder(plan, casa)
    jobs, notes = sfr.plan_casa_images(casa, request, targets=targets, lines=lines, contdat=contdat, ous='oussid',
                                       channels_for=channels_for, beam_for=beam_for)
    return {'request': request, 'jobs': {job.name.split('_sci.')[1].replace('.I.iter1', ''): job for job in jobs},
            'notes': notes, 'work': work}


def test_cells_image_sizes_and_cube_grids_are_the_pipelines(planned):
    jobs = planned['jobs']
    assert sorted(jobs) == sorted(RECORDED), planned['notes']
    for key, recorded in sorted(RECORDED.items()):
        job = jobs[key]
        assert job.cell == [recorded['cell']] and job.imsize == recorded['imsize'], (key, job.cell, job.imsize)
        if 'nchan' in recorded:
            got = {name: job.spectral[name] for name in ('start', 'width', 'nchan')}
            assert got == {name: recorded[name] for name in ('start', 'width', 'nchan')}, key
    assert not list(planned['work'].iterdir()), 'the PSFs for the cells were left behind'


def test_cubes_are_weighted_as_the_pipeline_weights_them(planned):
    for key, job in planned['jobs'].items():
        arguments = sfr.tclean_arguments(job, planned['request'], imagename='x')
        cube = key.endswith(('cube', 'repBW'))
        assert arguments['weighting'] == ('briggsbwtaper' if cube else 'briggs'), key
        assert arguments.get('perchanweightdensity', False) is cube, key
        # 12 m, short baselines: hif_makeimages' auto-multithresh values; pbmask 0.3 where the pipeline
        # passes none (a deliberate difference: see AUTOMASK_PB_LEVEL)
        assert (arguments['sidelobethreshold'], arguments['noisethreshold'], arguments['lownoisethreshold'],
                arguments['minbeamfrac'], arguments['pbmask']) == (2.0, 4.25, 1.5, 0.3, 0.3), key
        assert (arguments['negativethreshold'], arguments['growiterations']) == ((15.0, 50) if cube else (0.0, 75))


def test_theoretical_sensitivity_is_the_pipelines(planned, casa):
    for key, recorded in RECORDED_SENSITIVITY_MJY.items():
        sensitivity = sfr.theoretical_sensitivity(casa, planned['jobs'][key], planned['request']) * 1e3
        assert sensitivity == pytest.approx(recorded, rel=0.02), key


# ---------------------------------------------------------------------------------------------
# with the pipeline: both engines side by side (bench/bench_engines.py's comparison), within the goal
# ---------------------------------------------------------------------------------------------

@pytest.mark.pipeline
@requires_pipeline
def test_casa_engine_images_are_the_pipelines_within_the_goal(delivery_cache, tmp_path):
    import sys
    from conftest import REPO, run_command
    from simulate_delivery import cached_delivery, copy_delivery
    sys.path.insert(0, str(REPO / 'bench'))
    import bench_engines
    source = cached_delivery(delivery_cache, **PIPELINE_DELIVERY)
    env, server = bench_engines.display_environment()
    products = {}
    try:
        for engine in ('pipeline', 'casa'):
            delivery = tmp_path / engine / 'calibrated_final'
            copy_delivery(source, delivery)
            result = run_command([sys.executable, str(REPO / 'scriptForReprocessing.py'), '--image', '--engine',
                                  engine], cwd=delivery, env=env, timeout=3600)
            assert result.returncode == 0, result.stdout + result.stderr
            products[engine] = bench_engines.read_products(sfr.load_casa(), delivery / 'images')
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    lines, misses = bench_engines.compare(products['pipeline'], products['casa'])
    assert misses == 0, '\n'.join(lines)
    assert sorted(products['casa']) == ['spw25 cube', 'spw25 mfs', 'spw25 repBW', 'spw25+27 cont', 'spw27 cube',
                                        'spw27 mfs']
