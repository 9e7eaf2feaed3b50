#!/usr/bin/env python3
"""Benchmark: the pipeline-free imaging engine against the ALMA pipeline's, product by product.

Both engines image the same pipeline-ready simulated delivery (the same targets and line MSes),
one after the other; per product pair it prints beam, cell, image size (pixels and field of
view), channels, peak and rms of the ``*.pbcor.fits`` (peak and rms by image_stats.image_statistics,
inside the primary beam above its statistics level), with the ratios casa / pipeline, and both
wall times.  The goal (issue 16): beam within 3%, cell and field of view within 5%, channel count
within 1, peak within 5%, rms within 10%, casa engine wall time <= 0.5 x the pipeline's.

Without the ALMA pipeline it says so and exits 0 (nothing to compare against).

Usage: python bench/bench_engines.py [--n-antennas 20] [--seed 1] [--specmodes mfs,cont,cube,repBW]
                                     [--noise-jy J] [--mosaic N] [--workdir DIR] [--keep]
"""
import argparse
import collections
import os
import re
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

GOAL = dict(beam=0.03, cell=0.05, fov=0.05, nchan=1, peak=0.05, rms=0.10, time=0.5)
Product = collections.namedtuple('Product', 'key path beam cell imsize nchan peak rms')


def display_environment():
    """(environment, server): a display for the pipeline's plots (an Xvfb of our own when there is none)."""
    if os.environ.get('DISPLAY') or not shutil.which('Xvfb'):
        return dict(os.environ), None
    read_end, write_end = os.pipe()
    server = subprocess.Popen(['Xvfb', '-displayfd', str(write_end), '-screen', '0', '1280x1024x24', '-nolisten',
                               'tcp'], pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        number = handle.readline().strip()
    return dict(os.environ, DISPLAY=':%s' % number), server


def run_engine(delivery, engine, specmodes, env, log):
    started = time.time()
    with open(str(log), 'w') as handle:
        result = subprocess.run([sys.executable, str(SCRIPT), '--image', '--engine', engine, '--specmodes',
                                 specmodes], cwd=str(delivery), env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if result.returncode != 0:
        sys.exit('--image --engine %s failed (exit %d): see %s' % (engine, result.returncode, log))
    return wall


def product_key(name):
    """'<ous>.<field>_sci.spw25.cube.I.pbcor.fits' -> 'spw25 cube' (the same for both engines)."""
    match = re.search(r'_sci\.spw([0-9_]+)\.(mfs|cont|cube|repBW)\.', name)
    return 'spw%s %s' % (match.group(1).replace('_', '+'), match.group(2)) if match else None


def read_products(casa, images):
    from reprocessing.imaging.image_stats import image_statistics
    products = {}
    for fits in sorted(Path(images).glob('*.pbcor.fits')):
        key = product_key(fits.name)
        if key is None:
            continue
        image = casa.casatools.image()
        image.open(str(fits))
        try:
            shape = image.shape()
            coordinates = image.coordsys()
            increment = coordinates.increment(format='n', type='direction')['numeric']
            spectral = coordinates.findaxisbyname('Frequency') if 'Spectral' in coordinates.axiscoordinatetypes() \
                else None
            coordinates.done()
            info = image.restoringbeam()
            if 'beams' in info:  # per-channel beams of a cube: the median channel's
                beams = info['beams']
                info = beams['*%d' % (len(beams) // 2)]['*0']
        finally:
            image.close()
        quanta = casa.casatools.quanta()
        beam = (quanta.convert(info['major'], 'arcsec')['value'], quanta.convert(info['minor'], 'arcsec')['value'])
        cell = abs(increment[0]) * 180.0 / 3.141592653589793 * 3600.0
        nchan = int(shape[spectral]) if spectral is not None else 1
        pb = fits.with_name(fits.name.replace('.pbcor.fits', '.pb.fits').replace('.tt0.pb.fits', '.pb.tt0.fits'))
        mask = fits.with_name(fits.name.replace('.pbcor.fits', '.mask.fits').replace('.tt0.mask.fits', '.mask.fits'))
        stats = image_statistics(casa, str(fits), pb=str(pb) if pb.exists() else None,
                                 clean_mask=str(mask) if mask.exists() else None)
        products[key] = Product(key, fits, beam, cell, [int(shape[0]), int(shape[1])], nchan, stats['peak'],
                                stats['rms'])
    return products


def ratio(a, b):
    return a / b if b else float('nan')


def compare(pipeline, casa_engine):
    """Lines of the table and the number of numbers outside the goal."""
    lines = ['%-14s %-23s %-13s %-21s %-11s %-14s %s' % (
        'product', 'beam pl / casa (")', 'cell pl/casa', 'size pl/casa (FOV)', 'nchan', 'peak casa/pl',
        'rms pl / casa (mJy)')]
    misses = 0
    for key in sorted(set(pipeline) | set(casa_engine)):
        if key not in pipeline or key not in casa_engine:
            lines.append('%-14s only made by the %s engine' % (key, 'pipeline' if key in pipeline else 'casa'))
            misses += 1
            continue
        p, c = pipeline[key], casa_engine[key]
        beam_ratio = (ratio(c.beam[0], p.beam[0]), ratio(c.beam[1], p.beam[1]))
        fov_ratio = ratio(c.imsize[0] * c.cell, p.imsize[0] * p.cell)
        peak_ratio, rms_ratio = ratio(c.peak, p.peak), ratio(c.rms, p.rms)
        checks = [max(abs(r - 1) for r in beam_ratio) <= GOAL['beam'], abs(ratio(c.cell, p.cell) - 1) <= GOAL['cell'],
                  abs(fov_ratio - 1) <= GOAL['fov'], abs(c.nchan - p.nchan) <= GOAL['nchan'],
                  abs(rms_ratio - 1) <= GOAL['rms']]
        if 'noise only' not in key and p.peak > 5 * p.rms:  # a peak that is noise is not compared
            checks.append(abs(peak_ratio - 1) <= GOAL['peak'])
        misses += checks.count(False)
        lines.append('%-14s %.3fx%.3f/%.3fx%.3f %.3f/%.3f   %dx%d/%dx%d (%.3f) %3d/%-3d     %.4f         '
                     '%.4g/%.4g (%.4f)%s' % (
                         key, p.beam[0], p.beam[1], c.beam[0], c.beam[1], p.cell, c.cell, p.imsize[0], p.nchan,
                         c.imsize[0], c.nchan, fov_ratio, p.nchan, c.nchan, peak_ratio, p.rms * 1e3, c.rms * 1e3,
                         rms_ratio, '' if all(checks) else '   <- outside the goal'))
    return lines, misses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--n-ebs', type=int, default=2)
    parser.add_argument('--n-antennas', type=int, default=20)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--specmodes', default='mfs,cont,cube,repBW')
    parser.add_argument('--noise-jy', type=float, default=None,
                        help='noise per visibility (the simulator\'s default 0.002 Jy makes the dynamic-range '
                             'correction, not the sensitivity, set the cleaning threshold)')
    parser.add_argument('--mosaic', type=int, default=0, metavar='N',
                        help='a mosaic of N hexagonal Nyquist-spaced 12 m pointings, the source 9" off its centre')
    parser.add_argument('--workdir', default=None, help='where to work (default: a temporary folder, removed)')
    parser.add_argument('--keep', action='store_true', help='keep the working folder')
    parser.add_argument('--only', choices=('pipeline', 'casa', 'none'), default=None,
                        help='run one engine (none: compare the images already in --workdir)')
    args = parser.parse_args(argv)
    import scriptForReprocessing as sfr
    if not sfr.pipeline_is_installed():
        print('bench_engines: skipped (the ALMA pipeline is not importable here: nothing to compare against)')
        return 0
    from simulate_delivery import cached_delivery, copy_delivery
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-engines-'))
    workdir.mkdir(parents=True, exist_ok=True)
    env, server = display_environment()
    try:
        params = dict(n_ebs=args.n_ebs, n_antennas=args.n_antennas, seed=args.seed, with_line_ms=True,
                      pipeline_ready=True)
        if args.noise_jy:
            params.update(noise_jy=args.noise_jy)
        if args.mosaic:
            from simulate_delivery import hexagonal_mosaic_offsets
            params.update(mosaic_offsets_arcsec=hexagonal_mosaic_offsets(args.mosaic, freq_ghz=217.0),
                          offset_arcsec=(9.0, 4.0))
        source = cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache', **params)
        print('delivery: %d EBs, %d antennas, seed %d, pipeline-ready, line MSes%s; specmodes %s'
              % (args.n_ebs, args.n_antennas, args.seed, ', a %d-pointing mosaic' % args.mosaic if args.mosaic else '',
                 args.specmodes), flush=True)
        walls = {}
        for engine in ('pipeline', 'casa'):
            delivery = workdir / engine / 'calibrated_final'
            if args.only and args.only != engine:
                continue
            if delivery.parent.exists():
                shutil.rmtree(str(delivery.parent))
            delivery.parent.mkdir(parents=True)
            copy_delivery(source, delivery)
            walls[engine] = run_engine(delivery, engine, args.specmodes, env, workdir / ('%s.log' % engine))
            (workdir / ('%s.seconds' % engine)).write_text('%.1f\n' % walls[engine])
            print('--image --engine %-8s %6.1f s wall' % (engine, walls[engine]), flush=True)
        for engine in ('pipeline', 'casa'):
            if engine not in walls and (workdir / ('%s.seconds' % engine)).exists():
                walls[engine] = float((workdir / ('%s.seconds' % engine)).read_text())
        casa = sfr.load_casa()
        products = {engine: read_products(casa, workdir / engine / 'calibrated_final' / 'images')
                    for engine in ('pipeline', 'casa')}
        lines, misses = compare(products['pipeline'], products['casa'])
        print('\n'.join(lines))
        if 'pipeline' in walls and 'casa' in walls:
            time_ratio = walls['casa'] / walls['pipeline']
            misses += time_ratio > GOAL['time']
            print('wall time: pipeline %.1f s, casa engine %.1f s, casa / pipeline %.3f (goal <= %.1f)'
                  % (walls['pipeline'], walls['casa'], time_ratio, GOAL['time']))
        print('%d number(s) outside the goal' % misses)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if not args.workdir and not args.keep:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
