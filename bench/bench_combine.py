#!/usr/bin/env python3
"""Benchmark of --combine (issue 29): the tool against the same CASA calls run by hand on the same MSes, side by
side in one run, on tests/support/simulate_combine.py's goal (12 m + 7 m + a TP cube).

For each of ``--combine 7m --specmodes mfs`` and the same ``--feather tp.fits``:

1. the tool, wall and CPU time of the whole command (its report, uv-coverage picture and flux table included);
2. by hand: the tclean, importfits, imcollapse, imregrid, feather and exportfits calls the tool made (read from its
   CASA log, in order), replayed in a fresh Python on the deliveries' own MSes (the tool reads them through
   stand-ins whose files are links) into a folder of their own; the tool's own numpy step between imregrid and
   feather (the TP put on the image's Stokes/frequency axes) is left out: feather takes the regridded TP as it is.

   ratio = (1) / (2), the issue's goal: "no more than the same tclean/feather calls run by hand" (<= 1.1).

Also measured: the largest size of the delivery's working_reprocess/ while the tool runs (sampled every second; its
images included) and of the MSes' stand-ins in it alone, against the size of the MSes: a copy of an MS would show as
its size; a stand-in is links to the MS's files and a private HISTORY (22 kB for the 5.3 MB 12 m MS of the goal).

The machine is shared: the load (uptime) is printed with the numbers; the sides run A B B A (tool --feather, by
hand --feather, by hand --combine, tool --combine), once each (a tool run is minutes on 2 shared cores).

Usage: python bench/bench_combine.py [--workdir DIR]   (SIMULATION_CACHE keeps the simulated goal)
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_image import REPLAY, SCRIPT, REPO, timed  # noqa: E402

sys.path.insert(0, str(REPO / 'tests' / 'support'))
TARGET = 1.1
TASKS = ('tclean', 'importfits', 'imcollapse', 'imregrid', 'feather', 'impbcor', 'exportfits')


def load():
    return '%.1f %.1f %.1f (1, 5, 15 min)' % os.getloadavg()


def calls_in_order(log):
    """[(task, kwargs)] of the TASKS calls of a CASA log, in the order they ran."""
    import ast
    pattern = re.compile(r'\t(%s)\( (.*) \)\s*$' % '|'.join(TASKS))
    calls = []
    with open(str(log)) as handle:
        for line in handle:
            match = pattern.search(line)
            if match:
                call = ast.parse('f(%s)' % match.group(2), mode='eval').body
                calls.append((match.group(1), {k.arg: ast.literal_eval(k.value) for k in call.keywords}))
    return calls


def by_hand_calls(calls, goal, delivery, folder):
    """The tool's calls on the deliveries' own MSes (stand-in 'N-<ms>' -> part N's measurement_sets/<ms>), every
    image and FITS into folder."""
    work = str(delivery / 'working_reprocess' / 'imaging' / 'combine')
    roots = [goal / '12m', goal / '7m']

    def original(path):
        name = Path(path).name
        number, ms = name.split('-', 1)
        return str(roots[int(number)] / 'measurement_sets' / ms)

    def moved(value):
        if isinstance(value, str) and (value.startswith(work) or '/.combined.partial-' in value):
            return str(folder / Path(value).name)
        return value
    result = []
    for task, arguments in calls:
        arguments = dict(arguments)
        if task == 'tclean':
            arguments['vis'] = [original(v) for v in arguments['vis']]
        arguments = dict((key, [moved(v) for v in value] if isinstance(value, list) and key != 'vis' else
                          moved(value)) for key, value in arguments.items())
        if task == 'feather':  # the tool's TP on the image's axes (a numpy step): the regridded TP as it is
            arguments['lowres'] = arguments['lowres'].replace('tp.apparent', 'tp.regrid')
        if task == 'exportfits':
            arguments['overwrite'] = True
        result.append((task, arguments))
    return result


def without_tp(calls):
    """The calls of a --feather run that a run without it makes too: no TP import, collapse, regrid, feather, nor
    the export of the feathered image."""
    return [(task, arguments) for task, arguments in calls if task not in ('importfits', 'imcollapse', 'imregrid',
                                                                          'feather', 'impbcor')
            and not (task == 'exportfits' and 'feather' in arguments.get('imagename', ''))]


def folder_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(str(path)):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size  # a link counts as a link
            except OSError:
                pass
    return total


def run_tool(delivery, goal, extra, workdir, logs):
    """Timing of the tool's command; its CASA log copied into workdir; the largest size of working_reprocess/."""
    for folder in ('combined', 'working_reprocess'):
        shutil.rmtree(str(delivery / folder), ignore_errors=True)
    largest = [0, 0]
    done = threading.Event()
    work = delivery / 'working_reprocess' / 'imaging' / 'combine'

    def watch():
        while not done.wait(1.0):
            largest[0] = max(largest[0], folder_bytes(delivery / 'working_reprocess'))
            # the stand-ins of the MSes alone ('<n>-<ms name>'): links and a private HISTORY, not copies
            largest[1] = max(largest[1], sum(folder_bytes(ms) for ms in work.glob('[0-9]*-*.ms')))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        timing, result = timed([sys.executable, str(SCRIPT), '--combine', str(goal / '7m'), '--specmodes', 'mfs']
                               + extra, cwd=delivery)
    finally:
        done.set()
        watcher.join()
    log = workdir / ('tool-%d.log' % len(logs))
    shutil.copyfile(re.search(r'CASA log: (\S+)', result.stdout).group(1), str(log))
    logs.append(log)
    return timing, largest


def run_by_hand(calls, workdir, name):
    folder = workdir / name
    shutil.rmtree(str(folder), ignore_errors=True)
    folder.mkdir()
    plan = workdir / (name + '_calls.json')
    hand = by_hand_calls(calls, workdir / 'goal', workdir / 'goal' / '12m', folder)
    plan.write_text(json.dumps(hand))
    program = workdir / 'replay.py'
    program.write_text(REPLAY)
    timing, _result = timed([sys.executable, str(program), str(REPO), str(plan), str(workdir / (name + '.log'))],
                            cwd=folder)
    return timing, len(hand)


def said(side, timing):
    print('  %-18s %6.1f s wall, %6.1f s CPU; load now %s' % (side, timing.wall, timing.cpu, load()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', default=None, help='where to work (default: a temporary folder, removed)')
    args = parser.parse_args(argv)
    from simulate_combine import cached_goal
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-combine-'))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = Path(cached_goal(os.environ.get('SIMULATION_CACHE') or str(workdir / 'cache')))
        goal = workdir / 'goal'
        shutil.rmtree(str(goal), ignore_errors=True)
        shutil.copytree(str(source), str(goal), symlinks=True)
        delivery = goal / '12m'
        ms_bytes = sum(folder_bytes(ms) for root in (goal / '12m', goal / '7m')
                       for ms in (root / 'measurement_sets').glob('*.ms'))
        print('goal: 12 m + 7 m (+ TP), MSes %.1f MB; load before: %s' % (ms_bytes / 1e6, load()), flush=True)
        feather = ['--feather', str(goal / 'tp.fits')]
        logs = []
        measured = {'feather': {}, 'combine': {}}
        # A B B A: the tool with --feather first (its log holds every call of both cases: --combine's are those
        # without the TP), both by hand, then the tool without --feather
        measured['feather']['tool'] = run_tool(delivery, goal, feather, workdir, logs)
        said('tool --feather', measured['feather']['tool'][0])
        calls = calls_in_order(logs[0])
        measured['feather']['hand'] = run_by_hand(calls, workdir, 'hand-feather')
        said('by hand --feather', measured['feather']['hand'][0])
        measured['combine']['hand'] = run_by_hand(without_tp(calls), workdir, 'hand-combine')
        said('by hand --combine', measured['combine']['hand'][0])
        measured['combine']['tool'] = run_tool(delivery, goal, [], workdir, logs)
        said('tool --combine', measured['combine']['tool'][0])
        check = [task for task, _a in calls_in_order(logs[1])]
        if check != [task for task, _a in without_tp(calls)]:
            sys.exit('the tool without --feather made other calls than expected: %s' % check)
        cases = [('combine', []), ('feather', feather)]
        print('load after: %s (2 cores)' % load())
        for name, _extra in cases:
            (tool, largest), (hand, count) = measured[name]['tool'], measured[name]['hand']
            print('--combine%s: tool %6.1f s wall, %6.1f s CPU; by hand (%d calls) %6.1f s wall, %6.1f s CPU; '
                  'ratio %.3f wall, %.3f CPU (target <= %.1f); working_reprocess/ at most %.1f MB (its images '
                  'included), the MSes\' stand-ins at most %.1f kB (the MSes: %.1f MB)'
                  % (' --feather' if name == 'feather' else '', tool.wall, tool.cpu, count, hand.wall, hand.cpu,
                     tool.wall / hand.wall, tool.cpu / hand.cpu, TARGET, largest[0] / 1e6, largest[1] / 1e3,
                     ms_bytes / 1e6))
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
