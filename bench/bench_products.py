#!/usr/bin/env python3
"""Benchmark of what --moments 0,1,2,8 and --beam common|round add to a cube on a custom grid (issue 27's goal: at
most 10 % of the cube's imaging time), side by side in one run on the same simulated delivery as bench_grid:

1. end to end: the tool with the grid alone, with --moments 0,1,2,8 --beam common, and with --moments 0,1,2,8
   --beam round (the sides alternate; the fastest of --repeat runs of each counts): wall and CPU of each, and
   what the products add to the plain run;
2. the products alone: cube_products (the step the tool runs after tclean: the convolution of the .image and
   .image.pbcor, then the moments and the moment-0 error) on copies of the plain run's CASA images, in a fresh
   Python, its CPU and wall measured around the call only (no Python start, no CASA import), against the plain
   run's CPU and its tclean time (CASA log): the cleanest number, as tclean's own run-to-run spread (several
   per cent on a loaded machine) blurs the difference in 1.

   target: products / imaging <= 0.10

The machine is shared: the load (uptime) is printed with the numbers; CPU time is the trustworthy ratio.

Usage: python bench/bench_products.py [--n-ebs 2] [--n-antennas 25] [--nchan 128] [--repeat 2]
"""
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_image import REPO, SCRIPT, best, task_seconds, timed  # noqa: E402
from bench_grid import grid_bench_arguments, grid_delivery, load, of_size  # noqa: E402

sys.path.insert(0, str(REPO / 'tests' / 'support'))
TARGET = 0.10
MOMENTS = ['--moments', '0,1,2,8']
SIDES = {'plain': [], 'common': MOMENTS + ['--beam', 'common'], 'round': MOMENTS + ['--beam', 'round']}

ALONE = r'''
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import scriptForReprocessing as sfr
casa = sfr.load_casa(logfile=sys.argv[3])
sfr.casa_task(casa, 'imstat', about='warm-up', imagename=sys.argv[2] + '.pb')  # the tasks' first import, not timed
lines = []
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
wall, began = time.time(), cpu()
sfr.cube_products(casa, lines.append, imagename=sys.argv[2], beam=sys.argv[4] or None, moments=[0, 1, 2, 8])
print(json.dumps({'wall': time.time() - wall, 'cpu': cpu() - began, 'lines': lines}))
'''


def run_tool(delivery, workdir, grid, extra, label):
    images = delivery / 'images'
    if images.exists():
        shutil.rmtree(str(images))
    timing, result = timed([sys.executable, str(SCRIPT), '--image', '--engine', 'casa', '--specmodes', 'cube']
                           + grid + extra, cwd=delivery)
    log = workdir / ('tool-%s.log' % label)
    shutil.copyfile(re.search(r'CASA log: (\S+)', result.stdout).group(1), str(log))
    return timing, result.stdout, log


def products_alone(images, workdir, beam, round_number):
    """cube_products on copies of the plain run's .image, .image.pbcor and .pb, in a fresh Python."""
    folder = workdir / 'alone'
    if folder.exists():
        shutil.rmtree(str(folder))
    folder.mkdir()
    stem = None
    for path in sorted(images.iterdir()):
        match = re.match(r'^(.*\.cube\.I\.iter[0-9]+)\.(image|image\.pbcor|pb)$', path.name)
        if match:
            stem = match.group(1)
            shutil.copytree(str(path), str(folder / path.name))
    program = workdir / 'alone.py'
    program.write_text(ALONE)
    _timing, result = timed([sys.executable, str(program), str(REPO), str(folder / stem),
                             str(workdir / ('alone-%s-%d.log' % (beam, round_number))), beam], cwd=folder)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = grid_bench_arguments(__doc__.split('\n\n')[0], argv)
    args = of_size(args, args.size)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-products-'))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        delivery = grid_delivery(args, workdir)
        print('load before: %s' % load(), flush=True)
        # the plain run's CASA images for 2 (and a warm disk cache for every side)
        _timing, _out, _log = run_tool(delivery, workdir, args.grid, ['--all-products'], 'all-products')
        kept_images = workdir / 'plain-images'
        if kept_images.exists():
            shutil.rmtree(str(kept_images))
        shutil.copytree(str(delivery / 'images'), str(kept_images))
        timings = {side: [] for side in SIDES}
        tclean = []
        outputs = {}
        alone = {'common': [], 'round': []}
        for round_number in range(args.repeat):
            order = [('tool', side) for side in SIDES] + [('alone', side) for side in alone]
            for kind, side in (order if round_number % 2 == 0 else list(reversed(order))):
                if kind == 'tool':
                    timing, out, log = run_tool(delivery, workdir, args.grid, SIDES[side],
                                                '%s-%d' % (side, round_number))
                    timings[side].append(timing)
                    outputs[side] = out
                    if side == 'plain':
                        tclean.append(task_seconds(log, ('tclean',)))
                else:
                    alone[side].append(products_alone(kept_images, workdir, side, round_number))
        print('load after: %s (2 cores)' % load())
        plain = best(timings['plain'])
        print('1. end to end (best of %d runs each):' % args.repeat)
        print('   grid cube alone:                          %6.1f s wall, %6.1f s CPU (its tclean calls %.1f s wall)'
              % (plain.wall, plain.cpu, min(tclean)))
        for side in ('common', 'round'):
            timing = best(timings[side])
            print('   + --moments 0,1,2,8 --beam %-6s          %6.1f s wall, %6.1f s CPU: adds %+.1f%% wall, %+.1f%% '
                  'CPU' % (side, timing.wall, timing.cpu, 100.0 * (timing.wall / plain.wall - 1),
                           100.0 * (timing.cpu / plain.cpu - 1)))
            for line in outputs[side].splitlines():
                if 'convolved to the' in line or 'moment' in line and re.search(r', [0-9.]+ s$', line):
                    print('       %s' % line.strip())
        print('2. cube_products alone (convolution of .image and .image.pbcor, moments 0,1,2,8, moment-0 error), '
              'best of %d:' % args.repeat)
        for side in ('common', 'round'):
            wall, cpu = min(a['wall'] for a in alone[side]), min(a['cpu'] for a in alone[side])
            print('   --beam %-6s: %5.2f s wall, %5.2f s CPU = %.1f%% of the grid cube\'s CPU, %.1f%% of its tclean '
                  'wall (target <= %.0f%%)' % (side, wall, cpu, 100.0 * cpu / plain.cpu, 100.0 * wall / min(tclean),
                                                100 * TARGET))
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
