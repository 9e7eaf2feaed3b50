#!/usr/bin/env python3
"""A split cube stopped at random moments, then the same command (issue 28's "SIGKILL and SIGTERM at random
moments then the same command: finished chunks reused, the final cube equal"), checked, not timed.

A control run makes the cube on a fresh copy of one simulated delivery (one EB, one spw; --split-cube CHUNKS
--jobs JOBS); then each round, on a fresh copy: the same command stopped STOPS times in a row, each time at a
moment drawn uniformly over the control run's duration with a signal drawn from SIGKILL, SIGTERM, SIGINT, SIGHUP,
then the command once more to its end.  Checked after each stop: exit status (-9; 1 with one ERROR line that
says it was that signal; 0 when it had finished; -15 before Python ran), no worker process left; at the end: the
FITS data equal to the control run's byte for byte, the user's MSes unchanged, nothing partial and no store left.

Usage: python bench/stop_anywhere.py OUTDIR [--nchan 256] [--chunks 8] [--jobs 2] [--rounds 10] [--stops 2]
       [--seed 1] [--command '--image --specmodes mfs,cube --moments 0,1 --jobs 2']   (another command instead)
"""
import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests' / 'support'))
SCRIPT = REPO / 'scriptForReprocessing.py'

from stop_checks import fits_data, recorded_workers, running  # noqa: E402 (tests/support, on the path above)
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ms_digest(delivery):
    digest = hashlib.sha1()
    for path in sorted((delivery / 'measurement_sets').rglob('*')):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(delivery)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run(delivery, args):
    return subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + args, cwd=str(delivery),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def stopped(delivery, args, at, how):
    """Stop the command at `at` seconds with `how`; (exit status, the ERROR lines, problems found)."""
    process = run(delivery, args)
    time.sleep(at)
    process.send_signal(how)
    out, err = process.communicate(timeout=600)
    problems, errors = [], [line for line in err.splitlines() if line.startswith('ERROR')]
    code = process.returncode
    if 'Traceback' in out + err:
        problems.append('a traceback')
    if code not in (0, -signal.SIGKILL, -signal.SIGTERM, 1) or (code == 1 and len(errors) != 1) or \
            (code == 1 and not errors[0].startswith('ERROR: stopped by signal %d ' % how)) or \
            (code == -signal.SIGTERM and (delivery / 'working_reprocess').exists()):
        problems.append('exit %s: %s' % (code, (err.strip().splitlines() or [''])[-1][:200]))
    deadline = time.time() + 10
    while [pid for pid in recorded_workers(delivery) if running(pid)] and time.time() < deadline:
        time.sleep(0.2)
    if [pid for pid in recorded_workers(delivery) if running(pid)]:
        problems.append('a worker outlived its run')
    return code, errors, problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('outdir')
    parser.add_argument('--nchan', type=int, default=256)
    parser.add_argument('--chunks', type=int, default=8)
    parser.add_argument('--jobs', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--stops', type=int, default=2)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--command', help='the options of another command to stop (default: the split cube)')
    options = parser.parse_args()
    out = Path(options.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from simulate_delivery import cached_delivery
    source = Path(cached_delivery(str(out / 'sim'), nchan=options.nchan, n_antennas=25, line_fwhm_kms=8.0,
                                  noise_jy=0.2, n_ebs=1, with_line_ms=True, spw_ids=(25,)))
    args = options.command.split() if options.command else [
        '--image', '--specmodes', 'cube', '--split-cube', str(options.chunks), '--jobs', str(options.jobs)]

    def fresh(name):
        target = out / name
        if target.exists():
            shutil.rmtree(str(target))
        shutil.copytree(str(source), str(target), symlinks=True)
        return target
    control = fresh('control')
    started = time.time()
    done = subprocess.run([sys.executable, str(SCRIPT), '--delivery', str(control)] + args, cwd=str(control),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    duration = time.time() - started
    assert done.returncode == 0, done.stderr
    reference = fits_data(control / 'images')
    print('control run: %.1f s, %d FITS files' % (duration, len(reference)), flush=True)
    chooser = random.Random(options.seed)
    failures = 0
    for number in range(options.rounds):
        delivery = fresh('round%d' % number)
        before = ms_digest(delivery)
        problems, stops = [], []
        for _stop in range(options.stops):
            at, how = round(chooser.uniform(0.0, duration), 2), chooser.choice(SIGNALS)
            code, errors, found = stopped(delivery, args, at, how)
            stops.append('%s at %.1f s: exit %s%s' % (how.name, at, code, ' (%s)' % errors[0][7:90] if errors else ''))
            problems += found
            if code == 0:
                break
        if not (delivery / 'images').exists():
            final = subprocess.run([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + args,
                                   cwd=str(delivery), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True)
            if final.returncode != 0:
                problems.append('the same command again: exit %s: %s' % (final.returncode, final.stderr[-200:]))
            reused = [line.strip() for line in final.stdout.splitlines() if 'kept from a run' in line
                      or 'finished by a run that was stopped' in line]
            stops.append('then: %s' % (reused[0][:120] if reused else 'nothing kept'))
        if fits_data(delivery / 'images') != reference:
            problems.append('the FITS data differ from the control run\'s')
        if ms_digest(delivery) != before:
            problems.append('a user MS changed')
        if list(delivery.rglob('*.partial-*')) or (delivery / 'working_reprocess' / 'imaging-chunks').exists() \
                or (delivery / 'working_reprocess' / 'imaging-finished').exists():
            problems.append('something partial or a store was left')
        failures += bool(problems)
        print('round %d: %s — %s' % (number, '; '.join(stops), 'ok' if not problems else 'PROBLEMS: ' +
                                     '; '.join(problems)), flush=True)
        if not problems:
            shutil.rmtree(str(delivery))
    print('%d of %d rounds with problems' % (failures, options.rounds))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
