#!/usr/bin/env python3
"""Benchmark of a cube on a custom grid: ``--image --specmodes cube --spw 25 --start/--width/--nchan`` against tclean
by hand with the same grid, side by side in one run, on the same simulated delivery (with its line MSes).

1. the tool (CASA engine), wall and CPU time of the whole command;
2. the same tclean calls, replayed: read from that run's CASA log (the PSF for the cell, the dirty image, the
   cleaning, any fallback or cube-health call), in a fresh Python on the user's MSes, then exportfits of the same
   products: what the tool costs on top of its own tclean calls;
3. tclean by hand: ONE tclean call with the grid, weighting, threshold and mask of the tool's LAST cleaning call
   (the one that made the product: after a failed automask, the primary-beam mask to twice the threshold), with
   calcpsf and calcres on, then exportfits of the same products: the same cube, made by a user who knew the
   settings.

   target: tool / by hand (3) <= 1.1 (the team's goal for a single-process step); also printed: tool / replay.

Two sizes (--size; both: one after the other, then both ratios side by side). What the tool adds is about constant
(its checks and planning, the PSF that sets the cell, its report), so the ratio depends on the cube's size:
* small: 2 EBs of 25 antennas, spw 25 of 128 channels, grid -20 km/s + 20 x 2 km/s: tclean by hand ~9 s;
* large: 4 EBs of 25 antennas, spw 25 of 320 channels, grid -100 km/s + 100 x 2 km/s: tclean by hand >= 60 s on
  2 cores, as users' cubes take minutes (simulated once, ~1.5 min, cached in $SIMULATION_CACHE or the workdir).

The machine is shared: the load (uptime) is printed with the numbers; the sides alternate and the fastest of
--repeat runs of each counts.

Usage: python bench/bench_grid.py [--size small|large|both] [--n-ebs N] [--n-antennas N] [--nchan N] [--repeat 2]
"""
import argparse
import collections
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_image import REPLAY, SCRIPT, REPO, best, replay_bare, task_calls_in_log, timed  # noqa: E402

sys.path.insert(0, str(REPO / 'tests' / 'support'))
TARGET = 1.1
GRID = ['--spw', '25', '--start', '-20km/s', '--width', '2km/s', '--nchan', '20']
# the delivery and grid of each --size (see the docstring); --n-ebs, --n-antennas and --nchan override the delivery's
SIZES = collections.OrderedDict([
    ('small', dict(n_ebs=2, n_antennas=25, nchan=128, grid=GRID)),
    ('large', dict(n_ebs=4, n_antennas=25, nchan=320,
                   grid=['--spw', '25', '--start', '-100km/s', '--width', '2km/s', '--nchan', '100'])),
])


def load():
    return '%.1f %.1f %.1f (1, 5, 15 min)' % os.getloadavg()


def tclean_durations(log):
    """[(what the call was, seconds)] of each tclean call in a CASA log, in order (its 'Task tclean complete' line)."""
    import datetime
    seconds = []
    pattern = re.compile(r'Task tclean complete\. Start time: (\S+ \S+) End time: (\S+ \S+)')
    with open(str(log)) as handle:
        for line in handle:
            match = pattern.search(line)
            if match:
                start, end = (datetime.datetime.strptime(t, '%Y-%m-%d %H:%M:%S.%f') for t in match.groups())
                seconds.append((end - start).total_seconds())
    return [(call_role(call), duration) for call, duration in zip(task_calls_in_log(log, 'tclean'), seconds)]


def call_role(call):
    if call.get('specmode') == 'mfs' and not call.get('niter'):
        return 'the PSF that sets the cell (mfs, whole spw)'
    if not call.get('niter'):
        return 'the dirty image (PSF + residual)'
    if call.get('usemask') == 'auto-multithresh':
        return 'cleaning with automasking%s' % ('' if call.get('calcres', True) else ' (calcpsf/calcres False)')
    return 'cleaning in the %s mask%s' % (call.get('usemask'), '' if call.get('calcres', True) else
                                          ' (calcpsf/calcres False)')


