"""Images replaced by --update: the journal's image set, checked, and its rollback after a failed run."""

import os
from pathlib import Path

from ..core.fileops import is_partial_name, relative_path, remove_file, remove_tree
from ..core.messages import say


def _plain_name(text):
    return isinstance(text, str) and text not in ('', '.', '..') and '/' not in text and '\0' not in text


def valid_image_set(entry):
    """A journal's image set, its entries checked (plain names, inodes as pairs of numbers), or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get('dir'), str):
        return None
    aside = entry.get('aside') if isinstance(entry.get('aside'), str) else None
    lists = [entry.get(key) if isinstance(entry.get(key), list) else [] for key in ('old', 'new', 'records')]
    old = [name for name in lists[0] if _plain_name(name)]
    new = [item for item in lists[1] if isinstance(item, list) and len(item) == 2 and _plain_name(item[0])
           and isinstance(item[1], list) and len(item[1]) == 2 and all(isinstance(n, int) for n in item[1])]
    records = [name for name in lists[2] if _plain_name(name) and name.endswith('.provenance.json')]
    return {'dir': entry['dir'], 'aside': aside, 'old': old, 'new': new, 'records': records,
            'complete': bool(entry.get('complete'))}


def recover_image_set(entry, root):
    """Roll back (or finish) an image set a run left journalled; says what it did."""
    images_dir = Path(entry['dir'])
    aside = Path(entry['aside']) if entry.get('aside') else None
    if aside is not None and not (aside.parent == images_dir and is_partial_name(aside.name)):
        aside = None  # not a folder this tool makes: never touched
    if entry.get('complete'):
        if aside is not None and aside.exists():
            remove_tree(aside)
        return
    removed = []
    for name, inode in entry.get('new', []):
        path = images_dir / name
        try:
            info = os.lstat(str(path))
        except OSError:
            continue
        if [info.st_dev, info.st_ino] == inode:
            remove_tree(path)
            removed.append(name)
    for name in entry.get('records', []):
        path = images_dir / name
        if path.is_file() and not path.is_symlink():
            remove_file(path)
    restored, left = [], []
    if aside is not None and aside.is_dir():
        for name in entry.get('old', []):
            old, path = aside / name, images_dir / name
            if not (old.exists() or old.is_symlink()):
                continue
            if path.exists() or path.is_symlink():
                left.append(name)
                continue
            os.rename(str(old), str(path))
            restored.append(name)
        if not left:
            remove_tree(aside)
    where = relative_path(images_dir, root)
    say('  the images of an --update in %s were being replaced: rolled back to their state before that run '
        '(%d new files removed, %d old ones put back)' % (where, len(removed), len(restored)))
    if left:
        say('  the old versions of %s are kept in %s (their names are taken)'
            % (', '.join(left[:3]), relative_path(aside, root)))
