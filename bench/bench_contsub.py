#!/usr/bin/env python3
"""Benchmark of --contsub_fast: the whole command against the bare uvcontsub calls it stands for.

Measured side by side in one run, on the same simulated delivery (4 execution blocks, 25
antennas, 4 spws; cached in .cache/bench so later runs skip the simulation):

1. ``scriptForReprocessing.py --contsub_fast`` (default --jobs: the cores), wall time of the
   whole command: checking cont.dat, the fits, the checks of the line MSes, the spectra plots;
2. the same uvcontsub calls (the same fitspec, computed here as the tool computes it), one after
   the other in a fresh Python: what a user would run by hand.  Both sides pay the start of
   Python and the import of CASA.

   ratio = (1) / (2), target <= 0.6 with 2+ execution blocks on 2+ cores

3. ``--contsub_fast --jobs 1`` too, to show what the worker processes bring on this machine;
4. with the ALMA pipeline importable: ``--contsub``, and the ratio (1) / (4), target <= 0.25.

The runs alternate (bare, fast, fast --jobs 1, ...) so that a busy machine slows them alike; the
load average is printed with the results, and beside the wall times the CPU time (user + system,
worker processes included) of each command: on a shared machine the CPU ratio of the serial run
moves less than the wall ratio.  Not a test: it prints numbers.

Target (issue 24): --contsub_fast --jobs 1 <= 1.1 x the bare calls, at every size.

Usage: python bench/bench_contsub.py [--nchan 960] [--repeats 1] [--keep] [--previous OLD_SCRIPT] [--skip-parallel]
"""
import argparse
import json
import os
import resource
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

BARE = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from scriptForReprocessing import load_casa
casa = load_casa(logfile=sys.argv[3])
for arguments in json.load(open(sys.argv[2])):
    casa.casatasks.uvcontsub(**arguments)