def by_hand(delivery, script_log, workdir, round_number, which=-1):
    """One tclean call with the arguments of the tool's cleaning call `which` (-1: the last, 0: the first), calcpsf
    and calcres on, then exportfits."""
    staging = str(delivery / 'working_reprocess' / 'staging' / 'image')
    imaging = str(delivery / 'working_reprocess' / 'imaging')
    folder = workdir / 'hand'
    if folder.exists():
        shutil.rmtree(str(folder))
    folder.mkdir()
    cleans = [c for c in task_calls_in_log(script_log, 'tclean') if c.get('specmode') == 'cube'
              and c.get('niter', 0) > 0]
    call = dict(cleans[which])  # its grid, weighting, threshold and mask
    call.update(vis=[v.replace(staging, str(delivery / 'measurement_sets')) for v in call['vis']],
                imagename=call['imagename'].replace(imaging, str(folder)), calcpsf=True, calcres=True, restart=True)
    exports = []
    for arguments in task_calls_in_log(script_log, 'exportfits'):
        name = Path(arguments['imagename']).name
        exports.append(('exportfits', {'imagename': str(folder / name),
                                       'fitsimage': str(folder / Path(arguments['fitsimage']).name),
                                       'dropdeg': False}))
    plan = workdir / 'hand_calls.json'
    plan.write_text(json.dumps([('tclean', call)] + exports))
    program = workdir / 'replay.py'
    program.write_text(REPLAY)
    seconds, _result = timed([sys.executable, str(program), str(REPO), str(plan),
                              str(workdir / ('hand-%d-%d.log' % (which, round_number)))], cwd=folder)
    return seconds


