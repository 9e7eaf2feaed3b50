"""Step --cleanup: remove working_reprocess/ and the CASA logs this tool created, nothing else."""

import os
from pathlib import Path

from ..core.fileops import directory_bytes, human_bytes, is_inside, is_partial_name, relative_path, remove_file, remove_tree
from ..core.layout import IMAGING_DIR_NAME, KNOWN_BEAMS_NAME, WORK_DIR_NAME
from ..core.messages import ReprocessingError, say
from ..run.staging import find_user_measurement_sets



def run_cleanup(plan, state, step, casa):
    """Remove working_reprocess/ and the CASA logs this tool created, nothing else."""
    delivery = plan.delivery
    work_dir = delivery.work_dir
    if work_dir.is_symlink():  # a link to scratch (a cluster habit): keep it, clean what this tool made there
        return _clean_linked_work_dir(delivery, state)
    if not work_dir.exists():
        say('  nothing to clean up: %s/ does not exist' % WORK_DIR_NAME)
        return {'freed': 0}
    stranded = find_user_measurement_sets(work_dir)
    if stranded:
        raise ReprocessingError(
            '%s holds measurement sets that are not links or tool outputs: %s — move them back to '
            'measurement_sets/ first (an older version of this script moved them there)'
            % (work_dir, ', '.join(relative_path(p, delivery.root) for p in stranded)))
    logs = read_created_logs(delivery)
    freed = directory_bytes(work_dir)
    remove_tree(work_dir)
    for log in logs:
        if log.exists() and is_inside(log, delivery.root) and log != state.casa_logfile:
            freed += log.stat().st_size
            remove_file(log)
    say('  removed %s/%s, freed %s' % (WORK_DIR_NAME, ' and %d CASA logs' % len(logs) if logs else '',
                                       human_bytes(freed)))
    return {'freed': freed}


CREATED_LOGS = 'created_logs.txt'
# What this tool makes in working_reprocess/ (Delivery's *_dir, the pipeline's folders, its notes and
# temporaries): a working_reprocess/ that links elsewhere loses these only.
TOOL_MADE_NAMES = ('report', 'staging', 'logs', IMAGING_DIR_NAME, IMAGING_DIR_NAME + '-finished',
                   IMAGING_DIR_NAME + '-chunks', KNOWN_BEAMS_NAME, CREATED_LOGS, 'kept-by-interrupted-run.json',
                   '.cont.dat.delivered.sha256')
TOOL_MADE_PREFIXES = ('pipeline-',)


def _clean_linked_work_dir(delivery, state):
    """working_reprocess/ links to another folder: remove what this tool made in it; keep the link, the
    folder and anything else in it (another run's or the user's files)."""
    target = Path(os.path.realpath(str(delivery.work_dir)))
    if not target.is_dir():
        raise ReprocessingError('%s links to %s, which is not a folder — remove the link, or point it at one'
                                % (delivery.work_dir, os.readlink(str(delivery.work_dir))))
    if is_inside(delivery.root, target) or any(is_inside(target, os.path.realpath(str(p))) for p in (
            delivery.ms_dir, delivery.caltables)):
        raise ReprocessingError('%s links to %s, which holds or is inside your data — not cleaning it; make the '
                                'link point at a scratch folder of its own' % (delivery.work_dir, target))
    stranded = find_user_measurement_sets(target)
    if stranded:
        raise ReprocessingError('%s holds measurement sets that are not links or tool outputs: %s — move them '
                                'back to measurement_sets/ first' % (target, ', '.join(str(p) for p in stranded)))
    logs = read_created_logs(delivery)
    freed, removed, kept = 0, [], []
    for entry in sorted(target.iterdir()):
        if entry.name in TOOL_MADE_NAMES or entry.name.startswith(TOOL_MADE_PREFIXES) or is_partial_name(entry.name):
            freed += directory_bytes(entry)
            remove_tree(entry)
            removed.append(entry.name)
        else:
            kept.append(entry.name)
    for log in logs:
        if log.exists() and is_inside(log, delivery.root) and log != state.casa_logfile:
            freed += log.stat().st_size
            remove_file(log)
    say('  %s/ links to %s: removed what this tool made there (%s), freed %s; the link is kept%s' % (
        WORK_DIR_NAME, target, ', '.join(removed) or 'nothing', human_bytes(freed),
        ', and %d other entr%s there (not made by this tool)' % (len(kept), 'y' if len(kept) == 1 else 'ies')
        if kept else ''))
    return {'freed': freed}


def record_created_log(delivery, log):
    """Monolithic CASA writes its log where it was started; remember ours for --cleanup."""
    if log and is_inside(log, delivery.root) and not is_inside(log, delivery.work_dir):
        delivery.work_dir.mkdir(exist_ok=True)
        with open(str(delivery.work_dir / CREATED_LOGS), 'a') as handle:
            handle.write(str(log) + '\n')


def read_created_logs(delivery):
    listing = delivery.work_dir / CREATED_LOGS
    if not listing.exists():
        return []
    return [Path(line) for line in listing.read_text().splitlines() if line.strip()]
