"""Provenance records: what each product (line MS, image) was made from, in a JSON file beside it (pure).

A record is written atomically (never half a file) after its product is complete, and a record that
cannot be read, or is of another format, is never trusted: its product is remade.  --update compares
the record of each requested product with what this run would use and keeps it only when they agree.

The identity of a measurement set is cheap and reads no data: its path, the SHA-1 of its table.dat
(which holds the main table's description and row count) and the size and modification time (ns) of
each file of the main table (table.f*: the visibilities, flags and weights).  Any task that writes
rows, flags or a column changes one of them; a copy that keeps no times (cp -r) changes them too,
which makes its products stale: remade, never wrongly kept.  The flags are in the main table's files.

The subtables that change what is made from the data — FIELD (phase centres: fixvis, fixplanets),
SPECTRAL_WINDOW (frequencies), SOURCE, DATA_DESCRIPTION, POLARIZATION, ANTENNA (positions) — are
identified by the SHA-1 of their table.dat and table.f* files (kilobytes to a few MB in ALMA data;
a file larger than SUBTABLE_HASH_LIMIT by its size and mtime instead).  The others (HISTORY,
FLAG_CMD, POINTING, ...) are left out: writing them does not change what an image is made from.
"""

import hashlib
import json
import os
from pathlib import Path

from ..core.fileops import write_atomically

PROVENANCE_FORMAT = 1
PROVENANCE_SUFFIX = '.provenance.json'


SCIENCE_SUBTABLES = ('FIELD', 'SPECTRAL_WINDOW', 'SOURCE', 'DATA_DESCRIPTION', 'POLARIZATION', 'ANTENNA')
SUBTABLE_HASH_LIMIT = 16 * 1000 * 1000  # SHA-1 of 16 MB: about 0.25 s on the test machine (64 MB: 0.97 s)


def ms_identity(ms):
    """{'path', 'table_dat_sha1', 'main_files': {name: [bytes, mtime ns]}, 'subtables': {name: sha1}} of a
    measurement set."""
    ms = Path(ms)
    with open(str(ms / 'table.dat'), 'rb') as handle:
        digest = hashlib.sha1(handle.read()).hexdigest()
    files = {}
    for entry in sorted(os.listdir(str(ms))):
        if entry.startswith('table.f'):
            info = os.stat(str(ms / entry))
            files[entry] = [info.st_size, info.st_mtime_ns]
    return {'path': str(ms.resolve()), 'table_dat_sha1': digest, 'main_files': files,
            'subtables': dict((name, subtable_digest(ms / name)) for name in SCIENCE_SUBTABLES
                              if (ms / name).is_dir())}


