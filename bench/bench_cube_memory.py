#!/usr/bin/env python3
"""Peak memory (RSS) of one cube's tclean in one process, for cubes of a few sizes (imsize x nchan).

Each cube is planned by the package (the pipeline's grid, cell, weighting, automasking, threshold: the same
job the tool runs), cut to its first NCHAN channels and imsize x imsize pixels, and made by run_image_job in
a fresh process (dirty image, threshold, clean), whose peak RSS (getrusage) is reported beside the RSS after
CASA was loaded and the measurement sets read (the base).  The fit of peak - base against imsize^2 x nchan x
4 bytes gives the planes per pixel of plan/resources.py's memory model.

Usage: python bench/bench_cube_memory.py DELIVERY OUTDIR --spw 25 --sizes 128:64,256:64,256:240,384:120
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))


def rss_bytes():
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def one(delivery, out, spw, imsize, nchan):
    from bench_cube_split import load, plan_job
    from reprocessing.imaging.cube_chunks import chunk_job
    from reprocessing.core.requests import request_as_json
    from reprocessing.imaging.tclean_run import run_image_job
    out.mkdir(parents=True, exist_ok=True)
    casa = load(str(out / 'casa.log'))
    job, request = plan_job(casa, delivery, out / 'plan', spw=spw, nbins=1, imsize=[imsize, imsize])
    whole = job
    if nchan < whole.nchan:
        whole = chunk_job(whole, 0, 0, nchan)._replace(name=whole.name)
    base = rss_bytes()
    started = time.time()
    run_image_job(casa, lambda line: None, job=whole._asdict(), request=request_as_json(request), imagename=str(out / 'cube'),
                  parallel=False)
    wall = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(imsize=imsize, nchan=whole.nchan, base=base, peak=peak, wall=round(wall, 1),
                          cube_bytes=imsize * imsize * whole.nchan * 4)), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('delivery')
    parser.add_argument('outdir')
    parser.add_argument('--spw', default='25')
    parser.add_argument('--sizes', default='128:64,256:64,256:240,384:120')
    parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    out = Path(options.outdir).resolve()
    if options.one:
        imsize, nchan = (int(n) for n in options.one.split(':'))
        one(Path(options.delivery).resolve(), out / options.one.replace(':', 'x'), options.spw, imsize, nchan)
        return
    rows = []
    for size in options.sizes.split(','):
        done = subprocess.run([sys.executable, __file__, options.delivery, str(out), '--spw', options.spw,
                               '--one', size], stdout=subprocess.PIPE, universal_newlines=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print('%4d x %4d ch: cube %7.1f MB, base %.2f GB, peak %.2f GB, peak-base %.3f GB = %.1f x cube, %5.1f s'
              % (row['imsize'], row['nchan'], row['cube_bytes'] / 1e6, row['base'] / 1e9, row['peak'] / 1e9,
                 (row['peak'] - row['base']) / 1e9, (row['peak'] - row['base']) / row['cube_bytes'], row['wall']),
              flush=True)
    (out / 'rows.json').write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
    main()
