"""Stand-ins for the user's MSes (shadows), so CASA tasks that write into inputs never touch them."""

import fnmatch
import os
import shutil
from pathlib import Path

from .layout import SHADOW_MARKER, STAGED_COPY_MARKER


def make_shadow(ms, destination, *, private=('HISTORY',)):
    """A stand-in for ms whose files are links to the user's, except `private` subtables.

    CASA tasks that write into their inputs (concat appends HISTORY rows to
    every input after the first; the pipeline rewrites FIELD) then write into
    private copies, and the user's MS stays byte-identical.  Directories are
    real, files are links, and every table.lock is a private copy, so the
    table locks CASA takes stay inside the shadow too.
    """
    ms, destination = Path(ms).resolve(), Path(destination)
    destination.mkdir(parents=True)
    (destination / SHADOW_MARKER).write_text(str(ms))
    for entry in ms.iterdir():
        target = destination / entry.name
        if entry.name in private:
            shutil.copytree(str(entry), str(target), symlinks=False)
        elif entry.is_dir():
            _link_files(entry, target)
        else:
            _link_or_copy_lock(entry, target)
    return destination


def _link_files(source, destination):
    destination.mkdir()
    for entry in source.iterdir():
        target = destination / entry.name
        if entry.is_dir():
            _link_files(entry, target)
        else:
            _link_or_copy_lock(entry, target)


def _link_or_copy_lock(entry, target):
    """Link a table file; copy a table.lock, so that locks taken in the shadow stay there.

    The copy matters: without a table.lock carrying the table's sync data,
    msmetadata (hence uvcontsub and the pipeline) sees subtables of a shadow
    as empty ("DATA_DESCRIPTION only has 0 rows"; measured with CASA 6.7).
    """
    if entry.name == 'table.lock':
        shutil.copyfile(str(entry), str(target))
    else:
        os.symlink(str(entry), str(target))


def find_user_measurement_sets(work_dir):
    """Real uid*_target(s).ms directories below work_dir: not links, shadows or staged copies."""
    found = []
    for root, dirs, _files in os.walk(str(work_dir)):
        for name in list(dirs):
            full = Path(root) / name
            if full.is_symlink():
                dirs.remove(name)
                continue
            if fnmatch.fnmatch(name, 'uid*_target*.ms'):
                # shadows and the pipeline's staged copies are this tool's stand-ins, not user data
                made_here = (full / SHADOW_MARKER).exists() or (full / STAGED_COPY_MARKER).exists()
                # a pipeline weblog has html/session*/<MS name>/ folders too: plots, no table.dat
                is_ms = (full / 'table.dat').is_file() and not (full / 'table.dat').is_symlink()
                if not made_here and is_ms:
                    found.append(full)
                dirs.remove(name)
    return found
