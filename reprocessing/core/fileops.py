"""File operations that never lose data: removal, moving, atomic writes, sizes and the free-disk check.

One helper per idea: every other module removes, moves, writes atomically and checks free disk
through these.
"""

import contextlib
import errno
import gc
import os
import shutil
import stat
import sys
import traceback
from pathlib import Path

from .messages import ReprocessingError, exception_chain


# What every temporary of this tool has in its name: .NAME.partial-PID, beside NAME.
PARTIAL_TAG = '.partial-'


def is_partial_name(name):
    """True for a temporary's name: .NAME.partial-PID."""
    head, tag, pid = name.rpartition(PARTIAL_TAG)
    return bool(tag) and name.startswith('.') and pid.isdigit() and len(head) > 1


def directory_bytes(path, *, follow_links=False):
    """Bytes of a file, or of the files below a directory.

    Links inside are not counted (a shadow's linked files are the user's, not extra disk) unless
    follow_links, which counts what a copy that follows them would write.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(str(path), followlinks=follow_links):
        for name in files:
            full = os.path.join(root, name)
            if follow_links:
                total += os.stat(full).st_size
            elif not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def file_states(paths):
    """{file: (size, mtime in ns)} of every file below paths: a cheap witness that nothing wrote into them."""
    states = {}
    for path in paths:
        for root, _dirs, files in os.walk(str(path)):
            for name in files:
                full = os.path.join(root, name)
                info = os.lstat(full)
                states[full] = (info.st_size, info.st_mtime_ns)
    return states


def changed_files(before):
    """The files of a file_states() witness that changed or went away since."""
    changed = []
    for path, state in before.items():
        try:
            info = os.lstat(path)
        except OSError:
            changed.append(path)
            continue
        if (info.st_size, info.st_mtime_ns) != state:
            changed.append(path)
    return changed


def free_bytes(path):
    return shutil.disk_usage(str(path)).free


def free_inodes(path):
    """Files that can still be created on path's file system (statvfs f_favail), or None where the file
    system sets no such limit (f_files 0: btrfs, some network file systems)."""
    info = os.statvfs(str(path))
    return info.f_favail if info.f_files else None


def file_count(paths):
    """Entries (files, folders, links) below paths: the inodes a copy of them takes."""
    total = 0
    for path in paths:
        for _root, dirs, files in os.walk(str(path)):
            total += len(dirs) + len(files)
        total += 1
    return total


def free_space_text(path):
    """'12.3 GB free', with the free inodes when they are what is short: a disk can be full of files."""
    text = '%s free' % human_bytes(free_bytes(path))
    inodes = free_inodes(path)
    if inodes is not None and inodes < FULL_DISK_INODES:
        text += ' but room for only %d more files (no free inodes)' % inodes
    return text


def human_bytes(count):
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(count) < 1000 or unit == 'TB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (count, unit)
        count /= 1000.0


def relative_path(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def is_inside(path, root):
    try:
        Path(os.path.abspath(str(path))).relative_to(os.path.abspath(str(root)))
        return True
    except ValueError:
        return False


def release_what_a_failure_holds():
    """While an exception is handled (an error, a stop signal), close what the frames it unwound still hold.

    Their locals live on in the traceback: a CASA image tool that was writing (the image imageconcat returns,
    when SIGTERM came before its done()) closes its table only when collected, after the cleanup removed its
    folder, and CASA's C++ then aborts the process (SIGABRT, "table.dat_tmp does not exist and cannot be
    created": a SIGTERM during a split cube's join, 2026-12-07).  Cleared and collected here, before a removal,
    such objects close while their folders exist.  Again only when the traceback grew (it passed more frames)."""
    for error in exception_chain(sys.exc_info()[1]):
        if error.__traceback__ is not None and getattr(error, '_released_at', None) != id(error.__traceback__):
            traceback.clear_frames(error.__traceback__)
            try:
                error._released_at = id(error.__traceback__)
            except AttributeError:  # an exception type without a __dict__
                pass
            gc.collect()


def remove_tree(path):
    """Remove a file or folder this tool made; links are removed, never followed.

    Read-only entries (copies of archive files, subtables copied from a read-only MS) are made
    writable first where removing them needs it.
    """
    def make_writable_and_retry(function, failed_path, _exc_info):
        parent = os.path.dirname(failed_path)
        os.chmod(parent, os.lstat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        function(failed_path)
    path = Path(path)
    release_what_a_failure_holds()
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(str(path), onerror=make_writable_and_retry)
    except OSError as error:
        raise ReprocessingError('cannot remove %s (%s) — remove it by hand, then rerun'
                                % (path, error.strerror or error))


def removal_blocker(path):
    """The first folder below path (itself included) that keeps this user from removing the tree, or None.

    Removing an entry needs write permission on its folder; remove_tree gives that permission to
    folders this user owns, but not to another user's (chmod: "Operation not permitted").
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None if os.access(str(path.parent), os.W_OK) else path.parent
    if not os.access(str(path.parent), os.W_OK):
        return path.parent
    for root, dirs, _files in os.walk(str(path)):
        if not os.access(root, os.W_OK | os.X_OK) and os.lstat(root).st_uid != os.geteuid():
            return Path(root)
        dirs[:] = [name for name in dirs if not os.path.islink(os.path.join(root, name))]
    return None


