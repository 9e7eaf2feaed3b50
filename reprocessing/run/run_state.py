"""One run's state: the lock, the journal of what to undo if the run dies, and publishing outputs."""

import json
import os
import time
from pathlib import Path

from ..core.fileops import DISK_FULL_SIGNS, PARTIAL_TAG, free_space_text, is_inside, is_partial_name, relative_path, remove_file, remove_tree, write_atomically
from ..core.host import host_name, now_text, owner_name
from ..core.layout import JOURNAL_NAME, LOCK_NAME
from ..core.messages import ReprocessingError, say
from .image_set import recover_image_set, valid_image_set
from .orphans import stop_orphan_workers


# Test-only: the name of a checkpoint at which the run stops and waits to be killed.
PAUSE_ENV = 'SCRIPTFORREPROCESSING_TEST_PAUSE_AT'


class RunState(object):
    """The lock, the journal and the staging area of one run.

    Nothing of the user's is ever moved.  What a run creates (partial outputs,
    staging shadows) is written to the journal *before* it is created, so that
    the next run can remove it if this one is killed, even with SIGKILL.
    """

    def __init__(self, delivery):
        self.delivery = delivery
        self.lock_path = delivery.root / LOCK_NAME
        self.journal_path = delivery.root / JOURNAL_NAME
        self.staging_dir = delivery.staging_dir
        self.logs_dir = delivery.logs_dir
        self._lock_file = None
        self._journal = None
        self.casa_logfile = None
        self.console_log = None
        self.pipeline_dir = None  # where this process's first pipeline step ran
        self.results = []
        self.published = []        # final outputs this run gave their names: they stay if it is stopped
        self.command = None        # the command line, for the report
        self.started = None        # time.time() when the run began
        self.current_step = None   # {'step', 'started'} of the step running now: the failed one if the run stops
        self.report_dir = None     # this run's folder in working_reprocess/report/

    # -- lock ---------------------------------------------------------------
    def acquire(self):
        import fcntl
        try:
            handle = open(str(self.lock_path), 'a+')
        except OSError as error:
            if self.lock_path.exists() and os.access(str(self.delivery.root), os.W_OK):
                raise ReprocessingError('the lock %s belongs to %s and you may not write it (%s) — ask them whether '
                                        'a run of theirs is working here; if not, remove the file'
                                        % (self.lock_path, owner_name(self.lock_path), error.strerror))
            raise ReprocessingError('cannot create %s (%s) — check that you may write in %s'
                                    % (self.lock_path, error.strerror, self.delivery.root))
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read()
            if not self._stop_orphans(holder, handle):
                handle.close()
                raise ReprocessingError('another run is working in this delivery (%s) — wait for it to finish'
                                        % (holder.splitlines() or ['another process'])[0].strip())
        handle.seek(0)
        handle.truncate()
        handle.write('pid %d on %s since %s\n' % (os.getpid(), host_name(), now_text()))
        handle.flush()
        self._lock_file = handle

    def record_workers(self, pids):
        """Write the worker processes' pids into the lock file: they hold the lock too (inherited), and the
        next run stops them if they outlive this process (orphans)."""
        if self._lock_file is None:
            return
        self._lock_file.seek(0)
        first = (self._lock_file.read().splitlines() or [''])[0]
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write('%s\nworkers %s\n' % (first, ' '.join(str(pid) for pid in pids)))
        self._lock_file.flush()

    def _stop_orphans(self, holder, handle):
        return stop_orphan_workers(holder, handle, self.logs_dir)

    def release(self):
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- journal ------------------------------------------------------------
    def begin(self, command):
        self.command, self.started = command, time.time()
        self._journal = {'pid': os.getpid(), 'started': now_text(), 'command': command, 'created': [],
                         'set_aside': []}
        self._write_journal()

    def set_aside(self, original):
        """Rename a user's file aside (to be replaced); the next run puts it back if this one dies."""
        original = Path(original)
        aside = original.with_name('.%s.replaced-%d' % (original.name, os.getpid()))
        self._journal['set_aside'].append([str(aside), str(original)])
        self._write_journal()
        os.rename(str(original), str(aside))
        return aside

    def put_back(self, aside, original):
        """Undo set_aside (the replacement failed)."""
        if not (Path(original).exists() or Path(original).is_symlink()):
            os.rename(str(aside), str(original))
        self._forget_aside(aside)

    def discard_aside(self, aside):
        """The replacement is published: the old version set aside can go."""
        remove_tree(aside)
        self._forget_aside(aside)

    def _forget_aside(self, aside):
        self._journal['set_aside'] = [pair for pair in self._journal['set_aside'] if pair[0] != str(aside)]
        self._write_journal()

    def record_logs(self, *logs):
        """Remember where CASA writes (its log, and what its C++ prints): if CASA kills the process (an
        abort when the disk is full), the next run looks there for what happened."""
        self._journal['logs'] = [str(log) for log in logs if log]
        self._write_journal()

    def begin_publishing_set(self, outputs):
        """Journal a set of outputs to be published together, before the first rename.

        Each new output is recorded with its inode (a rename keeps it), so that a rollback removes
        only what this run published, never an old or a user's file a journal happens to name.
        """
        members = []
        for partial, final in outputs:
            info = os.stat(str(partial))
            members.append({'final': str(final), 'inode': [info.st_dev, info.st_ino]})
        self._journal['publishing'] = {'members': members, 'complete': False}
        self._write_journal()

    def publishing_set_complete(self):
        """Every member has its new name: from now on the next run keeps the new set."""
        self._journal['publishing']['complete'] = True
        self._write_journal()

    def roll_back_publishing_set(self):
        """Publishing failed or was stopped in this run: every member back to its state before it."""
        self.recover_publishing_set(self._journal['publishing'], self._journal['set_aside'])
        finals = set(member['final'] for member in self._journal['publishing']['members'])
        self.published = [path for path in self.published if str(path) not in finals]
        self._journal['set_aside'] = [pair for pair in self._journal['set_aside'] if pair[1] not in finals]
        self.end_publishing_set()

    def end_publishing_set(self):
        self._journal.pop('publishing', None)
        self._write_journal()

    # -- images replaced under --update: the new set is kept whole, or the old one put back ---------------
    def begin_image_set(self, images_dir, aside, old_names):
        """Journal, before the first move, that the images folder's old files old_names go into aside (a
        .stale-images.partial-PID folder in it, or None when nothing is replaced): until image_set_done,
        a run that fails or is killed gets them back and loses the new files it had put there."""
        self._journal['image_set'] = {'dir': str(images_dir), 'aside': str(aside) if aside else None,
                                      'old': list(old_names), 'new': [], 'records': [], 'complete': False}
        self._write_journal()

    def image_set_adding(self, path, name):
        """path (a new file or folder) is about to be moved into the images folder as name: journalled
        with its inode (a rename keeps it), so that a rollback removes only what this run put there."""
        entry = self._journal.get('image_set') if self._journal else None
        if entry is None:
            return
        info = os.lstat(str(path))
        entry['new'].append([name, [info.st_dev, info.st_ino]])
        self._write_journal()

    def image_set_records(self, names):
        """The provenance records about to be written into the images folder for the new images."""
        entry = self._journal.get('image_set') if self._journal else None
        if entry is not None:
            entry['records'] = sorted(set(entry['records']) | set(names))
            self._write_journal()

    def image_set_done(self):
        """Every new image and its record is in place: the old versions set aside can go."""
        entry = self._journal.get('image_set') if self._journal else None
        if entry is None:
            return
        entry['complete'] = True
        self._write_journal()
        if entry['aside'] and Path(entry['aside']).exists():
            remove_tree(entry['aside'])
        self._journal.pop('image_set', None)
        self._write_journal()

    def _recover_image_set(self, entry):
        recover_image_set(entry, self.delivery.root)

    def will_create(self, path):
        """Record path before creating it: the next run removes it if this one dies."""
        self._journal['created'].append(str(path))
        self._write_journal()

    def created_for_good(self, path):
        """path (a temporary) was renamed or removed: nothing to undo for it any more."""
        self._journal['created'] = [p for p in self._journal['created'] if p != str(path)]
        self._write_journal()

    def finish(self):
        """Remove what this run created and did not keep; then forget the journal."""
        if self._journal is None:
            return
        self.undo(self._journal)
        remove_file(self.journal_path)
        self._journal = None

    def _write_journal(self):
        write_atomically(self.journal_path, json.dumps(self._journal, indent=1))

    def _read_journal(self):
        """The journal of a killed run, its entries checked: a damaged or hand-edited one undoes nothing wrong."""
        try:
            with open(str(self.journal_path)) as handle:
                journal = json.load(handle)
        except (OSError, ValueError):
            journal = None
        if not isinstance(journal, dict):
            say('  (its journal %s is damaged: only names this tool gives its temporaries are cleaned up)'
                % self.journal_path.name)
            journal = {}
        created = [text for text in journal.get('created') or [] if isinstance(text, str)] \
            if isinstance(journal.get('created'), list) else []
        set_aside = [pair for pair in journal.get('set_aside') or [] if isinstance(pair, list) and len(pair) == 2
                     and all(isinstance(text, str) for text in pair)] \
            if isinstance(journal.get('set_aside'), list) else []
        logs = [text for text in journal.get('logs') or [] if isinstance(text, str)] \
            if isinstance(journal.get('logs'), list) else []
        publishing = journal.get('publishing')
        members = publishing.get('members') if isinstance(publishing, dict) else None
        members = [m for m in members if isinstance(m, dict) and isinstance(m.get('final'), str)
                   and isinstance(m.get('inode'), list) and len(m['inode']) == 2
                   and all(isinstance(n, int) for n in m['inode'])] if isinstance(members, list) else []
        publishing = {'members': members, 'complete': bool(publishing.get('complete'))} if members else None
        return dict(journal, created=created, set_aside=set_aside, logs=logs, publishing=publishing,
                    image_set=valid_image_set(journal.get('image_set')))

    def made_by_this_tool(self, path):
        """True for what this tool creates: anything in working_reprocess/, or a .NAME.partial-PID temporary.

        The journal lists only such paths; undo checks it all the same, so that a damaged or hand-edited
        journal can never make a run remove a user's MS or a published output.
        """
        path = Path(os.path.abspath(str(path)))
        work_dir = Path(os.path.abspath(str(self.delivery.work_dir)))
        if is_inside(path, work_dir) and path != work_dir:
            return not (self.delivery.work_dir.is_symlink())
        return is_partial_name(path.name)

    def recover(self):
        """Undo what a killed run left behind; say what was recovered."""
        if not self.journal_path.exists():
            self._sweep_partials(quiet=False)
            return
        journal = self._read_journal()
        say('Recovering from an interrupted run (pid %s, started %s: %s):'
            % (journal.get('pid', '?'), journal.get('started', '?'), journal.get('command', '?')))
        say('  ' + describe_unfinished_run(journal, self.delivery.root))
        if journal.get('publishing'):
            self.recover_publishing_set(journal['publishing'], journal.get('set_aside', []))
        removed = self.undo(journal)
        removed += self._sweep_partials(quiet=True)
        for path in removed:
            say('  removed its unfinished %s' % relative_path(path, self.delivery.root))
        if not removed:
            say('  it left nothing behind to remove')
        say('  your measurement sets were never moved: nothing else to restore')
        remove_file(self.journal_path)

    def recover_publishing_set(self, publishing, set_aside):
        """A killed run was publishing a set of outputs: keep the whole new set, or roll it all back."""
        members = publishing['members']
        names = [relative_path(member['final'], self.delivery.root) for member in members]
        if publishing['complete']:
            say('  it had published all %d of %s: the new ones are kept (their old versions are removed)'
                % (len(members), ', '.join(names)))
            return  # undo removes the old versions still set aside
        asides = dict((original, aside) for aside, original in set_aside)
        restored, removed, missing = [], [], []
        for member in members:
            final = Path(member['final'])
            aside = Path(asides[member['final']]) if member['final'] in asides else None
            ours = aside is not None and aside.parent == final.parent \
                and aside.name.startswith('.%s.replaced-' % final.name) and aside.exists()
            try:
                info = os.lstat(str(final))
                published = [info.st_dev, info.st_ino] == member['inode']
            except OSError:
                published = False
            if published:
                remove_tree(final)   # this member's new version: its rename carried the inode journalled
                removed.append(relative_path(final, self.delivery.root))
            if ours and not (final.exists() or final.is_symlink()):
                os.rename(str(aside), str(final))
                restored.append(relative_path(final, self.delivery.root))
            elif not (final.exists() or final.is_symlink()):
                missing.append(relative_path(final, self.delivery.root))
        say('  publishing %d line outputs together (%s) was interrupted: all are rolled back to their state '
            'before that run' % (len(members), ', '.join(names)))
        if removed:
            say('  removed the new %s it had published' % ', '.join(removed))
        if restored:
            say('  put back the old %s' % ', '.join(restored))
        if missing:
            say('  %s had no earlier version: none now' % ', '.join(missing))
        say('  so every execution block has its line MS from before that run — run the same command again to '
            'make them all new')

    def undo(self, journal):
        removed = []
        if journal.get('image_set'):
            self._recover_image_set(journal['image_set'])
            journal.pop('image_set', None)
        for aside_text, original_text in reversed(journal.get('set_aside', [])):
            aside, original = Path(aside_text), Path(original_text)
            ours = aside.parent == original.parent and aside.name.startswith('.%s.replaced-' % original.name)
            if not (ours and is_inside(aside, self.delivery.root) and aside.exists()):
                continue
            if original.exists() or original.is_symlink():
                remove_tree(aside)  # its replacement was published
            else:
                os.rename(str(aside), str(original))
                say('  put back %s, which the interrupted run had set aside to replace it'
                    % relative_path(original, self.delivery.root))
        for text in reversed(journal.get('created', [])):
            path = Path(text)
            if not self.made_by_this_tool(path):
                continue  # never a user's MS or a published output, whatever a journal says
            if path.exists() or path.is_symlink():
                remove_tree(path)
                removed.append(path)
        return removed

    def _sweep_partials(self, quiet):
        """Partial outputs whose journal entry was lost are recognisable by name."""
        removed = []
        for folder in (self.delivery.ms_dir, self.delivery.root):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if is_partial_name(path.name):
                    remove_tree(path)
                    removed.append(path)
                    if not quiet:
                        say('Removed %s, left unfinished by an earlier run'
                            % relative_path(path, self.delivery.root))
        return removed

    # -- temporary outputs ----------------------------------------------------
    def partial_name(self, final):
        final = Path(final)
        return final.with_name('.%s%s%d' % (final.name, PARTIAL_TAG, os.getpid()))

    def publish(self, partial, final):
        """Give a complete output its final name."""
        final = Path(final)
        if final.exists() or final.is_symlink():
            raise ReprocessingError('%s appeared while this run was writing it — the new result is kept as %s'
                                    % (final, partial))
        os.rename(str(partial), str(final))
        pause_point('renamed', self)  # test-only: a signal between the rename and the journal's note of it
        self.created_for_good(partial)
        self.published.append(final)


