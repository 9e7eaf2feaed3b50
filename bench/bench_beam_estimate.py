#!/usr/bin/env python3
"""Measure the plan-time beam estimate (--beam <angle> refused before tclean) against tclean's beams.

For simulated deliveries of a few array configurations and each robust, the smallest-beam estimate from
metadata alone (imaging/beams.py estimated_beam_floor: lambda at the cube's highest frequency over the longest
baseline with data, times a factor of the robust) is set beside the beams tclean gives a cube (PSF only, the
image step's weighting: briggsbwtaper, perchanweightdensity).  What matters: the estimate must stay below the
largest major axis of the cube's planes (else a reachable --beam would be refused); the printed ratio
major/floor must be >= 1 everywhere.  Not a speed benchmark.

Then, without tclean: a numpy model of uniformly weighted PSFs (the smallest beams) of casadata's Cycle 10
configurations C-1..C-10 (1 h around transit at dec -24 deg, 230 GHz): their major axis in lambda / B, to see which
configuration is the worst case for the margin (the compact one).

Usage: python bench/bench_beam_estimate.py [--workdir DIR] [--model-only]
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests' / 'support'))
sys.path.insert(0, str(REPO))

CONFIGURATIONS = (
    ('12m, 12 antennas', dict(n_ebs=1, n_antennas=12, nchan=32, spw_ids=(25, 27))),
    ('12m, 25 antennas', dict(n_ebs=1, n_antennas=25, nchan=32, spw_ids=(25, 27))),
    ('12m, 40 antennas', dict(n_ebs=1, n_antennas=40, nchan=32, spw_ids=(25,), seed=3)),
    ('7m, 10 antennas', dict(n_ebs=1, n_antennas=10, nchan=32, spw_ids=(25,), array='7m')),
)
ROBUSTS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0)


def psf_beams(casa, ms, spw, *, robust, cell_arcsec, imagename):
    """[(major, minor)] arcsec of each plane of a PSF-only cube of the whole spw."""
    casa.casatasks.tclean(vis=str(ms), field='0', spw=str(spw), imagename=imagename, imsize=[160, 160],
                          cell='%.4farcsec' % cell_arcsec, specmode='cube', outframe='LSRK', gridder='standard',
                          weighting='briggsbwtaper', robust=robust, perchanweightdensity=True, niter=0,
                          calcres=False, calcpsf=True, restoration=False, pbcor=False, interactive=False,
                          parallel=False)
    quanta = casa.casatools.quanta()
    image = casa.casatools.image()
    image.open(imagename + '.psf')
    try:
        info = image.restoringbeam()
    finally:
        image.close()
    beams = [b['*0'] for b in info['beams'].values()] if 'beams' in info else [info]
    return [(quanta.convert(b['major'], 'arcsec')['value'], quanta.convert(b['minor'], 'arcsec')['value'])
            for b in beams if b['major']['value'] > 0]


def model_ratios(configurations=(1, 3, 5, 7, 8, 10), hours=1.0, dec_deg=-24.5, frequency_hz=230e9):
    """[(configuration, longest baseline m, major axis / (lambda / B))] of uniformly weighted PSFs made with numpy."""
    import numpy
    import casadata
    folder = Path(casadata.__file__).parent / '__data__' / 'alma' / 'simmos'
    lat, dec = numpy.radians(-23.03), numpy.radians(dec_deg)
    lam = 299792458.0 / frequency_hz
    found = []
    for number in configurations:
        rows = [line.split() for line in open(str(folder / ('alma.cycle10.%d.cfg' % number)))
                if line.strip() and not line.startswith('#')]
        pos = numpy.array([[float(r[0]), float(r[1]), float(r[2])] for r in rows])  # local east, north, up
        x = -numpy.sin(lat) * pos[:, 1] + numpy.cos(lat) * pos[:, 2]
        y, z = pos[:, 0], numpy.cos(lat) * pos[:, 1] + numpy.sin(lat) * pos[:, 2]
        i, j = numpy.triu_indices(len(pos), 1)
        longest = float(numpy.sqrt(((pos[i] - pos[j]) ** 2).sum(1)).max())
        u, v = [], []
        for angle in numpy.radians(numpy.linspace(-7.5 * hours, 7.5 * hours, 16)):
            bx, by, bz = x[i] - x[j], y[i] - y[j], z[i] - z[j]
            u.append(numpy.sin(angle) * bx + numpy.cos(angle) * by)
            v.append(-numpy.sin(dec) * numpy.cos(angle) * bx + numpy.sin(dec) * numpy.sin(angle) * by +
                     numpy.cos(dec) * bz)
        u, v = numpy.concatenate(u) / lam, numpy.concatenate(v) / lam
        u, v = numpy.concatenate([u, -u]), numpy.concatenate([v, -v])
        scale = lam / longest
        cell, n = scale / 8.0, 512
        step = 1.0 / (n * cell)
        weights = numpy.zeros((n, n))
        weights[numpy.round(v / step).astype(int) % n, numpy.round(u / step).astype(int) % n] = 1.0  # uniform
        psf = numpy.real(numpy.fft.fftshift(numpy.fft.ifft2(weights)))
        psf /= psf.max()
        centre, widest = n // 2, 0.0
        radii = numpy.arange(0, 60, 0.05)
        for theta in numpy.linspace(0, numpy.pi, 90, endpoint=False):
            values = psf[numpy.round(centre + radii * numpy.sin(theta)).astype(int),
                         numpy.round(centre + radii * numpy.cos(theta)).astype(int)]
            widest = max(widest, 2 * radii[int(numpy.argmax(values < 0.5))] * cell)
        found.append((number, longest, widest / scale))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', default=None)
    parser.add_argument('--model-only', action='store_true', help='only the numpy model of the configurations')
    args = parser.parse_args(argv)
    if args.model_only:
        for number, longest, ratio in model_ratios():
            print('C-%-2d longest baseline %6.0f m: uniform PSF major %.3f lambda/B (numpy model)' % (
                number, longest, ratio))
        return 0
    from simulate_delivery import cached_delivery
    import scriptForReprocessing as sfr
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='bench-beam-'))
    workdir.mkdir(parents=True, exist_ok=True)
    casa = sfr.load_casa(logfile=str(workdir / 'casa.log'))
    os.chdir(str(workdir))
    print('%-18s %4s %6s %7s %9s %9s %9s %9s %8s' % ('configuration', 'spw', 'robust', 'Bmax m', 'lam/B "',
                                                    'major max', 'minor min', 'floor "', 'major/fl'))
    worst = None
    try:
        for name, params in CONFIGURATIONS:
            delivery = Path(cached_delivery(os.environ.get('SIMULATION_CACHE') or workdir / 'cache', **params))
            ms = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))[0]
            info = sfr.read_ms_for_imaging(casa, ms)
            for spw_id, spw in info.spws.items():
                highest = max(spw.freqs) + spw.width / 2.0
                scale = sfr.diffraction_arcsec(highest, max(info.baselines_m))
                for robust in ROBUSTS:
                    floor = sfr.estimated_beam_floor([info], highest_hz=highest, robust=robust)
                    beams = psf_beams(casa, ms, spw_id, robust=robust, cell_arcsec=scale / 6.0,
                                      imagename=str(workdir / ('psf-%s-%d-%g' % (name.split(',')[0], spw_id, robust))))
                    major = max(b[0] for b in beams)
                    minor = min(b[1] for b in beams)
                    ratio = major / floor
                    worst = ratio if worst is None else min(worst, ratio)
                    print('%-18s %4d %6.1f %7.0f %9.3f %9.3f %9.3f %9.3f %8.3f  major/(lam/B) %.3f' % (
                        name, spw_id, robust, max(info.baselines_m), scale, major, minor, floor, ratio,
                        major / scale), flush=True)
                    for path in workdir.glob('psf-*'):
                        shutil.rmtree(str(path), ignore_errors=True)
        print('smallest major/floor: %.3f (must be >= 1: no reachable --beam refused at plan time)' % worst)
        for number, longest, ratio in model_ratios():
            print('C-%-2d longest baseline %6.0f m: uniform PSF major %.3f lambda/B (numpy model)' % (
                number, longest, ratio))
    finally:
        if not args.workdir:
            shutil.rmtree(str(workdir), ignore_errors=True)
    return 0 if worst is not None and worst >= 1.0 else 1


if __name__ == '__main__':
    sys.exit(main())
