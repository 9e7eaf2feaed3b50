"""--update: provenance records beside each product, and a rerun that remakes only what changed.

One simulated 4-spw delivery, imaged once (--contsub_fast --image, cubes), then cont.dat's ranges of
one spw are edited and the run repeated with --update: only that spw's cube is remade, the other
cubes' files are untouched, and the output and the report say why.  Real CASA, no mocks.
"""
import json
import os
import re
from pathlib import Path

import pytest

from conftest import user_ms_digests

FOUR_SPWS = dict(n_ebs=2, spw_ids=(25, 27, 29, 31), nchan=32, n_antennas=12, line_fwhm_kms=8.0)
IMAGE = ['--contsub_fast', '--image', 'imgs', '--specmodes', 'cube', '--imsize', '64']
OUS = 'oussid.IRAS_16293-2422_sci'


def cube_stem(spw):
    return '%s.spw%d.cube.I' % (OUS, spw)


def file_states(folder):
    """{name: (inode, mtime ns)} of every file below folder: changes when a file is rewritten or replaced."""
    states = {}
    for root, _dirs, files in os.walk(str(folder)):
        for name in files:
            info = os.stat(os.path.join(root, name))
            states[os.path.relpath(os.path.join(root, name), str(folder))] = (info.st_ino, info.st_mtime_ns)
    return states