def make_user_writable(path):
    """Give the user write permission on a copy this tool made (archive files may be read-only)."""
    for root, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            entry = os.path.join(root, name)
            mode = os.lstat(entry).st_mode
            if not stat.S_ISLNK(mode) and not mode & stat.S_IWUSR:
                os.chmod(entry, mode | stat.S_IWUSR)
    mode = os.lstat(str(path)).st_mode
    if not mode & stat.S_IWUSR:
        os.chmod(str(path), mode | stat.S_IWUSR)


def remove_file(path):
    try:
        Path(path).unlink()
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise ReprocessingError('cannot remove %s (%s) — remove it by hand' % (path, error.strerror))


def move_tree(source, destination):
    """Move a file or folder this tool made; never over an existing one.

    A rename where it can be; across file systems (EXDEV) a copy, then the source is removed.  Any
    other failure (permissions, a read-only file system) stops with the source left as it was.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() or destination.is_symlink():
        raise ReprocessingError('%s already exists — not overwriting it; move it away and rerun' % destination)
    try:
        os.rename(str(source), str(destination))
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise ReprocessingError('cannot move %s to %s (%s) — check the permissions of %s'
                                    % (source, destination, error.strerror or error, destination.parent))
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(str(source), str(destination), symlinks=True)
        else:
            shutil.copy2(str(source), str(destination), follow_symlinks=False)
    except OSError as error:
        if destination.exists():
            remove_tree(destination)  # our half-made copy; the source is intact
        raise ReprocessingError('cannot copy %s to %s (%s) — check the free space and permissions of %s'
                                % (source, destination, error.strerror or error, destination.parent))
    remove_tree(source)


def link_tree(source, destination):
    """A copy of a file or folder this tool made whose files are hard links to the source's: no byte written, and
    the source stays whole until the copy has its final name and the source is removed.  Where links cannot be
    made (across file systems, a file system without them) the files are copied.  Never over an existing one."""
    source, destination = Path(source), Path(destination)
    if destination.exists() or destination.is_symlink():
        raise ReprocessingError('%s already exists — not overwriting it; move it away and rerun' % destination)

    def link_or_copy(from_path, to_path):
        try:
            os.link(from_path, to_path)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copy2(from_path, to_path)
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(str(source), str(destination), symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(str(source), str(destination))
    except OSError as error:
        if destination.exists() or destination.is_symlink():
            remove_tree(destination)  # our half-made copy; the source is intact
        raise ReprocessingError('cannot copy %s to %s (%s) — check the free space and permissions of %s'
                                % (source, destination, getattr(error, 'strerror', None) or error, destination.parent))


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary name beside path; on success it replaces path whole, on failure it is removed.

    So path is always either the old or the new complete file; a run killed meanwhile leaves a
    .NAME.partial-PID that the next run's sweep recognises.
    """
    path = Path(path)
    temporary = path.with_name('.%s%s%d' % (path.name, PARTIAL_TAG, os.getpid()))
    try:
        yield temporary
        os.replace(str(temporary), str(path))
    finally:
        if temporary.exists():
            remove_file(temporary)


