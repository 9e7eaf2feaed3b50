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

  chunking       --split-cube CHUNKS against 2 x CHUNKS (chunking_cost): CPU with one worker, resume with two
  kills          2 workers against 1, and SIGKILL at 1/3, 1/2, 2/3 then resumed, for CHUNKS and 2 x CHUNKS (kills)
  ratios         issue 28's three ratios measured side by side in one sequence (side_by_side): the overhead of
                 splitting (jobs1 against whole), 2 workers against 1, a resumed run against a full one
  resume         the resume ratio alone (resume_only): jobs2, killed at half and resumed, jobs2 again

Usage: python bench/bench_split_run.py OUTDIR [--nchan 64] [--chunks 4] [--limit 600MB] [--cases ...|ratios|resume|chunking|kills]
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
    return dict(cleaned=stages.count('cleaned'), before_health=stages.count('cleaned-before-health'),
                nothing_automasked=stages.count('dirty-nothing-automasked'),
                dirty=stages.count('dirty'))


def compare_products(out, folders, whole, rows):
    """Each case's cube (folders: case -> its delivery folder in out) against the one-process cube's."""
    from bench_cube_split import compare, load
    casa = load(str(out / 'casa-compare.log'))
    reference = next((out / whole / 'images').glob('*.cube.I.iter1.image.pbcor'))
    for case, folder in folders.items():
        made = list((out / folder / 'images').glob('*.cube.I.iter1.image.pbcor')) if (out / folder).exists() else []
        if made:
            result = compare(casa, reference, made[0])
            rows.setdefault('compared_with_whole', {})[case] = dict(
                (key, result[key]) for key in ('same_shape', 'peak_rel_diff', 'rms_rel_diff', 'beam_max_rel_diff',
                                               'max_abs_diff_over_rms'))
            say('%s against whole: %s' % (case, json.dumps(rows['compared_with_whole'][case], default=str)))


def side_by_side(source, out, cases):
    """Issue 28's three ratios measured in one sequence, each pair around the middle (A B C C B A), so that a
    load that drifts through the sequence weighs on both sides alike:
      whole jobs1 jobs2 jobs2 jobs1 whole, then jobs2 SIGKILLed at half of jobs2's mean wall time and the same
      command again, then jobs2 once more (the resumed run against the mean of the three full jobs2 runs).
    Overhead: CPU (and wall) of the chunks with one worker over one tclean's; workers: wall of jobs1 over jobs2;
    resume: the resumed run's wall (and CPU) over a full jobs2 run's."""
    runs = {}
    for index, case in enumerate(('whole', 'jobs1', 'jobs2', 'jobs2', 'jobs1', 'whole')):
        delivery = fresh(source, out, '%s-%d' % (case, index))
        row = run_measured(delivery, cases[case])
        runs.setdefault(case, []).append(row)
        say('%s (%d): %s' % (case, index, json.dumps(row)))
    half = sum(row['wall_s'] for row in runs['jobs2']) / len(runs['jobs2']) / 2.0
    delivery = fresh(source, out, 'resumed')
    kept = killed_at(delivery, cases['jobs2'], half)
    resumed = run_measured(delivery, cases['jobs2'])
    resumed.update(killed_at_s=round(half, 1), kept=kept)
    say('resumed: %s' % json.dumps(resumed))
    delivery = fresh(source, out, 'jobs2-7')
    runs['jobs2'].append(run_measured(delivery, cases['jobs2']))
    say('jobs2 (7): %s' % json.dumps(runs['jobs2'][-1]))

    def mean(case, key):
        return sum(row[key] for row in runs[case]) / len(runs[case])
    ratios = dict(
        overhead_cpu=round(mean('jobs1', 'cpu_s') / mean('whole', 'cpu_s'), 3),
        overhead_wall=round(mean('jobs1', 'wall_s') / mean('whole', 'wall_s'), 3),
        workers_wall_speedup=round(mean('jobs1', 'wall_s') / mean('jobs2', 'wall_s'), 3),
        workers_cpu=round(mean('jobs2', 'cpu_s') / mean('jobs1', 'cpu_s'), 3),
        resumed_wall=round(resumed['wall_s'] / mean('jobs2', 'wall_s'), 3),
        resumed_cpu=round(resumed['cpu_s'] / mean('jobs2', 'cpu_s'), 3),
        load=[min(r['load'][0] for rows in runs.values() for r in rows),
              max(r['load'][1] for rows in runs.values() for r in rows)])
    say('ratios: %s' % json.dumps(ratios))
    say('  splitting overhead (CPU, one worker): %+.0f %% (goal <= +10 %%); wall %+.0f %%' % (
        100 * (ratios['overhead_cpu'] - 1), 100 * (ratios['overhead_wall'] - 1)))
    say('  2 workers against 1: x%.2f wall (goal >= 1.6)' % ratios['workers_wall_speedup'])
    say('  resumed after SIGKILL at half: %.2f of a full run (goal <= 0.6), CPU %.2f' % (
        ratios['resumed_wall'], ratios['resumed_cpu']))
    return dict(runs=runs, resumed=resumed, ratios=ratios)


