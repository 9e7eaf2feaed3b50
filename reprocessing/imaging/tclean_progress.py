"""tclean progress from its log: while a cube's tclean runs, what its CASA log says is done, as progress lines.

tclean is one long C++ call, and the only running account of it is the CASA log, so a thread of
the process that runs tclean reads that log's new lines while the call lasts, and reports at a
person's pace what phase the cube is in, how many of its channels (or chunks) that phase has done,
how long it has taken and, where the log counts channels, about how long the phase has left.  The
thread is joined when the call returns and is a daemon thread, so it never outlives its process.
"""

import contextlib
import os
import re
import threading
import time

from ..core.messages import duration_text

# -- what CASA 6.7's tclean writes while it images a cube ------------------------------------------
#
# Measured with modular CASA 6.7.0.31 (serial tclean, specmode cube, gridder standard, hogbom,
# auto-multithresh; the casa engine's two calls: the dirty image with niter=0, then the cleaning with
# calcpsf=calcres=False).  The log's lines are "date<TAB>PRIORITY<TAB>origin<TAB>message"; the
# messages relied on, in the order they come:
#
#   SynthesisImagerVi2::nSubCubeFitInMemory  Required memory: 0.1458 GB. Available mem.: 17.3 GB (...) => Subcubes: 1. ...
#   SynthesisImager::makePSF                 ----------- Make PSF -----------
#   SynthesisImager::executeMajorCycle       ----------- Run Major Cycle 2 -----------
#   SynthesisDeconvolver::executeCubeMinorCycle  ----------- Run Automask  -----------
#   SynthesisDeconvolver::excuteAutomask     Processing channels in range [0, 121]
#   SDMaskHandler::autoMaskByMultiThreshold  *** Start auto-multithresh processing for Channel 40***
#   SynthesisDeconvolver::executeCubeMinorCycle  ----------- Run Minor Cycle Iterations  -----------
#   SynthesisDeconvolver::executeMinorCycle  Processing channels in range [0, 121]
#   SDAlgorithmBase::deconvolve              [<imagename>:C40] iters=0->10 [10], model=..., peakres=..., Reached ...
#   SDAlgorithmBase::restore                 [<imagename>] : Restoring model image.
#   SIImageStore::restore                    Beam for chan : 40 : 1.89 arcsec, 1.61 arcsec, 53.3 deg
#   SDAlgorithmBase::pbcor                   [<imagename>] : Applying PB correction
#   tclean::::casa                           ##### End Task: tclean               #####
#
# * Gridding (the PSF, every major cycle) takes all channels in one pass, and the log says nothing
#   until the pass ends.  Each banner comes once from the outer call and once more for each subcube
#   (1 + N lines, N from "Subcubes: N", which tclean chooses from the memory available: with
#   system.resources.memory set to 12 MB in ~/.casarc a 32-channel cube ran as 4 subcubes, 5 "Make PSF"
#   and 5 "Run Major Cycle 1" lines a second or two apart), so a cube split in subcubes is counted in
#   chunks; a cube in one subcube only has its elapsed time, and the last major cycle's duration.
# * Automasking, minor cycles and restoring go through the channels in order, one line per channel,
#   written as they go (a 122-channel 144x144 cube: automask 11 s at about 10 channels a second,
#   minor cycle under 1 s, restoring 5 s), so they are counted in channels: a channel's automask
#   line comes when it starts, its minor-cycle line (with its iterations) when it is done.
# * Every major cycle images all channels again, and how many major cycles there will be is decided
#   by convergence after each one (measured: 2 to 4 in the cleaning call of the simulated cubes): the
#   log cannot tell, so the time left is only ever that of the phase running, named with its cycle.
#
# The log's timestamps have a resolution of one second; the lines' times here are when they were
# read (once a second), which is as good.  Mosaic cubes (one call, no dirty image first) were not
# measured; tclean on MPI servers is not followed.
#
# The thread costs nothing measurable: tclean releases the GIL (a Python thread ticking every 0.1 s
# during a cube's tclean never waited more than 0.11 s), and following the 122-channel cube's 17 s
# tclean, whose log grew by 270 kB, took 6 ms of CPU in the thread (0.04%).

