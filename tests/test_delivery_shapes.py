"""Real delivery shapes end to end: --check, --contsub_fast, --calibrated_final(_line) and --image.

Two small deliveries stand for the shapes real ALMA data have and the default ones do not:
  * MULTI: 4 execution blocks, two science targets observed in different spws (a multi-source
    SB), full polarization (XX XY YX YY, the continuum 5 % polarized in XY/YX, the line not), and
    128-channel TDM windows beside 1920- and 3840-channel FDM windows;
  * MOSAIC_7M: ACA 7 m antennas, a 50-pointing hexagonal Nyquist mosaic under one source name,
    the source between pointings;
  * EPHEMERIS: a solar-system target (FIELD with an ephemeris table, radial velocity -20 km/s),
    its line fixed in the SOURCE frame and cont.dat in SOURCE: a tool reading the ranges as LSRK
    would be ~40 channels off, fitting the line;
  * LEFT_OUT: 3 execution blocks of a 2-target SB in which EB 1 observed only target A and EB 3
    only target B (neither has a FIELD row for the other, so a target's field id differs between
    EBs), the targets in spws of their own sharing one (A: 25, 27; B: 27, 29): the first EB has
    no data in spw 29, whose id cont.dat and --spw still use, as the pipeline's virtual spw ids.
What must hold: in every (EB, field, spw, correlation) the continuum is gone and the line kept;
the images have the injected flux at the injected position (within 10 %); the user's
measurement sets are byte-identical.
"""
import json
import math
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import read_image, truth_of, user_ms_digests
from simulate_delivery import hexagonal_mosaic_offsets

MULTI = dict(n_ebs=4, n_antennas=4, n_fields=2, spw_ids=(25, 27, 29, 31), field_spw_ids=[[25, 27], [29, 31]],
             spw_nchan=(128, 1920, 3840, 128), full_polarization=True, integrations_per_scan=2)
# 10 antennas (all the ACA pads of the configuration); a high noise keeps tclean's automasking short
MOSAIC_7M = dict(array='7m', n_antennas=10, n_ebs=1, spw_ids=(25,), nchan=16, integrations_per_scan=1,
                 mosaic_offsets_arcsec=hexagonal_mosaic_offsets(50, freq_ghz=217.0, dish_m=7.0),
                 offset_arcsec=(11.0, 9.5), noise_jy=0.1, line_fwhm_kms=2.0)
# line_fwhm_kms: a 5 km/s line filled so much of the 16-channel (21 km/s) spw that the simulated cont.dat
# kept channels 1 FWHM from its centre, and the mfs image held 6% of the 0.2 Jy line: the continuum came out
# 10-15% bright (imfit 57.4 mJy for 50; single pointings imaged on line-free channels gave 49-52 mJy)

EPHEMERIS = dict(n_ebs=2, n_antennas=12, nchan=64, ephemeris_radvel_kms=-20.0, noise_jy=0.05)

LEFT_OUT = dict(n_ebs=3, n_antennas=8, nchan=32, n_fields=2, spw_ids=(25, 27, 29), field_spw_ids=[[25, 27], [27, 29]],
                eb_fields=[[0], [0, 1], [1]], integrations_per_scan=2)


def channel_list(fitspw, spw_id):
    for part in fitspw.split(','):
        spw, ranges = part.split(':')
        if int(spw) == spw_id:
            return [c for r in ranges.split(';') for c in range(int(r.split('~')[0]), int(r.split('~')[1]) + 1)]
    raise AssertionError('spw %d not in %s' % (spw_id, fitspw))


def pixel_of(coordinates, direction):
    """(x, y) pixel (floats) of a direction {'ra_deg', 'dec_deg'} of truth.json."""
    world = coordinates.referencevalue(format='n')['numeric']
    world[0], world[1] = math.radians(direction['ra_deg']), math.radians(direction['dec_deg'])
    return tuple(coordinates.topixel(list(world))['numeric'][:2])


