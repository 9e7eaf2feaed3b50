#!/usr/bin/env python3
"""Benchmark of --image: what the tool costs on top of the tclean calls it makes.

Measured side by side in one run, on the same simulated delivery:

1. pipeline-free ``scriptForReprocessing.py --image`` (CASA engine), wall time of the whole command;
2. the same tclean calls, bare: read from that run's CASA log (so they are exactly the calls the
   tool made, the automasking fallback included), replayed in a fresh Python on the user's
   measurement sets, followed by the exportfits calls that give the same FITS files.  Both sides
   pay the start of Python and the import of CASA.

   overhead = (1) / (2), target <= 1.15

3. with the ALMA pipeline importable: ``--image --engine pipeline`` on the same specmodes, and
   the ratio pipeline / pipeline-free.

Usage: python bench/bench_image.py [--n-ebs 2] [--n-antennas 25] [--nchan 64] [--specmodes mfs,cont,cube]
"""
import argparse
import collections
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scriptForReprocessing.py'
sys.path.insert(0, str(REPO / 'tests' / 'support'))
sys.path.insert(0, str(REPO))
from casa_log import task_calls_in_log  # noqa: E402  (the benches that import it from here too)


Timing = collections.namedtuple('Timing', 'wall cpu')


def timed(command, cwd):
    """(Timing(wall, cpu seconds of the child), result): CPU time is what other jobs on the machine
    disturb least, wall time is what the user waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(command, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit('benchmark command failed: %s\n%s\n%s' % (' '.join(command), result.stdout, result.stderr))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu), result


def best(timings):
    return Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


def task_seconds(log, tasks=('tclean', 'exportfits')):
    """Seconds spent inside the given CASA tasks, from the 'Task X complete. Start time: ... End time: ...' lines."""
    import datetime
    pattern = re.compile(r'Task (%s) complete\. Start time: (\S+ \S+) End time: (\S+ \S+)' % '|'.join(tasks))
    total = 0.0
    with open(str(log)) as handle:
        for line in handle:
            match = pattern.search(line)
            if match:
                start, end = (datetime.datetime.strptime(t, '%Y-%m-%d %H:%M:%S.%f') for t in match.groups()[1:])
                total += (end - start).total_seconds()
    return total


REPLAY = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from scriptForReprocessing import load_casa
casa = load_casa(logfile=sys.argv[3])
calls = json.load(open(sys.argv[2]))
for task, arguments in calls:
    getattr(casa.casatasks, task)(**arguments)
'''


def replay_bare(delivery, script_log, workdir, round_number):
    """The tool's tclean calls on the user's MSes in a fresh Python, then exportfits of the final images."""
    import json
    staging = str(delivery / 'working_reprocess' / 'staging' / 'image')
    imaging = str(delivery / 'working_reprocess' / 'imaging')
    bare_dir = workdir / 'bare'
    if bare_dir.exists():
        shutil.rmtree(str(bare_dir))
    bare_dir.mkdir()
    calls = []
    for arguments in task_calls_in_log(script_log, 'tclean'):
        arguments['vis'] = [v.replace(staging, str(delivery / 'measurement_sets')) for v in arguments['vis']]
        arguments['imagename'] = arguments['imagename'].replace(imaging, str(bare_dir))
        calls.append(('tclean', arguments))
    exports = []
    for arguments in task_calls_in_log(script_log, 'exportfits'):
        name = Path(arguments['imagename']).name
        exports.append(('exportfits', {'imagename': str(bare_dir / name),
                                       'fitsimage': str(bare_dir / Path(arguments['fitsimage']).name),
                                       'dropdeg': False}))
    plan = workdir / 'bare_calls.json'
    plan.write_text(json.dumps(calls + exports))
    program = workdir / 'replay.py'
    program.write_text(REPLAY)
    log = workdir / ('bare-%d.log' % round_number)
    seconds, _result = timed([sys.executable, str(program), str(REPO), str(plan), str(log)], cwd=bare_dir)
    return seconds, len(calls), len(exports), log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--n-ebs', type=int, default=2)
    parser.add_argument('--n-antennas', type=int, default=25)
    parser.add_argument('--nchan', type=int, default=32)
    parser.add_argument('--repeat', type=int, default=2, help='runs of each side; the fastest counts')
    parser.add_argument('--specmodes', default='mfs,cont,cube')
    parser.add_argument('--workdir', default=None, help='where to work (default: a temporary folder, removed)')
    args = parser.parse_args(argv)
    from simulate_delivery import cached_delivery, copy_delivery
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-image-'))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        params = dict(n_ebs=args.n_ebs, n_antennas=args.n_antennas, nchan=args.nchan, line_fwhm_kms=8.0,
                      noise_jy=0.2, with_line_ms=True)
        source = cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache', **params)
        delivery = workdir / 'calibrated_final'
        copy_delivery(source, delivery)
        print('delivery: %d EBs, %d antennas, 2 spws x %d channels; specmodes %s'
              % (args.n_ebs, args.n_antennas, args.nchan, args.specmodes))

        tool, bare, equalised = [], [], []

        def run_tool():
            images = delivery / 'images'
            if images.exists():
                shutil.rmtree(str(images))
            timing, result = timed([sys.executable, str(SCRIPT), '--image', '--engine', 'casa', '--specmodes',
                                    args.specmodes], cwd=delivery)
            log = workdir / ('tool-%d.log' % len(tool))
            shutil.copyfile(re.search(r'CASA log: (\S+)', result.stdout).group(1), str(log))
            tool.append(timing)
            return log

        first_log = run_tool()  # the calls to replay are the tool's own
        tool.pop()
        for round_number in range(args.repeat):
            # alternated order, so that neither side always runs on a warmer (or busier) machine
            if round_number % 2:
                tool_log = run_tool()
            timing, tcleans, exports, bare_log = replay_bare(delivery, first_log, workdir, round_number)
            bare.append(timing)
            if not round_number % 2:
                tool_log = run_tool()
            # The machine may be busy with other work: the same tclean call can take twice as long in one
            # run as in the other.  Equalised: the bare run's task time plus the tool's own time around it.
            inside_tool, inside_bare = task_seconds(tool_log), task_seconds(bare_log)
            equalised.append((inside_bare + tool[-1].wall - inside_tool) / bare[-1].wall)
        tool, bare = best(tool), best(bare)
        print('pipeline-free --image:       %6.1f s wall, %6.1f s CPU' % tool)
        print('bare tclean + exportfits:    %6.1f s wall, %6.1f s CPU  (%d tclean, %d exportfits, same arguments)'
              % (bare.wall, bare.cpu, tcleans, exports))
        print('overhead ratio:              %6.3f wall, %6.3f CPU  (target <= 1.15; best of %d runs each)'
              % (tool.wall / bare.wall, tool.cpu / bare.cpu, args.repeat))
        print('overhead ratio, task time equalised: %.3f  (the tool\'s time outside tclean/exportfits, on the '
              'bare run\'s task time)' % min(equalised))

        import scriptForReprocessing as sfr
        if sfr.pipeline_is_installed():
            piped = workdir / 'pipeline'
            copy_delivery(cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache',
                                          pipeline_ready=True, **params), piped)
            pipeline, _result = timed([sys.executable, str(SCRIPT), '--image', '--engine', 'pipeline',
                                       '--specmodes', args.specmodes], cwd=piped)
            print('pipeline --image:            %6.1f s wall, %6.1f s CPU' % pipeline)
            print('pipeline / pipeline-free:    %6.3f wall' % (pipeline.wall / tool.wall))
        else:
            print('pipeline --image:            skipped (the ALMA pipeline is not importable here)')
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