def resume_only(source, out, cases):
    """The resume ratio alone, for a cube too long for the whole ratios sequence on a busy machine: jobs2, then
    jobs2 SIGKILLed at half of its wall time and the same command again, then jobs2 again (A, kill, A)."""
    runs = [run_measured(fresh(source, out, 'jobs2-0'), cases['jobs2'])]
    say('jobs2 (0): %s' % json.dumps(runs[0]))
    delivery = fresh(source, out, 'resumed')
    kept = killed_at(delivery, cases['jobs2'], runs[0]['wall_s'] / 2.0)
    resumed = run_measured(delivery, cases['jobs2'])
    resumed.update(killed_at_s=round(runs[0]['wall_s'] / 2.0, 1), kept=kept)
    say('resumed: %s' % json.dumps(resumed))
    runs.append(run_measured(fresh(source, out, 'jobs2-2'), cases['jobs2']))
    say('jobs2 (2): %s' % json.dumps(runs[1]))
    full = sum(row['wall_s'] for row in runs) / len(runs)
    say('  resumed after SIGKILL at half: %.2f of a full run (goal <= 0.6), CPU %.2f' % (
        resumed['wall_s'] / full, resumed['cpu_s'] / (sum(row['cpu_s'] for row in runs) / len(runs))))
    return dict(runs=runs, resumed=resumed)


def chunking_cost(source, out, chunks):
    """What twice the chunks cost and give (issue 28: more chunks than workers lose less to a kill): --split-cube
    CHUNKS and 2 x CHUNKS with one worker, side by side (A B B A), then 2 x CHUNKS on 2 workers, whole and
    SIGKILLed at half its time then resumed."""
    split = lambda n, jobs: IMAGE + ['--split-cube', str(n), '--jobs', str(jobs)]  # noqa: E731
    runs = {}
    for index, n in enumerate((chunks, 2 * chunks, 2 * chunks, chunks)):
        row = run_measured(fresh(source, out, 'chunks%d-%d' % (n, index)), split(n, 1))
        runs.setdefault(n, []).append(row)
        say('%d chunks, 1 worker (%d): %s' % (n, index, json.dumps(row)))
    full = run_measured(fresh(source, out, 'chunks%d-jobs2' % (2 * chunks)), split(2 * chunks, 2))
    say('%d chunks, 2 workers: %s' % (2 * chunks, json.dumps(full)))
    delivery = fresh(source, out, 'chunks%d-resumed' % (2 * chunks))
    kept = killed_at(delivery, split(2 * chunks, 2), full['wall_s'] / 2.0)
    resumed = run_measured(delivery, split(2 * chunks, 2))
    say('%d chunks, 2 workers, killed at %.1f s (%s), resumed: %s' % (2 * chunks, full['wall_s'] / 2.0, kept,
                                                                     json.dumps(resumed)))

    def mean(n, key):
        return sum(row[key] for row in runs[n]) / len(runs[n])
    say('%d chunks against %d, one worker: CPU x%.3f, wall x%.3f; resumed %d chunks: %.2f of a full run' % (
        2 * chunks, chunks, mean(2 * chunks, 'cpu_s') / mean(chunks, 'cpu_s'),
        mean(2 * chunks, 'wall_s') / mean(chunks, 'wall_s'), 2 * chunks, resumed['wall_s'] / full['wall_s']))