def channel_frequency(coordinates, channel):
    """(frequency Hz, channel width Hz) of a cube's channel."""
    axis = coordinates.findcoordinate('spectral')
    w, p = axis['world'][0], axis['pixel'][0]
    increment = coordinates.increment(format='n')['numeric'][w]
    frequency = (coordinates.referencevalue(format='n')['numeric'][w]
                 + (channel - coordinates.referencepixel()['numeric'][p]) * increment)
    return frequency, abs(increment)


def correlation_spectra(casa, ms, field_id, spw_id):
    """Mean DATA per correlation and channel over the rows of one field and spw, and the row count."""
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'DATA_DESCRIPTION'))
    try:
        dd_ids = [i for i, s in enumerate(table.getcol('SPECTRAL_WINDOW_ID')) if s == spw_id]
    finally:
        table.close()
    table.open(str(ms))
    try:
        rows = table.query('FIELD_ID==%d AND DATA_DESC_ID IN [%s]' % (field_id, ','.join(map(str, dd_ids))))
        try:
            data = rows.getcol('DATA') if rows.nrows() else None
        finally:
            rows.close()
    finally:
        table.close()
    if data is None:
        return None, 0
    return data.mean(axis=2), data.shape[2]


def assert_continuum_gone_and_line_kept(casa, delivery, truth, *, field_ids=None):
    """Every EB, field (each mosaic pointing) the EB holds, spw of that field and correlation."""
    noise = truth['noise_jy']
    spws_of = {field['name']: field['spw_ids'] for field in truth['fields']}
    checked = 0
    for eb in truth['ebs']:
        targets = Path(delivery) / eb['ms']
        line_ms = sfr.line_ms_path(targets)
        for field in eb['fields']:       # the FIELD rows of this EB's MS (an EB may have left a target out)
            if field_ids is not None and field['field_id'] not in field_ids:
                continue
            for spw_id in spws_of[field['name']]:
                before, rows = correlation_spectra(casa, targets, field['field_id'], spw_id)
                after, after_rows = correlation_spectra(casa, line_ms, field['field_id'], spw_id)
                assert rows and after_rows == rows, (eb['uid'], field['name'], spw_id)
                assert before.shape[0] == len(truth['correlations'])
                free = channel_list(eb['fitspw'][field['name']], spw_id)
                sigma_free = noise / math.sqrt(rows * len(free))
                spw_truth = [s for s in eb['spws'] if s['id'] == spw_id][0]
                line_channels = spw_truth['line_topo_channel_by_field'].get(field['name'], [])
                for corr, name in enumerate(truth['correlations']):
                    where = (eb['uid'][-6:], field['field_id'], spw_id, name)
                    # continuum gone: no mean left in the cont.dat channels, nor at the band edges
                    assert abs(after[corr, free].mean()) < 4 * math.sqrt(2) * sigma_free, where
                    edges = list(range(3)) + list(range(after.shape[1] - 3, after.shape[1]))
                    assert abs(after[corr, edges].mean()) < 4 * noise / math.sqrt(rows * 6) + 0.05 * abs(
                        before[corr, free].mean()), where
                    for channel in line_channels:
                        # the line kept: before minus its continuum, to the fit's accuracy
                        peak = int(round(channel))
                        expected = before[corr, peak] - before[corr, free].mean()
                        assert abs(after[corr, peak] - expected) < 6 * sigma_free + 0.02 * abs(expected), where
                        if name in ('XX', 'YY') and not truth['pb_attenuation_applied']:
                            assert after[corr, peak].real > 0.5 * truth['line_peak_jy'], where
                    checked += 1
    return checked


@pytest.fixture(scope='module')
def multi(delivery_cache, tmp_path_factory):
    from simulate_delivery import cached_delivery, copy_delivery
    delivery = tmp_path_factory.mktemp('multi') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **MULTI), delivery)
    return delivery


