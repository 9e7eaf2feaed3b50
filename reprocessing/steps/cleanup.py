"""Step --cleanup: remove working_reprocess/ and the CASA logs this tool created, nothing else."""

import os
from pathlib import Path

from ..core.fileops import is_inside, relative_path, remove_file, remove_tree, directory_bytes, human_bytes
from ..core.layout import WORK_DIR_NAME
from ..core.messages import ReprocessingError, say
from ..run.staging import find_user_measurement_sets



def run_cleanup(plan, state, step, casa):
    """Remove working_reprocess/ and the CASA logs this tool created, nothing else."""
    delivery = plan.delivery
    work_dir = delivery.work_dir
    if work_dir.is_symlink():
        raise ReprocessingError('%s is a link to %s — not removing anything through it; remove the link by hand'
                                % (work_dir, os.readlink(str(work_dir))))
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
