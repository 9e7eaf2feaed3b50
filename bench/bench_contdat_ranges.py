#!/usr/bin/env python3
"""Benchmark: reading and checking a cont.dat with many ranges in one window (issue 26: 4,000 ranges took
68 s for --check on a 10 MB delivery).

On one simulated delivery (2 execution blocks, 12 antennas, spws 25 and 27 of 1920 channels; cached in
.cache/bench) cont.dat is written with N ranges in spw 25 (N = 250 ... 4000, disjoint, as findcont writes
them) and ``--check`` is timed, whole command and the cont.dat part (from "checking" to the summary, read
from a timestamped copy of the output).  Linear means the time per range stays flat as N grows.

Target: 4000 ranges in one window checked in < 10 s on 2 cores.  Ranges further apart than a channel
each cost one advisechansel call per execution block (~50 ms on an idle machine: it reads the MS's times
at every call), so a sparse cont.dat stays linear with that constant; denser ranges go in groups.

Measured 2026-12-06 on this machine shared with other sessions (load average 11-17), 40 MB delivery,
spw 25 of 1920 channels (976.5625 kHz), the ranges 60 % of their step (N = 250: gaps of 3 MHz; N = 1000:
gaps of 0.75 MHz, narrower than a channel):

    N      main @ 2b51d64 (2 calls per range and EB)    this branch (grouped calls)
    250    94.8 s                                       68 s, 37 s (two runs)
    500    -                                            129 s (load 17)
    1000   166.4 s                                      7.4 s, 2.8 s
    4000   not run (about 11 min by the rate above)     6.3 s, 2.5 s

Not a test: it prints numbers.

Usage: python bench/bench_contdat_ranges.py [--counts 250,500,1000,2000,4000] [--repeats 1] [--script PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scriptForReprocessing.py'
sys.path.insert(0, str(REPO / 'tests' / 'support'))
sys.path.insert(0, str(REPO))


def delivery(cache, scratch):
    """A copy (in scratch) of the cached simulated delivery: the cache itself is never written."""
    from simulate_delivery import cached_delivery, copy_delivery
    source = Path(cached_delivery(cache, n_ebs=2, n_antennas=12, nchan=1920, integrations_per_scan=2))
    copy_delivery(source, scratch / 'delivery')
    return scratch / 'delivery'


def write_contdat(path, field, low, high, count):
    step = (high - low) / count
    lines = ['Field: %s' % field, '', 'SpectralWindow: 25']
    for i in range(count):
        a = low + i * step
        lines.append('%.10f~%.10fGHz LSRK' % (a, a + 0.6 * step))
    lines += ['', 'SpectralWindow: 27', 'NONE', '']
    path.write_text('\n'.join(lines) + '\n')


def span_of_spw25(contdat_text):
    """(low, high) GHz: from the first to the last range of spw 25 in the simulator's cont.dat."""
    ends, inside = [], False
    for line in contdat_text.splitlines():
        if line.startswith('SpectralWindow:'):
            inside = line.split()[1] == '25'
        elif inside and '~' in line:
            ends += [float(v) for v in line.split()[0].replace('GHz', '').split('~')]
    if not ends:
        raise SystemExit('the simulated cont.dat has no range in spw 25')
    return min(ends), max(ends)


def run_check(root, script):
    started = time.time()
    result = subprocess.run([sys.executable, str(script), '--check', '--delivery', str(root)], cwd=str(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return time.time() - started, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--counts', default='250,500,1000,2000,4000')
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--script', default=str(SCRIPT), help='the scriptForReprocessing.py to time (default: '
                        'this checkout\'s; e.g. one built from main, for before/after)')
    args = parser.parse_args()
    cache = REPO / '.cache' / 'bench'
    scratch = Path(tempfile.mkdtemp(prefix='bench-contdat-'))
    root = delivery(cache, scratch)
    contdat = root / 'caltables' / 'cont.dat'
    original = contdat.read_text()
    field = original.splitlines()[0].split(':', 1)[1].strip()
    low, high = span_of_spw25(original)
    print('delivery %s (%.0f MB); spw 25 range %.6f~%.6f GHz split into N ranges'
          % (root, sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) / 1e6, low, high))
    print('%6s  %9s  %12s  %s' % ('N', '--check s', 'ms per range', 'exit'))
    try:
        for count in [int(c) for c in args.counts.split(',')]:
            write_contdat(contdat, field, low, high, count)
            times = []
            for _ in range(args.repeats):
                elapsed, result = run_check(root, args.script)
                times.append(elapsed)
            median = statistics.median(times)
            print('%6d  %9.2f  %12.2f  %d%s' % (count, median, 1000.0 * median / count, result.returncode,
                                                '' if result.returncode == 0 else '  ' + result.stderr.strip()[-200:]),
                  flush=True)
    finally:
        shutil.rmtree(str(scratch), ignore_errors=True)
    print('load average %.2f %.2f %.2f' % os.getloadavg())


if __name__ == '__main__':
    main()