def test_multi_target_full_polarization_wide_spws_four_ebs_end_to_end(multi, run_script, casa):
    truth = truth_of(multi)
    before = user_ms_digests(multi)
    check = run_script('--check', delivery=multi)
    assert check.returncode == 0, check.stdout + check.stderr
    for field, spws in (('IRAS_16293-2422', (25, 27)), ('Elias_2-27', (29, 31))):
        for eb in truth['ebs']:
            for spw in spws:
                assert '%s: field %s spw %d: channels' % (eb['uid'], field, spw) in check.stdout
    assert 'field IRAS_16293-2422 spw 29' not in check.stdout and 'field Elias_2-27 spw 25' not in check.stdout
    done = run_script('--contsub_fast', '--jobs', '2', delivery=multi)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'Traceback' not in done.stdout + done.stderr
    # 4 EBs x (2 spws of each of 2 fields) x 4 correlations
    assert assert_continuum_gone_and_line_kept(casa, multi, truth) == 4 * 4 * 4
    with_line = user_ms_digests(multi)
    assert {name: with_line[name] for name in before} == before
    concat = run_script('--calibrated_final', '--calibrated_final_line', delivery=multi)
    assert concat.returncode == 0, concat.stdout + concat.stderr
    # the TDM spw 25 has the frequencies of the calibration window 1: concat files EBs 2-4 there
    assert concat.stdout.count('rows of spw 25 under spw 1 (a calibration window') == 2
    msmd = casa.casatools.msmetadata()
    for name in ('calibrated_final.ms', 'calibrated_final_line.ms'):
        msmd.open(str(multi / 'measurement_sets' / name))
        try:
            assert msmd.nrows() == sum(eb['rows'] for eb in truth['ebs'])
            assert sorted(msmd.spwsforfield('IRAS_16293-2422').tolist()) == [25, 27]
            assert sorted(msmd.spwsforfield('Elias_2-27').tolist()) == [29, 31]
            assert msmd.ncorrforpol(-1).tolist() == [4]
        finally:
            msmd.close()
    assert user_ms_digests(multi) == with_line          # concat reads the targets and line MSes only


def test_spectra_plots_of_four_correlations_per_target(multi):
    pictures = sorted(p.name for p in (multi / sfr.WORK_DIR_NAME / 'report' / 'spectra').glob('*.svg'))
    assert pictures == ['Elias_2-27_spw29.svg', 'Elias_2-27_spw31.svg', 'IRAS_16293-2422_spw25.svg',
                        'IRAS_16293-2422_spw27.svg']


@pytest.fixture(scope='module')
def mosaic(delivery_cache, tmp_path_factory, casa):
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('mosaic7m') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **MOSAIC_7M), delivery)
    before = user_ms_digests(delivery)
    runs = [run_command([sys.executable, str(SCRIPT)] + args, cwd=delivery, timeout=900)
            for args in (['--contsub_fast', '--jobs', '1'], ['--image', '--engine', 'casa', '--specmodes', 'mfs'])]
    return {'delivery': delivery, 'runs': runs, 'before': before, 'after': user_ms_digests(delivery),
            'truth': truth_of(delivery)}


def test_mosaic_of_50_pointings_every_pointing_fitted(mosaic, casa):
    contsub = mosaic['runs'][0]
    assert contsub.returncode == 0, contsub.stdout + contsub.stderr
    truth = mosaic['truth']
    assert len(truth['mosaic_pointings']) == 50 and {f['name'] for f in truth['fields']} == {'IRAS_16293-2422'}
    # one cont.dat block for the source, applied to all 50 field ids
    assert 'field ids %s,' % ','.join(str(i) for i in range(50)) in contsub.stdout
    # the pointings that see the source (the others see noise only, which tells nothing)
    seen = [p['field_id'] for p in truth['mosaic_pointings'] if p['source_separation_arcsec'] < 30]
    assert len(seen) >= 5
    assert assert_continuum_gone_and_line_kept(casa, mosaic['delivery'], truth, field_ids=seen) == 2 * len(seen)


