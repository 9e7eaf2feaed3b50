"""Running tclean jobs: the dirty image and threshold, cleaning with progress, the fallbacks, and what each stopped on."""

import os
import time
from pathlib import Path

from ..casa.casa_engine import casa_log_path, casa_task, full_disk_error, is_full_disk_error, opened_tool
from ..casa.mpi import change_directory, tclean_parallel
from ..casa.ms_imaging import ImagingPointing
from ..core.fileops import full_disk_among
from ..core.messages import ReprocessingError, duration_text, say
from ..core.requests import ImagingRequest, request_as_json
from ..run.run_state import pause_point
from .heuristics import ARCSEC_PER_RADIAN, bandwidth_correction_factor, distinct_pointings, dynamic_range_threshold, mosaic_overlap_factor, pointing_geometry
from .image_resume import finished_folder, finished_redone, save_finished
from .image_casa import ImageJob, PB_LIMIT, PB_MASK, require_image_space, tclean_arguments
from .automask_forecast import automask_finds_nothing, psf_sidelobe_level
from .beams import convolve_cube, plane_beams
from .cube_health import check_and_repair, peak_histories
from .image_stats import image_statistics
from .moments import make_moments
from .products import ImageProduct, is_casa_image
from .tclean_progress import tclean_progress



_STOP_REASONS = {0: 'not cleaned', 1: 'iteration limit', 2: 'threshold', 3: 'stopped', 4: 'no change',
                 5: 'residual grew', 6: 'diverged', 7: 'no automask found: dirty image', 8: 'noise threshold'}


def run_tclean_jobs(casa, request, jobs, *, work_dir, state, workers=None, seconds=None, redone=None,
                    finished_dir=None, records=None, kept=None, chunks=None, make_split=None):
    """Make each job's image in work_dir (in workers' processes when given); the products are the CASA images
    named after each job (job.name + '.image', '.pb', ...).  seconds: a dict given gets each job's duration
    (by job name), for its provenance record; redone: a dict given gets the [[channel, why]] cube health cleaned
    again (by job name, only the jobs that had any).  finished_dir, records: each image finished is kept there
    with its record until all are made (image_resume); kept: {name: seconds} of the ones a stopped run finished.
    chunks: {name: [(first channel, count)]} of the cubes made in channel chunks, after the other images, by
    make_split(job, ranges, workers=, report=, finished=, record=) (cube_split.make_split_cube)."""
    kept, chunks = kept or {}, chunks or {}
    every_job, jobs = jobs, [job for job in jobs if job.name not in kept]
    results = []
    previous_dir = os.getcwd()
    change_directory(work_dir)  # tclean (and monolithic CASA's .last files) write into the working directory
    try:
        for number, job in enumerate(jobs, 1):
            say('  [%d/%d] %s: %s, %dx%d%s, cell %s, %s%s%s' % (
                number, len(jobs), job.name, job.specmode, job.imsize[0], job.imsize[1],
                ' x %d channels' % job.nchan if job.spectral else '', job.cell[0], job.gridder,
                ', %s nterms=%d' % (job.deconvolver, job.nterms) if job.nterms else '',
                ', in %d chunks of channels' % len(chunks[job.name]) if chunks.get(job.name) else ''))
        pause_point('image-product', state)
        if not jobs:  # every image was finished by a stopped run
            return _collect_products(every_job, work_dir, state, finished_dir, seconds, redone, kept, jobs, results)
        # again before the images: the disk may have filled since the plan (other jobs, other users), and a
        # tclean that finds it full is aborted by CASA with no message (exit 134)
        require_image_space(jobs, folder=work_dir, all_products=request.all_products, what='the image %s%s' % (
            jobs[0].name, ' and %d more' % (len(jobs) - 1) if len(jobs) > 1 else ''))
        pause_point('tclean', state)
        split = dict((job.name, job) for job in jobs if chunks.get(job.name))
        all_jobs, jobs = jobs, [job for job in jobs if job.name not in split]
        arguments = [dict(job=job._asdict(), request=request_as_json(request), imagename=str(work_dir / job.name),
                          parallel=tclean_parallel(job), finished=str(finished_dir) if finished_dir else None,
                          record=(records or {}).get(job.name)) for job in jobs]
        if not jobs:
            pass
        elif workers is None or workers.count <= 1:
            for job, kwargs in zip(jobs, arguments):
                results.append(run_image_job(casa, lambda message, name=job.name: say('  [%s] %s' % (name, message)),
                                             **kwargs))
                pause_point('image-finished', state)  # test-only: a stop with finished images kept
        else:  # the largest first, so that no worker is left with a big cube at the end
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i].imsize[0] * jobs[i].imsize[1] * jobs[i].nchan)
            try:
                answers = workers.run([{'function': 'image_job', 'eb': jobs[i].name, 'arguments': arguments[i]}
                                       for i in order], casa=casa, unit='images')
                results = [None] * len(jobs)
                for i, answer in zip(order, answers):
                    results[i] = answer
            except ReprocessingError as error:  # a worker that CASA aborted on a full disk (exit 134) says nothing
                full = full_disk_among([work_dir], error)
                if full and not is_full_disk_error(error):
                    raise full_disk_error('tclean', 'the images', error, full)
                raise
        by_name = dict(zip([job.name for job in jobs], results))
        for name, job in split.items():  # each cube over all the workers, one after the other
            by_name[name] = make_split(job, chunks[name], workers=workers, finished=finished_dir,
                                       record=(records or {}).get(name),
                                       report=lambda message, name=name: say('  [%s] %s' % (name, message)))
            pause_point('image-finished', state)
        jobs = all_jobs
        results = [by_name[job.name] for job in jobs]
    finally:
        change_directory(previous_dir)
    return _collect_products(every_job, work_dir, state, finished_dir, seconds, redone, kept, jobs, results)


