#!/usr/bin/env python3
"""Where the time of a cube goes, one tclean against the chunks (issue 28): wall and CPU per phase.

Runs the package in this process (--jobs 1: every chunk in this process too) with timing wrappers around the
phases (each tclean call by kind, the grid probe, the sensitivity, cube health, the join, the chunk copies,
reading the MSes, the PSF of the cell), and prints a table per case: calls, wall s, CPU s (this process's, all
threads: time.process_time).

Usage: python bench/profile_split.py OUTDIR CASE [CASE ...]   (CASE: whole, or the --split-cube N, e.g. 4)
       [--nchan 64]
"""
import argparse
import functools
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests' / 'support'))

TIMES = defaultdict(lambda: [0, 0.0, 0.0])
_DEPTH = [0]


def timed(label_of, original):
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        label = label_of(args, kwargs)
        wall, cpu = time.time(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            row = TIMES[label]
            row[0] += 1
            row[1] += time.time() - wall
            row[2] += time.process_time() - cpu
    return wrapper


def tclean_label(args, kwargs):
    if args[1] != 'tclean':
        return 'casa task ' + args[1]
    if kwargs.get('imsize') == [16, 16]:
        return 'tclean grid probe'
    if str(kwargs.get('about', '')).startswith('the PSF'):
        return 'tclean psf (cell)'
    if kwargs.get('niter') == 0:
        return 'tclean dirty'
    if kwargs.get('restart') or kwargs.get('usemask') == 'pb':
        return 'tclean again (fallback/health)'
    return 'tclean clean'


def patch(name, label_of):
    """Wrap every reference to reprocessing's function `name` (module.attr) in the loaded modules."""
    module_name, attribute = name.rsplit('.', 1)
    module = sys.modules[module_name]
    original = getattr(module, attribute)
    wrapper = timed(label_of, original)
    for loaded in list(sys.modules.values()):
        if loaded is not None and getattr(loaded, '__name__', '').startswith(('reprocessing', 'shutil')):
            for key, value in list(vars(loaded).items()):
                if value is original:
                    setattr(loaded, key, wrapper)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('outdir')
    parser.add_argument('cases', nargs='+')
    parser.add_argument('--nchan', type=int, default=64)
    options = parser.parse_args()
    out = Path(options.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from simulate_delivery import cached_delivery
    source = Path(cached_delivery(str(out / 'sim'), nchan=options.nchan, n_antennas=25, line_fwhm_kms=8.0,
                                  noise_jy=0.2, n_ebs=1, with_line_ms=True, spw_ids=(25,)))
    import reprocessing.apps.reprocess as app
    import reprocessing.steps.image
    import reprocessing.imaging.cube_split  # noqa: F401
    fixed = lambda label: (lambda args, kwargs: label)  # noqa: E731
    patch('reprocessing.casa.casa_engine.casa_task', tclean_label)
    for name, label in (('reprocessing.imaging.cube_chunks.cube_start_hz', 'grid probe (all)'),
                        ('reprocessing.imaging.tclean_run.theoretical_sensitivity', 'theoretical sensitivity'),
                        ('reprocessing.imaging.tclean_run.check_and_repair', 'cube health'),
                        ('reprocessing.imaging.cube_chunks.join_chunks', 'join'),
                        ('reprocessing.imaging.image_resume.save_finished', 'save_finished (moves)'),
                        ('reprocessing.imaging.cube_chunks.chunk_dirty', 'chunk dirty (all)'),
                        ('reprocessing.imaging.cube_chunks.chunk_clean', 'chunk clean (all)'),
                        ('reprocessing.imaging.tclean_run.run_image_job', 'one-tclean image (all)'),
                        ('reprocessing.imaging.cube_split.make_split_cube', 'split cube (all)'),
                        ('reprocessing.imaging.tclean_run.run_tclean_jobs', 'images (all)'),
                        ('reprocessing.steps.image.read_ms_for_imaging', 'read MSes'),
                        ('reprocessing.steps.image.psf_beam_finder', 'psf beam finder')):
        patch(name, fixed(label))
    for case in options.cases:
        TIMES.clear()
        delivery = out / ('case-' + case)
        if delivery.exists():
            shutil.rmtree(str(delivery))
        shutil.copytree(str(source), str(delivery), symlinks=True)
        split = ['--split-cube', 'no'] if case == 'whole' else ['--split-cube', case]
        wall, cpu = time.time(), time.process_time()
        load = os.getloadavg()[0]
        log = open(str(out / ('case-%s.txt' % case)), 'w')
        stdout = sys.stdout
        sys.stdout = log
        try:
            code = app.main(['--delivery', str(delivery), '--image', '--specmodes', 'cube', '--jobs', '1'] + split)
        finally:
            sys.stdout = stdout
            log.close()
        wall, cpu = time.time() - wall, time.process_time() - cpu
        print('== %s: exit %s, wall %.1f s, CPU %.1f s (this process), load %.1f -> %.1f' % (
            case, code, wall, cpu, load, os.getloadavg()[0]), flush=True)
        for label, (calls, w, c) in sorted(TIMES.items(), key=lambda item: -item[1][2]):
            print('  %-34s %3d calls  wall %6.1f s  CPU %6.1f s' % (label, calls, w, c), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
