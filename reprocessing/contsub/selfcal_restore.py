"""The delivery's self-calibration restore resources, for hif_selfcal(restore_only=True) (pipeline 2025 on).

hif_selfcal (pipeline 2024 on) writes <context>.selfcal.json (scal_targets: per target its sc_workdir_* folder,
per MS the final gain tables, their interp and spwmap) and the gain tables, and hifa_exportdata packs them
into <oussid>[.<recipe>].auxproducts.tgz under their relative paths (PIPE-1802, h/tasks/exportdata/exportdata.py).
The archive puts that file in the member OUS's calibration/ folder, beside the calibrated/ data that
calibrated_final/ is made from.  hif_selfcal(restore_resources=tgz) extracts the sc_workdir* and *.selfcal.json
members into its working folder and accepts the json only when every gain table it names is there
(hif/tasks/selfcal/selfcal.py _check_restore_from_resources); this module makes the same checks before the
pipeline runs, so that the run can say which way the line MSes get their self-calibrated data.
"""

import collections
import fnmatch
import json
import posixpath
import tarfile
from pathlib import Path

# Where a *.auxproducts.tgz is looked for, relative to calibrated_final/, first found first: the delivery itself,
# its caltables/, the member OUS's calibration/ one or two levels up (calibrated_final/ sits in the member folder,
# or in its calibrated/ beside working/), and the two folders the pipeline itself searches from its working folder
# (../products, ../rawdata: here calibrated_final/products and calibrated_final/rawdata).
SELFCAL_RESOURCE_FOLDERS = ('.', 'caltables', '../calibration', '../../calibration', 'products', 'rawdata')
AUXPRODUCTS_PATTERN = '*.auxproducts.tgz'
# What hif_selfcal extracts from the tgz into its working folder (selfcal.py: match_list).
EXTRACTED_PATTERNS = ('sc_workdir*', '*.selfcal.json')

SelfcalResources = collections.namedtuple('SelfcalResources', 'path json_name extracted covered targets')
SelfcalResources.__doc__ = """A usable *.auxproducts.tgz.  json_name: its selfcal.json member; extracted: the
top-level names hif_selfcal will extract into its working folder; covered: {MS name: [gain tables]} of the
delivery's MSes the json has solutions for; targets: 'field (band)' of each self-calibrated target."""


def auxproducts_candidates(delivery_root):
    """Every *.auxproducts.tgz where SELFCAL_RESOURCE_FOLDERS say, in that order (resolved, without repeats)."""
    found = []
    for folder in SELFCAL_RESOURCE_FOLDERS:
        where = (Path(delivery_root) / folder).resolve()
        if where.is_dir():
            for path in sorted(where.glob(AUXPRODUCTS_PATTERN)):
                if path.is_file() and path not in found:
                    found.append(path)
    return found


def ms_stem(name):
    """hif_selfcal's vis_base: the MS name without .ms and a trailing _cont."""
    stem = posixpath.basename(str(name))
    stem = stem[:-3] if stem.endswith('.ms') else stem
    return stem[:-5] if stem.endswith('_cont') else stem


def read_selfcal_resources(path, ms_names):
    """(SelfcalResources, None) when the tgz at path restores self-calibration of some of ms_names, else (None, why)."""
    try:
        with tarfile.open(str(path), 'r:gz') as tar:
            members = tar.getmembers()
            names = [member.name.rstrip('/') for member in members]
            unsafe = [name for name in names if name.startswith('/') or '..' in name.split('/')]
            if unsafe:
                return None, 'it holds paths outside its folder (%s)' % unsafe[0]
            # hif_selfcal extracts the sc_workdir* members with tarfile, without a filter (pipeline 2025.1.0.35,
            # Python 3.10): a link member, or a file written through one, would land wherever the link points.
            links = [member.name for member in members if not (member.isfile() or member.isdir())]
            if links:
                return None, 'it holds a link or special file (%s), which extracting could follow out of its folder' % (
                    links[0])
            jsons = [member for member in members
                     if member.isfile() and fnmatch.fnmatch(member.name, '*.selfcal.json') and '/' not in member.name]
            if not jsons:
                return None, 'it holds no *.selfcal.json (no self-calibration was exported)'
            scal_targets = json.loads(tar.extractfile(jsons[-1]).read().decode('utf-8')).get('scal_targets') or []
    except (OSError, EOFError, tarfile.TarError, ValueError, AttributeError) as error:
        return None, 'it cannot be read (%s)' % error
    tables = set(names)
    stems = dict((ms_stem(ms), ms) for ms in ms_names)
    covered = collections.OrderedDict()
    targets, missing = [], []
    for target in scal_targets:
        library = target.get('sc_lib') or {}
        if target.get('sc_exception') or not library.get('SC_success'):
            continue
        targets.append('%s (%s)' % (target.get('field'), target.get('sc_band')))
        for vis in library.get('vislist') or []:
            ms = stems.get(ms_stem(vis))
            if ms is None:
                continue
            for table in (library.get(vis) or {}).get('gaintable_final') or []:
                member = posixpath.join(target.get('sc_workdir') or '', table)
                if member not in tables:
                    missing.append(member)
                covered.setdefault(ms, []).append(member)
    if not targets:
        return None, 'its %s has no successfully self-calibrated target' % jsons[-1].name
    if missing:
        return None, 'it lacks the gain table %s that its %s names' % (missing[0], jsons[-1].name)
    if not covered:
        return None, 'its %s has solutions for other measurement sets (%s), not these' % (
            jsons[-1].name, ', '.join(sorted({ms_stem(vis) for target in scal_targets
                                              for vis in (target.get('sc_lib') or {}).get('vislist') or []})))
    extracted = sorted({name.split('/')[0] for name in names
                        if any(fnmatch.fnmatch(name, pattern) for pattern in EXTRACTED_PATTERNS)})
    return SelfcalResources(Path(path), jsons[-1].name, extracted, covered, targets), None


def find_selfcal_resources(delivery_root, ms_names):
    """(SelfcalResources or None, [notes on the *.auxproducts.tgz files looked at and not used])."""
    notes = []
    for path in auxproducts_candidates(delivery_root):
        resources, why = read_selfcal_resources(path, ms_names)
        if resources is not None:
            return resources, notes
        notes.append('%s: not used for the self-calibration, %s' % (path, why))
    return None, notes