def _collect_products(every_job, work_dir, state, finished_dir, seconds, redone, kept, jobs, results):
    if finished_dir:
        if redone is not None:  # the images a stopped run finished: their redone channels are in their records
            redone.update(finished_redone(finished_dir, sorted(kept)))
    if seconds is not None:
        seconds.update(kept)
        seconds.update((job.name, result['seconds']) for job, result in zip(jobs, results))
    if redone is not None:
        redone.update((job.name, result['redone_channels']) for job, result in zip(jobs, results)
                      if result.get('redone_channels'))
    products = []
    for job in every_job:  # a finished image stays where it is kept until it is published (publish_products)
        folder = finished_folder(finished_dir, job.name) if finished_dir else None
        folder = Path(folder or work_dir)
        made = sorted(name for name in os.listdir(str(folder)) if name.startswith(job.name + '.')
                      and is_casa_image(folder / name))
        if not any(name in made for name in (job.name + '.image', job.name + '.image.tt0')):
            raise ReprocessingError('tclean made no image for %s — see the CASA log %s' % (job.name, state.casa_logfile))
        products.extend(ImageProduct.from_working_name(folder / name) for name in made)
    return products


def run_image_job(casa, report, *, job, request, imagename, parallel, finished=None, record=None):
    """One image: the dirty image and the pipeline's threshold, tclean, the automasking fallback.

    job and request as dicts (they travel to worker processes as JSON); report(line) prints progress;
    finished: the folder where the finished image is kept with its record (image_resume.save_finished).
    """
    job = ImageJob(**job)
    request = ImagingRequest(**request)
    started = time.time()
    arguments = tclean_arguments(job, request, imagename=imagename, parallel=parallel)
    threshold = _dirty_image_and_threshold(casa, job, request, arguments, report)
    if threshold is not None:  # clean the dirty image further, to the pipeline's threshold
        arguments.update(calcpsf=False, calcres=False)
    iterations, stop, redone = clean_to_threshold(casa, job, report, arguments, threshold, started=started)
    if job.spectral and (request.beam or request.moments):
        cube_products(casa, report, imagename=imagename, beam=request.beam, moments=request.moments)
    seconds = round(time.time() - started, 1)
    redone_channels = [[channel, why] for channel, why in redone]
    if finished:  # what cube health redid stays with the image: a resumed run reports it (finished_redone)
        save_finished(Path(imagename).parent, Path(imagename).name, finished,
                      dict(record or {}, seconds=seconds, redone_channels=redone_channels))
    return {'iterations': iterations, 'stop': stop, 'seconds': seconds, 'redone_channels': redone_channels}