def write_atomically(path, text):
    """Write text so that path is always either the old or the new complete file."""
    try:
        with atomic_file(path) as temporary:
            with open(str(temporary), 'w', encoding='utf-8') as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:  # a full disk (ENOSPC), a folder that became read-only
        raise ReprocessingError('cannot write %s (%s) — check the free space and permissions of %s'
                                % (path, error.strerror or error, Path(path).parent))


# Margin on every free-disk estimate: CASA writes subtables, flag versions and logs beside the data.
FREE_SPACE_MARGIN = 1.1


def with_free_space_margin(needed):
    return int(needed * FREE_SPACE_MARGIN + 0.5)


# Files a step creates besides those counted (logs, flag versions, tclean's temporary tables); a file
# system with fewer free inodes than this counts as full, as one with under FULL_DISK_BYTES free.
FULL_DISK_INODES = 1000
FEW_FILES = 100


def require_free_space(where, needed, *, what, advice, margin_included=False, files=0):
    """The free bytes where `where` would be written; stops unless `needed` (plus the margin) fit there,
    and `files` new files (plus FULL_DISK_INODES) fit in its free inodes: a disk full of files
    refuses a new one with ENOSPC as a disk full of bytes does."""
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # an output folder not made yet: its file system is its parent's
    available = free_bytes(probe)
    needed = needed if margin_included else with_free_space_margin(needed)
    if needed and available < needed:
        raise ReprocessingError('not enough free disk in %s for %s: about %s needed, %s free — %s'
                                % (where, what, human_bytes(needed), human_bytes(available), advice))
    inodes = free_inodes(probe)
    # what writes no data (--check, --cleanup) still writes its lock, journal, logs and report
    files_needed = with_free_space_margin(files) + (FULL_DISK_INODES if files or needed else FEW_FILES)
    if inodes is not None and inodes < files_needed:
        raise ReprocessingError('no room for more files in %s for %s: about %d files needed, the file system '
                                'can take %d more (it has %s free, but no free inodes) — %s; or delete files '
                                'there, or ask for a larger inode quota'
                                % (where, what, files_needed, inodes, human_bytes(available), advice))
    return available


# -- when a failure means a full disk ---------------------------------------------------------------
# What the system says of a full disk (in CASA's exceptions and in what a dying CASA prints).  Measured
# with CASA 6.7: a tclean that runs out of disk raises "Failed AlwaysAssert tracePWRITE(...)" (a lock
# file it could not write), which does not say why, or CASA aborts the process (exit 134): so a disk
# with less than FULL_DISK_BYTES free after a failure counts as full too.
DISK_FULL_SIGNS = ('No space left on device', 'Disk quota exceeded')
FULL_DISK_BYTES = 16 * 1000 * 1000


def says_disk_is_full(error):
    """Whether an error's text has the system's words for a full disk."""
    return any(sign in str(error) for sign in DISK_FULL_SIGNS)


def full_disk_among(paths, error):
    """(folder, free bytes) of the first path whose disk is (nearly) full of bytes or of files (inodes) after
    error, else None; when error says the disk is full and none is low, the first path's."""
    said_so = says_disk_is_full(error)
    first = None
    for path in paths:
        probe = Path(str(path))
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free, inodes = free_bytes(probe), free_inodes(probe)
        except OSError:
            continue
        if free < FULL_DISK_BYTES or inodes is not None and inodes < FULL_DISK_INODES:
            return probe, free
        first = first or (probe, free)
    return first if said_so else None