'''


def timed(command, cwd, cpu=None):
    """(wall seconds, result); cpu (a list) gets the command's CPU seconds, its worker processes included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(command, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    elapsed = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit('benchmark command failed: %s\n%s\n%s' % (' '.join(command), result.stdout, result.stderr))
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed, result


def bare_calls(delivery, outdir):
    """The uvcontsub calls --contsub_fast makes, with the fitspec it would build."""
    import scriptForReprocessing as sfr
    casa = sfr.load_casa(logfile=outdir / 'casa-bench.log')
    found = sfr.Delivery(delivery)
    analysis = sfr.analyse_contdat(sfr.read_delivery_contdat(found), found.targets, casa)
    calls = []
    for ms in found.targets:
        field, spw, fitspec = sfr.build_fitspec(analysis.selections[str(ms)])
        calls.append(dict(vis=str(ms), outputvis=str(outdir / sfr.line_ms_path(ms).name), field=field, spw=spw,
                          fitspec=fitspec, datacolumn='data'))
    return calls


def remove_line_mses(delivery):
    for path in (Path(delivery) / 'measurement_sets').glob('*_targets_line.ms'):
        shutil.rmtree(str(path))


def pipeline_importable():
    probe = ('import sys; sys.path.insert(0, %r); import scriptForReprocessing as s; s.load_casa(); '
             'import pipeline' % str(REPO))
    return subprocess.run([sys.executable, '-c', probe], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n-ebs', type=int, default=4)
    parser.add_argument('--n-antennas', type=int, default=25)
    parser.add_argument('--nchan', type=int, default=960)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--keep', action='store_true', help='keep the working copy of the delivery')
    parser.add_argument('--previous', metavar='SCRIPT', help='another scriptForReprocessing.py (e.g. of an earlier '
                        'commit: git show REV:scriptForReprocessing.py > old.py) timed with --jobs 1 in the same '
                        'alternation, so that a change is measured side by side')
    parser.add_argument('--skip-parallel', action='store_true', help='do not time --contsub_fast with the default jobs')
    args = parser.parse_args(argv)
    from simulate_delivery import cached_delivery, copy_delivery

    started = time.time()
    with_pipeline = pipeline_importable()
    # The pipeline's hifa_importdata refuses plain simulated MSes; the simulator can make ones it takes.
    source = Path(cached_delivery(REPO / '.cache' / 'bench', n_ebs=args.n_ebs, n_antennas=args.n_antennas,
                                  spw_ids=(25, 27, 29, 31), nchan=args.nchan, pipeline_ready=with_pipeline))
    print('delivery: %d EBs x %d antennas x 4 spws x %d channels (%.0f s to get it)' % (
        args.n_ebs, args.n_antennas, args.nchan, time.time() - started), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix='bench-contsub-'))
    delivery = workdir / 'calibrated_final'
    copy_delivery(source, delivery)
    bare_dir = workdir / 'bare'
    bare_dir.mkdir()
    calls_file = workdir / 'calls.json'
    calls_file.write_text(json.dumps(bare_calls(delivery, bare_dir)))
    times = {'bare': [], 'fast': [], 'fast1': [], 'previous1': [], 'pipeline': []}
    cpu = {'bare': [], 'fast': [], 'fast1': [], 'previous1': []}
    commands = [] if args.skip_parallel else [('fast', SCRIPT, [])]
    commands.append(('fast1', SCRIPT, ['--jobs', '1']))
    if args.previous:
        commands.append(('previous1', Path(args.previous).resolve(), ['--jobs', '1']))
    try:
        for repeat in range(args.repeats):
            for path in bare_dir.glob('*_line.ms'):
                shutil.rmtree(str(path))
            elapsed, _ = timed([sys.executable, '-c', BARE, str(REPO), str(calls_file), str(bare_dir / 'casa.log')],
                               workdir, cpu['bare'])
            times['bare'].append(elapsed)
            for key, script, extra in commands:
                remove_line_mses(delivery)
                elapsed, result = timed([sys.executable, str(script), '--contsub_fast'] + extra, delivery, cpu[key])
                times[key].append(elapsed)
                if key == 'fast' and repeat == 0:
                    processes = [l for l in result.stdout.splitlines() if 'subtracting the continuum of' in l]
                    print('--contsub_fast said: %s' % (processes[0].strip() if processes else '?'), flush=True)
            if with_pipeline:
                remove_line_mses(delivery)
                try:
                    elapsed, _ = timed([sys.executable, str(SCRIPT), '--contsub'], delivery)
                except SystemExit as failure:  # report it and keep the other numbers
                    print('--contsub failed, so it is not compared:\n%s' % str(failure)[-2000:], flush=True)
                    with_pipeline = False
                else:
                    times['pipeline'].append(elapsed)
            print('repeat %d: bare %.1f s, --contsub_fast %s s, --contsub_fast --jobs 1 %.1f s (ratio %.3f)%s%s; '
                  'CPU bare %.1f s, --jobs 1 %.1f s (ratio %.3f)%s (load %.2f)' % (
                      repeat + 1, times['bare'][-1], '%.1f' % times['fast'][-1] if times['fast'] else '-',
                      times['fast1'][-1], times['fast1'][-1] / times['bare'][-1],
                      ', previous --jobs 1 %.1f s (ratio %.3f)' % (times['previous1'][-1], times['previous1'][-1] /
                                                                   times['bare'][-1]) if args.previous else '',
                      ', --contsub %.1f s' % times['pipeline'][-1] if with_pipeline else '',
                      cpu['bare'][-1], cpu['fast1'][-1], cpu['fast1'][-1] / cpu['bare'][-1],
                      ', previous %.1f s (ratio %.3f)' % (cpu['previous1'][-1], cpu['previous1'][-1] / cpu['bare'][-1])
                      if args.previous else '', os.getloadavg()[0]),
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(str(workdir), ignore_errors=True)

    def median(key):
        return statistics.median(times[key])

    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    print()
    print('machine: %d cores, load average now %.2f %.2f %.2f' % ((cores,) + os.getloadavg()))
    print('bare serial uvcontsub (fresh Python, CASA import included): %6.1f s' % median('bare'))
    if times['fast']:
        print('--contsub_fast (whole command, default jobs):               %6.1f s   ratio %.2f (target <= 0.6)'
              % (median('fast'), median('fast') / median('bare')))
    print('--contsub_fast --jobs 1 (whole command, serial):            %6.1f s   ratio %.3f (target <= 1.1)'
          % (median('fast1'), median('fast1') / median('bare')))
    if args.previous:
        print('previous script --jobs 1 (whole command, serial):          %6.1f s   ratio %.3f'
              % (median('previous1'), median('previous1') / median('bare')))
    print('CPU seconds (user + system): bare %.1f, --contsub_fast %s, --jobs 1 %.1f   serial ratio %.3f%s' % (
        statistics.median(cpu['bare']), '%.1f' % statistics.median(cpu['fast']) if cpu['fast'] else '-',
        statistics.median(cpu['fast1']), statistics.median(cpu['fast1']) / statistics.median(cpu['bare']),
        ';   previous --jobs 1 %.1f, ratio %.3f' % (statistics.median(cpu['previous1']), statistics.median(
            cpu['previous1']) / statistics.median(cpu['bare'])) if args.previous else ''))
    if with_pipeline:
        print('--contsub (pipeline):                                       %6.1f s   fast/pipeline %.2f '
              '(target <= 0.25)' % (median('pipeline'), median('fast') / median('pipeline')))
    else:
        print('--contsub (pipeline): not measured, "import pipeline" fails in this Python')
    print('total benchmark time: %.0f s' % (time.time() - started))


if __name__ == '__main__':
    main()