def clean_to_threshold(casa, job, report, arguments, threshold, *, started, cleaned=None, before_redo=None,
                       nothing_automasked=None, after_nothing_automasked=None):
    """tclean to threshold (Jy; None: to nsigma of the residual), the primary-beam-mask fallback when automasking
    found nothing, then cube health (channels that diverged or stayed dirty are cleaned again).  arguments: the
    call, from the dirty image (calcpsf/calcres False) or from nothing.  (iterations, stop code, redone channels).

    before_redo(cleaned): called once cube health has found channels to clean again, before it does, with what
    the health pass needs to be run again alone ({'iterations', 'stop', 'histories', 'health_threshold'}); cleaned:
    that, from a run stopped during the health pass, whose images are these: the tclean is not made again.
    after_nothing_automasked((peak, rms)): called when the automasking pass found nothing and the fallback is to
    clean (the pass changed no pixel: the dirty images are still the fallback's start); nothing_automasked: that
    (peak, rms), from a run stopped after it, whose dirty images these are: the pass is not made again."""
    if cleaned is None:
        if threshold is not None:
            arguments.update(threshold='%.3gJy' % threshold, nsigma=0.0)
        foreseen = tuple(nothing_automasked) if nothing_automasked else _automasking_would_fail(casa, job, arguments)
        if foreseen:  # straight to where the automasking pass would end
            summary, stop, iterations = {}, NO_AUTOMASK_STOPCODE, 0
        else:
            summary = _tclean_with_progress(casa, job, report, 'cleaning' if threshold is not None else 'tclean',
                                            arguments)
            stop = summary.get('stopcode') if isinstance(summary, dict) else None
            iterations = int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
        reason = None
        if stop == NO_AUTOMASK_STOPCODE:
            residual = foreseen or residual_peak_rms_channel(
                casa, arguments['imagename'] + ('.residual.tt0' if job.nterms else '.residual'))[:2]
            if not foreseen and after_nothing_automasked is not None and _fallback_cleans(*residual):
                after_nothing_automasked(residual)
            fallback = _clean_in_primary_beam_mask(casa, job, arguments, report, residual=residual, known=(
                'kept' if nothing_automasked else 'foreseen' if foreseen else None))
            if fallback:
                summary = fallback
                stop = summary.get('stopcode') if isinstance(summary, dict) else stop
                iterations += int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
            else:  # no source clear enough to clean (a chunk or cube of noise): said so, not "code None"
                reason = 'no automask found and nothing over 10x the noise: nothing to clean'
                if foreseen:  # the images the skipped pass would have left
                    _restore_uncleaned(casa, job, arguments)
        report('%d clean iterations, stopped by %s, %s' % (
            iterations, reason or _STOP_REASONS.get(stop, 'code %s' % stop), duration_text(time.time() - started)))
        cleaned = {'iterations': iterations, 'stop': stop, 'histories': peak_histories(summary),
                   'health_threshold': float((summary.get('threshold') if isinstance(summary, dict) else None)
                                             or threshold or 0.0)}
    else:
        if threshold is not None:
            arguments.update(threshold='%.3gJy' % threshold, nsigma=0.0)
        iterations, stop = cleaned['iterations'], cleaned['stop']
    redone = []
    if job.spectral and threshold is not None and iterations > 0:  # channels that diverged or stayed dirty
        histories = dict((int(channel), values) for channel, values in (cleaned['histories'] or {}).items())
        redone = check_and_repair(casa, report, arguments=arguments, histories=histories,
                                  threshold_jy=cleaned['health_threshold'],
                                  before_redo=(lambda: before_redo(cleaned)) if before_redo else None)
    return iterations, stop, redone


