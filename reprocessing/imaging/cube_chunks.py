"""A cube split by channels: independent tclean calls over channel chunks, joined into one image.

Each chunk is the whole cube's spectral grid restricted by start/nchan (the same channel centres), imaged
with the same arguments (weighting, automasking rules) as the whole cube.  The cleaning depth comes from
the whole cube: the theoretical sensitivity of one plane (the same for every chunk) and the dirty peak over
all chunks (the pipeline's dynamic-range correction), so every chunk cleans to the one threshold the
one-process cube would.  The chunks are joined plane by plane (image.imageconcat), per-plane beams included.

Measured against tclean(parallel=True) under mpirun (README "Running on a cluster"): same products within
the noise, and memory per process that does not grow with the number of channels.
"""

import math
import os
import shutil
import time
from pathlib import Path

from ..casa.casa_engine import casa_task, opened_tool
from ..core.fileops import remove_tree
from ..core.messages import ReprocessingError
from ..core.requests import ImagingRequest
from ..run.provenance import read_record, write_record
from ..run.run_state import pause_point
from .heuristics import dynamic_range_threshold
from .memory_model import job_memory, job_seconds
from .image_casa import PB_LIMIT, ImageJob, tclean_arguments
from .image_resume import RECORD_NAME, save_finished
from .tclean_run import TLIMIT, _tclean_with_progress, clean_to_threshold, theoretical_sensitivity

CHUNK_MARK = '.chunk'
# The images tclean makes for a cube (hogbom): joined plane by plane into the whole cube's.
CUBE_SUFFIXES = ('.image', '.image.pbcor', '.pb', '.mask', '.model', '.psf', '.residual', '.sumwt', '.weight')
# The ones a cube's products come from (published: pbcor, pb, mask; the restored cube for --beam and --moments);
# the others are working images, joined only when kept (--all-products).
PRODUCT_SUFFIXES = CUBE_SUFFIXES[:4]


# -- planning (pure) -----------------------------------------------------------------------------------

def hz_of(quantity):
    """Hz of a tclean frequency string like '216.6771904376GHz' or '3.9058405MHz'."""
    units = (('GHz', 1e9), ('MHz', 1e6), ('kHz', 1e3), ('Hz', 1.0))
    text = str(quantity).strip()
    for unit, scale in units:
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError('not a frequency: %r' % (quantity,))


MIN_CHUNK_NCHAN = 3  # so that no chunk has one channel: tclean's briggsbwtaper refuses it (fractional bandwidth 0)


def chunk_ranges(nchan, chunk_nchan):
    """[(first channel, number of channels)] covering 0..nchan-1 in chunks of at most chunk_nchan (at least
    MIN_CHUNK_NCHAN), as even as possible (64 channels in chunks of at most 30: 22, 21, 21); no chunk has a
    single channel unless the cube has."""
    if nchan < 1 or chunk_nchan < 1:
        raise ValueError('nchan and chunk_nchan must be positive')
    count = int(math.ceil(float(nchan) / max(MIN_CHUNK_NCHAN, chunk_nchan)))
    base, extra = divmod(nchan, count)
    ranges, first = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        ranges.append((first, size))
        first += size
    return ranges


def chunk_name(name, index):
    return '%s%s%03d' % (name, CHUNK_MARK, index)


def chunk_job(job, index, first, count, *, start_hz=None):
    """The job of channels first..first+count-1 of a cube job: the same grid (start moved by first widths).

    start_hz: the whole cube's first channel as tclean makes it (cube_start_hz), when it differs from the
    job's start (tclean moves a start at the data's edge by half a native channel: measured, CASA 6.7).
    """
    if not job.spectral:
        raise ValueError('%s is not a cube' % job.name)
    spectral = dict(job.spectral)
    start, width = hz_of(spectral['start']), hz_of(spectral['width'])
    if start_hz is not None:
        start = start_hz
    spectral.update(start='%.10fGHz' % ((start + first * width) / 1e9), nchan=count)
    return job._replace(name=chunk_name(job.name, index), spectral=spectral, nchan=count)


