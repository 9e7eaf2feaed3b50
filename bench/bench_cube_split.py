#!/usr/bin/env python3
"""How to split one cube over workers, measured: tclean(parallel=True) under mpirun against channel chunks.

On one simulated delivery (one EB, one spw), one cube job planned by the package itself (the pipeline's
grid, cell, imsize, weighting, automasking and threshold), made four ways, each in a fresh directory:

  whole          tclean in one process (the reference: what the tool does without MPI)
  mpi N          under "mpirun -n N+1": rank 0 drives, N casampi servers, tclean(parallel=True)
  chunks W C     independent tclean calls over channel chunks of at most C channels on W worker processes:
                 dirty images of every chunk, one threshold from the whole cube (sensitivity and dirty peak),
                 cleaning of every chunk, then the chunks joined plane by plane (imaging/cube_chunks.py)

For each: wall time, CPU time of all processes, the peak RSS of the largest process and of all together
(psutil polling every 0.2 s), and the restored cube compared with the reference's (peak, rms, shape,
spectral grid, per-plane beams).

Usage: python bench/bench_cube_split.py DELIVERY OUTDIR --nbins 4 [--modes whole,mpi:1,mpi:2,chunks:1:32,...]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# -- the job, planned as the tool plans it -----------------------------------------------------------------

def plan_job(casa, delivery, work_dir, *, spw, nbins, imsize=None):
    from reprocessing.casa.ms_imaging import read_ms_for_imaging, virtual_spw_map
    from reprocessing.core.requests import ImagingRequest
    from reprocessing.imaging.image_casa import plan_casa_images, psf_beam_finder
    ms_dir = Path(delivery) / 'measurement_sets'
    targets = [read_ms_for_imaging(casa, ms) for ms in sorted(ms_dir.glob('uid*_targets.ms'))]
    lines = [read_ms_for_imaging(casa, ms) for ms in sorted(ms_dir.glob('uid*_targets_line.ms'))]
    request = ImagingRequest(specmodes=['cube'], robust=None, uvtaper=None, uvrange=None, field=None, spw=str(spw),
                             phasecenter=None, imsize=imsize, cell=None, nbins='%s:%d' % (spw, nbins),
                             mitigation=None, maxproductsize=None, maxcubesize=None, maxcubelimit=None, engine='casa',
                             allow_cubes_with_continuum=False, all_products=True, reuse_images=False,
                             images_dir=None, archive_products=False, update=False)
    beam_for = psf_beam_finder(casa, request, infos=targets, spw_map=virtual_spw_map(targets), work_dir=work_dir)
    jobs, _notes = plan_casa_images(casa, request, targets=targets, lines=lines, channels_for=None, contdat=None,
                                    ous='bench', beam_for=beam_for)
    assert len(jobs) == 1, jobs
    return jobs[0], request


def load(logfile):
    from reprocessing.casa.casa_engine import load_casa
    return load_casa(logfile=logfile)


def say(line):
    print(line, flush=True)


# -- the ways of making it (each run as its own process by main) ------------------------------------------

def make_whole(job, request, out):
    from reprocessing.imaging.tclean_run import run_image_job
    casa = load(str(out / 'casa.log'))
    return run_image_job(casa, say, job=job, request=request, imagename=str(out / 'cube'), parallel=False)


def make_mpi(job, request, out):
    from reprocessing.casa.mpi import casa_mpi_job, change_directory
    with casa_mpi_job():  # the servers serve in here and never come back
        from reprocessing.imaging.tclean_run import run_image_job
        casa = load(str(out / 'casa.log'))
        change_directory(out)
        return run_image_job(casa, say, job=job, request=request, imagename=str(out / 'cube'), parallel=True)


_WORKER_CASA = {}


def _worker_call(name, kwargs, logfile):
    from reprocessing.imaging import cube_chunks
    if 'casa' not in _WORKER_CASA:
        _WORKER_CASA['casa'] = load(logfile)
    started = time.time()
    result = getattr(cube_chunks, name)(_WORKER_CASA['casa'], lambda line: None, **kwargs)
    return result, time.time() - started


def make_chunks(job, request, out, workers, chunk_nchan):
    import multiprocessing
    from reprocessing.imaging.cube_chunks import chunk_job, chunk_ranges, cube_start_hz, join_chunks, whole_cube_threshold
    from reprocessing.imaging.image_casa import ImageJob
    from reprocessing.core.requests import ImagingRequest
    whole = ImageJob(**job)
    casa = load(str(out / 'casa.log'))
    started = time.time()
    start_hz = cube_start_hz(casa, whole, ImagingRequest(**request), out)
    probe_seconds = time.time() - started
    chunks = [chunk_job(whole, i, first, count, start_hz=start_hz)
              for i, (first, count) in enumerate(chunk_ranges(whole.nchan, chunk_nchan))]
    names = [str(out / c.name) for c in chunks]
    context = multiprocessing.get_context('spawn')  # CASA is not fork-safe
    timeline = {'grid probe': probe_seconds}
    with context.Pool(workers) as pool:
        started = time.time()
        dirty = pool.starmap(_worker_call, [('chunk_dirty', dict(job=c._asdict(), request=request, imagename=n),
                                             str(out / 'casa-worker.log')) for c, n in zip(chunks, names)])
        timeline['dirty'] = time.time() - started
        threshold, sensitivity, peak = whole_cube_threshold(casa, whole, ImagingRequest(**request), [d[0] for d in dirty])
        say('sensitivity %.3g mJy, dirty peak %.3g mJy, threshold %s' % (sensitivity * 1e3, peak * 1e3, threshold))
        started = time.time()
        cleaned = pool.starmap(_worker_call, [('chunk_clean', dict(job=c._asdict(), request=request, imagename=n,
                                                                   threshold=threshold), str(out / 'casa-worker.log'))
                                              for c, n in zip(chunks, names)])
        timeline['clean'] = time.time() - started
    started = time.time()
    join_chunks(casa, names, str(out / 'cube'))
    timeline['join'] = time.time() - started
    return {'iterations': sum(c[0]['iterations'] for c in cleaned), 'chunks': len(chunks), 'timeline': timeline,
            'threshold': threshold}


# -- measuring ---------------------------------------------------------------------------------------------

def measured(command, *, env=None):
    """(returncode, wall s, cpu s of all processes, peak RSS of the largest process, peak RSS of all), polling.

    CPU: what the kernel accounts to the command once it is reaped (getrusage(RUSAGE_CHILDREN) before and after:
    the command and every descendant it waited for, each counted once).  Summing each polled process's own and
    children's times counted a worker twice, as itself and in its parent's children times once reaped: --jobs 2
    read 58 s CPU for 21 s wall on 2 cores (2026-12-07).  No other child of this process ends meanwhile."""
    import resource
    import psutil
    environment = dict(os.environ, **(env or {}))

    def reaped_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    cpu_before = reaped_cpu()
    started = time.time()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
    parent = psutil.Process(process.pid)
    largest, total = 0, 0
    output = []
    import threading
    reader = threading.Thread(target=lambda: output.extend(process.stdout))
    reader.start()
    while process.poll() is None:
        try:
            members = [parent] + parent.children(recursive=True)
        except psutil.Error:
            break
        rss = 0
        for member in members:
            try:
                info = member.memory_info().rss
            except psutil.Error:
                continue
            rss += info
            largest = max(largest, info)
        total = max(total, rss)
        time.sleep(0.2)
    process.wait()
    wall = time.time() - started
    reader.join()
    return process.returncode, wall, reaped_cpu() - cpu_before, largest, total, ''.join(output)


def compare(casa, reference, other):
    """Restored cubes side by side: peak, rms, shape, spectral grid and per-plane beams."""
    import numpy

    def read(path):
        image = casa.casatools.image()
        image.open(str(path))
        try:
            pixels = image.getchunk(dropdeg=True)
            csys = image.coordsys()
            spectral = (csys.referencevalue()['numeric'][3], csys.increment()['numeric'][3],
                        csys.referencepixel()['numeric'][3])
            direction = tuple(csys.referencevalue()['numeric'][:2]) + tuple(csys.increment()['numeric'][:2])
            csys.done()
            beams = image.restoringbeam()
            shape = tuple(image.shape())
        finally:
            image.close()
        planes = []
        if 'beams' in beams:
            for key in sorted(beams['beams'], key=lambda k: int(k[1:])):
                beam = beams['beams'][key]['*0']
                planes.append((beam['major']['value'], beam['minor']['value'], beam['positionangle']['value']))
        # the frequency of the first channel, whatever the reference pixel
        first = spectral[0] - spectral[2] * spectral[1]
        finite = pixels[numpy.isfinite(pixels)]
        return dict(shape=shape, first_hz=first, width_hz=spectral[1], direction=direction, beams=planes,
                    peak=float(finite.max()), rms=float(numpy.std(finite)), pixels=pixels)
    a, b = read(reference), read(other)
    beams = numpy.array(a['beams']), numpy.array(b['beams'])
    beam_diff = float(numpy.max(numpy.abs(beams[0] - beams[1]) / numpy.abs(beams[0]).clip(1e-9))) \
        if beams[0].shape == beams[1].shape and beams[0].size else float('nan')
    difference = numpy.nan_to_num(a['pixels'] - b['pixels']) if a['shape'] == b['shape'] else None
    return dict(same_shape=a['shape'] == b['shape'], shape=b['shape'], first_hz_diff=b['first_hz'] - a['first_hz'],
                width_hz_diff=b['width_hz'] - a['width_hz'], same_direction=a['direction'] == b['direction'],
                n_beams=(len(a['beams']), len(b['beams'])), beam_max_rel_diff=beam_diff,
                peak=(a['peak'], b['peak']), peak_rel_diff=(b['peak'] - a['peak']) / a['peak'],
                rms=(a['rms'], b['rms']), rms_rel_diff=(b['rms'] - a['rms']) / a['rms'],
                max_abs_diff_over_rms=float(numpy.max(numpy.abs(difference)) / a['rms']) if difference is not None
                else None)


def _plain(value):
    return value.item() if hasattr(value, 'item') else str(value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('delivery')
    parser.add_argument('outdir')
    parser.add_argument('--spw', type=int, default=25)
    parser.add_argument('--nbins', type=int, default=1)
    parser.add_argument('--imsize', type=int, default=None)
    parser.add_argument('--modes', default='whole,mpi:1,mpi:2,chunks:1:32,chunks:2:32')
    parser.add_argument('--reference', default=None, help='the whole cube to compare with (default: this run\'s)')
    parser.add_argument('--run', default=None, help=argparse.SUPPRESS)  # internal: make one mode here
    options = parser.parse_args()
    out = Path(options.outdir).resolve()
    if options.run:
        job = json.loads((out / 'job.json').read_text())
        mode, *numbers = options.run.split(':')
        target = out / options.run.replace(':', '-')
        target.mkdir(exist_ok=True)
        if mode == 'whole':
            result = make_whole(job['job'], job['request'], target)
        elif mode == 'mpi':
            result = make_mpi(job['job'], job['request'], target)
        else:
            result = make_chunks(job['job'], job['request'], target, int(numbers[0]), int(numbers[1]))
        say('RESULT ' + json.dumps(result))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    casa = load(str(out / 'casa-plan.log'))
    if not (out / 'job.json').exists():
        (out / 'plan').mkdir(exist_ok=True)
        job, request = plan_job(casa, options.delivery, out / 'plan', spw=options.spw, nbins=options.nbins,
                                imsize=[options.imsize] * 2 if options.imsize else None)
        (out / 'job.json').write_text(json.dumps({'job': job._asdict(), 'request': request._asdict()}))
    job = json.loads((out / 'job.json').read_text())['job']
    say('job: %s %dx%d x %d channels' % (job['name'], job['imsize'][0], job['imsize'][1], job['nchan']))
    rows = []
    for mode in options.modes.split(','):
        command = [sys.executable, __file__, options.delivery, str(out), '--run', mode]
        env = {}
        if mode.startswith('mpi'):
            from bench_mpi import loopback_environment
            import shutil
            mpirun = shutil.which('mpirun')
            env = loopback_environment(mpirun)
            command = [mpirun, '-n', str(int(mode.split(':')[1]) + 1)] + command
        load_before = os.getloadavg()[0]
        code, wall, cpu, largest, total, text = measured(command, env=env)
        result = [line for line in text.splitlines() if line.startswith('RESULT ')]
        row = dict(mode=mode, returncode=code, wall_s=round(wall, 1), cpu_s=round(cpu, 1),
                   largest_rss_gb=round(largest / 1e9, 3), total_rss_gb=round(total / 1e9, 3),
                   load_before=round(load_before, 1), result=json.loads(result[0][7:]) if result else text[-2000:])
        reference = Path(options.reference) if options.reference else out / 'whole' / 'cube.image'
        made = out / mode.replace(':', '-') / 'cube.image'
        if code == 0 and reference.exists() and made.exists() and made != reference:
            row['compare'] = compare(casa, reference, made)
        say(json.dumps(row, default=_plain))
        rows.append(row)
    (out / ('results-%d.json' % int(time.time()))).write_text(json.dumps(rows, indent=1, default=_plain))
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