def cube_products(casa, report, *, imagename, beam=None, moments=None):
    """--beam (the restored cube and its primary-beam corrected one, to one beam) then --moments of a cube."""
    started = time.time()
    if beam:
        beams = plane_beams(casa, imagename + '.image')
        for suffix in ('.image', '.image.pbcor'):
            final = convolve_cube(casa, imagename + suffix, beam, report=report, beams=beams)
        report('convolved to the %s beam %.3g x %.3g arcsec (PA %.0f deg; planes were %.3g-%.3g x %.3g-%.3g), %s' % (
            beam if beam in ('common', 'round') else 'target', final[0], final[1], final[2],
            min(b[0] for b in beams), max(b[0] for b in beams), min(b[1] for b in beams), max(b[1] for b in beams),
            duration_text(time.time() - started)))
    if moments:
        began = time.time()
        make_moments(casa, flat=imagename + '.image', pbcor=imagename + '.image.pbcor', pb=imagename + '.pb',
                     moments=moments, report=lambda line: report('%s, %s' % (line, duration_text(time.time() - began))))


def _tclean_with_progress(casa, job, report, label, arguments):
    """tclean; for a cube imaged in this process, progress lines from the CASA log while it runs (tclean_progress).

    Under MPI (parallel) the servers image the channels and write their own lines: not followed.
    """
    followed = job.spectral and not arguments.get('parallel')
    with tclean_progress(report, logfile=casa_log_path(casa) if followed else None, nchan=job.nchan, label=label):
        return casa_task(casa, 'tclean', about=job.name + (' (dirty image)' if label == 'dirty image' else ''),
                         **arguments)


NO_AUTOMASK_STOPCODE = 7
TLIMIT = 2.0  # imageparams_alma.py tlimit(): clean to twice the theoretical sensitivity (before the DR correction)


def _dirty_image_and_threshold(casa, job, request, arguments, report):
    """The pipeline's iter0 and cleaning depth: a dirty image, then threshold = tlimit x the theoretical
    sensitivity x the dynamic-range correction (pipeline/hif/tasks/tclean/tclean.py; imageparams_alma.py
    dr_correction()), the dirty dynamic range being the dirty peak (inside the 0.2 primary-beam level) over
    the sensitivity.  The dirty image's PSF and residual are the cleaning's start (calcpsf/calcres False),
    so this costs one tclean start, not a second gridding.  None (clean to nsigma=2 of the residual's rms
    instead) when the sensitivity cannot be computed.
    """
    sensitivity = theoretical_sensitivity(casa, job, request)
    if not sensitivity:
        return None
    dirty = dict(arguments, niter=0, restoration=False, pbcor=False)
    _tclean_with_progress(casa, job, report, 'dirty image', dirty)
    terms = '.tt0' if job.nterms else ''
    residual, pb = arguments['imagename'] + '.residual' + terms, arguments['imagename'] + '.pb' + terms
    with opened_tool(casa.casatools.image(), residual) as image:
        stats = image.statistics(mask='"%s" > %s' % (pb.replace('"', '\\"'), PB_LIMIT), robust=False,
                                 verbose=False, list=False)
    if not len(stats.get('max', [])):
        return None
    peak = float(stats['max'][0])
    diameter = 12.0 if job.dish_m >= 12.0 else 7.0
    threshold = dynamic_range_threshold(TLIMIT * sensitivity, peak / sensitivity, peak, diameter_m=diameter,
                                        n_ebs=len(job.vis), tlimit=TLIMIT)
    report('theoretical sensitivity %.3g mJy/beam, dirty peak %.3g mJy/beam (dynamic range %.0f): '
           'cleaning to %.3g mJy/beam, as the pipeline' % (sensitivity * 1e3, peak * 1e3, peak / sensitivity,
                                                        threshold * 1e3))
    return threshold


