#!/usr/bin/env python3
"""One cube made in channel chunks by the whole command (--image --split-cube), measured (issue 28's goals).

Each case runs `scriptForReprocessing.py --image --specmodes cube ...` on a fresh copy of one simulated delivery
(one EB, one spw) and measures the whole command: wall time, CPU time of all its processes, the peak RSS of its
largest process (psutil every 0.2 s, bench_cube_split.measured), and the load average before and after.

  jobs1, jobs2   --split-cube CHUNKS with --jobs 1 and --jobs 2: the speed-up of two workers (same products)
  jobs2-omp2     jobs2 with OMP_NUM_THREADS=2 given: each worker's tclean with as many threads as cores (as
                 before the workers of a split cube got their share of the cores)
  whole          the cube in one tclean (--split-cube no --jobs 1): the product the chunks are compared with
  short, long    --memory-per-worker LIMIT (chunks sized by the memory model) on the cube of --nbins 25:4 and on
                 the same data's four times longer cube (--nbins 25:1): the largest process's peak memory
  resumed        the jobs2 command SIGKILLed at half of jobs2's wall time, then the same command again (measured)

Usage: python bench/bench_split_run.py OUTDIR [--nchan 64] [--chunks 4] [--limit 600MB] [--cases ...]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))
sys.path.insert(0, str(REPO / 'tests' / 'support'))

SCRIPT = REPO / 'scriptForReprocessing.py'
IMAGE = ['--image', '--specmodes', 'cube']


def say(line):
    print(line, flush=True)


def fresh(source, out, name):
    target = out / name
    if target.exists():
        shutil.rmtree(str(target))
    shutil.copytree(str(source), str(target), symlinks=True)
    return target


def run_measured(delivery, args, env=None):
    from bench_cube_split import measured
    before = os.getloadavg()
    code, wall, cpu, largest, _total, text = measured([sys.executable, str(SCRIPT), '--delivery', str(delivery)]
                                                      + list(args), env=env)
    after = os.getloadavg()
    (delivery / 'output.txt').write_text(text)
    return dict(returncode=code, wall_s=round(wall, 1), cpu_s=round(cpu, 1), largest_rss_gb=round(largest / 1e9, 3),
                load=[round(before[0], 1), round(after[0], 1)], tail=text.splitlines()[-3:] if code else None)


def killed_at(delivery, args, seconds):
    """Start the command, SIGKILL it after seconds; how many chunks it had finished (kept) by then."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), '--delivery', str(delivery)] + list(args),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(delivery))
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = delivery / 'working_reprocess' / 'imaging-chunks'
    stages = [json.loads(p.read_text()).get('stage') for p in store.glob('*/*/finished.provenance.json')
              if not p.parent.name.startswith('.')]
    return dict(cleaned=stages.count('cleaned'), dirty=stages.count('dirty'))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('outdir')
    parser.add_argument('--nchan', type=int, default=64)
    parser.add_argument('--chunks', type=int, default=4)
    parser.add_argument('--limit', default='600MB')
    parser.add_argument('--cases', default='jobs1,jobs2,resumed,short,long,whole')
    options = parser.parse_args()
    out = Path(options.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from simulate_delivery import cached_delivery
    source = Path(cached_delivery(str(out / 'sim'), nchan=options.nchan, n_antennas=25, line_fwhm_kms=8.0,
                                  noise_jy=0.2, n_ebs=1, with_line_ms=True, spw_ids=(25,)))
    split = IMAGE + ['--split-cube', str(options.chunks)]
    cases = {
        'jobs1': split + ['--jobs', '1'],
        'jobs2': split + ['--jobs', '2'],
        'whole': IMAGE + ['--split-cube', 'no', '--jobs', '1'],
        'short': IMAGE + ['--memory-per-worker', options.limit, '--jobs', '1', '--nbins', '25:4'],
        'long': IMAGE + ['--memory-per-worker', options.limit, '--jobs', '1', '--nbins', '25:1'],
    }
    rows = {}
    for case in options.cases.split(','):
        if case == 'resumed':
            full = rows.get('jobs2', {}).get('wall_s')
            if not full:
                say('resumed: needs jobs2 first')
                continue
            delivery = fresh(source, out, 'resumed')
            kept = killed_at(delivery, cases['jobs2'], full / 2.0)
            row = run_measured(delivery, cases['jobs2'])
            row.update(killed_at_s=round(full / 2.0, 1), kept=kept, ratio_to_full=round(row['wall_s'] / full, 2))
        else:
            delivery = fresh(source, out, case)
            row = run_measured(delivery, cases[case.split('-')[0]],
                               env={'OMP_NUM_THREADS': '2'} if case.endswith('-omp2') else None)
            text = (delivery / 'output.txt').read_text()
            row['chunk_lines'] = [line.strip() for line in text.splitlines() if 'is made in' in line][:1]
        rows[case] = row
        say('%s: %s' % (case, json.dumps(row)))
    # the products: every split cube against the one-process cube
    if 'whole' in rows:
        from bench_cube_split import compare, load
        casa = load(str(out / 'casa-compare.log'))
        reference = next((out / 'whole' / 'images').glob('*.cube.I.iter1.image.pbcor'))
        for case in ('jobs1', 'jobs2', 'resumed', 'long'):
            made = list((out / case / 'images').glob('*.cube.I.iter1.image.pbcor')) if (out / case).exists() else []
            if made:
                result = compare(casa, reference, made[0])
                rows[case]['compared_with_whole'] = dict(
                    (key, result[key]) for key in ('same_shape', 'peak_rel_diff', 'rms_rel_diff', 'beam_max_rel_diff',
                                                   'max_abs_diff_over_rms'))
                say('%s against whole: %s' % (case, json.dumps(rows[case]['compared_with_whole'], default=str)))
    if 'jobs1' in rows and 'jobs2' in rows:
        say('2 workers against 1: wall x%.2f faster, CPU x%.2f' % (rows['jobs1']['wall_s'] / rows['jobs2']['wall_s'],
                                                                   rows['jobs2']['cpu_s'] / rows['jobs1']['cpu_s']))
    if 'short' in rows and 'long' in rows:
        say('largest process, 4x channels against 1x: x%.2f' % (rows['long']['largest_rss_gb']
                                                                 / rows['short']['largest_rss_gb']))
    (out / ('results-%d.json' % int(time.time()))).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