def test_mosaic_image_has_the_flux_at_the_injected_position(mosaic, casa):
    image = mosaic['runs'][1]
    assert image.returncode == 0, image.stdout + image.stderr
    assert ', mosaic' in image.stdout
    truth = mosaic['truth']
    pbcor = sorted((mosaic['delivery'] / 'images').glob('*mfs.I.pbcor.fits'))
    assert len(pbcor) == 1
    pixels, coordinates = read_image(casa, pbcor[0], dropdeg=True)[:2]
    sx, sy = pixel_of(coordinates, truth['fields'][0]['source_direction'])
    x, y = numpy.unravel_index(numpy.nanargmax(pixels), pixels.shape)
    assert abs(x - sx) <= 1.0 and abs(y - sy) <= 1.0, ((x, y), (sx, sy))
    expected = truth['spws'][0]['continuum_jy_at_centre']
    assert pixels[int(round(sx)), int(round(sy))] == pytest.approx(expected, rel=0.10)
    # the image covers every pointing
    for pointing in truth['mosaic_pointings']:
        px, py = pixel_of(coordinates, pointing)
        assert 0 <= px < pixels.shape[0] and 0 <= py < pixels.shape[1]


def test_mosaic_user_measurement_sets_are_byte_identical(mosaic):
    before, after = mosaic['before'], mosaic['after']
    assert {name: after[name] for name in before} == before


def test_ephemeris_target_fits_source_frame_ranges_and_images_on_its_track(delivery_factory, run_script, casa):
    delivery = delivery_factory(**EPHEMERIS)
    truth = truth_of(delivery)
    before = user_ms_digests(delivery)
    check = run_script('--check', delivery=delivery)
    assert check.returncode == 0 and 'no errors, 0 warnings' in check.stdout, check.stdout + check.stderr
    done = run_script('--contsub_fast', '--jobs', '1', delivery=delivery)
    assert done.returncode == 0, done.stdout + done.stderr
    assert assert_continuum_gone_and_line_kept(casa, delivery, truth) == 2 * 2 * 2
    image = run_script('--image', '--engine', 'casa', '--specmodes', 'mfs,cube', '--spw', '25', delivery=delivery,
                       timeout=900)
    assert image.returncode == 0, image.stdout + image.stderr
    source = truth['fields'][0]['source_direction']
    for pattern in ('*mfs.I.pbcor.fits', '*cube.I.pbcor.fits'):
        found = sorted((delivery / 'images').glob(pattern))
        assert len(found) == 1, pattern
        pixels, coordinates = read_image(casa, found[0], dropdeg=True)[:2]
        frame = coordinates.getconversiontype('spectral')
        x, y = (int(round(v)) for v in pixel_of(coordinates, source))
        if pixels.ndim == 2:
            assert numpy.unravel_index(numpy.nanargmax(pixels), pixels.shape) in [(x + i, y + j) for i in (-1, 0, 1)
                                                                                    for j in (-1, 0, 1)]
            assert pixels[x, y] == pytest.approx(truth['spws'][0]['continuum_jy_at_centre'], rel=0.10)
            continue
        # the cube is in the body's rest frame (tclean cubesource): the line at its SOURCE frequency
        assert frame == 'REST', frame
        spectrum = pixels[x, y, :]
        peak = int(numpy.nanargmax(spectrum))
        frequency, width = channel_frequency(coordinates, peak)
        line = truth['spws'][0]['line_lsrk_freq_ghz'][0] * 1e9       # the SOURCE-frame line (truth)
        assert abs(frequency - line) <= width, (frequency, line, width)
        assert spectrum[peak] == pytest.approx(truth['line_peak_jy'], rel=0.10)
    after = user_ms_digests(delivery)
    assert {name: after[name] for name in before} == before


def field_of_each_row(casa, ms):
    """The field name of every row of an MS's main table, by its own FIELD table."""
    table = casa.casatools.table()
    table.open(str(Path(ms) / 'FIELD'))
    try:
        names = list(table.getcol('NAME')) if table.nrows() else []
    finally:
        table.close()
    table.open(str(ms))
    try:
        return [str(names[i]) for i in table.getcol('FIELD_ID')]
    finally:
        table.close()