def _selected_channels(selection):
    """{spw id: channels selected or None for all} of a tclean spw selection like '25:0~19;42~60,27'."""
    chosen = {}
    for part in selection.split(','):
        spw, _sep, channels = part.partition(':')
        if not channels:
            chosen[int(spw)] = None
            continue
        count = 0
        for piece in channels.split(';'):
            first, _tilde, last = piece.partition('~')
            count += int(last or first) - int(first) + 1
        chosen[int(spw)] = count
    return chosen


def theoretical_sensitivity(casa, job, request):
    """Jy/beam: imageparams_base.py calc_sensitivities(): per EB and spw, imager.apparentsens of the whole spw
    (briggs at the job's robust: the imager knows no briggsbwtaper) for the field (a mosaic: the pointing
    nearest the image's centre, center_field_ids(), divided by the mosaic overlap factor), scaled to the
    channels an image plane holds (cubes: nbin native channels; mfs/cont: the continuum channels) and by the
    online-smoothing factor (get_bw_corr_factor), combined as 1 / sqrt(sum 1 / s^2).  0.0 when it cannot be
    computed.
    """
    import math
    robust = 0.5 if request.robust is None else request.robust
    inverse_squares = 0.0
    for vis, field_ids, selection in zip(job.vis, job.field_ids, job.spw_selection):
        fields = [int(i) for i in field_ids.split(',')]
        for spw_id, selected in _selected_channels(selection).items():
            with opened_tool(casa.casatools.msmetadata(), vis) as msmd:
                nchan = int(msmd.nchan(spw_id))
                physical = abs(float(msmd.chanwidths(spw_id)[0]))
                effective = abs(float(msmd.chaneffbws(spw_id)[0]))
                centre_field, overlap = fields[0], 1.0
                if job.gridder == 'mosaic':
                    centre_field, overlap = _mosaic_centre_and_overlap(casa, msmd, fields, job.phasecenter, spw_id)
            imager = casa.casatools.imager()
            try:
                imager.selectvis(vis=vis, spw='%d:0~%d' % (spw_id, nchan - 1), field=str(centre_field),
                                 usescratch=False, writeaccess=False)
                imager.defineimage(mode='cube' if job.spectral else 'mfs', spw=spw_id, cellx=job.cell[0],
                                   celly=job.cell[0], nx=job.imsize[0], ny=job.imsize[1])
                imager.weight(type='briggs', rmode='norm', robust=robust)
                if request.uvtaper:
                    taper = list(request.uvtaper) + [request.uvtaper[0]] * (2 - len(request.uvtaper))
                    imager.filter(type='gaussian', bmaj=taper[0], bmin=taper[1],
                                  bpa=taper[2] if len(taper) > 2 else '0.0deg')
                result = imager.apparentsens()
            except RuntimeError:
                return 0.0
            finally:
                imager.done()
            full = float(result[1])
            if not full > 0.0:
                return 0.0
            if job.spectral:
                width_hz = job.spectral.get('width_hz') or float(job.spectral['width'][:-len('MHz')]) * 1e6
                per_plane = max(1, int(round(width_hz / physical)))
            else:
                per_plane = nchan if selected is None else selected
            sensitivity = full * math.sqrt(float(nchan) / per_plane) * \
                bandwidth_correction_factor(physical, effective, nchan, per_plane) / overlap
            inverse_squares += 1.0 / sensitivity ** 2
    return 1.0 / math.sqrt(inverse_squares) if inverse_squares else 0.0