# What a dying CASA prints (it goes to the run's console log), and what it means.  Measured with CASA
# 6.7 when the disk fills up during tclean: "terminate called after throwing an instance of
# 'casacore::AipsError'  what():  FilebufIO: write error for file .../img.pb.tt0/logtable/table.dat_tmp:
# No space left on device", then SIGABRT (exit status 134), with no Python code run (DISK_FULL_SIGNS).
CRASH_SIGNS = ('terminate called after throwing', 'Segmentation fault', 'Fatal Python error')


def describe_unfinished_run(journal, root):
    """One line on how the run of a journal ended, from what CASA printed in its last moments."""
    pid = journal.get('pid', '?')
    for log in journal.get('logs', []):
        tail = _tail(log)
        for sign in DISK_FULL_SIGNS:
            line = _last_line_with(tail, sign)
            if line:
                return ('the previous run (pid %s) ended without finishing: the disk was full (%s says "%s") — '
                        '%s now in %s; free some space before running it again'
                        % (pid, Path(log).name, line, free_space_text(root), root))
        for sign in CRASH_SIGNS:
            line = _last_line_with(tail, sign)
            if line:
                return ('the previous run (pid %s) ended without finishing: CASA crashed (%s says "%s")'
                        % (pid, Path(log).name, line))
    return ('the previous run (pid %s) ended without finishing — killed (SIGKILL, a time limit, out of memory) or '
            'crashed; %s now in %s' % (pid, free_space_text(root), root))