_SUBCUBES = re.compile(r'=> Subcubes: (\d+)\.')
_PSF = re.compile(r'-{5,} Make PSF -{5,}')
_MAJOR = re.compile(r'-{5,} Run Major Cycle (\d+) -{5,}')
_AUTOMASK = re.compile(r'-{5,} Run Automask +-{5,}')
_MINOR = re.compile(r'-{5,} Run Minor Cycle Iterations +-{5,}')
_RANGE = re.compile(r'^Processing channels in range \[(\d+), (\d+)\]')
_AUTOMASK_CHANNEL = re.compile(r'\*\*\* Start auto-multithresh processing for Channel (\d+)\*\*\*')
_MINOR_CHANNEL = re.compile(r'^\[[^\]]*:C(\d+)\] iters=')
_RESTORE = re.compile(r'Restoring model image')
_RESTORE_CHANNEL = re.compile(r'^Beam for chan : (\d+) :')
_PBCOR = re.compile(r'Applying PB correction')
_END = re.compile(r'End Task: tclean ')

PROGRESS_SECONDS_ENV = 'REPROCESSING_PROGRESS_SECONDS'  # seconds between progress lines at first (default 15)
PROGRESS_SECONDS = 15.0
PROGRESS_LONGEST_GAP = 120.0  # the gap grows with the call (a twentieth of its time so far), up to this
PROGRESS_REMINDER = 300.0     # a phase with nothing new is mentioned again after this long


class TcleanLog(object):
    """One tclean call of a cube as its log lines tell it: the phase, how far it is, since when (pure)."""

    def __init__(self, nchan):
        self.nchan = nchan
        self.phase = None       # 'PSF', 'major cycle 2', 'automask 1', 'minor cycle 1', 'restoring', ...
        self.counted = None     # 'channels', 'chunks' or None (nothing counted)
        self.started = None
        self.first, self.total, self.done = 0, nchan, 0
        self.banners = 0        # of a gridding phase: 1 + one per subcube started
        self.subcubes = 1
        self.minor_passes = 0
        self.last_major_seconds = None

    def read(self, message, now):
        """Take one log message (the text after the origin) read at time now."""
        message = message.strip()
        found = _SUBCUBES.search(message)
        if found:
            self.subcubes = max(1, int(found.group(1)))
            return
        found = _MAJOR.search(message)
        if found:
            phase = 'major cycle %s' % found.group(1)
            if phase == self.phase:
                self.banners += 1
            else:
                self._start(phase, now, counted='chunks')
            return
        if _PSF.search(message):
            if self.phase == 'PSF':
                self.banners += 1
            else:
                self._start('PSF', now, counted='chunks')
            return
        if _AUTOMASK.search(message):
            self.minor_passes += 1
            self._start('automask %d' % self.minor_passes, now, counted='channels')
            return
        if _MINOR.search(message):
            if not (self.phase or '').startswith('automask'):  # a mask without automasking: a pass of its own
                self.minor_passes += 1
            self._start('minor cycle %d' % self.minor_passes, now, counted='channels')
            return
        if _RESTORE.search(message):
            self._start('restoring', now, counted='channels')
            return
        if _PBCOR.search(message):
            self._start('primary-beam correction', now, counted=None)
            return
        if _END.search(message):
            self._start(None, now, counted=None)
            return
        if self.counted != 'channels':
            return
        found = _RANGE.search(message)
        if found:
            self.first = int(found.group(1))
            self.total = int(found.group(2)) - self.first + 1
            return
        found = _AUTOMASK_CHANNEL.search(message)  # channel k starts: the ones before it are done
        if found:
            self.done = max(self.done, int(found.group(1)) - self.first)
            return
        found = _MINOR_CHANNEL.search(message) if self.phase.startswith('minor') else None
        if found:  # channel k is done
            self.done = max(self.done, int(found.group(1)) - self.first + 1)
            return
        found = _RESTORE_CHANNEL.search(message) if self.phase == 'restoring' else None
        if found:
            self.done = max(self.done, int(found.group(1)) - self.first)

    def _start(self, phase, now, *, counted):
        if self.phase and self.phase.startswith('major cycle'):
            self.last_major_seconds = now - self.started
        self.phase, self.counted, self.started = phase, counted, now
        self.first, self.total, self.done, self.banners = 0, self.nchan, 0, 1

    def progress(self, now):
        """(what changed, the line) of the phase now, or None outside tclean's phases."""
        if self.phase is None:
            return None
        elapsed = now - self.started
        if self.counted == 'chunks' and self.subcubes > 1:
            done, total, unit = min(max(0, self.banners - 2), self.subcubes), self.subcubes, 'chunks of channels'
        elif self.counted == 'channels':
            done, total, unit = min(self.done, self.total), self.total, 'channels'
        else:
            text = '%s: %s so far' % (self.phase, duration_text(elapsed))
            if self.counted == 'chunks':
                text += ' (all %d channels in one pass: CASA\'s log counts none)' % self.nchan
                if self.last_major_seconds is not None and self.phase.startswith('major cycle'):
                    text += '; the last major cycle took %s' % duration_text(self.last_major_seconds)
            return (self.phase, None), text
        text = '%s: %d of %d %s in %s' % (self.phase, done, total, unit, duration_text(elapsed))
        if 0 < done < total:
            text += ', about %s left of it' % duration_text(elapsed / done * (total - done))
        return (self.phase, done), text