def grid_bench_arguments(description, argv, sizes=tuple(SIZES)):
    """The command line of the grid benches (this one and bench_products): the delivery's size, repeats, folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--size', choices=sizes, default='small', help='the delivery and grid (see the docstring)')
    parser.add_argument('--n-ebs', type=int, default=None, help='EBs (default: the size\'s)')
    parser.add_argument('--n-antennas', type=int, default=None, help='antennas (default: the size\'s)')
    parser.add_argument('--nchan', type=int, default=None, help='channels of the spw (default: the size\'s)')
    parser.add_argument('--repeat', type=int, default=2, help='runs of each side; the fastest counts')
    parser.add_argument('--workdir', default=None, help='where to work (default: a temporary folder, removed)')
    return parser.parse_args(argv)


def of_size(args, size):
    """args with the delivery and grid of size (those given on the command line kept)."""
    sized = argparse.Namespace(**vars(args))
    sized.size = size
    for name, value in SIZES[size].items():
        if getattr(sized, name, None) is None:
            setattr(sized, name, value)
    return sized


def grid_delivery(args, workdir):
    """A fresh copy of the simulated delivery the grid benches image (one spw 25 with a line), in workdir."""
    from simulate_delivery import cached_delivery, copy_delivery
    params = dict(n_ebs=args.n_ebs, n_antennas=args.n_antennas, nchan=args.nchan, spw_ids=(25,), with_line_ms=True)
    source = cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache', **params)
    delivery = workdir / 'calibrated_final'
    if delivery.exists():
        shutil.rmtree(str(delivery))
    copy_delivery(source, delivery)
    print('%s delivery: %d EBs, %d antennas, spw 25 of %d channels; grid %s' % (
        args.size, args.n_ebs, args.n_antennas, args.nchan, ' '.join(args.grid)), flush=True)
    return delivery


def bench_size(args, workdir):
    """Side by side on args' delivery and grid: (tool, replay, hand) best Timings, printed with where the time goes."""
    delivery = grid_delivery(args, workdir)
    tool, replayed, hand, logs = [], [], [], []

    def run_tool():
        images = delivery / 'images'
        if images.exists():
            shutil.rmtree(str(images))
        timing, result = timed([sys.executable, str(SCRIPT), '--image', '--engine', 'casa', '--specmodes',
                                'cube'] + args.grid, cwd=delivery)
        log = workdir / ('tool-%d.log' % len(logs))
        shutil.copyfile(re.search(r'CASA log: (\S+)', result.stdout).group(1), str(log))
        logs.append(log)
        return timing

    print('load before: %s' % load(), flush=True)
    run_tool()  # the calls to replay are the tool's own (and a warm disk cache for every side)
    calls = len(task_calls_in_log(logs[0], 'tclean'))
    for round_number in range(args.repeat):
        sides = ['tool', 'replay', 'hand']
        for side in (sides if round_number % 2 == 0 else list(reversed(sides))):
            if side == 'tool':
                tool.append(run_tool())
            elif side == 'replay':
                replayed.append(replay_bare(delivery, logs[0], workdir, round_number)[0])
            else:
                hand.append(by_hand(delivery, logs[0], workdir, round_number))
            timing = {'tool': tool, 'replay': replayed, 'hand': hand}[side][-1]
            print('  %-7s %6.1f s wall, %6.1f s CPU; load now %s' % ((side,) + tuple(timing) + (load(),)),
                  flush=True)
    tool, replayed, hand = best(tool), best(replayed), best(hand)
    cleans = [c for c in task_calls_in_log(logs[0], 'tclean') if c.get('specmode') == 'cube' and c.get('niter', 0)]
    print('load after: %s (2 cores)' % load())
    print('tool --image (custom grid):     %6.1f s wall, %6.1f s CPU' % tool)
    print('its %d tclean calls, replayed:   %6.1f s wall, %6.1f s CPU' % ((calls,) + tuple(replayed)))
    print('one tclean by hand, same grid:  %6.1f s wall, %6.1f s CPU  (the last cleaning call: usemask %s, '
          'threshold %s)' % (tuple(hand) + (cleans[-1].get('usemask'), cleans[-1].get('threshold'))))
    print('where the time goes (wall of each tclean call, CASA log; the tool\'s last run, then by hand):')
    for role, seconds in tclean_durations(logs[-1]):
        print('   tool: %-55s %6.1f s' % (role, seconds))
    for log in sorted(workdir.glob('hand--1-*.log'))[:1]:
        for role, seconds in tclean_durations(log):
            print('   hand: %-55s %6.1f s' % (role, seconds))
    print('tool / by hand:   %.3f wall, %.3f CPU  (target <= %.1f; best of %d runs each)'
          % (tool.wall / hand.wall, tool.cpu / hand.cpu, TARGET, args.repeat))
    print('tool / replay:    %.3f wall, %.3f CPU  (the tool\'s own cost around its tclean calls)'
          % (tool.wall / replayed.wall, tool.cpu / replayed.cpu), flush=True)
    return tool, replayed, hand


def main(argv=None):
    args = grid_bench_arguments(__doc__.split('\n\n')[0], argv, sizes=tuple(SIZES) + ('both',))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-grid-'))
    workdir.mkdir(parents=True, exist_ok=True)
    results = collections.OrderedDict()
    try:
        for size in (SIZES if args.size == 'both' else [args.size]):
            folder = workdir / size
            folder.mkdir(exist_ok=True)
            results[size] = bench_size(of_size(args, size), folder)
        if len(results) > 1:
            print('both sizes (best of %d runs each side):' % args.repeat)
            for size, (tool, replayed, hand) in results.items():
                print('   %-6s tool %6.1f s wall %6.1f s CPU, by hand %6.1f s wall %6.1f s CPU: tool / by hand %.3f '
                      'wall, %.3f CPU (target <= %.1f); tool / replay %.3f wall, %.3f CPU'
                      % ((size,) + tuple(tool) + tuple(hand) + (tool.wall / hand.wall, tool.cpu / hand.cpu, TARGET,
                                                                tool.wall / replayed.wall, tool.cpu / replayed.cpu)))
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
