"""--contsub_fast with CASA uvcontsub, fitting the cont.dat ranges (Cycle 10+ deliveries, or --refit), and --check.

Real CASA on simulated deliveries, run as a user runs the script.  What a user gets:
uid*_targets_line.ms with the continuum gone to the noise and the line kept, the same fields,
spws and rows, the user's uid*_targets.ms byte-identical, before/after spectra to look at, and
a cont.dat with an error refused, with its line, before anything is written.
"""
import math
import os
import time
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import md5_tree, mean_spectrum, start_paused, truth_of, user_ms_digests

TWO_EBS = dict(n_ebs=2)


def ms_dir(delivery):
    return Path(delivery) / 'measurement_sets'


def listing(delivery):
    return sorted(p.name for p in ms_dir(delivery).iterdir())


def read(casa, path, column=None):
    table = casa.casatools.table()
    table.open(str(path))
    try:
        return table.nrows() if column is None else table.getcol(column)
    finally:
        table.close()


def line_free_channels(fitspw, spw_id):
    """Channels of spw_id in the simulator's truth, e.g. '25:2~12;49~59,27:4~15;50~61'."""
    for part in fitspw.split(','):
        spw, ranges = part.split(':')
        if int(spw) == spw_id:
            return [c for r in ranges.split(';') for c in range(int(r.split('~')[0]), int(r.split('~')[1]) + 1)]
    raise AssertionError('spw %d not in %s' % (spw_id, fitspw))


def assert_continuum_gone_and_line_kept(casa, delivery, truth):
    for eb in truth['ebs']:
        targets = Path(delivery) / eb['ms']
        line = sfr.line_ms_path(targets)
        assert read(casa, line) == read(casa, targets) == eb['rows'], 'rows were lost or added'
        assert sorted(set(read(casa, line, 'FIELD_ID'))) == sorted(set(read(casa, targets, 'FIELD_ID')))
        assert sfr.spws_with_data(casa, line) == sfr.spws_with_data(casa, targets)
        for spw in eb['spws']:
            after, samples = mean_spectrum(casa, line, spw['id'])
            before, _ = mean_spectrum(casa, targets, spw['id'])
            free = line_free_channels(list(eb['fitspw'].values())[0], spw['id'])
            sigma_of_mean = truth['noise_jy'] / math.sqrt(samples * len(free))
            assert abs(numpy.mean(before.real[free]) - truth['continuum_jy']) < 0.1 * truth['continuum_jy']
            assert abs(numpy.mean(after.real[free])) < 3 * sigma_of_mean, 'continuum left in the line-free channels'
            peak = after.real[int(round(spw['line_topo_channel']))]
            assert abs(peak - truth['line_peak_jy']) < 0.05 * truth['line_peak_jy'], 'the line lost its peak'