def field_rows(casa, ms):
    """{field name: rows} of an MS."""
    rows = {}
    for name in field_of_each_row(casa, ms):
        rows[name] = rows.get(name, 0) + 1
    return rows


@pytest.fixture(scope='module')
def left_out(delivery_cache, tmp_path_factory):
    """The LEFT_OUT delivery through every CASA-only step, once for the module: each run and the user's
    MSes' checksums before the first and after each."""
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys
    delivery = tmp_path_factory.mktemp('left_out') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **LEFT_OUT), delivery)
    result = {'delivery': delivery, 'truth': truth_of(delivery), 'digests': [user_ms_digests(delivery)], 'runs': {}}
    for name, args in (('check', ['--check']), ('contsub', ['--contsub_fast', '--jobs', '1']),
                       ('concat', ['--calibrated_final', '--calibrated_final_line']),
                       ('image', ['--image', '--engine', 'casa', '--specmodes', 'mfs,cont,cube', '--imsize', '64'])):
        result['runs'][name] = run_command([sys.executable, str(SCRIPT)] + args, cwd=delivery, timeout=900)
        result['digests'].append(user_ms_digests(delivery))
    return result


def ebs_holding(truth, field_name):
    return [eb for eb in truth['ebs'] if field_name in [f['name'] for f in eb['fields']]]


def test_left_out_target_each_eb_fits_the_targets_it_observed(left_out, casa):
    delivery, truth, runs = left_out['delivery'], left_out['truth'], left_out['runs']
    assert [[f['name'] for f in eb['fields']] for eb in truth['ebs']] == [
        ['IRAS_16293-2422'], ['IRAS_16293-2422', 'Elias_2-27'], ['Elias_2-27']]
    check = runs['check']
    # cont.dat numbers Elias_2-27's spw 29, which the first EB has no data in (it did not observe the target)
    assert check.returncode == 0 and 'no errors, 0 warnings' in check.stdout, check.stdout + check.stderr
    for eb in truth['ebs']:
        held = [f['name'] for f in eb['fields']]
        for field in truth['fields']:
            for spw in field['spw_ids']:
                line = '%s: field %s spw %d: channels' % (eb['uid'], field['name'], spw)
                assert (line in check.stdout) == (field['name'] in held), line
    contsub = runs['contsub']
    assert contsub.returncode == 0, contsub.stdout + contsub.stderr
    # (EB 1: A 25, 27; EB 2: A 25, 27 and B 27, 29; EB 3: B 27, 29) x 2 correlations
    assert assert_continuum_gone_and_line_kept(casa, delivery, truth) == 8 * 2
    for eb in truth['ebs']:
        targets = delivery / eb['ms']
        rows = field_rows(casa, targets)
        # the line MS holds the rows of the targets this EB observed, all of them, and no others
        assert field_rows(casa, sfr.line_ms_path(targets)) == rows
        assert sorted(rows) == sorted(f['name'] for f in eb['fields']) and sum(rows.values()) == eb['rows']
    before, after = left_out['digests'][0], left_out['digests'][2]
    assert {name: after[name] for name in before} == before


