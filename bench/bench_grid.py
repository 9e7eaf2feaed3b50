#!/usr/bin/env python3
"""Benchmark of a cube on a custom grid: ``--image --specmodes cube --spw 25 --start/--width/--nchan`` against tclean
by hand with the same grid, side by side in one run, on the same simulated delivery (with its line MSes).

1. the tool (CASA engine), wall and CPU time of the whole command: its first run on the delivery (it makes the
   PSF that sets the cell, an mfs PSF of the whole spw, as the pipeline does) and the same command again, as a
   user re-imaging the same data runs it (the cell from the first run's PSF beam: working_reprocess/known-beams.json),
   and a first run given the cell the first run chose (--cell 0.31arcsec: no PSF for it, as the hand call);
2. the same tclean calls, replayed: read from a first run's CASA log (the PSF for the cell, the dirty image, the
   cleaning, any fallback or cube-health call), in a fresh Python on the user's MSes, then exportfits of the same
   products: what the tool costs on top of its own tclean calls;
3. tclean by hand: ONE tclean call with the grid, weighting, threshold and mask of the tool's LAST cleaning call
   (the one that made the product: after a failed automask, the primary-beam mask to twice the threshold), with
   calcpsf and calcres on, then exportfits of the same products: the same cube, made by a user who knew the
   settings.

   target: tool / by hand (3) <= 1.1 (the team's goal for a single-process step); also printed: tool / replay.

Three sizes (--size; both: all three, then the ratios side by side).  What the tool adds to the hand call is
the PSF for the cell (it grows with the whole spw's data), the dirty image's second tclean start, its checks and
its report, so the ratio depends on the delivery and the cube:
* small: 2 EBs of 25 antennas, spw 25 of 128 channels, grid -20 km/s + 20 x 2 km/s: tclean by hand ~5 s;
* large: 4 EBs of 25 antennas, spw 25 of 320 channels, grid -100 km/s + 100 x 2 km/s: by hand ~10 s;
* xlarge: 4 EBs of 43 antennas (a full 12 m array), spw 25 of 960 channels, grid -200 km/s + 200 x 2 km/s: by
  hand ~50 s, a cube of the minutes users' cubes take (simulated once, ~1 min, cached in $SIMULATION_CACHE or
  the workdir).
(by hand: on the quiet 2-core machine of 2026-12-07.)

The machine is shared: the load (uptime) is printed with the numbers; the sides alternate and the fastest of
--repeat runs of each counts.

Usage: python bench/bench_grid.py [--size small|large|xlarge|both] [--n-ebs N] [--n-antennas N] [--nchan N] [--repeat 2]
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
    ('xlarge', dict(n_ebs=4, n_antennas=43, nchan=960,
                    grid=['--spw', '25', '--start', '-200km/s', '--width', '2km/s', '--nchan', '200'])),
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
    """Side by side on args' delivery and grid: (tool cold, tool again, replay, hand) best Timings, printed with where
    the time goes.  cold: the delivery's first run (no known-beams.json: it makes the PSF that sets the cell);
    again: the same command once more, as a user re-imaging the same data (the cell from the first run's PSF)."""
    delivery = grid_delivery(args, workdir)
    cold, tool, given, replayed, hand, logs = [], [], [], [], [], []
    chosen_cell = []  # the cell of the first run, given to the 'cell' side
    known_beams = delivery / 'working_reprocess' / 'known-beams.json'

    def run_tool(kind):
        """kind: 'first' (no known beams: the PSF for the cell is made), 'again' (its beam taken from the first
        run's), 'cell' (--cell the first run's cell: no PSF for it; known-beams.json is left as it is)."""
        images = delivery / 'images'
        if images.exists():
            shutil.rmtree(str(images))
        if kind == 'first' and known_beams.exists():
            known_beams.unlink()
        timing, result = timed([sys.executable, str(SCRIPT), '--image', '--engine', 'casa', '--specmodes', 'cube']
                               + args.grid + (['--cell', chosen_cell[0]] if kind == 'cell' else []), cwd=delivery)
        if not chosen_cell:
            chosen_cell.append(re.search(r'channels, cell (\S+), ', result.stdout).group(1))
        casa_log = re.search(r'CASA log: (\S+)', result.stdout).group(1)
        with open(casa_log) as handle:
            made_psf = 'psf-for-cell' in handle.read()
        if made_psf != (kind == 'first') or ('from the PSF beam an earlier run made' in result.stdout) != (
                kind == 'again'):
            raise SystemExit('the %s run %s a PSF for the cell' % (kind, 'made' if made_psf else 'made no'))
        log = workdir / ('tool-%d-%s.log' % (len(logs), kind))
        shutil.copyfile(casa_log, str(log))
        logs.append(log)
        return timing

    print('load before: %s' % load(), flush=True)
    run_tool('first')  # the calls to replay are a first run's own (and a warm disk cache for every side)
    calls = len(task_calls_in_log(logs[0], 'tclean'))
    for round_number in range(args.repeat):
        sides = ['cold', 'tool', 'cell', 'replay', 'hand']
        for side in (sides if round_number % 2 == 0 else list(reversed(sides))):
            if side in ('cold', 'tool', 'cell'):
                {'cold': cold, 'tool': tool, 'cell': given}[side].append(
                    run_tool({'cold': 'first', 'tool': 'again', 'cell': 'cell'}[side]))
            elif side == 'replay':
                replayed.append(replay_bare(delivery, logs[0], workdir, round_number)[0])
            else:
                hand.append(by_hand(delivery, logs[0], workdir, round_number))
            timing = {'cold': cold, 'tool': tool, 'cell': given, 'replay': replayed, 'hand': hand}[side][-1]
            print('  %-7s %6.1f s wall, %6.1f s CPU; load now %s' % ((side,) + tuple(timing) + (load(),)),
                  flush=True)
    cold, tool, given, replayed, hand = best(cold), best(tool), best(given), best(replayed), best(hand)
    cleans = [c for c in task_calls_in_log(logs[0], 'tclean') if c.get('specmode') == 'cube' and c.get('niter', 0)]
    print('load after: %s (2 cores)' % load())
    print('tool, first run on the delivery:  %6.1f s wall, %6.1f s CPU' % cold)
    print('tool, the same command again:     %6.1f s wall, %6.1f s CPU  (the cell from the first run\'s PSF)' % tool)
    print('tool, first run, --cell %-9s %6.1f s wall, %6.1f s CPU  (the cell given: no PSF for it)'
          % ((chosen_cell[0] + ':',) + tuple(given)))
    print('its %d tclean calls, replayed:     %6.1f s wall, %6.1f s CPU  (a first run\'s)' % ((calls,) + tuple(replayed)))
    print('one tclean by hand, same grid:    %6.1f s wall, %6.1f s CPU  (the last cleaning call: usemask %s, '
          'threshold %s)' % (tuple(hand) + (cleans[-1].get('usemask'), cleans[-1].get('threshold'))))
    print('where the time goes (wall of each tclean call, CASA log; a first run, a run again, then by hand):')
    for log in (logs[0], [log for log in logs if log.name.endswith('-again.log')][-1]):
        for role, seconds in tclean_durations(log):
            print('   tool: %-55s %6.1f s' % (role, seconds))
    for log in sorted(workdir.glob('hand--1-*.log'))[:1]:
        for role, seconds in tclean_durations(log):
            print('   hand: %-55s %6.1f s' % (role, seconds))
    print('tool / by hand, first run:  %.3f wall, %.3f CPU  (target <= %.1f; best of %d runs each)'
          % (cold.wall / hand.wall, cold.cpu / hand.cpu, TARGET, args.repeat))
    print('tool / by hand, again:      %.3f wall, %.3f CPU' % (tool.wall / hand.wall, tool.cpu / hand.cpu))
    print('tool / by hand, --cell:     %.3f wall, %.3f CPU' % (given.wall / hand.wall, given.cpu / hand.cpu))
    print('tool / replay, first run:   %.3f wall, %.3f CPU  (the tool\'s own cost around its tclean calls)'
          % (cold.wall / replayed.wall, cold.cpu / replayed.cpu), flush=True)
    return cold, tool, given, replayed, hand


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
            for size, (cold, tool, given, replayed, hand) in results.items():
                print('   %-6s by hand %6.1f s wall %6.1f s CPU; tool / by hand: first run %.3f wall, %.3f CPU, again '
                      '%.3f wall, %.3f CPU, first run with --cell %.3f wall, %.3f CPU (target <= %.1f); first run / '
                      'replay %.3f wall, %.3f CPU'
                      % ((size,) + tuple(hand) + (cold.wall / hand.wall, cold.cpu / hand.cpu, tool.wall / hand.wall,
                                                  tool.cpu / hand.cpu, given.wall / hand.wall, given.cpu / hand.cpu,
                                                  TARGET, cold.wall / replayed.wall, cold.cpu / replayed.cpu)))
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
