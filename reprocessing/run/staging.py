"""Stand-ins for the user's MSes (shadows), so CASA tasks that write into inputs never touch them;
and the space-free path by which CASA reaches them."""

import fnmatch
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..core.fileops import PARTIAL_TAG, make_user_writable
from ..core.layout import SHADOW_MARKER, STAGED_COPY_MARKER
from ..core.messages import ReprocessingError


def make_shadow(ms, destination, *, private=('HISTORY',), short_links=False):
    """A stand-in for ms whose files are links to the user's, except `private` subtables.

    CASA tasks that write into their inputs (concat appends HISTORY rows to
    every input after the first; the pipeline rewrites FIELD) then write into
    private copies, and the user's MS stays byte-identical.  Directories are
    real, files are links, and every table.lock is a private copy, so the
    table locks CASA takes stay inside the shadow too.

    short_links: the files' links are relative, through one link to ms beside the shadow (in the
    folder that holds it, which must be this tool's and be removed with it): '../../.ms0/ANTENNA/table.f0'
    instead of the file's absolute path.  Measured on ext4 mounted with discard: removing a link whose
    target has 60 bytes or more (kept in a disk block, not in the inode) took ~2.5 ms, so the 288 links
    of 4 shadows took 0.9 s of wall time at the end of every --image run (0.04 s CPU); short ones, 0.02 s.
    """
    ms, destination = Path(ms).resolve(), Path(destination)
    destination.mkdir(parents=True)
    (destination / SHADOW_MARKER).write_text(str(ms))
    source = '../' + _anchor(ms, destination.parent) if short_links else None  # ms, seen from destination
    for entry in ms.iterdir():
        target = destination / entry.name
        if entry.name in private:
            shutil.copytree(str(entry), str(target), symlinks=False)
            # copytree keeps the modes: a read-only MS (an archive copy, another user's data) would
            # give a HISTORY that concat cannot append to and that the user cannot delete
            make_user_writable(target)
        elif entry.is_dir():
            _link_files(entry, target, source and '../' + source + '/' + entry.name)
        else:
            _link_or_copy_lock(entry, target, source and source + '/' + entry.name)
    return destination


def _anchor(ms, folder):
    """The name of a new link to ms in folder ('.ms0', '.ms1', ...: short, so the links through it are too)."""
    for number in range(1000000):
        name = '.ms%d' % number
        try:
            os.symlink(str(ms), str(folder / name))
            return name
        except FileExistsError:
            continue
    raise ReprocessingError('%s holds a million links .ms<N> — remove the folder, then rerun' % folder)


def is_read_only(ms):
    """True when this user may not write some file of the MS's main table (an archive copy, another
    user's data, a read-only mount): then CASA cannot open links to them for update either."""
    ms = Path(ms)
    return not os.access(str(ms), os.W_OK) or any(
        entry.is_file() and not os.access(str(entry), os.W_OK) for entry in ms.iterdir())


def make_stand_in_to_update(ms, destination):
    """A stand-in for ms that CASA may open for update: a shadow, or a writable copy of a read-only MS.

    Measured with CASA 6.7: concat opens every MS after the first for update (it writes their
    HISTORY), and casacore then opens every data file of the main table read-write, so a shadow of a
    read-only MS fails ("table.f1 could not be opened: Permission denied"); only a copy will do.
    """
    if not is_read_only(ms):
        return make_shadow(ms, destination)
    shutil.copytree(str(ms), str(destination), symlinks=False)
    make_user_writable(destination)
    (Path(destination) / STAGED_COPY_MARKER).write_text(str(Path(ms).resolve()))
    return Path(destination)


def _link_files(source, destination, relative=None):
    """destination: source's files linked (by their absolute paths, or relative + '/' + their names)."""
    destination.mkdir()
    for entry in source.iterdir():
        target = destination / entry.name
        if entry.is_dir():
            _link_files(entry, target, relative and '../' + relative + '/' + entry.name)
        else:
            _link_or_copy_lock(entry, target, relative and relative + '/' + entry.name)


def _link_or_copy_lock(entry, target, relative=None):
    """Link a table file (to its absolute path, or to relative); copy a table.lock, so that locks taken in the
    shadow stay there.

    The copy matters: without a table.lock carrying the table's sync data,
    msmetadata (hence uvcontsub and the pipeline) sees subtables of a shadow
    as empty ("DATA_DESCRIPTION only has 0 rows"; measured with CASA 6.7).
    """
    if entry.name == 'table.lock':
        shutil.copyfile(str(entry), str(target))
    else:
        os.symlink(relative or str(entry), str(target))


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


def space_free_path(state, directory):
    """directory, or a link to it whose path has no space: the path to give CASA for several MSes at once.

    Measured with CASA 6.7: concat, and tclean given several MSes, check the MSes with check_mslist,
    which splits each subtable's path ("Table: /data/My Data/x.ms/FIELD") at spaces and fails with
    "Table /data/My does not exist".  One MS, the table tool and uvcontsub take spaces, and so do
    links: a table opened through a link carries the link's path.  So a directory whose path has a
    space is reached through a link in the system's temporary directory; the link is in the journal
    (its .NAME.partial-PID name marks it as this tool's), and the run removes it when it ends.
    """
    directory = Path(os.path.abspath(str(directory)))
    if ' ' not in str(directory):
        return directory
    temporary = Path(os.path.abspath(tempfile.gettempdir()))
    if ' ' in str(temporary):
        raise ReprocessingError('the delivery\'s path (%s) has a space, which CASA\'s concat and tclean cannot take, '
                                'and so has the temporary directory %s — set TMPDIR to a folder whose path has no '
                                'space, or move the delivery to one' % (state.delivery.root, temporary))
    link = temporary / ('.reprocessing-%s-%s%s%d' % (directory.name, uuid.uuid4().hex[:8], PARTIAL_TAG, os.getpid()))
    state.will_create(link)
    os.symlink(str(directory), str(link))
    return link