def _mosaic_centre_and_overlap(casa, msmd, fields, phasecenter, spw_id):
    """(the field nearest the mosaic image's phase centre, the mosaic overlap factor) in one MS, as
    center_field_ids() and mosaicOverlapFactorMS() (the spw's centre frequency, the median dish).  A phase
    centre that is not a direction (TRACKFIELD) is taken as the middle of the pointings' extent."""
    import math
    import numpy
    quanta = casa.casatools.quanta()
    pointings = []
    for field_id in fields:
        direction = msmd.phasecenter(field_id)
        pointings.append(ImagingPointing(field_id, direction['m0']['value'], direction['m1']['value'], ''))
    ra0, dec0 = pointings[0].ra, pointings[0].dec

    def offset(ra, dec):  # arcsec east and north of the first field (small angles)
        return (((ra - ra0 + math.pi) % (2 * math.pi) - math.pi) * math.cos(dec0) * ARCSEC_PER_RADIAN,
                (dec - dec0) * ARCSEC_PER_RADIAN)
    parts = (phasecenter or '').split()
    if len(parts) == 3:
        centre = offset(*(float(quanta.convert(quanta.quantity(v), 'rad')['value']) for v in parts[1:]))
    else:
        ra, dec, _x_spread, _y_spread = pointing_geometry(pointings)
        centre = offset(ra, dec)
    nearest = min(pointings, key=lambda p: math.hypot(*(a - b for a, b in zip(offset(p.ra, p.dec), centre))))
    diameter = float(numpy.median([quanta.convert(d, 'm')['value'] for d in msmd.antennadiameter().values()]))
    # a pointing that two field ids share counts once
    offsets = [offset(p.ra, p.dec) for p in distinct_pointings(pointings)]
    return nearest.field_id, mosaic_overlap_factor(offsets, float(msmd.meanfreq(spw_id)), diameter)


NO_FORECAST_ENV = 'SCRIPTFORREPROCESSING_TEST_NO_FORECAST'  # test-only: '1' runs every automasking pass


def _automasking_would_fail(casa, job, arguments):
    """The residual's (peak, rms) when a cube's cleaning from its dirty image would stop with "zero mask":
    automask_forecast says automasking finds nothing in any channel.  That pass is then skipped: it changes no
    pixel (the model stays empty, the residual is the dirty image's).  When the residual's peak is over 10x its
    noise, the fallback (_clean_in_primary_beam_mask) cleans the cube and makes its restored images (on
    bench/bench_grid.py's cube the pass took 2.7 s of a 26.5 s run); otherwise nothing is cleaned and
    _restore_uncleaned makes the images the pass would have left (a split cube's chunk of noise: 1.8 s for the
    pass, 0.5 s for those, bench_split_run's 254-channel cube).  Cubes only (the continuum images keep the pass).
    None otherwise.  The fallback takes the (peak, rms) measured here rather than reading the residual again."""
    name = arguments['imagename']
    if not job.spectral or arguments.get('calcres', True) or job.nterms or Path(name + '.mask').exists():
        return None  # (a mask already made, by a cleaning kept from a stopped run: tclean would clean inside it)
    if os.environ.get(NO_FORECAST_ENV) == '1':  # test-only: tclean's own pass, to compare what skipping it makes
        return None
    peak, rms, channel = residual_peak_rms_channel(casa, name + '.residual')
    if not rms:
        return None
    # the peak's plane first: a cube with a line (bright or faint) shows a region there, and the forecast ends
    if automask_finds_nothing(casa, arguments, psf=name + '.psf', residual=name + '.residual', pb=name + '.pb',
                              first_channel=channel):
        return peak, rms
    return None


def _restore_uncleaned(casa, job, arguments):
    """The images tclean leaves when automasking finds nothing, made without its automasking pass: the restored
    and primary-beam corrected cube of the residual and an empty model (tclean's restoration alone: the same pixels
    and beams, measured bit for bit), and a mask of zeros on the residual's grid, with no unit and no beam, as
    tclean's."""
    casa_task(casa, 'tclean', about=job.name, **dict(arguments, niter=0, calcpsf=False, calcres=False,
                                                     restoration=True))
    name = arguments['imagename']
    with opened_tool(casa.casatools.image(), name + '.residual') as residual:
        shape = [int(n) for n in residual.shape()]
        coordinates = residual.coordsys()
        try:
            grid = coordinates.torecord()
        finally:
            coordinates.done()
    mask = casa.casatools.image()
    try:
        mask.fromshape(outfile=name + '.mask', shape=shape, csys=grid, overwrite=False, log=False)
    finally:
        mask.done()