def kills(source, out, chunks):
    """Issue 28, round 2: 2 workers against 1 and a kill wherever it lands, in one sequence.  whole, then
    CHUNKS on 1 worker, CHUNKS on 2, 2 x CHUNKS on 2, twice each as A B C C B A; then for each chunking on 2 workers
    the command SIGKILLed at 1/3, 1/2 and 2/3 of its mean full wall time and the same command again.  A kill's
    loss: (time before the kill + the resumed run) / a full run - 1 (0: nothing lost)."""
    split = lambda n, jobs: IMAGE + ['--split-cube', str(n), '--jobs', str(jobs)]  # noqa: E731
    variants = {'whole': IMAGE + ['--split-cube', 'no', '--jobs', '1'], 'jobs1': split(chunks, 1),
                'jobs2': split(chunks, 2), 'jobs2x2': split(2 * chunks, 2)}
    runs = {}
    for index, case in enumerate(('whole', 'jobs1', 'jobs2', 'jobs2x2', 'jobs2x2', 'jobs2', 'jobs1')):
        row = run_measured(fresh(source, out, '%s-%d' % (case, index)), variants[case])
        runs.setdefault(case, []).append(row)
        say('%s (%d): %s' % (case, index, json.dumps(row)))

    def mean(case, key):
        return sum(row[key] for row in runs[case]) / len(runs[case])
    say('2 workers against 1 (%d chunks): wall x%.2f, CPU x%.2f' % (
        chunks, mean('jobs1', 'wall_s') / mean('jobs2', 'wall_s'), mean('jobs2', 'cpu_s') / mean('jobs1', 'cpu_s')))
    say('%d chunks against %d on 2 workers: wall x%.3f, CPU x%.3f' % (
        2 * chunks, chunks, mean('jobs2x2', 'wall_s') / mean('jobs2', 'wall_s'),
        mean('jobs2x2', 'cpu_s') / mean('jobs2', 'cpu_s')))
    resumed = {}
    for case in ('jobs2', 'jobs2x2'):
        full = mean(case, 'wall_s')
        for fraction in (1 / 3.0, 1 / 2.0, 2 / 3.0):
            delivery = fresh(source, out, '%s-killed-%d' % (case, round(100 * fraction)))
            kept = killed_at(delivery, variants[case], full * fraction)
            row = run_measured(delivery, variants[case])
            row.update(killed_at_s=round(full * fraction, 1), kept=kept, resumed_over_full=round(row['wall_s'] / full, 3),
                       loss=round((full * fraction + row['wall_s']) / full - 1, 3))
            resumed['%s-%d' % (case, round(100 * fraction))] = row
            say('%s killed at %.0f %% (%.1f s): %s' % (case, 100 * fraction, full * fraction, json.dumps(row)))
    result = dict(runs=runs, resumed=resumed)
    compare_products(out, {'jobs1': 'jobs1-1', 'jobs2': 'jobs2-2', 'jobs2x2': 'jobs2x2-3',
                           'resumed-half': 'jobs2-killed-50'}, 'whole-0', result)
    (out / ('kills-%d.json' % int(time.time()))).write_text(json.dumps(result, indent=1, default=str))


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
    if options.cases == 'kills':
        kills(source, out, options.chunks)
        return 0
    if options.cases == 'resume':
        result = resume_only(source, out, cases)
        (out / ('resume-%d.json' % int(time.time()))).write_text(json.dumps(result, indent=1, default=str))
        return 0
    if options.cases == 'chunking':
        chunking_cost(source, out, options.chunks)
        return 0
    if options.cases == 'ratios':
        result = side_by_side(source, out, cases)
        compare_products(out, {'jobs1': 'jobs1-1', 'jobs2': 'jobs2-2', 'resumed': 'resumed'}, 'whole-0', result)
        (out / ('ratios-%d.json' % int(time.time()))).write_text(json.dumps(result, indent=1, default=str))
        return 0
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
        compare_products(out, dict((case, case) for case in ('jobs1', 'jobs2', 'resumed', 'long')), 'whole', rows)
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