def test_left_out_target_concat_holds_every_target_from_the_ebs_that_observed_it(left_out, casa):
    delivery, truth, runs = left_out['delivery'], left_out['truth'], left_out['runs']
    concat = runs['concat']
    assert concat.returncode == 0, concat.stdout + concat.stderr
    # every EB kept its spw ids: the first EB's lack of spw 29 is no renumbering
    assert concat.stdout.count('spectral windows: 25, 27, 29\n') == 2
    assert 'new spw ids' not in concat.stdout
    for name, suffix in (('calibrated_final.ms', '_targets.ms'), ('calibrated_final_line.ms', '_targets_line.ms')):
        ms = delivery / 'measurement_sets' / name
        expected = {}
        for eb in truth['ebs']:
            for field, rows in field_rows(casa, delivery / eb['ms'].replace('_targets.ms', suffix)).items():
                expected[field] = expected.get(field, 0) + rows
        assert field_rows(casa, ms) == expected and sum(expected.values()) == sum(eb['rows'] for eb in truth['ebs'])
        msmd = casa.casatools.msmetadata()
        msmd.open(str(ms))
        try:
            for field in truth['fields']:
                assert sorted(msmd.spwsforfield(field['name']).tolist()) == field['spw_ids'], (name, field['name'])
        finally:
            msmd.close()
        # the rows of each target come from the EBs that observed it (concat gives each input an OBSERVATION_ID)
        table = casa.casatools.table()
        table.open(str(ms))
        try:
            observation_ids = table.getcol('OBSERVATION_ID').tolist()
        finally:
            table.close()
        observations = {}
        for field_name, observation in zip(field_of_each_row(casa, ms), observation_ids):
            observations.setdefault(field_name, set()).add(observation)
        assert observations == {'IRAS_16293-2422': {0, 1}, 'Elias_2-27': {1, 2}}, name
    after_contsub, after = left_out['digests'][2], left_out['digests'][3]
    assert {name: after[name] for name in after_contsub} == after_contsub   # concat reads its inputs only


def test_left_out_target_images_of_each_target_from_the_ebs_that_observed_it(left_out, casa):
    delivery, truth, runs = left_out['delivery'], left_out['truth'], left_out['runs']
    image = runs['image']
    assert image.returncode == 0, image.stdout + image.stderr
    found = sorted(p.name.split('.', 1)[1] for p in (delivery / 'images').glob('*.I.pbcor.fits'))
    expected = []
    for field in truth['fields']:
        name = sfr.sanitize_name(field['name'])
        expected += ['%s_sci.spw%d.%s.I.pbcor.fits' % (name, spw, mode) for spw in field['spw_ids'] for mode in
                     ('mfs', 'cube')]
        expected.append('%s_sci.spw%s.cont.I.pbcor.fits' % (name, '_'.join(str(s) for s in field['spw_ids'])))
    assert found == sorted(expected)
    lines = dict((s['id'], s['line_lsrk_freq_ghz']) for s in truth['spws'])
    for field in truth['fields']:
        holding = sorted(Path(eb['ms']).name for eb in ebs_holding(truth, field['name']))
        for pbcor in sorted((delivery / 'images').glob('*.%s_sci.*.I.pbcor.fits' % sfr.sanitize_name(field['name']))):
            where = pbcor.name
            record = json.loads(Path(str(pbcor).replace('.pbcor.fits', '.provenance.json')).read_text())
            assert sorted(i['name'].replace('_targets_line.ms', '_targets.ms') for i in record['inputs']) == holding
            pixels, coordinates = read_image(casa, pbcor, dropdeg=True)[:2]
            pb = read_image(casa, str(pbcor).replace('.pbcor.fits', '.pb.fits'), dropdeg=True).pixels
            sx, sy = pixel_of(coordinates, field['source_direction'])
            x, y = int(round(sx)), int(round(sy))
            flat = numpy.nan_to_num(pixels * pb)        # the sky without the pb correction: the source is its peak
            if pixels.ndim == 2:
                assert abs(numpy.unravel_index(numpy.argmax(flat), flat.shape)[0] - sx) <= 1.0, where
                assert abs(numpy.unravel_index(numpy.argmax(flat), flat.shape)[1] - sy) <= 1.0, where
                assert pixels[x, y] == pytest.approx(truth['continuum_jy'], rel=0.10), where
                continue
            peak = numpy.unravel_index(numpy.argmax(flat), flat.shape)
            assert abs(peak[0] - sx) <= 1.0 and abs(peak[1] - sy) <= 1.0, where
            spw = int(where.split('.spw')[1].split('.')[0])
            frequency, width = channel_frequency(coordinates, peak[2])
            assert abs(frequency - lines[spw][0] * 1e9) <= width, (where, frequency, lines[spw])
            assert pixels[x, y, peak[2]] == pytest.approx(truth['line_peak_jy'], rel=0.10), where
    assert left_out['digests'][4] == left_out['digests'][3]      # imaging writes into no MS of the user's
