#!/usr/bin/env python3
"""Benchmark of MPI: serial runs versus "mpirun -n 3" (modular CASA + casampi), side by side.

On the same simulated delivery (default: 4 execution blocks of ~240 MB, 40 antennas, 4 spws x 480
channels, with line MSes), each command timed on a fresh copy:

1. --contsub_fast: serial (--jobs 1), the process workers of --jobs (one per core, for reference),
   and mpirun -n 3 (one execution block per MPI server);
2. pipeline-free cube imaging (--image --specmodes cube --spw 25): serial, and mpirun -n 3
   (tclean parallel=True: each server cleans its part of the channels);
3. the fixed cost of MPI: mpirun -n 3 ... --dry-run (start the ranks, import CASA, start and stop
   casampi's servers) against the serial --dry-run.

ratio = MPI wall time / serial wall time (< 1: MPI is faster), printed with the machine's core
count and load: with 3 ranks, rank 0 mostly waits and 2 servers work, so on 2 cores the best
possible ratio is about 0.5 plus the fixed cost.

Usage: python bench/bench_mpi.py [--n-ebs 4] [--n-antennas 40] [--nchan 480] [--ranks 3] [--skip-image]
Needs Open MPI's mpirun and "pip install casampi mpi4py" (make setup-mpi).
"""
import argparse
import collections
import importlib.util
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


def loopback_environment(mpirun):
    """Open MPI on this machine only: shared memory between ranks, loopback for the launcher."""
    version = subprocess.run([mpirun, '--version'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True).stdout
    major = re.search(r'(\d+)\.\d+', version)
    environment = dict(os.environ)
    environment.update({'OMPI_MCA_btl': 'self,' + ('sm' if major and int(major.group(1)) >= 5 else 'vader'),
                        'OMPI_MCA_btl_tcp_if_include': 'lo', 'OMPI_MCA_oob_tcp_if_include': 'lo',
                        'OMPI_MCA_rmaps_base_oversubscribe': '1',
                        'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1'})
    return environment


# Runs the command and prints the peak resident memory of the largest process it started (ranks
# included: mpirun waits for them, so they count among this wrapper's children).
_PEAK_MEMORY = (
    'import resource, subprocess, sys\n'
    'code = subprocess.call(sys.argv[1:])\n'
    'print("@@peak-kb %d" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n'
    'sys.exit(code)\n')

Timing = collections.namedtuple('Timing', 'wall cpu peak_gb stdout')


def timed(command, cwd, env=None):
    """Wall seconds, CPU seconds of every process it started, the largest process's peak memory (GB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run([sys.executable, '-c', _PEAK_MEMORY] + command, cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit('benchmark command failed: %s\n%s\n%s' % (' '.join(command), result.stdout, result.stderr))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = re.search(r'@@peak-kb (\d+)', result.stderr)
    return Timing(wall, cpu, int(peak.group(1)) / 1e6 if peak else float('nan'), result.stdout)


def directory_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob('*') if f.is_file() and not f.is_symlink())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n-ebs', type=int, default=4)
    parser.add_argument('--n-antennas', type=int, default=40)
    parser.add_argument('--nchan', type=int, default=480)
    parser.add_argument('--ranks', type=int, default=3)
    parser.add_argument('--image-spws', default='25', help='spws of the cubes to image (default 25)')
    parser.add_argument('--skip-image', action='store_true', help='measure --contsub_fast only')
    parser.add_argument('--workdir', default=None, help='where to work (default: a temporary folder, removed)')
    options = parser.parse_args(argv)

    mpirun = shutil.which('mpirun')
    missing = [name for name in ('casampi', 'mpi4py') if importlib.util.find_spec(name) is None]
    if not mpirun or missing:
        print('MPI benchmark skipped: %s' % ('mpirun not found' if not mpirun else
                                             '%s not installed (make setup-mpi)' % ' and '.join(missing)))
        return 0
    mpi_env = loopback_environment(mpirun)
    python = sys.executable
    serial = [python, str(SCRIPT)]
    parallel = [mpirun, '-n', str(options.ranks), python, str(SCRIPT)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()

    from simulate_delivery import cached_delivery, copy_delivery
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix='bench_mpi-')).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        params = dict(n_ebs=options.n_ebs, n_antennas=options.n_antennas, nchan=options.nchan,
                      spw_ids=(25, 27, 29, 31), with_line_ms=True)
        started = time.time()
        source = Path(cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache', **params))
        targets = sorted((source / 'measurement_sets').glob('uid*_targets.ms'))
        print('delivery: %d EBs x %.0f MB (%d antennas, 4 spws x %d channels), with line MSes; made in %.0f s'
              % (len(targets), directory_bytes(targets[0]) / 1e6, options.n_antennas, options.nchan,
                 time.time() - started))
        print('machine: %d cores, load average %.1f at start; mpirun -n %d = rank 0 + %d casampi servers'
              % (cores, os.getloadavg()[0], options.ranks, options.ranks - 1))

        def fresh(name):
            copy = workdir / name
            if copy.exists():
                shutil.rmtree(str(copy))
            copy_delivery(source, copy)
            return copy

        print()
        print('%-38s %16s %16s %7s   %s' % ('', 'serial', 'parallel', 'ratio', 'peak memory of one process'),
              flush=True)

        def row(label, base, other):  # printed as soon as measured: the imaging rows take long
            print('%-38s %9.1f s wall %9.1f s wall %7.3f   %.2f GB / %.2f GB  (CPU %.0f s / %.0f s)'
                  % (label, base.wall, other.wall, other.wall / base.wall, base.peak_gb, other.peak_gb, base.cpu,
                     other.cpu), flush=True)

        contsub = ['--contsub_fast', '--overwrite-line']
        dry = timed(serial + contsub + ['--dry-run'], fresh('dry'))
        row('fixed cost: --dry-run', dry, timed(parallel + contsub + ['--dry-run'], workdir / 'dry', env=mpi_env))

        one = timed(serial + contsub + ['--jobs', '1'], fresh('contsub-serial'))
        mpi = timed(parallel + contsub, fresh('contsub-mpi'), env=mpi_env)
        if 'on MPI server' not in mpi.stdout:
            sys.exit('the mpirun run did not use the MPI servers:\n' + mpi.stdout)
        row('--contsub_fast', one, mpi)
        row('--contsub_fast --jobs %d (processes)' % cores, one,
            timed(serial + contsub + ['--jobs', str(cores)], fresh('contsub-jobs')))

        if not options.skip_image:
            image = ['--image', '--specmodes', 'cube', '--spw', options.image_spws]
            cube = timed(serial + image, fresh('image-serial'))
            row('cube imaging (spw %s)' % options.image_spws, cube,
                timed(parallel + image, fresh('image-mpi'), env=mpi_env))

        print()
        print('ratio = parallel / serial wall time, on %d cores (load average %.1f at the end: other work on the '
              'machine slows both sides); the fixed-cost row is what MPI adds to any run' % (cores, os.getloadavg()[0]))
    finally:
        if not options.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
