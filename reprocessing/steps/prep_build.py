"""reprocessing_prep.py's steps: build the partial output, convert pre-Cycle-9 MSes with CASA, publish.

Everything is written under <output>.partial-<pid> and renamed when complete; on any error or
signal the partial output is removed and, with --move, everything moved is moved back.
"""

import datetime
import os
import shutil
from pathlib import Path

from ..casa.casa_engine import casa_log_path, load_casa, native_output_into
from ..casa.ms_tables import count_rows
from ..contdat.grammar import CONTDAT_FINGERPRINT_NAME, contdat_fingerprint
from ..core.fileops import changed_files, file_states, make_user_writable, remove_tree, write_atomically
from ..core.layout import PREP_SCRIPT_NAME
from ..core.messages import Interrupted, ReprocessingError, signals_as_exceptions
from ..core.prep_layout import ACTION_CONVERT, ACTION_COPY, CALTABLES_DIR, MODE_COPY, MODE_LINK, MS_DIR, STAGING_DIR, step_verb


def casa_logfile_for(*, working, output, dry_run):
    if dry_run:
        return Path(os.devnull)   # a dry run touches nothing, not even a log
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    name = 'casa-%s-%s.log' % (PREP_SCRIPT_NAME[:-len('.py')], stamp)
    # Beside the pipeline's own casa-*.log; the output's parent if working/ is read-only.
    directory = working if os.access(str(working), os.W_OK) else output.parent
    return directory / name


def convert_measurement_set(casa, *, source, destination, datacolumn):
    """mstransform one data column of source into a new MS at destination (source is only read)."""
    before = file_states([source])
    with native_output_into(casa_log_path(casa)):
        try:
            # reindex=False keeps the ALMA spw ids (25, 27, ...) that cont.dat refers to.
            casa.casatasks.mstransform(vis=str(source), outputvis=str(destination),
                                       datacolumn=datacolumn, reindex=False)
        except Exception as exc:
            raise ReprocessingError('mstransform of %s (%s column) failed: %s — see the CASA log %s'
                            % (source.name, datacolumn.upper(), exc, casa_log_path(casa)))
        if not (destination / 'table.dat').is_file():
            raise ReprocessingError('mstransform of %s (%s column) wrote no measurement set — see the CASA log %s'
                            % (source.name, datacolumn.upper(), casa_log_path(casa)))
        source_rows, rows = count_rows(casa, source), count_rows(casa, destination)
    if rows != source_rows:
        raise ReprocessingError('mstransform of %s wrote %d rows instead of %d — see the CASA log %s'
                        % (source.name, rows, source_rows, casa_log_path(casa)))
    if changed_files(before):
        raise ReprocessingError('%s changed while it was being converted — check it, and report this to the ALMA '
                        'helpdesk with the CASA log %s' % (source, casa_log_path(casa)))


def _os_error(action, exc):
    """PrepError for a failed file operation: 'cannot ACTION (FILE: REASON) — ...'."""
    reason = exc.strerror or str(exc)
    if getattr(exc, 'filename', None):
        reason = '%s: %s' % (exc.filename, reason)
    return ReprocessingError('cannot %s (%s) — check the permissions and the free space there' % (action, reason))


def copy_to(*, source, destination, temporary):
    """Copy a file or directory to temporary, then rename it to destination."""
    try:
        if source.is_dir():
            shutil.copytree(str(source), str(temporary), symlinks=False)
        else:
            shutil.copy2(str(source), str(temporary))
        make_user_writable(temporary)
        os.rename(str(temporary), str(destination))
    except shutil.Error as exc:
        first = exc.args[0][0] if exc.args and exc.args[0] else ('?', '?', str(exc))
        raise ReprocessingError('cannot copy %s (%s: %s) — check the permissions and the free space there'
                        % (source.name, first[0], first[2]))
    except OSError as exc:
        raise _os_error('copy %s' % source.name, exc)


def link_to(*, source, destination):
    try:
        os.symlink(str(source), str(destination))
    except OSError as exc:
        raise _os_error('link %s' % source.name, exc)