def subtable_digest(table):
    """SHA-1 of a table's table.dat and table.f* files, read in blocks; a file over SUBTABLE_HASH_LIMIT
    enters by its name, size and mtime."""
    digest = hashlib.sha1()
    for entry in sorted(os.listdir(str(table))):
        if entry != 'table.dat' and not entry.startswith('table.f'):
            continue
        path = os.path.join(str(table), entry)
        info = os.stat(path)
        digest.update(('%s %d\n' % (entry, info.st_size)).encode())
        if info.st_size > SUBTABLE_HASH_LIMIT:
            digest.update(str(info.st_mtime_ns).encode())
            continue
        with open(path, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                digest.update(block)
    return digest.hexdigest()


def line_ms_record_path(line_ms):
    """uid..._targets_line.ms -> uid..._targets_line.ms.provenance.json, beside it."""
    return Path(str(line_ms) + PROVENANCE_SUFFIX)


def image_record_path(images_dir, stem):
    """The record of an image (all its files) in the images folder: <archive stem>.provenance.json."""
    return Path(images_dir) / (stem + PROVENANCE_SUFFIX)


def write_record(path, record):
    record = dict(record, format=PROVENANCE_FORMAT)
    write_atomically(path, json.dumps(record, indent=1, sort_keys=True))


def read_record(path):
    """The record at path, or (None, why it cannot be used)."""
    try:
        with open(str(path), encoding='utf-8') as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None, 'it has no provenance record (%s)' % Path(path).name
    except (OSError, ValueError) as error:
        return None, 'its provenance record %s cannot be read (%s)' % (Path(path).name, error)
    if not isinstance(record, dict) or record.get('format') != PROVENANCE_FORMAT:
        return None, 'its provenance record %s is not one this version writes' % Path(path).name
    return record, None


def line_ms_record(*, source, method, continuum, seconds, line_ms, tables=None):
    """The record of a line MS: its source MS's identity, how the continuum was fitted (continuum:
    {spw name: {'spw': virtual id, 'fields': {field name: {'chan', 'fitorder'}}}}), and its own identity
    when written (a line MS changed since is no longer what its record says)."""
    return {'product': 'line MS', 'source': ms_identity(source), 'method': method, 'continuum': continuum,
            'tables': [ms_identity(table) for table in tables or []], 'seconds': round(seconds, 2),
            'identity': ms_identity(line_ms)}


def line_ms_differences(recorded, expected):
    """Why a line MS's record does not match what this run would make (expected: a line_ms_record
    without 'identity' and 'seconds'), per spw: {spw name or '': [reasons]}; empty when it matches."""
    reasons = {}
    if recorded.get('method') != expected['method']:
        reasons.setdefault('', []).append('method %s → %s' % (recorded.get('method'), expected['method']))
    if _identity_key(recorded.get('source')) != _identity_key(expected['source']):
        reasons.setdefault('', []).append('%s changed since' % Path(expected['source']['path']).name)
    if [_identity_key(t) for t in recorded.get('tables') or []] != [_identity_key(t) for t in expected['tables']]:
        reasons.setdefault('', []).append('the continuum tables changed')
    old, new = recorded.get('continuum') or {}, expected['continuum']
    for name in sorted(set(old) | set(new)):
        for reason in continuum_differences(old.get(name), new.get(name)):
            reasons.setdefault(name, []).append(reason)
    return reasons


def continuum_differences(old, new):
    """What changed in the continuum fit of one spw ({'spw', 'fields': {field: {'chan', 'fitorder'}}}), as
    reasons 'spw 25: cont.dat ranges changed for FIELD (channels a → b)'."""
    return ['%s (%s)' % (head, detail) if detail else head for head, detail in continuum_changes(old, new)]


def continuum_changes(old, new):
    """[(what changed, its detail or '')] of one spw's continuum fit, so that an image made from several
    line MSes can say each change once, with every execution block's detail."""
    if old == new:
        return []
    if old is None or new is None:
        spw = (new or old).get('spw') if isinstance(new or old, dict) else '?'
        return [('spw %s is %s the line MS' % (spw, 'now in' if old is None else 'no longer in'), '')]
    spw = new.get('spw')
    changes = []
    old_fields, new_fields = old.get('fields') or {}, new.get('fields') or {}
    for field in sorted(set(old_fields) | set(new_fields)):
        before, after = old_fields.get(field), new_fields.get(field)
        if before == after:
            continue
        if before is None or after is None:
            changes.append(('spw %s: field %s %s' % (spw, field, 'added' if before is None else 'removed'), ''))
            continue
        if before.get('chan') != after.get('chan'):
            changes.append(('spw %s: cont.dat ranges changed for %s' % (spw, field), 'channels %s → %s' % (
                before.get('chan') or 'all', after.get('chan') or 'all')))
        if before.get('fitorder') != after.get('fitorder'):
            changes.append(('spw %s: fit order changed for %s' % (spw, field), '%s → %s' % (
                before.get('fitorder'), after.get('fitorder'))))
    return changes or [('spw %s: the continuum fit changed' % spw, '')]


def _identity_key(identity):
    """What of an identity must stay the same (the path may change: a delivery moved keeps its products)."""
    if not isinstance(identity, dict):
        return None
    return (identity.get('table_dat_sha1'), json.dumps(identity.get('main_files'), sort_keys=True),
            json.dumps(identity.get('subtables'), sort_keys=True))


def same_ms(recorded, identity):
    return _identity_key(recorded) == _identity_key(identity)


def image_differences(recorded, expected):
    """Why an image's record does not match this run's (both image records, expected without 'seconds'
    and 'files'): a list of short reasons, empty when it matches."""
    reasons = []
    for key, what in (('engine', 'engine'), ('engine_version', 'CASA version'), ('datacolumn', 'data column')):
        if recorded.get(key) != expected.get(key):
            reasons.append('%s %s → %s' % (what, recorded.get(key), expected.get(key)))
    old_inputs = dict((item.get('name'), item) for item in recorded.get('inputs') or [] if isinstance(item, dict))
    new_inputs = dict((item['name'], item) for item in expected['inputs'])
    if set(old_inputs) != set(new_inputs):
        reasons.append('its measurement sets changed (%s → %s)' % (', '.join(sorted(old_inputs)) or 'none',
                                                                  ', '.join(sorted(new_inputs))))
    fit_changes = []  # (what, execution block, detail), said once per what
    for name in sorted(set(old_inputs) & set(new_inputs)):
        old, new = old_inputs[name], new_inputs[name]
        if 'identity' in new:
            if not same_ms(old.get('identity'), new['identity']):
                reasons.append('%s changed' % name)
            continue
        if old == dict(new, made_from=old.get('made_from')) and same_ms(old.get('made_from'), new.get('made_from')):
            continue
        if 'continuum' in new and 'continuum' in old and same_ms(old.get('made_from'), new.get('made_from')) \
                and old.get('method') == new.get('method'):
            eb = name.split('_targets')[0]
            fit_changes.extend((head, eb, detail) for head, detail in continuum_changes(old['continuum'],
                                                                                       new['continuum']))
        elif 'continuum' in new and 'continuum' in old and not same_ms(old.get('made_from'), new.get('made_from')):
            reasons.append('%s was made from a changed %s' % (name, Path(new['made_from']['path']).name))
        else:
            reasons.append('%s changed' % name)
    for head in [h for index, (h, _eb, _d) in enumerate(fit_changes) if h not in [c[0] for c in fit_changes[:index]]]:
        details = ['%s: %s' % (eb, detail) for h, eb, detail in fit_changes if h == head and detail]
        reasons.append('%s (%s)' % (head, '; '.join(details)) if details else head)
    old_parameters, new_parameters = recorded.get('parameters') or {}, expected['parameters']
    for key in sorted(set(old_parameters) | set(new_parameters)):
        if key == 'spw' and old_parameters.get(key) != new_parameters.get(key) and expected.get('specmode') in (
                'mfs', 'cont'):
            reasons.append('spw %s: its continuum channels changed (cont.dat): %s → %s' % (
                ','.join(str(spw) for spw in expected.get('spws') or []), _short(old_parameters.get(key)),
                _short(new_parameters.get(key))))
        elif key != 'vis' and old_parameters.get(key) != new_parameters.get(key):
            reasons.append('%s %s → %s' % (key, _short(old_parameters.get(key)), _short(new_parameters.get(key))))
    return reasons


def _short(value, longest=60):
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= longest else text[:longest - 1] + '…'