def chunk_channels_fitting(job, limit):
    """The most channels of job's cube one process holds within limit bytes (memory_model: the same model that
    refuses an image), or None without a limit."""
    if limit is None:
        return None
    one, two = job_memory(job._replace(nchan=1)), job_memory(job._replace(nchan=2))
    per_channel = max(1, two - one)
    return max(0, int((limit - (one - per_channel)) // per_channel))


# A split cube long enough gets CHUNKS_PER_WORKER chunks per worker, so that a kill (a scheduler's time limit)
# loses at most the one chunk under way on each worker, about an eighth of its share; but only while every
# chunk's start-up (CHUNK_START_SECONDS: 1.3 s for its dirty image and 0.3 s for its cleaning, profiled with
# bench/profile_split.py) stays within START_BUDGET of the cube's estimated time (job_seconds).  Measured on
# bench_split_run's cubes (README "One cube over several workers"): on 61 channels (about 60 s CPU, estimated
# 24 s) not more chunks; on 4094 channels on 2 workers 8 chunks a worker rather than 4 made the whole run
# cheaper (200 s against 237 and 257 s: the automasking forecast rules out more of the smaller noise chunks,
# 9 of 14 against 3 of 6) and a run killed at half then resumed took 0.58 of a full run against 0.66.
CHUNKS_PER_WORKER = 8
CHUNK_START_SECONDS = 1.6
START_BUDGET = 0.05


def resumable_chunks(job, workers):
    """How many chunks a split cube is made in at least, for what a kill loses (CHUNKS_PER_WORKER a worker,
    within START_BUDGET of job_seconds); 1: no more than the memory or --split-cube asks."""
    affordable = int(START_BUDGET * job_seconds(job) / CHUNK_START_SECONDS)
    return max(1, min(CHUNKS_PER_WORKER * max(1, int(workers)), affordable, int(job.nchan) // MIN_CHUNK_NCHAN))


def cube_chunking(job, *, split='auto', limit=None, workers=1):
    """How a cube job is made: None (whole, in one tclean) or [(first channel, count)] of its chunks.

    split: 'auto' (split only when the whole cube does not fit limit bytes in one process), 'no' (never), or N
    (at least N chunks).  The chunks are as large as limit allows (a cube four times longer gets four times
    the chunks, not larger ones) and never a single channel; a cube split anyway gets resumable_chunks over
    workers if more.  [] when not even MIN_CHUNK_NCHAN channels fit: the plan refuses it.
    """
    if not job.spectral or split == 'no':
        return None
    wanted = 1 if split in ('auto', None) else int(split)
    fits = limit is None or job_memory(job) <= limit
    if fits and wanted <= 1:
        return None
    nchan = int(job.nchan)
    size = nchan
    fitting = chunk_channels_fitting(job, limit)
    if fitting is not None:
        if fitting < min(MIN_CHUNK_NCHAN, nchan):
            return []
        size = min(size, fitting)
    size = min(size, int(math.ceil(float(nchan) / max(1, wanted))))
    if size < nchan:  # split anyway (the memory, --split-cube N): a whole cube stays one tclean's product
        size = min(size, int(math.ceil(float(nchan) / resumable_chunks(job, workers))))
    ranges = chunk_ranges(nchan, size)
    return ranges if len(ranges) > 1 else None


def first_channel_hz(casa, image_path):
    """The frequency of an image's first channel (its spectral axis is the fourth, as tclean makes it)."""
    with opened_tool(casa.casatools.image(), str(image_path)) as image:
        csys = image.coordsys()
        try:
            return float(csys.referencevalue()['numeric'][3] - csys.referencepixel()['numeric'][3]
                         * csys.increment()['numeric'][3])
        finally:
            csys.done()


_PROBE_DROPPED = ('sidelobethreshold', 'noisethreshold', 'lownoisethreshold', 'negativethreshold', 'minbeamfrac',
                  'growiterations', 'dogrowprune', 'minpercentchange', 'fastnoise', 'pbmask')


def cube_start_hz(casa, job, request, work_dir):
    """The first channel of the whole cube as tclean makes it: the PSF of its first two channels on 16x16
    pixels (a few seconds).  tclean moves a start at the edge of the data (by half a native channel,
    measured with CASA 6.7), but not a start inside it: the chunks after the first start from this."""
    name = str(Path(work_dir) / (job.name + '.gridprobe'))
    arguments = tclean_arguments(job, request, imagename=name, parallel=False)
    arguments.update(nchan=min(2, job.nchan), imsize=[16, 16], niter=0, calcres=False, calcpsf=True,
                     restoration=False, pbcor=False, usemask='user', mask='')
    for key in _PROBE_DROPPED:
        arguments.pop(key, None)
    try:
        casa_task(casa, 'tclean', about=job.name + ' (its channel grid)', **arguments)
        return first_channel_hz(casa, name + '.psf')
    finally:
        for path in Path(work_dir).glob(Path(name).name + '.*'):
            remove_tree(path)


# -- the tclean calls of one chunk (run in a worker process or here) ----------------------------------------

def chunk_dirty(casa, report, *, job, request, imagename, store=None, record=None):
    """The dirty image of one chunk (niter 0): its PSF and residual are the cleaning's start.
    Returns the dirty peak inside the 0.2 primary-beam level (the dynamic range's numerator).
    store: the folder where the chunk is kept with its record once made (image_resume.save_finished)."""
    job, request = ImageJob(**job), ImagingRequest(**request)
    arguments = tclean_arguments(job, request, imagename=imagename, parallel=False)
    _tclean_with_progress(casa, job, report, 'dirty image',
                          dict(arguments, niter=0, restoration=False, pbcor=False))
    residual, pb = imagename + '.residual', imagename + '.pb'
    with opened_tool(casa.casatools.image(), residual) as image:
        stats = image.statistics(mask='"%s" > %s' % (pb.replace('"', '\\"'), PB_LIMIT), robust=False,
                                 verbose=False, list=False)
    peak = float(stats['max'][0]) if len(stats.get('max', [])) else None
    if store:
        save_finished(Path(imagename).parent, Path(imagename).name, store, dict(record or {}, stage='dirty', peak=peak))
    return peak


BEFORE_HEALTH = 'cleaned-before-health'  # a chunk's stage: cleaned, its cube-health pass had channels to redo
# A chunk's stage: its dirty image, whose automasking pass found nothing and whose fallback cleaning is to come
# (the pass changes no pixel: the kept images stay the dirty ones, only their record says so)
NOTHING_AUTOMASKED = 'dirty-nothing-automasked'


def chunk_clean(casa, report, *, job, request, imagename, threshold, store=None, record=None, cleaned=None,
                nothing_automasked=None):
    """Clean one chunk from its dirty image to the whole cube's threshold (Jy; None: nsigma as tclean_run), with
    the same fallback and cube health as a whole cube.  The images are taken from store (a copy: the kept chunk
    stays until the next stage replaces it) when they are not beside imagename: the dirty image, or (cleaned:
    its record) the chunk a stopped run had cleaned and kept before cube health redid channels, when only the
    health pass is left to do.  Each of the chunk's tclean calls is a stage a stop keeps (so a stop loses only
    the call under way): a chunk whose automasking pass found nothing is kept at NOTHING_AUTOMASKED before its
    fallback cleans (nothing_automasked: that record's (peak, rms), from a stopped run; on bench_split_run's
    4094-channel cube in 8 chunks the pass took 25 s of such a chunk's 77 s), and a chunk whose health pass
    finds channels to redo is kept (a copy) at that stage (the redone channels took half of the cube's CPU on
    bench_split_run's 61-channel cube: 32 of 60 s)."""
    job, request = ImageJob(**job), ImagingRequest(**request)
    started = time.time()
    name, here = Path(imagename).name, Path(imagename).parent
    kept = Path(store) / name if store else None
    if kept is not None and kept.is_dir() and not Path(imagename + '.psf').exists():
        for path in sorted(kept.iterdir()):
            if path.name.startswith(name + '.'):
                shutil.copytree(str(path), str(here / path.name))
    arguments = tclean_arguments(job, request, imagename=imagename, parallel=False)
    arguments.update(calcpsf=False, calcres=False)
    text = threshold_text(threshold)
    if cleaned:
        report('cleaned by a run that was stopped (%d clean iterations): only its cube-health pass is made again'
               % cleaned['cleaned']['iterations'])

    def keep_before_health(state):
        save_finished(here, name, store, dict(record or {}, stage=BEFORE_HEALTH, threshold=text, cleaned=state),
                      copy=True)

    def keep_nothing_automasked(residual):
        folder = Path(store) / name
        recorded = read_record(folder / RECORD_NAME)[0]
        if recorded and recorded.get('stage') in ('dirty', NOTHING_AUTOMASKED):  # kept: this chunk's dirty images
            write_record(folder / RECORD_NAME, dict(recorded, stage=NOTHING_AUTOMASKED, threshold=text,
                                                    residual=[float(value) for value in residual]))
            pause_point('chunk-nothing-automasked', None, folder=here)  # test-only: a stop before the fallback
    iterations, stop, redone = clean_to_threshold(
        casa, job, report, arguments, threshold, started=started, cleaned=(cleaned or {}).get('cleaned'),
        before_redo=keep_before_health if store else None, nothing_automasked=nothing_automasked,
        after_nothing_automasked=keep_nothing_automasked if store else None)
    result = {'iterations': iterations, 'stop': stop, 'seconds': round(time.time() - started, 1),
              'redone_channels': [[channel, why] for channel, why in redone]}
    if store:
        save_finished(here, name, store, dict(record or {}, stage='cleaned', threshold=text, **result))
    return result


def threshold_text(threshold):
    """The threshold as tclean is given it (a chunk's record keeps it so: a resumed cube cleans to the same)."""
    return None if threshold is None else '%.3gJy' % threshold


def whole_cube_threshold(casa, job, request, dirty_peaks):
    """The whole cube's cleaning depth (Jy) from its sensitivity and the dirty peak over every chunk, as
    tclean_run's for one process; None when the sensitivity cannot be computed."""
    sensitivity = theoretical_sensitivity(casa, job, request)
    peaks = [p for p in dirty_peaks if p is not None]
    if not sensitivity or not peaks:
        return None, sensitivity, None
    peak = max(peaks)
    diameter = 12.0 if job.dish_m >= 12.0 else 7.0
    threshold = dynamic_range_threshold(TLIMIT * sensitivity, peak / sensitivity, peak, diameter_m=diameter,
                                        n_ebs=len(job.vis), tlimit=TLIMIT)
    return threshold, sensitivity, peak


# -- joining ------------------------------------------------------------------------------------------

def join_chunks(casa, chunk_imagenames, imagename, *, suffixes=CUBE_SUFFIXES):
    """The whole cube's images from the chunks' (in channel order), each written under a temporary name
    and renamed when complete: a killed join leaves no image under a final name.  Returns the names made."""
    made = []
    for suffix in suffixes:
        parts = [name + suffix for name in chunk_imagenames]
        if not all(Path(part).is_dir() for part in parts):
            continue
        final = Path(imagename + suffix)
        partial = final.with_name(final.name + '.joining')
        if partial.exists():
            remove_tree(partial)
        image = casa.casatools.image()
        try:
            joined = image.imageconcat(outfile=str(partial), infiles=parts, axis=-1, relax=False,
                                       tempclose=True, overwrite=True, reorder=False, mode='paged')
            joined.done()
        except RuntimeError as error:
            raise ReprocessingError('joining the chunks of %s failed (%s) — run the same command again'
                                    % (final.name, str(error).strip().splitlines()[-1] if str(error).strip()
                                       else 'no message'))
        finally:
            image.done()
        if final.exists():
            remove_tree(final)
        os.replace(str(partial), str(final))
        made.append(str(final))
    return made