def narrow_first_range(contdat, spw):
    """cont.dat with the first range of spw's block a quarter narrower (its upper edge moved down)."""
    lines = contdat.read_text().splitlines()
    start = lines.index('SpectralWindow: %d' % spw)
    index = next(i for i in range(start + 1, len(lines)) if 'GHz' in lines[i])
    low, high = [float(x) for x in re.match(r'([0-9.]+)~([0-9.]+)GHz', lines[index]).groups()]
    lines[index] = '%.10f~%.10fGHz LSRK' % (low, high - 0.25 * (high - low))
    contdat.write_text('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def updated(delivery_cache, tmp_path_factory):
    """The delivery after a first run, after a dry run and an --update run with spw 25's ranges narrowed
    and spw 27's record damaged; with what each run printed and the files' states between runs."""
    from simulate_delivery import cached_delivery, copy_delivery
    from conftest import run_command, SCRIPT
    import sys

    def run(*args):
        return run_command([sys.executable, str(SCRIPT)] + list(args), cwd=delivery, timeout=900)
    delivery = tmp_path_factory.mktemp('update') / 'calibrated_final'
    copy_delivery(cached_delivery(delivery_cache, **FOUR_SPWS), delivery)
    first = run(*IMAGE)
    assert first.returncode == 0, first.stderr
    images, ms_dir = delivery / 'imgs', delivery / 'measurement_sets'
    before = {'images': file_states(images), 'ms': file_states(ms_dir), 'digests': user_ms_digests(delivery)}
    refused = run(*IMAGE)
    narrow_first_range(delivery / 'caltables' / 'cont.dat', 25)
    first_record = json.loads((images / (cube_stem(25) + '.provenance.json')).read_text())
    (images / (cube_stem(27) + '.provenance.json')).write_text('{"format": 1, "inputs": [')  # half a record
    dry = run(*(IMAGE + ['--update', '--dry-run']))
    after_dry = file_states(images)
    update = run(*(IMAGE + ['--update']))
    return dict(delivery=delivery, images=images, ms_dir=ms_dir, first=first, refused=refused, dry=dry,
                first_record=first_record,
                update=update, before=before, after_dry=after_dry, after=file_states(images),
                ms_after=file_states(ms_dir))


def test_every_product_records_what_it_was_made_from(updated):
    images, ms_dir = updated['images'], updated['ms_dir']
    for spw in (29, 31):
        record = json.loads((images / (cube_stem(spw) + '.provenance.json')).read_text())
        assert record['engine'] == 'casa' and record['engine_version'].startswith('6.')
        assert record['datacolumn'] == 'data' and record['spws'] == [spw] and record['seconds'] > 0
        assert record['parameters']['imsize'] == [64, 64] and record['parameters']['robust'] == 0.5
        assert sorted(record['parameters']['vis']) == sorted(p.name for p in ms_dir.glob('*_targets_line.ms'))
        for item in record['inputs']:  # a line MS: what it was made from and its spw's fit, nothing else
            assert item['made_from']['path'].endswith('_targets.ms') and item['method'] == 'uvcontsub'
            assert item['continuum']['spw'] == spw and set(item['continuum']['fields']) == {'IRAS_16293-2422'}
        assert all((images / name).exists() for name in record['files']) and len(record['files']) == 6
    for line in ms_dir.glob('*_targets_line.ms'):
        record = json.loads(Path(str(line) + '.provenance.json').read_text())
        assert record['method'] == 'uvcontsub' and sorted(record['continuum'][n]['spw'] for n in record['continuum']) \
            == [25, 27, 29, 31]
        assert record['source']['path'] == str((ms_dir / line.name.replace('_line.ms', '.ms')).resolve())
        assert set(record['identity']['main_files']) and len(record['source']['table_dat_sha1']) == 40
    assert not list(updated['delivery'].rglob('.*partial*')), 'a temporary was left behind'


def test_without_update_an_earlier_runs_products_are_never_overwritten(updated):
    refused = updated['refused']
    assert refused.returncode == 1
    error, = [line for line in refused.stderr.splitlines() if line.startswith('ERROR')]
    assert 'uid*_targets_line.ms' in error and '--overwrite-line' in error


def test_dry_run_says_what_would_be_kept_and_remade_with_the_expected_time(updated):
    dry = updated['dry']
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert re.search(r'remake  %s: spw 25: cont.dat ranges changed for IRAS_16293-2422 \(uid___A002_X[0-9a-f]+_X'
                     r'[0-9a-f]+: channels [0-9~;]+ → [0-9~;]+(; uid[^:]+: channels [0-9~;]+ → [0-9~;]+)?\) \(took '
                     r'[0-9]+ s last time\)$' % re.escape(cube_stem(25)), out, re.M), out
    assert re.search(r'remake  %s: its provenance record .* cannot be read' % re.escape(cube_stem(27)), out), out
    for spw in (29, 31):
        assert 'kept    %s' % cube_stem(spw) in out
    assert re.search(r'expected imaging time: about [0-9]+ s \(from the durations recorded by earlier runs; 1 image '
                     r'without one not counted\)', out), out
    assert updated['after_dry'] == dict(updated['before']['images'], **{
        cube_stem(27) + '.provenance.json': updated['after_dry'][cube_stem(27) + '.provenance.json']}), \
        'a dry run changed the images folder'


def test_update_remakes_only_the_cubes_whose_inputs_changed(updated):
    update, images = updated['update'], updated['images']
    assert update.returncode == 0, update.stderr
    out = update.stdout
    before, after = updated['before']['images'], updated['after']
    for spw in (29, 31):  # the line MSes were refitted, but not in these spws: the cubes are kept, untouched
        names = [name for name in before if name.startswith(cube_stem(spw))]
        assert len(names) > 20 and all(after[name] == before[name] for name in names), spw
    for spw in (25, 27):
        pbcor = cube_stem(spw) + '.pbcor.fits'
        assert after[pbcor] != before[pbcor], 'spw %d was not remade' % spw
        record = json.loads((images / (cube_stem(spw) + '.provenance.json')).read_text())
        assert record['files'] and all((images / name).exists() for name in record['files'])
    def fitted_channels(record):
        total = 0
        for item in record['inputs']:
            for part in item['continuum']['fields']['IRAS_16293-2422']['chan'].split(';'):
                low, high = part.split('~')
                total += int(high) - int(low) + 1
        return total
    record = json.loads((images / (cube_stem(25) + '.provenance.json')).read_text())
    assert fitted_channels(record) < fitted_channels(updated['first_record']), 'the record has the new, narrower fit'
    for line in updated['ms_dir'].glob('*_targets_line.ms'):  # a line MS kept is untouched, one made is new
        kept = '--update: %s kept' % line.name in out
        files = [name for name in updated['before']['ms'] if name.startswith(line.name + os.sep)]
        assert kept == all(updated['ms_after'][name] == updated['before']['ms'][name] for name in files), line.name
    assert '--update: 2 images kept, 2 to make' in out
    assert len(re.findall(r'\[[12]/2\] %s' % re.escape(OUS), out)) == 2, 'only two tclean runs'
    assert sorted(after) == sorted(before), 'the same files, no leftovers'
    targets = dict((name, digest) for name, digest in user_ms_digests(updated['delivery']).items()
                   if name.endswith('_targets.ms'))
    assert targets == dict((name, digest) for name, digest in updated['before']['digests'].items()
                           if name.endswith('_targets.ms')), 'a user MS changed'
    assert not list(updated['delivery'].rglob('.*partial*'))


def test_the_report_says_which_were_kept_and_why_the_others_were_remade(updated):
    from test_report import Page, run_pages
    page = run_pages(updated['delivery'])[-1]
    page.assert_self_contained()
    assert page.row(cube_stem(29))[1] == 'kept: unchanged'
    assert page.row(cube_stem(25))[1].startswith('remade: spw 25: cont.dat ranges changed for IRAS_16293-2422')
    images = page.raw.split('<h2>Images</h2>', 1)[1]
    for spw in (25, 27, 29, 31):  # kept or remade, every requested image is in the images table, with its picture
        assert '>%s</td>' % cube_stem(spw) in images and 'assets/%s.png' % cube_stem(spw) in images
    assert isinstance(page, Page)


def test_an_unchanged_rerun_keeps_everything_and_runs_no_tclean(updated, run_script):
    again = run_script(*(IMAGE + ['--update']), delivery=updated['delivery'])
    assert again.returncode == 0, again.stderr
    assert '--update: 4 images kept, 0 to make' in again.stdout
    assert 'nothing to image: 4 images kept' in again.stdout
    assert 'subtracting the continuum of 0 execution blocks' in again.stdout
    assert file_states(updated['images']) == updated['after'], 'a run that keeps everything changes nothing'


def test_update_never_replaces_a_file_no_record_claims(delivery_factory, run_script):
    delivery = delivery_factory(**FOUR_SPWS)
    images = delivery / 'imgs'
    images.mkdir()
    users = images / (cube_stem(25) + '.pbcor.fits')
    users.write_bytes(b'SIMPLE  = T  (the user\'s own file)')
    result = run_script(*(IMAGE + ['--update']), delivery=delivery)
    assert result.returncode == 1
    error, = [line for line in result.stderr.splitlines() if line.startswith('ERROR')]
    assert users.name in error and 'no record says this tool made' in error and 'move it away' in error
    assert users.read_bytes().startswith(b'SIMPLE'), 'the user\'s file was touched'
    assert not list((delivery / 'measurement_sets').glob('*_line.ms')), 'it stopped before the first long step'