def _tail(path, size=65536):
    try:
        with open(str(path), 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def _last_line_with(text, sign):
    """The last line of text with sign in it, its end kept when it is long (where CASA says why)."""
    lines = [' '.join(line.split()) for line in text.splitlines() if sign in line]
    if not lines:
        return None
    return lines[-1] if len(lines[-1]) <= 160 else '...' + lines[-1][-157:]


# Test-only: the name of a checkpoint at which the run waits until the test removes the marker it writes.
HOLD_ENV = 'SCRIPTFORREPROCESSING_TEST_HOLD_AT'
_HELD = set()


def pause_point(name, state, *, folder=None):
    """Test-only: stop here and wait to be killed when the test asks for it (PAUSE_ENV), or hold here
    once until the test removes the marker (HOLD_ENV), e.g. to fill the disk meanwhile.  The marker is written
    in the delivery, or in folder (a worker, which has no state)."""
    root = Path(folder) if folder is not None else state.delivery.root
    if os.environ.get(HOLD_ENV) == name and name not in _HELD:
        _HELD.add(name)
        marker = root / ('.held-at-' + name)
        marker.write_text(str(os.getpid()))
        while marker.exists():
            time.sleep(0.1)
        return
    if os.environ.get(PAUSE_ENV) != name:
        return
    marker = root / ('.paused-at-' + name)
    marker.write_text(str(os.getpid()))
    while True:
        time.sleep(0.2)


def publish_line_outputs(state, outputs, *, replace):
    """Give complete line MSes their final names: [(partial, final)], all or none as the next run sees it.

    The set is journalled before its first rename; a run killed before the last new line MS has its
    name is rolled back whole by the next run (every old line MS put back, every new one removed), so
    execution blocks never end with a mix of old and new line MSes.  With replace (--overwrite-line),
    an existing line MS is renamed aside just before its new one is published, and removed once all are.
    Returns the final names whose earlier line MS was replaced.
    """
    if not replace:
        existing = [final for _partial, final in outputs if final.exists() or final.is_symlink()]
        if existing:
            raise ReprocessingError('%s already exists — move it away, or add --overwrite-line to replace it'
                                    % existing[0])
    state.begin_publishing_set(outputs)
    retired = []
    try:
        for partial, final in outputs:
            if final.exists() or final.is_symlink():
                if not replace:
                    raise ReprocessingError('%s already exists — move it away, or add --overwrite-line to replace it'
                                            % final)
                retired.append((state.set_aside(final), final))
                pause_point('line-set-aside', state)
            state.publish(partial, final)
            pause_point('line-published', state)
    except BaseException:
        state.roll_back_publishing_set()
        raise
    state.publishing_set_complete()
    pause_point('line-set-complete', state)
    for aside, _final in retired:
        state.discard_aside(aside)
    state.end_publishing_set()
    return [final for _aside, final in retired]