def progress_interval():
    """Seconds between progress lines at first: REPROCESSING_PROGRESS_SECONDS, else 15."""
    try:
        seconds = float(os.environ.get(PROGRESS_SECONDS_ENV, PROGRESS_SECONDS))
    except ValueError:
        seconds = PROGRESS_SECONDS
    return seconds if seconds > 0 else PROGRESS_SECONDS


@contextlib.contextmanager
def tclean_progress(report, *, logfile, nchan, label):
    """While the block runs one tclean call of a cube, report('label, phase: ...') from the CASA log.

    A line comes when the log has something new to say and the last one is old enough: 15 s at first,
    then a twentieth of the call's time so far, at most 2 min apart; a phase is not mentioned before it
    has run for a third of that first gap (5 s: shorter ones have nothing to tell), and one with nothing
    new is named again after 5 min.  Nothing is followed without a log file.
    """
    if not logfile or not os.path.isfile(str(logfile)):
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_follow, args=(report, str(logfile), os.path.getsize(str(logfile)),
                                                    TcleanLog(nchan), label, stop))
    thread.daemon = True  # never keeps its process alive
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _follow(report, logfile, offset, log, label, stop):
    interval = progress_interval()
    started = last_time = time.time()
    last_key, pending = None, b''
    try:
        with open(logfile, 'rb') as handle:
            handle.seek(offset)
            while not stop.wait(min(1.0, interval)):
                pending += handle.read()
                lines = pending.split(b'\n')
                pending = lines.pop()  # a line still being written
                now = time.time()
                for line in lines:
                    log.read(line.decode('utf-8', 'replace').split('\t', 3)[-1], now)
                current = log.progress(now)
                if current is None:
                    continue
                gap = now - last_time
                if gap >= max(interval, min(PROGRESS_LONGEST_GAP, (now - started) / 20.0)) and \
                        now - log.started >= interval / 3.0 and (current[0] != last_key or gap >= PROGRESS_REMINDER):
                    report('%s, %s' % (label, current[1]))
                    last_time, last_key = now, current[0]
    except Exception:  # an unreadable log or a closed output: no progress lines, the imaging goes on
        return