def move_to(*, source, destination):
    try:
        os.rename(str(source), str(destination))    # atomic: never half-moved
    except OSError as exc:
        raise _os_error('move %s' % source.name, exc)


def _undo(*, plan, moved, created_partial):
    """Move back what was moved, then remove the partial output; returns what could not be undone."""
    problems = []
    for source, destination in reversed(moved):
        try:
            os.rename(str(destination), str(source))
        except OSError as exc:
            problems.append('%s is still at %s (%s)' % (source.name, destination, exc.strerror or exc))
    if problems:
        return problems     # the partial output holds the user's data: keep it
    if not created_partial:
        return problems     # someone else's directory: never remove it
    try:
        remove_tree(plan.partial_output)
    except ReprocessingError as exc:
        problems.append(str(exc).split(' — ')[0])
    return problems


def execute_plan(plan, *, casa_logfile, say):
    """Build plan.partial_output, then rename it to plan.output; undo everything on any error."""
    moved = []      # (source, destination) of every rename done by --move, for the undo
    partial = plan.partial_output
    created_partial = False
    try:
        with signals_as_exceptions():
            try:
                os.mkdir(str(partial))
                created_partial = True
                for directory in (MS_DIR, CALTABLES_DIR, STAGING_DIR):
                    os.mkdir(str(partial / directory))
            except OSError as exc:
                raise _os_error('create', exc)
            casa = None
            for number, step in enumerate(plan.steps, 1):
                destination = partial / step.destination
                temporary = partial / STAGING_DIR / step.destination.name
                say('[%d/%d] %s %s -> %s' % (number, len(plan.steps), step_verb(step, mode=plan.mode),
                                             step.source.name, step.destination))
                if step.action == ACTION_CONVERT:
                    casa = casa or load_casa(logfile=casa_logfile)
                    convert_measurement_set(casa, source=step.source, destination=temporary,
                                            datacolumn=step.datacolumn)
                    try:
                        os.rename(str(temporary), str(destination))
                    except OSError as exc:
                        raise _os_error('rename', exc)
                elif step.action == ACTION_COPY or plan.mode == MODE_COPY:
                    copy_to(source=step.source, destination=destination, temporary=temporary)
                elif plan.mode == MODE_LINK:
                    link_to(source=step.source, destination=destination)
                else:
                    move_to(source=step.source, destination=destination)
                    moved.append((step.source, destination))
            contdat = partial / CALTABLES_DIR / 'cont.dat'
            if contdat.is_file():  # the delivered cont.dat: later runs tell an edit by content, not by times
                write_atomically(partial / CALTABLES_DIR / CONTDAT_FINGERPRINT_NAME, contdat_fingerprint(contdat) + '\n')
            try:
                os.rmdir(str(partial / STAGING_DIR))
            except OSError as exc:
                raise _os_error('remove', exc)
            if os.path.lexists(str(plan.output)):
                raise ReprocessingError('%s appeared while this script was running — remove or rename it and run '
                                'again' % plan.output)
            try:
                os.rename(str(partial), str(plan.output))
            except OSError as exc:
                raise _os_error('rename the finished output to %s' % plan.output, exc)
    except BaseException as exc:  # undone whatever ended it; a signal stays a signal and a bug a bug
        problems = _undo(plan=plan, moved=moved, created_partial=created_partial)
        undone = ''
        if problems:
            undone = ('; the undo failed too: %s — move these back into %s by hand, then remove %s'
                      % ('; '.join(problems), plan.working, partial))
        elif moved:
            undone = ' (everything moved was moved back to %s)' % plan.working
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            raise Interrupted(getattr(exc, 'number', 2), 'interrupted — nothing was kept; run the script again'
                              + undone)
        if isinstance(exc, ReprocessingError):
            raise ReprocessingError(str(exc) + undone)
        if isinstance(exc, OSError):
            raise ReprocessingError(str(_os_error('write', exc)) + undone)
        if undone:
            say('  %s' % undone.lstrip(' ;()').rstrip(')'))
        raise