def test_contsub_fast_fits_cont_dat_removes_the_continuum_keeps_the_line_and_leaves_the_user_ms_alone(
        delivery_factory, run_script, casa):
    delivery = delivery_factory(**TWO_EBS)
    before = user_ms_digests(delivery)
    done = run_script('--contsub_fast', '--jobs', '1', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert ('method: fitting the continuum from caltables/cont.dat with CASA uvcontsub: caltables/ holds no '
            '*uvcont.tbl') in done.stdout
    assert_continuum_gone_and_line_kept(casa, delivery, truth_of(delivery))
    after = user_ms_digests(delivery)
    assert {name: after[name] for name in before} == before, 'a user MS changed'
    assert [name for name in listing(delivery) if name.startswith('.')] == [], 'a temporary output was left'
    spectra = sorted(p.name for p in (delivery / 'working_reprocess' / 'report' / 'spectra').glob('*.svg'))
    assert spectra == ['IRAS_16293-2422_spw25.svg', 'IRAS_16293-2422_spw27.svg']
    assert 'spectra before/after (2 SVG, one per field and spw): working_reprocess/report/spectra/' in done.stdout
    for eb in truth_of(delivery)['ebs']:
        assert 'fit order 1' in done.stdout and '%s: field IRAS_16293-2422 spw 25: channels ' % eb['uid'] in done.stdout


def test_two_processes_give_exactly_the_serial_result_with_readable_output(delivery_factory, run_script, casa):
    serial, parallel = delivery_factory(**TWO_EBS), delivery_factory(**TWO_EBS)
    assert run_script('--contsub_fast', '--jobs', '1', delivery=serial).returncode == 0
    done = run_script('--contsub_fast', '--jobs', '2', delivery=parallel)
    assert done.returncode == 0, done.stderr
    assert 'subtracting the continuum of 2 execution blocks in 2 processes' in done.stdout
    progress = [line for line in done.stdout.splitlines() if line.startswith('  [uid___')]
    assert len(progress) == 4 and all('] uvcontsub: ' in l or '] continuum subtracted in ' in l for l in progress)
    assert len(list((parallel / 'working_reprocess' / 'logs').glob('casa-*-worker*.log'))) == 2
    for name in listing(serial):
        if name.endswith('_line.ms'):
            for column in ('DATA', 'FLAG', 'TIME', 'ANTENNA1', 'DATA_DESC_ID', 'FIELD_ID'):
                assert numpy.array_equal(read(casa, ms_dir(serial) / name, column),
                                         read(casa, ms_dir(parallel) / name, column)), column
    assert listing(serial) == listing(parallel)


def write_contdat(delivery, text):
    path = Path(delivery) / 'caltables' / 'cont.dat'
    path.write_text(text)
    return path


def ghz_ranges(truth, field, spw, frame='lsrk_ghz'):
    return ['%.10f~%.10fGHz LSRK' % tuple(pair) for pair in truth['contdat_ranges'][field][str(spw)][frame]]


@pytest.mark.parametrize('mistake, where, message', [
    ('outside', 'caltables/cont.dat:5: error: 230.000000~230.100000GHz LSRK lies outside spw 25',
     'caltables/cont.dat has 1 error (listed above) — correct it and run again; nothing was written'),
    ('comment', 'caltables/cont.dat:5: error: "# old: 216.9~217.0GHz LSRK" starts with "#", but cont.dat has no '
                'comments (the pipeline would read the line as a field name) — delete the line',
     'caltables/cont.dat has 1 error (listed above) — correct it and run again; nothing was written'),
])
def test_a_cont_dat_error_stops_the_run_before_anything_is_written(delivery_factory, run_script, mistake, where,
                                                                   message):
    delivery = delivery_factory(**TWO_EBS)
    truth = truth_of(delivery)
    good = ghz_ranges(truth, 'IRAS_16293-2422', 25)
    bad = '230.0~230.1GHz LSRK' if mistake == 'outside' else '# old: 216.9~217.0GHz LSRK'
    write_contdat(delivery, '\n'.join(['Field: IRAS_16293-2422', '', 'SpectralWindow: 25', good[0], bad, good[1],
                                       '', 'SpectralWindow: 27'] + ghz_ranges(truth, 'IRAS_16293-2422', 27)) + '\n')
    before = user_ms_digests(delivery)
    done = run_script('--contsub_fast', '--jobs', '2', delivery=delivery)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == 'ERROR: ' + message
    if where:
        assert where in done.stdout
    assert user_ms_digests(delivery) == before and listing(delivery) == sorted(before)
    assert not (delivery / 'working_reprocess' / 'report' / 'spectra').exists()


def test_check_lists_every_problem_with_file_line_and_remedy_and_changes_nothing(delivery_factory, run_script):
    delivery = delivery_factory(**TWO_EBS)
    truth = truth_of(delivery)
    spw25, spw27 = ghz_ranges(truth, 'IRAS_16293-2422', 25), ghz_ranges(truth, 'IRAS_16293-2422', 27)
    write_contdat(delivery, '\n'.join([
        'Field: IRAS_16293-2422', 'SpectralWindow: 25'] + spw25 + [    # lines 1-4
        'SpectralWindow: 27'] + spw27 + [                               # 5-7
        'SpectralWindow: 33', 'NONE',                                   # 8-9
        'Field: IRAS_16293', 'SpectralWindow: 25', 'NONE',              # 10-12
        'Field: IRAS_16293-2422', 'SpectralWindow: 25'] + spw25 + [     # 13-16
        '216.90~216.96GHz LSRK',                                        # 17: overlaps, reaches beyond
        'SpectralWindow: 27', '200.0~200.5GHz LSRK']) + '\n')          # 18-19: outside
    before = user_ms_digests(delivery)
    done = run_script('--check', delivery=delivery)
    assert done.returncode == 1
    out = done.stdout
    for expected in ('caltables/cont.dat:10: error: field "IRAS_16293" is in none of the measurement sets (they have '
                     'IRAS_16293-2422) — correct the name or delete its block',
                     'caltables/cont.dat:13: warning: field "IRAS_16293-2422" appears again (first at line 1)',
                     'caltables/cont.dat:17: warning: 216.900000~216.960000GHz LSRK reaches beyond spw 25',
                     'caltables/cont.dat:17: warning: in spw 25, 216.900000~216.960000GHz LSRK overlaps',
                     'caltables/cont.dat:19: error: 200.000000~200.500000GHz LSRK lies outside spw 27'):
        assert expected in out, expected
    assert 'no spectral window numbered 33' not in out, 'the replaced first block is not checked'
    assert done.stderr.strip().splitlines()[-1].startswith('ERROR: caltables/cont.dat has 2 errors')
    assert user_ms_digests(delivery) == before and listing(delivery) == sorted(before)

    write_contdat(delivery, '\n'.join(['Field: IRAS_16293-2422', 'SpectralWindow: 25'] + spw25 + [
        'SpectralWindow: 33', 'NONE']) + '\n')
    done = run_script('--check', delivery=delivery)
    assert 'caltables/cont.dat:5: error: field "IRAS_16293-2422": no spectral window numbered 33 in both execution ' \
           'blocks (it has spws 25, 27) — correct the spw number or delete the block' in done.stdout

    write_contdat(delivery, '\n'.join(['Field: IRAS_16293-2422', 'SpectralWindow: 25'] + spw25) + '\n')
    done = run_script('--check', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'note: spw 27 (X1189462395#ALMA_RB_06#BB_2#SW-01#FULL_RES) is in no cont.dat block in both execution ' \
           'blocks: it is left out of the line MSes' in done.stdout
    assert 'caltables/cont.dat: no errors, 0 warnings' in done.stdout
    assert len([l for l in done.stdout.splitlines() if ': field IRAS_16293-2422 spw 25: channels ' in l]) == 2


def test_fit_orders_all_channel_fits_and_left_out_spws_follow_cont_dat(delivery_factory, run_script, casa):
    delivery = delivery_factory(n_ebs=1, n_fields=2, spw_ids=(25, 27, 29), contdat_version=3)
    truth = truth_of(delivery)
    names = dict((spw['id'], spw['name']) for spw in truth['spws'])
    text = (delivery / 'caltables' / 'cont.dat').read_text()
    heads = dict((int(line.split()[1]), line) for line in text.splitlines() if line.startswith('SpectralWindow:'))
    assert sorted(heads) == [25, 27, 29] and all(heads[i].split()[2] == names[i] for i in heads), 'v3 names'
    first, second = truth['fields'][0]['name'], truth['fields'][1]['name']
    write_contdat(delivery, '\n'.join(
        ['Field: %s' % first, heads[25], 'Flags: LOWBANDWIDTH'] + ghz_ranges(truth, first, 25) +
        [heads[27]] +                                # empty v3 block: NONE, all channels fitted
        ['Field: %s' % second, heads[25]] + ghz_ranges(truth, second, 25) + [heads[27], 'ALLCONT']) + '\n')
    done = run_script('--contsub_fast', delivery=delivery)
    if not sfr.uvcontsub_takes_fitspec(casa):  # CASA 6.4: mstransform fits one selection for all fields
        assert done.returncode == 1 and 'fits one channel selection per spw for every field' in done.stderr
        assert not list((delivery / 'measurement_sets').glob('*_line.ms'))
        return
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert 'field %s spw 25: channels' % first in out and 'fit order 0' in out
    assert 'fit order 0 because of LOWBANDWIDTH (cont.dat:3, as the pipeline does) — remove the flag, or give ' \
           '--fitorder, to change it' in out, out
    assert 'field "%s" spw 27 (%s): NONE — the continuum is fitted over all channels' % (
        first, heads[27].split()[2]) in out
    assert 'field "%s" spw 27 (%s): ALLCONT — the continuum is fitted over all channels' % (
        second, heads[27].split()[2]) in out
    assert 'note: spw 29' in out and 'left out of the line MSes' in out
    line = sfr.line_ms_path(delivery / truth['ebs'][0]['ms'])
    assert sfr.spws_with_data(casa, line) == [25, 27], 'spw 29 has no cont.dat block: not in the line MS'
    assert sorted(set(read(casa, line, 'FIELD_ID'))) == [0, 1]

    done = run_script('--contsub_fast', '--overwrite-line', '--fitorder', '2', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'fit order 0' not in done.stdout and 'fit order 2' in done.stdout


def test_existing_line_mses_are_replaced_only_with_overwrite_line(delivery_factory, run_script, casa):
    delivery = delivery_factory(n_ebs=2, with_line_ms=True)
    lines = sorted(ms_dir(delivery).glob('*_targets_line.ms'))
    stamps = dict((p.name, (p / 'table.dat').stat().st_mtime_ns) for p in lines)
    refused = run_script('--contsub_fast', delivery=delivery)
    assert refused.returncode == 1 and '--overwrite-line' in refused.stderr
    assert dict((p.name, (p / 'table.dat').stat().st_mtime_ns) for p in lines) == stamps
    done = run_script('--contsub_fast', '--overwrite-line', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert all((p / 'table.dat').stat().st_mtime_ns != stamps[p.name] for p in lines), 'not replaced'
    assert [name for name in listing(delivery) if name.startswith('.') or 'replaced' in name] == []
    assert_continuum_gone_and_line_kept(casa, delivery, truth_of(delivery))


def test_a_sigkill_between_two_line_ms_renames_is_rolled_back_whole_by_the_next_run(delivery_factory, run_script):
    """--overwrite-line killed after EB 1's new line MS has its name and before EB 2's: the next run puts
    back both old line MSes (byte-identical) and removes the new one, and says so; never one old, one new."""
    delivery = delivery_factory(n_ebs=2, with_line_ms=True)
    lines = sorted(ms_dir(delivery).glob('*_targets_line.ms'))
    old = dict((p.name, md5_tree(p)) for p in lines)
    process = start_paused(delivery, 'line-published', '--contsub_fast', '--overwrite-line')
    process.kill()
    process.communicate()
    asides = [name for name in listing(delivery) if '.replaced-' in name]
    assert [md5_tree(p) == old[p.name] for p in lines] == [False, True], 'not paused between the two renames'
    assert len(asides) == 1 and asides[0].startswith('.' + lines[0].name), asides

    rerun = run_script('--check', delivery=delivery)
    assert rerun.returncode == 0, rerun.stderr
    names = ', '.join('measurement_sets/' + p.name for p in lines)
    assert 'publishing 2 line outputs together (%s) was interrupted: all are rolled back' % names in rerun.stdout
    assert 'removed the new measurement_sets/%s it had published' % lines[0].name in rerun.stdout
    assert 'put back the old measurement_sets/%s\n' % lines[0].name in rerun.stdout
    assert 'every execution block has its line MS from before that run' in rerun.stdout
    assert dict((p.name, md5_tree(p)) for p in lines) == old, 'a mix of old and new line MSes'
    assert [name for name in listing(delivery) if name.startswith('.')] == []
    assert not (delivery / sfr.JOURNAL_NAME).exists()


def test_a_sigkill_after_the_whole_set_is_published_keeps_the_new_set(delivery_factory, run_script):
    delivery = delivery_factory(n_ebs=2, with_line_ms=True)
    lines = sorted(ms_dir(delivery).glob('*_targets_line.ms'))
    old = dict((p.name, md5_tree(p)) for p in lines)
    process = start_paused(delivery, 'line-set-complete', '--contsub_fast', '--overwrite-line')
    process.kill()
    process.communicate()
    new = dict((p.name, md5_tree(p)) for p in lines)
    assert all(new[name] != old[name] for name in old)
    rerun = run_script('--check', delivery=delivery)
    assert rerun.returncode == 0, rerun.stderr
    assert 'it had published all 2 of' in rerun.stdout and 'the new ones are kept' in rerun.stdout
    assert dict((p.name, md5_tree(p)) for p in lines) == new
    assert [name for name in listing(delivery) if name.startswith('.')] == []


def test_cycle9_tables_are_applied_until_cont_dat_is_edited_and_both_ways_plot_spectra(delivery_factory,
                                                                                      run_script):
    delivery = delivery_factory(n_ebs=2, with_uvcont=True)
    done = run_script('--contsub_fast', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'method: applying the delivered continuum fits caltables/*uvcont.tbl' in done.stdout
    spectra = delivery / 'working_reprocess' / 'report' / 'spectra'
    assert sorted(p.name for p in spectra.glob('*.svg')) == ['IRAS_16293-2422_spw25.svg',
                                                             'IRAS_16293-2422_spw27.svg']
    assert 'by modification times' in done.stdout  # no fingerprint yet: the times decided, and one is recorded
    first_plots = dict((p.name, p.stat().st_mtime_ns) for p in spectra.glob('*.svg'))
    contdat = delivery / 'caltables' / 'cont.dat'
    contdat.write_text(contdat.read_text() + '\n')  # the user edited cont.dat ...
    later = time.time() + 3600
    for table in (delivery / 'caltables').glob('*uvcont.tbl'):  # ... then copied caltables/ with cp -r
        for path in [table] + list(table.rglob('*')):
            os.utime(str(path), (later, later))
    done = run_script('--contsub_fast', '--overwrite-line', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'cont.dat was edited since delivery' in done.stdout and 'by content' in done.stdout, done.stdout
    assert all(p.stat().st_mtime_ns != first_plots[p.name] for p in spectra.glob('*.svg')), 'plots not redone'


def test_without_a_fingerprint_a_newer_cont_dat_counts_as_edited_and_a_touch_alone_does_not_with_one(
        delivery_factory, run_script):
    delivery = delivery_factory(n_ebs=1, with_uvcont=True)
    contdat = delivery / 'caltables' / 'cont.dat'
    later = time.time() + 3600
    os.utime(str(contdat), (later, later))   # no record of the delivered cont.dat: only the times can tell
    done = run_script('--contsub_fast', '--dry-run', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'is newer than the delivered continuum tables' in done.stdout
    # reprocessing_prep.py's record (the delivered content): the same text, only touched, is not an edit
    import scriptForReprocessing as sfr
    (delivery / 'caltables' / sfr.CONTDAT_FINGERPRINT_NAME).write_text(sfr.contdat_fingerprint(contdat) + '\n')
    done = run_script('--contsub_fast', '--dry-run', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'cont.dat is the delivered one, by content' in done.stdout, done.stdout


def test_the_lsrk_channel_frequencies_are_casas_own(delivery_factory, casa):
    """The spectra's axis (a window's CHAN_FREQ times one Doppler factor) equals the ms tool's cvelfreqs at
    the same time, for every field and spw, within 1 Hz (a TOPO axis would be tens of MHz off)."""
    delivery = delivery_factory(**TWO_EBS)
    for ms in sorted(ms_dir(delivery).glob('*_targets.ms')):
        layout = sfr.read_ms_layout(casa, ms)
        pairs = [(ids[0], spw) for ids in layout.fields.values() for spw in layout.spws]
        ours = sfr.lsrk_channel_frequencies(casa, ms, pairs)
        later = sfr.lsrk_channel_frequencies(casa, ms, pairs, seconds=layout.start + 6 * 3600)
        with sfr.opened_tool(casa.casatools.ms(), ms) as tool:
            obstime = sfr.casa_time_text(layout.start)
            for (field_id, spw_id), axis, moved in zip(pairs, ours, later):
                cvel = tool.cvelfreqs(spwids=[spw_id], fieldids=[field_id], obstime=obstime, mode='channel',
                                      outframe='LSRK')
                assert numpy.max(numpy.abs(numpy.asarray(axis) - cvel)) < 1.0, (ms.name, spw_id)
                # six hours later the Earth has turned: the axis moves (by ~ 0.5 km/s)
                assert numpy.max(numpy.abs(numpy.asarray(moved) - cvel)) > 1e4, (ms.name, spw_id)


def test_spectra_show_the_line_at_its_lsrk_frequency_in_every_execution_block(delivery_factory, casa, tmp_path):
    delivery = delivery_factory(**TWO_EBS)
    truth = truth_of(delivery)
    targets = sorted(ms_dir(delivery).glob('*_targets.ms'))
    contdat = sfr.read_contdat(delivery / 'caltables' / 'cont.dat')
    analysis = sfr.analyse_contdat(contdat, targets, casa)
    for ms in targets:
        spectra = sfr.measure_spectra_pair(casa, before_ms=ms, after_ms=ms, requests=sfr.spectrum_requests(
            casa, analysis, ms))
        for spectrum in spectra:
            amplitudes = numpy.array([a for a in spectrum['before']])
            peak_hz = spectrum['frequency_hz'][int(numpy.argmax(amplitudes))]
            expected = truth['line_lsrk_freq_ghz'][str(spectrum['spw_id'])][0] * 1e9
            assert abs(peak_hz - expected) < 1.5e6, 'the line is not at its LSRK frequency'
            assert [tuple(s) for s in spectrum['shade_hz']] == [
                pytest.approx(tuple(r * 1e9 for r in pair)) for pair in
                truth['contdat_ranges']['IRAS_16293-2422'][str(spectrum['spw_id'])]['lsrk_ghz']]
    pictures = sfr.plot_contsub_spectra(before_ms=targets, after_ms=targets, contdat=contdat, out_dir=tmp_path,
                                        casa=casa)
    assert sorted(p.name for p in pictures) == ['IRAS_16293-2422_spw25.svg', 'IRAS_16293-2422_spw27.svg']
    from xml.etree import ElementTree
    for picture in pictures:   # each chart: before and after, one curve per execution block, the ranges shaded
        root = ElementTree.parse(str(picture)).getroot()
        assert len(list(root.iter('{http://www.w3.org/2000/svg}polyline'))) == 2 * len(targets), picture.name
        texts = [t.text for t in root.iter('{http://www.w3.org/2000/svg}text')]
        assert 'LSRK frequency (GHz)' in texts and any(t.startswith('after: uid*_targets_line.ms') for t in texts)


@pytest.mark.parametrize('rows, values_per_row, expected', [
    (3000, 2 * 960, 187),        # the bench's spw at 960 channels: 1/16 of the rows
    (3000, 2 * 240, 187),        # and at 240: still 1/16, so the sample costs the same share of any fit
    (200000, 2 * 3840, 260),     # a large MS: 2e6 values
    (500, 2 * 960, 64),          # a small MS: 64 rows at least
    (40, 2 * 11, 40),            # smaller still: all of them
])
def test_a_spectrum_reads_a_bounded_share_of_the_rows_in_few_windows(rows, values_per_row, expected):
    limit = sfr.sample_rows(rows, values_per_row)
    assert limit == expected
    windows = sfr._time_windows(numpy.arange(rows), limit)
    assert sum(last - first + 1 for first, last in windows) == limit - limit % len(windows)
    assert 1 <= len(windows) <= sfr.SPECTRUM_WINDOWS and windows == sorted(windows)
    if len(windows) > 1:
        assert windows[0][0] == 0 and windows[-1][1] == rows - 1, 'spread over the observation'
    elif limit < rows:
        assert abs(windows[0][0] + windows[0][1] - (rows - 1)) <= 1, 'one window: in the middle'
