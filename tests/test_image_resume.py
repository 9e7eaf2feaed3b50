"""Resume of --image (CASA engine): a run stopped after some images were finished keeps them, and the same
command again makes only the missing ones (issue 28).

Each image a run finishes is moved with its record into working_reprocess/imaging-finished/<image>/ (the
folder gets its name when complete); a run killed later (SIGKILL here: nothing of the run can clean up)
leaves them; the next run compares each record with what it would make now and keeps the equal ones.
"""
import json
import re

import scriptForReprocessing as sfr
from conftest import start_paused

SMALL = dict(nchan=32, n_antennas=25, line_fwhm_kms=8.0, noise_jy=0.2, n_ebs=1, offset_arcsec=(4.0, -3.0))
COMMAND = ('--image', '--specmodes', 'mfs,cont', '--jobs', '1')


def killed_after_the_first_image(delivery):
    process = start_paused(delivery, 'image-finished', *COMMAND)
    process.kill()
    process.communicate()
    finished = sorted((delivery / sfr.WORK_DIR_NAME / 'imaging-finished').iterdir())
    assert len(finished) == 1 and (finished[0] / 'finished.provenance.json').is_file(), finished
    assert not (delivery / 'images').exists()
    return finished[0]


def test_the_same_command_after_a_kill_makes_only_the_missing_images(delivery_factory, run_script):
    delivery = delivery_factory(**SMALL)
    kept = killed_after_the_first_image(delivery)
    done = run_script('--delivery', delivery, *COMMAND, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ('  1 image finished by a run that was stopped, with the same inputs and parameters: kept, not made '
            'again (%s)' % kept.name) in done.stdout, done.stdout
    assert re.search(r'\n  2 images to make in 1 process: about ', done.stdout), done.stdout
    assert '[%s]' % kept.name not in done.stdout  # no tclean of it: its progress lines are absent
    made = [line for line in done.stdout.splitlines() if re.match(r'  \[\d/\d\] oussid', line)]
    assert len(made) == 2 and all(kept.name not in line for line in made), made
    fits = sorted(p.name for p in (delivery / 'images').glob('*.pbcor.fits'))
    assert len(fits) == 3 and any(kept.name.replace('.iter1', '').split('oussid.')[1] in n for n in fits), fits
    assert not (delivery / sfr.WORK_DIR_NAME / 'imaging-finished').exists()


def test_a_run_stopped_while_it_publishes_keeps_every_image_for_the_same_command(delivery_factory, run_script):
    """Publishing (FITS export of every product, then one rename) can take minutes for large cubes: a stop then
    loses no image.  SIGTERM first (the error line says what is kept), then SIGKILL (nothing can clean up)."""
    import signal
    delivery = delivery_factory(**SMALL)
    finished_dir = delivery / sfr.WORK_DIR_NAME / 'imaging-finished'
    for how in (signal.SIGTERM, signal.SIGKILL):
        process = start_paused(delivery, 'fits-written', *COMMAND)
        process.send_signal(how)
        out, err = process.communicate(timeout=300)
        kept = sorted(folder.name for folder in finished_dir.iterdir())
        assert len(kept) == 3 and all((finished_dir / name / 'finished.provenance.json').is_file() for name in kept)
        assert not (delivery / 'images').exists()
        if how == signal.SIGTERM:  # what it had written is removed (after a SIGKILL: by the next run)
            assert not list(delivery.glob('.images.partial*')), sorted(p.name for p in delivery.iterdir())
            assert process.returncode == sfr.EXIT_FAILED and err.strip().splitlines() == [
                'ERROR: stopped by signal 15 (SIGTERM) — 3 finished images kept in %s; run the same command again: '
                'it makes only the rest' % sfr.WORK_DIR_NAME], out + err
        else:
            assert process.returncode == -signal.SIGKILL
    done = run_script('--delivery', delivery, *COMMAND, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '  3 images finished by a run that was stopped, with the same inputs and parameters: kept, not made again' \
        in done.stdout, done.stdout
    assert not re.search(r'clean iterations|dirty image', done.stdout), done.stdout  # no tclean at all
    assert len(list((delivery / 'images').glob('*.pbcor.fits'))) == 3
    assert not finished_dir.exists() and not list(delivery.glob('.images.partial*'))


def test_a_finished_image_whose_parameters_changed_is_made_again(delivery_factory, run_script):
    delivery = delivery_factory(**SMALL)
    kept = killed_after_the_first_image(delivery)
    record_path = kept / 'finished.provenance.json'
    record = json.loads(record_path.read_text())
    record['parameters']['robust'] = -1.0  # as if made with another --robust
    record_path.write_text(json.dumps(record))
    done = run_script('--delivery', delivery, *COMMAND, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'removed 1 image a stopped run left in imaging-finished that this run does not make as they are' \
        in done.stdout, done.stdout
    assert re.search(r'\n  3 images to make in 1 process: about ', done.stdout), done.stdout
    assert len(list((delivery / 'images').glob('*.pbcor.fits'))) == 3


def test_a_kept_image_keeps_the_channels_cube_health_redid_in_the_report(delivery_factory, run_script):
    """The record of a finished image holds the channels cube health cleaned again (an mfs image has none: here
    they are written into its record as cube health writes them), and the run that keeps the image reports them:
    in the image's row of the table (its record in the images folder) and on the report page."""
    delivery = delivery_factory(**SMALL)
    kept = killed_after_the_first_image(delivery)
    record_path = kept / 'finished.provenance.json'
    record = json.loads(record_path.read_text())
    assert record['redone_channels'] == [], record  # written by the run that made it
    why = 'left uncleaned (residual peak 0.0123 Jy/beam, no clean component) where others cleaned'
    record['redone_channels'] = [[0, why]]
    record_path.write_text(json.dumps(record))
    done = run_script('--delivery', delivery, *COMMAND, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'kept, not made again (%s)' % kept.name in done.stdout, done.stdout
    stem = sfr.ImageProduct.from_working_name(kept.name + '.image').archive_stem('oussid')
    row = json.loads((delivery / 'images' / (stem + '.provenance.json')).read_text())['table_row']
    assert row['redone_channels'] == [[0, why]], row
    pages = sorted((delivery / sfr.WORK_DIR_NAME / 'report').glob('run-*/index.html'))
    assert why in pages[-1].read_text(), pages


def test_a_new_images_folder_gets_its_name_with_the_records_of_its_images(delivery_factory):
    """The provenance records (what --update reads) are written into the folder before it is named: a kill just
    after the rename leaves no image without its record (a SIGTERM at a random moment found that window)."""
    delivery = delivery_factory(**SMALL)
    process = start_paused(delivery, 'renamed', *COMMAND)
    process.kill()
    process.communicate()
    images = delivery / 'images'
    stems = sorted(path.name[:-len('.pbcor.fits')] for path in images.glob('*.pbcor.fits'))
    records = sorted(path.name[:-len('.provenance.json')] for path in images.glob('*.provenance.json'))
    assert len(stems) == 3 and records == stems, (stems, records)
    for stem in stems:
        record = json.loads((images / (stem + '.provenance.json')).read_text())
        assert stem + '.pbcor.fits' in record['files'] and all((images / name).exists() for name in record['files'])