def _fallback_cleans(peak, rms):
    """The fallback cleans an image whose residual peak is over 10x its noise (_clean_in_primary_beam_mask)."""
    return bool(rms) and peak / rms > 10.0


_KNOWN_BEFORE = {'foreseen': ' (foreseen from the dirty cube: no region above the thresholds large enough to outlive '
                             'the pruning)',
                 'kept': ' (known from a run that was stopped after its automasking pass: not made again)'}


def _clean_in_primary_beam_mask(casa, job, arguments, report, *, residual, known=None):
    """The fallback when automasking finds nothing in an image with a clear source.

    Sparse uv coverage (few antennas, snapshots) gives high PSF sidelobes, and the sidelobe threshold
    (sidelobethreshold x the PSF's largest sidelobe x the residual peak) then masks nothing: with 12
    antennas the sidelobe is 0.50 of the peak, so 2.0 x 0.50 = the peak itself.  Like hif_makeimages for a
    continuum image, an image whose residual peak is over 10x its noise is cleaned again inside the
    primary beam above 0.3, to twice the threshold (or 4 sigma).  The pipeline does this for continuum
    images only and leaves such a cube dirty ("check the results"); here cubes are cleaned too (README):
    a dirty cube's flux in an aperture is not the source's (measured on the demo delivery: moment 0 over
    two beams 1.74 Jy km/s dirty, 2.10 cleaned this way, 2.13 injected).
    residual: its (peak, rms); known: how the automasking pass's outcome is known without running it here
    ('foreseen' by _automasking_would_fail, 'kept' from a stopped run's; the residual is unchanged since).
    """
    peak, rms = residual
    if not _fallback_cleans(peak, rms):
        return {}
    sidelobe = psf_sidelobe_level(casa, arguments['imagename'] + ('.psf.tt0' if job.nterms else '.psf'))
    why = ''
    if sidelobe and arguments.get('sidelobethreshold'):
        why = '; the PSF\'s largest sidelobe is %.2f of its peak, so automasking masks only what is above %.2f x ' \
              'the peak' % (sidelobe, sidelobe * float(arguments['sidelobethreshold']))
    report('no automatic mask was found%s%s (residual peak %.3g Jy/beam = %.0f x noise%s): cleaning inside the '
           'primary beam above %.1f to %s%s'
           % (' in any channel' if job.spectral else '',
              _KNOWN_BEFORE.get(known, ''), peak, peak / rms, why, PB_MASK,
              'twice the threshold' if arguments.get('nsigma') == 0.0 else '4 sigma',
              ' (the pipeline leaves such a cube dirty)' if job.spectral else ', as the pipeline does'))
    again = dict(arguments, usemask='pb', pbmask=PB_MASK, nsigma=4.0, calcpsf=False, calcres=False, restart=True)
    if arguments.get('nsigma') == 0.0:  # imageparams_alma.py threshold(): iteration 2 cleans to twice the threshold
        again.update(nsigma=0.0, threshold='%.3gJy' % (2.0 * float(arguments['threshold'][:-len('Jy')])))
    for name in ('sidelobethreshold', 'noisethreshold', 'lownoisethreshold', 'negativethreshold', 'minbeamfrac',
                 'growiterations', 'dogrowprune', 'minpercentchange', 'fastnoise'):
        again.pop(name, None)
    return casa_task(casa, 'tclean', about=job.name, **again)


def residual_peak_rms_channel(casa, residual):
    """Peak (largest absolute value) and rms of a residual image (image_statistics), and the channel of its
    largest pixel (None for an image without a fourth axis); zeros when unreadable."""
    if not Path(residual).is_dir():
        return 0.0, 0.0, None
    stats = image_statistics(casa, residual)
    if stats['peak'] != stats['peak']:  # NaN: no valid pixel
        return 0.0, 0.0, None
    position = stats.get('peak_position') or []
    return (max(abs(stats['peak']), abs(stats['min'])), stats['rms'],
            int(position[3]) if len(position) > 3 else None)
