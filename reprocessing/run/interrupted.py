"""Outputs a stopped run completed: said from what is on disk, remembered so that the same command run
again keeps them and does the rest instead of failing on them."""

import json
import os

from ..core.fileops import relative_path, remove_file, write_atomically

KEPT_NAME = 'kept-by-interrupted-run.json'  # in working_reprocess/


def output_identities(paths):
    """{path: [device, inode] or None (absent)} of a run's final outputs, taken before its first step."""
    identities = {}
    for path in paths:
        try:
            info = os.lstat(str(path))
            identities[str(path)] = [info.st_dev, info.st_ino]
        except OSError:
            identities[str(path)] = None
    return identities


def new_outputs(before, published):
    """The final outputs on disk now that this run made: published by it, or there now under a name that
    was free (or another file's) when the run began, e.g. renamed the moment before a signal came."""
    now = output_identities(list(before) + [str(path) for path in published])
    made = [path for path, identity in now.items()
            if identity is not None and (before.get(path, 'new') != identity or path in map(str, published))]
    return sorted(set(made), key=list(now).index)


def remember_kept(delivery, command, paths):
    """Write which outputs the stopped run completed (with their inodes) for the next run."""
    if not paths:
        return
    entries = [{'path': path, 'inode': identity} for path, identity in output_identities(paths).items()
               if identity is not None]
    try:
        delivery.work_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(delivery.work_dir / KEPT_NAME, json.dumps({'command': command, 'outputs': entries}))
    except Exception:  # a full disk: the advice still says what to do
        pass


def kept_by_interrupted_run(delivery, paths):
    """True when every path is an output a stopped run completed and it is still that very file."""
    try:
        with open(str(delivery.work_dir / KEPT_NAME)) as handle:
            entries = json.load(handle).get('outputs') or []
        kept = dict((entry['path'], entry['inode']) for entry in entries)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False
    identities = output_identities(paths)
    return bool(paths) and all(identity is not None and kept.get(path) == identity
                               for path, identity in identities.items())


def kept_note(delivery, paths):
    return ('%s %s completed by the interrupted run before this one: kept, not made again (move %s away to '
            'make %s anew)' % (', '.join(relative_path(p, delivery.root) for p in paths),
                               'was' if len(paths) == 1 else 'were', 'it' if len(paths) == 1 else 'them',
                               'it' if len(paths) == 1 else 'them'))


def forget_kept(delivery):
    if (delivery.work_dir / KEPT_NAME).exists():
        remove_file(delivery.work_dir / KEPT_NAME)
