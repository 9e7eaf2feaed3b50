"""Resume of --image (CASA engine): every image a run finishes is kept with its record until the run has
published them all.  A run stopped on the way (SIGKILL, a scheduler's SIGTERM, a failed tclean) leaves the
finished ones in working_reprocess/imaging-finished/<image>/; the same command again takes each one whose
record equals what it would make now (inputs, parameters, CASA version: image_update.expected_record) and
makes only the others.  A folder there gets its final name only once the products and the record are in
it (written under a partial name, then renamed); anything else there is removed.
"""

import os
import shutil
from pathlib import Path

from ..core.fileops import is_partial_name, remove_tree
from ..core.messages import say
from ..run.provenance import image_differences, read_record, write_record

RECORD_NAME = 'finished.provenance.json'
GRID_STAGE = 'grid'  # the record of a split cube's channel grid (cube_split.grid_start_hz): kept, not a product


def save_finished(work_dir, name, finished_dir, record, *, copy=False):
    """Move the products of one image just made (work_dir/<name>.*) into finished_dir/<name>/, record last; copy:
    copied instead (the images are worked on further: a chunk kept before its cube-health pass)."""
    work_dir, finished_dir = Path(work_dir), Path(finished_dir)
    folder = finished_dir / name
    partial = finished_dir / ('.%s.partial-%d' % (name, os.getpid()))
    if partial.exists():
        remove_tree(partial)
    partial.mkdir(parents=True)
    files = sorted(path.name for path in work_dir.iterdir() if path.name.startswith(name + '.'))
    for file_name in files:
        if copy:
            source = work_dir / file_name
            (shutil.copytree if source.is_dir() else shutil.copy2)(str(source), str(partial / file_name))
        else:
            os.rename(str(work_dir / file_name), str(partial / file_name))
    write_record(partial / RECORD_NAME, dict(record, files=files))
    if folder.exists():  # an earlier state of the same product (a chunk's dirty image): replaced when the new is whole
        remove_tree(folder)
    os.rename(str(partial), str(folder))


def finished_folder(finished_dir, name):
    """The folder where the finished image name is kept (save_finished), or None when it is not there."""
    folder = Path(finished_dir) / name
    return folder if (folder / RECORD_NAME).is_file() else None


def finished_redone(finished_dir, names):
    """{name: [[channel, why]]} of the channels cube health cleaned again in the finished images of names (as their
    records hold them), only those that had any."""
    redone = {}
    for name in names:
        record = read_record(Path(finished_dir) / name / RECORD_NAME)[0] or {}
        if record.get('redone_channels'):
            redone[name] = [list(item) for item in record['redone_channels']]
    return redone


def resume_finished(finished_dir, records):
    """{name: seconds it took} of the images an earlier, stopped run finished whose record equals this run's
    (records: name -> expected record); every other folder in finished_dir (partial, stale, not asked for) is
    removed."""
    finished_dir = Path(finished_dir)
    found, dropped = kept_folders(finished_dir, records,
                                  lambda recorded, expected: not image_differences(recorded, expected))
    kept = dict((name, recorded.get('seconds')) for name, recorded in found.items())
    if kept:
        say('  %d image%s finished by a run that was stopped, with the same inputs and parameters: kept, not made '
            'again (%s)' % (len(kept), '' if len(kept) == 1 else 's', ', '.join(sorted(kept))))
    if dropped:
        say('  removed %d image%s a stopped run left in %s that this run does not make as they are' % (
            len(dropped), '' if len(dropped) == 1 else 's', finished_dir.name))
    return kept


def kept_for_next_run(finished_dir, chunks_dir):
    """(images, chunks) a stopped run leaves for the same command: the folders of finished images and of split cubes'
    chunks (dirty or cleaned; not a cube's channel grid) that have their final name and their record.  Only
    counted: the next run checks each against what it would make (kept_folders)."""
    def records(directory):
        for folder in (sorted(directory.iterdir()) if directory.is_dir() else []):
            if not is_partial_name(folder.name) and (folder / RECORD_NAME).is_file():
                yield read_record(folder / RECORD_NAME)[0] or {}
    images = sum(1 for _record in records(Path(finished_dir)))
    chunks = sum(1 for cube in (sorted(Path(chunks_dir).iterdir()) if Path(chunks_dir).is_dir() else [])
                 for record in records(cube) if record.get('stage') != GRID_STAGE)
    return images, chunks


def kept_folders(store, records, same):
    """({folder name: its record}, [names removed]) of store's folders (save_finished's): a folder is kept when
    it is complete (its record and every file the record lists) and same(its record, records[its name]) holds;
    every other folder (partial, stale, not asked for) is removed.  The one rule for finished images and for
    the chunks of a split cube."""
    store = Path(store)
    if not store.is_dir():
        return {}, []
    kept, dropped = {}, []
    for folder in sorted(store.iterdir()):
        expected = records.get(folder.name)
        recorded = None if is_partial_name(folder.name) or expected is None else read_record(folder / RECORD_NAME)[0]
        complete = recorded is not None and bool(recorded.get('files')) and all(
            (folder / file_name).exists() for file_name in recorded['files'])
        if complete and same(recorded, expected):
            kept[folder.name] = recorded
        else:
            dropped.append(folder.name)
            remove_tree(folder)
    return kept, dropped
