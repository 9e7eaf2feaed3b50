"""The pipeline-free imaging engine: what the MSes hold, one tclean job per image, running tclean."""

import collections
import os
import time
from pathlib import Path

from .casa_engine import casa_task, opened_table, opened_tool
from .channels import ChannelConverter
from .heuristics import autobox_parameters, baseline_percentile, distinct_pointings, fractional_bandwidth, heuristic_cell_arcsec, mosaic_pixels, mtmfs_reffreq_hz, pointing_geometry, primary_beam_radius_arcsec, sanitize_name, single_field_pixels, synthesized_beam_arcsec
from .image_stats import image_statistics
from .fileops import require_free_space
from .imaging_options import nbins_for_spw
from .messages import ReprocessingError, say
from .mpi import change_directory, tclean_parallel
from .ms_tables import column_names, read_ms_layout, same_window
from .products import ImageProduct, is_casa_image
from .run_state import pause_point


TARGET_INTENT_PREFIX = 'OBSERVE_TARGET'

ImagingPointing = collections.namedtuple('ImagingPointing', 'field_id ra dec frame')
ImagingSpw = collections.namedtuple('ImagingSpw', 'spw_id name nchan freqs width centre')
MsForImaging = collections.namedtuple(
    'MsForImaging', 'path name layout fields spws min_diameter baselines_m datacolumn science_goals')


def read_ms_for_imaging(casa, ms):
    """Science fields (with their pointings), science spws, dishes and baselines of one MS."""
    import numpy
    layout = read_ms_layout(casa, ms)
    with opened_tool(casa.casatools.msmetadata(), ms) as msmd:
        target_ids = set()
        for intent in msmd.intents():
            if intent.startswith(TARGET_INTENT_PREFIX):
                target_ids.update(int(i) for i in msmd.fieldsforintent(intent))
        if not target_ids:  # a targets MS whose STATE table lost its intents: all fields with data
            target_ids = {int(i) for i in msmd.fieldsforscans(msmd.scannumbers())}
        names = msmd.fieldnames()
        fields = collections.OrderedDict()
        for field_id in sorted(target_ids):
            direction = msmd.phasecenter(field_id)
            fields.setdefault(names[field_id], []).append(ImagingPointing(
                field_id, float(direction['m0']['value']), float(direction['m1']['value']), direction['refer']))
        spws = collections.OrderedDict()
        for spw_id, spw in layout.spws.items():  # the spws with data
            if spw.nchan <= 4:  # channel-averaged and WVR windows are not imaged
                continue
            freqs = [float(f) for f in msmd.chanfreqs(spw_id)]
            width = abs(float(msmd.chanwidths(spw_id)[0]))
            spws[spw_id] = ImagingSpw(spw_id, spw.name, spw.nchan, freqs, width, (min(freqs) + max(freqs)) / 2.0)
        present = numpy.array(msmd.baselines(), dtype=bool)
    with opened_table(casa, Path(ms) / 'ANTENNA') as table:
        positions = numpy.array(table.getcol('POSITION')).T
        diameters = numpy.array(table.getcol('DISH_DIAMETER'))
    numpy.fill_diagonal(present, False)
    first, second = numpy.nonzero(numpy.triu(present))
    if len(first) == 0:
        raise ReprocessingError('%s has no cross-correlation data to image — check the MS' % ms)
    baselines = numpy.sqrt(((positions[first] - positions[second]) ** 2).sum(axis=1))
    used = sorted(set(first.tolist()) | set(second.tolist()))
    datacolumn = 'corrected' if 'CORRECTED_DATA' in column_names(casa, ms) else 'data'
    return MsForImaging(Path(ms), Path(ms).name, layout, fields, spws,
                        float(diameters[used].min()), sorted(float(b) for b in baselines), datacolumn,
                        read_science_goals(casa, ms))


def read_science_goals(casa, ms):
    """{'representativeFrequency': Hz, 'representativeBandwidth': Hz, ...} from ASDM_SBSUMMARY, or {}."""
    path = Path(ms) / 'ASDM_SBSUMMARY'
    if not path.is_dir():
        return {}
    table = casa.casatools.table()
    quanta = casa.casatools.quanta()
    goals = {}
    try:
        table.open(str(path))
        try:
            entries = table.getcol('scienceGoal')
        finally:
            table.close()
    except RuntimeError:
        return {}
    for entry in [str(e) for e in entries.flatten()]:
        if '=' not in entry:
            continue
        key, value = [part.strip() for part in entry.split('=', 1)]
        if key in ('representativeFrequency', 'representativeBandwidth'):
            try:
                hertz = quanta.convert(quanta.quantity(value.replace(' ', '')), 'Hz')['value']
            except Exception:  # a value without a frequency unit: not usable
                continue
            if hertz > 0:
                goals[key] = float(hertz)
        elif key in ('representativeSource', 'representativeWindow'):
            goals[key] = value
    return goals


def virtual_spw_map(infos):
    """{virtual spw id: {ms name: ImagingSpw}}: ids of the first MS, matched in the others by spw name."""
    reference = infos[0]
    mapping = collections.OrderedDict((spw_id, {}) for spw_id in reference.spws)
    for info in infos:
        for spw_id, reference_spw in reference.spws.items():
            match = info.spws.get(same_window(info.layout, name=reference_spw.name, spw_id=spw_id))
            if match is not None:
                mapping[spw_id][info.name] = match
    return mapping


# --- Pipeline-free engine: one tclean call per image -----------------------------

ImageJob = collections.namedtuple(
    'ImageJob', 'name specmode field spw_ids vis field_ids spw_selection datacolumn imsize cell cell_arcsec '
                'phasecenter gridder deconvolver nterms reffreq spectral autobox nchan beam_arcsec')

TCLEAN_NITER = 1000000  # a cap that is never reached: cleaning stops at TCLEAN_NSIGMA x the residual's rms
TCLEAN_NSIGMA = 2.0     # the pipeline's tlimit: clean to twice the noise, inside the automatic mask
PB_LIMIT = 0.2          # image out to the 0.2 level of the primary beam (the pipeline's pblimit)
PB_MASK = 0.3           # automasking only where the primary beam is above 0.3 (the pipeline's cleanmask limit)


def image_name(ous, field, spw_ids, specmode, iteration=1):
    """The pipeline's image name without the stage: <ous>.<field>_sci.spw<ids>.<specmode>.I.iter<N>."""
    return '%s.%s_sci.spw%s.%s.I.iter%d' % (ous, sanitize_name(field), '_'.join(str(i) for i in sorted(spw_ids)),
                                           specmode, iteration)


def image_geometry(casa, request, *, infos, pointings, beam_frequency_hz, pb_frequency_hz):
    """(imsize, cell strings, cell arcsec, phasecenter, gridder, beam arcsec) by the pipeline's rules."""
    import math
    quanta = casa.casatools.quanta()
    beam = synthesized_beam_arcsec(beam_frequency_hz, baseline_percentile(infos, 80.0))
    if isinstance(request.cell, list):
        cell = [str(c) for c in request.cell]
        cell_arcsec = float(quanta.convert(quanta.quantity(cell[0]), 'arcsec')['value'])
    else:
        per_beam = float(request.cell[:-len('ppb')]) if request.cell else 5.0
        cell_arcsec = heuristic_cell_arcsec(beam, per_beam)
        cell = ['%garcsec' % cell_arcsec]
    pb_radius = primary_beam_radius_arcsec(pb_frequency_hz, min(info.min_diameter for info in infos))
    distinct = distinct_pointings(pointings)
    if len(distinct) > 1:
        ra, dec, x_spread, y_spread = pointing_geometry(distinct)
        pixels = [mosaic_pixels(pb_radius, x_spread, cell_arcsec, len(distinct)),
                  mosaic_pixels(pb_radius, y_spread, cell_arcsec, len(distinct))]
        phasecenter = '%s %.10fdeg %.10fdeg' % (distinct[0].frame, math.degrees(ra), math.degrees(dec))
        gridder = 'mosaic'
    else:
        level = float(request.imsize[:-len('pb')]) if isinstance(request.imsize, str) else PB_LIMIT
        pixels = [single_field_pixels(pb_radius, cell_arcsec, level)] * 2
        phasecenter, gridder = '', 'standard'
    if isinstance(request.imsize, list):
        imsize = list(request.imsize)
    else:
        utils = casa.casatools.synthesisutils()
        try:
            imsize = [int(utils.getOptimumSize(max(int(n), 16))) for n in pixels]
        finally:
            utils.done()
    return imsize, cell, cell_arcsec, phasecenter, gridder, beam


def _datacolumn(infos):
    """'corrected' (self-calibrated) when any MS has it; tclean takes one column for all.

    tclean with datacolumn='corrected' reads DATA of an MS without CORRECTED_DATA (measured with
    CASA 6.7.0: the same image either way), so a mixed delivery keeps its self-calibration.
    """
    return 'corrected' if any(info.datacolumn == 'corrected' for info in infos) else 'data'


def continuum_job(casa, request, specmode, field, virtual_ids, *, infos, spw_map, channels_for, contdat, ous):
    """The mfs (one spw) or cont (all spws) image of a field, from the continuum channels of cont.dat."""
    vis, field_ids, selections, used, pointings, notes, observed = [], [], [], [], [], [], set()
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        parts = []
        for virtual_id in virtual_ids:
            spw = spw_map[virtual_id].get(info.name)
            if not ids or spw is None or not info.layout.has_data(ids, spw.spw_id):
                continue
            observed.add(virtual_id)
            channels, note = channels_for(info, field, spw.spw_id, virtual_id)
            parts.append('%d:%s' % (spw.spw_id, channels) if channels else str(spw.spw_id))
            if note and note not in notes:
                notes.append(note)
        if parts:
            vis.append(str(info.path))
            field_ids.append(','.join(str(i) for i in ids))
            selections.append(','.join(parts))
            used.append(info)
            pointings.extend(info.fields[field])
    if not vis:
        return None, ['no data of field %s in spw %s' % (field, ','.join(str(i) for i in virtual_ids))]
    # A target observed in some of the spws only (multi-source SBs set up spws per target): its cont
    # image is named after, and its frequencies taken from, the spws that hold its data.
    virtual_ids = [v for v in virtual_ids if v in observed]
    reference = [next(iter(spw_map[v].values())) for v in virtual_ids if spw_map[v]]
    low = min(min(s.freqs) - s.width / 2.0 for s in reference)
    high = max(max(s.freqs) + s.width / 2.0 for s in reference)
    centres = [s.centre for s in reference]
    deconvolver, nterms, reffreq = 'hogbom', None, None
    if specmode == 'cont' and fractional_bandwidth(low, high) > 0.1:
        deconvolver, nterms = 'mtmfs', 2
        ranges = _contdat_ranges(contdat, field, virtual_ids) or [(min(s.freqs), max(s.freqs)) for s in reference]
        reffreq = '%.6fGHz' % (mtmfs_reffreq_hz(ranges) / 1e9)
    beam_frequency = sum(centres) / len(centres)
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = image_geometry(
        casa, request, infos=used, pointings=pointings, beam_frequency_hz=beam_frequency,
        pb_frequency_hz=min(centres))
    phasecenter = _ephemeris_phasecenter(used, field, phasecenter)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, virtual_ids, specmode), specmode, field, list(virtual_ids), vis, field_ids,
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, deconvolver,
                   nterms, reffreq, None, autobox, 1, beam)
    return job, notes


def _is_ephemeris(infos, field):
    return any(field in info.layout.ephemeris_fields for info in infos)


def _ephemeris_phasecenter(infos, field, phasecenter):
    """An ephemeris target (a solar-system body) is imaged on its track, as the pipeline does."""
    return 'TRACKFIELD' if _is_ephemeris(infos, field) else phasecenter


def _cube_frame(infos, field):
    """Cubes of an ephemeris target are in its rest frame (tclean specmode cubesource), else LSRK."""
    return 'SOURCE' if _is_ephemeris(infos, field) else 'LSRK'


def _contdat_ranges(contdat, field, virtual_ids):
    """cont.dat's (low, high) Hz of a field's spws, for the mtmfs reference frequency."""
    if contdat is None or field not in contdat.fields:
        return []
    blocks = contdat.fields[field].spws
    return [(r.lo_hz, r.hi_hz) for v in virtual_ids if v in blocks for r in blocks[v].ranges]


def cube_job(casa, request, specmode, field, virtual_id, nbins, *, infos, spw_map, ous):
    """A cube of one spw in LSRK over the frequencies every execution block covers, nbins channels binned."""
    converter = ChannelConverter(casa)
    vis, field_ids, selections, used, pointings, coverage = [], [], [], [], [], []
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        spw = spw_map[virtual_id].get(info.name)
        if not ids or spw is None or not info.layout.has_data(ids, spw.spw_id):
            continue
        vis.append(str(info.path))
        field_ids.append(','.join(str(i) for i in ids))
        selections.append(str(spw.spw_id))
        used.append(info)
        pointings.extend(info.fields[field])
        coverage.append(sorted(converter.coverage(info.path, ids[0], spw.spw_id, _cube_frame(infos, field))))
    if not vis:
        return None, ['no data of field %s in spw %d' % (field, virtual_id)]
    reference = spw_map[virtual_id][used[0].name]
    low, high = max(c[0] for c in coverage), min(c[1] for c in coverage)
    width = reference.width * nbins
    nchan = int((high - low) / width + 1e-6)
    if nchan < 1:
        return None, ['spw %d of field %s: the execution blocks share no LSRK frequencies' % (virtual_id, field)]
    start = low + (high - low - nchan * width) / 2.0 + width / 2.0
    spectral = {'nchan': nchan, 'start': '%.3fHz' % start, 'width': '%.3fHz' % width,
                'restfreq': ['%.3fHz' % ((low + high) / 2.0)]}
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = image_geometry(
        casa, request, infos=used, pointings=pointings, beam_frequency_hz=reference.centre,
        pb_frequency_hz=reference.centre)
    phasecenter = _ephemeris_phasecenter(used, field, phasecenter)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, [virtual_id], specmode), specmode, field, [virtual_id], vis, field_ids,
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, 'hogbom', None,
                   None, spectral, autobox, nchan, beam)
    return job, []


def representative_spw(info, spw_map):
    """(virtual spw, nbins) of the repBW image, or (None, why it is not made)."""
    goals = info.science_goals
    frequency, bandwidth = goals.get('representativeFrequency'), goals.get('representativeBandwidth')
    if not frequency or not bandwidth:
        return None, ('repBW skipped: the measurement sets record no representative bandwidth (no science goals '
                      'in an ASDM_SBSUMMARY table)')
    spws = [(v, next(iter(m.values()))) for v, m in spw_map.items() if m]
    inside = [(v, s) for v, s in spws if min(s.freqs) - s.width <= frequency <= max(s.freqs) + s.width]
    virtual_id, spw = (inside or sorted(spws, key=lambda item: abs(item[1].centre - frequency)))[0]
    spw_bandwidth = spw.nchan * spw.width
    aggregate = sum(s.nchan * s.width for _v, s in spws)
    if bandwidth > spw_bandwidth or bandwidth > 0.9 * aggregate:
        return None, ('repBW skipped: the representative bandwidth (%.4g MHz) is wider than a spw, so the cont '
                      'image is the representative-bandwidth image' % (bandwidth / 1e6))
    nbins = int(bandwidth / spw.width + 0.5)
    if nbins <= 1:
        return None, ('repBW skipped: the representative bandwidth (%.4g MHz) is not wider than a channel '
                      '(%.4g MHz), so the cube already has it' % (bandwidth / 1e6, spw.width / 1e6))
    return (virtual_id, nbins), None


def plan_casa_images(casa, request, *, targets, lines, channels_for, contdat, ous):
    """The tclean jobs for the requested specmodes, and notes on what was skipped and why."""
    spw_map = virtual_spw_map(targets)
    known_fields = []
    for info in targets:
        known_fields.extend(name for name in info.fields if name not in known_fields)
    fields = known_fields
    if request.field:
        fields = [name.strip() for name in request.field.split(',')]
        unknown = [name for name in fields if name not in known_fields]
        if unknown:
            raise ReprocessingError('--field %s: not a science field of these measurement sets (they have %s) — '
                                    'correct the name' % (', '.join(unknown), ', '.join(known_fields)))
    spw_ids = list(spw_map)
    if request.spw:
        spw_ids = [int(i) for i in request.spw.split(',')]
        unknown = [str(i) for i in spw_ids if i not in spw_map]
        if unknown:
            raise ReprocessingError('--spw %s: no such science spw in %s (it has %s) — use the ids of the first '
                                    'execution block' % (','.join(unknown), targets[0].name,
                                                         ','.join(str(i) for i in spw_map)))
    cube_infos = lines or targets
    cube_map = virtual_spw_map(cube_infos) if lines else spw_map
    jobs, notes = [], []

    def add(job_and_notes):
        job, job_notes = job_and_notes
        if job is not None:
            jobs.append(job)
        notes.extend(n for n in job_notes if n not in notes)

    for specmode in request.specmodes:
        for field in fields:
            if specmode == 'mfs':
                for spw_id in spw_ids:
                    add(continuum_job(casa, request, 'mfs', field, [spw_id], infos=targets, spw_map=spw_map,
                                      channels_for=channels_for, contdat=contdat, ous=ous))
            elif specmode == 'cont':
                add(continuum_job(casa, request, 'cont', field, spw_ids, infos=targets, spw_map=spw_map,
                                  channels_for=channels_for, contdat=contdat, ous=ous))
            elif specmode == 'cube':
                for spw_id in spw_ids:
                    if spw_id in cube_map:
                        add(cube_job(casa, request, 'cube', field, spw_id, nbins_for_spw(request.nbins, spw_id),
                                     infos=cube_infos, spw_map=cube_map, ous=ous))
            elif specmode == 'repBW':
                representative, why = representative_spw(targets[0], cube_map)
                if representative is None:
                    if why not in notes:
                        notes.append(why)
                elif representative[0] in spw_ids:
                    add(cube_job(casa, request, 'repBW', field, representative[0], representative[1],
                                 infos=cube_infos, spw_map=cube_map, ous=ous))
    return jobs, notes


def tclean_arguments(job, request, *, imagename, parallel=False):
    """The tclean call of one job: the job's geometry and selection, the user's weighting (pure)."""
    phasecenter = request.phasecenter or job.phasecenter
    if isinstance(phasecenter, str) and phasecenter.isdigit():
        phasecenter = int(phasecenter)
    arguments = dict(
        vis=list(job.vis), field=list(job.field_ids), spw=list(job.spw_selection), datacolumn=job.datacolumn,
        imagename=str(imagename), imsize=list(job.imsize), cell=list(job.cell), phasecenter=phasecenter,
        stokes='I', specmode='cube' if job.spectral else 'mfs', gridder=job.gridder,
        mosweight=job.gridder == 'mosaic', pblimit=PB_LIMIT, deconvolver=job.deconvolver, weighting='briggs',
        robust=0.5 if request.robust is None else request.robust, uvtaper=list(request.uvtaper or ['']),
        uvrange=request.uvrange or '', niter=TCLEAN_NITER, threshold='0.0mJy', nsigma=TCLEAN_NSIGMA,
        usemask='auto-multithresh', pbmask=PB_MASK, restoration=True, pbcor=True, savemodel='none',
        interactive=False, parallel=bool(parallel))
    arguments.update(job.autobox)
    if job.deconvolver == 'mtmfs':
        arguments.update(nterms=job.nterms, reffreq=job.reffreq)
    if job.spectral:
        arguments.update(job.spectral)
        arguments.update(outframe='LSRK', veltype='radio', interpolation='linear', perchanweightdensity=True)
        if job.phasecenter == 'TRACKFIELD':  # an ephemeris target: frequencies in its rest frame
            arguments.update(specmode='cubesource')
            del arguments['outframe']
    return arguments


# Bytes a CASA image directory and a FITS file take beyond their pixels (tables, logtable, header).
CASA_IMAGE_OVERHEAD = 40000
IMAGE_SPACE_ADVICE = 'free some space, or image less (--specmodes, --field, --spw, --nbins)'
FITS_OVERHEAD = 20000


def estimate_image_bytes(jobs, *, all_products=False, iterations=1):
    """(bytes of the products delivered, bytes needed on disk at the peak of the run).

    pixels x channels x 4 bytes per product; iterations: the pipeline keeps a dirty iter0 beside
    each cleaned image, so its working products are twice ours.
    """
    delivered = peak = 0
    for job in jobs:
        plane = job.imsize[0] * job.imsize[1] * job.nchan * 4
        finals = 5 if job.deconvolver == 'mtmfs' else 3  # pbcor, pb, mask (+ alpha, alpha.error)
        working = (12 if job.deconvolver == 'mtmfs' else 8) * iterations  # + psf, residual, model, sumwt, ...
        fits = finals * (plane + FITS_OVERHEAD)
        kept = (working if all_products else finals) * (plane + CASA_IMAGE_OVERHEAD)
        delivered += fits + kept
        peak += fits + working * (plane + CASA_IMAGE_OVERHEAD)
    return delivered, peak


_STOP_REASONS = {0: 'not cleaned', 1: 'iteration limit', 2: 'threshold', 3: 'stopped', 4: 'no change',
                 5: 'residual grew', 6: 'diverged', 7: 'no automask found: dirty image', 8: 'noise threshold'}


def run_tclean_jobs(casa, request, jobs, *, work_dir, state, seconds=None):
    """Run each job's tclean in work_dir; the products are what each call added to it.
    seconds: a dict given gets each job's duration (by job name), for its provenance record."""
    products = []
    previous_dir = os.getcwd()
    change_directory(work_dir)  # tclean (and monolithic CASA's .last files) write into the working directory
    try:
        for number, job in enumerate(jobs, 1):
            arguments = tclean_arguments(job, request, imagename=work_dir / job.name, parallel=tclean_parallel(job))
            before = set(os.listdir('.'))
            started = time.time()
            say('  [%d/%d] %s: %s, %dx%d%s, cell %s, %s%s' % (
                number, len(jobs), job.name, job.specmode, job.imsize[0], job.imsize[1],
                ' x %d channels' % job.nchan if job.spectral else '', job.cell[0], job.gridder,
                ', %s nterms=%d' % (job.deconvolver, job.nterms) if job.nterms else ''))
            pause_point('image-product', state)
            # again before each image: the disk may have filled since the plan (other jobs, other
            # users), and a tclean that finds it full is aborted by CASA with no message (exit 134)
            require_free_space(work_dir, estimate_image_bytes([job], all_products=request.all_products)[1],
                               what='the image %s' % job.name, advice=IMAGE_SPACE_ADVICE)
            pause_point('tclean', state)
            summary = casa_task(casa, 'tclean', about=job.name, **arguments)
            made = sorted(name for name in set(os.listdir('.')) - before if is_casa_image(name))
            if not any(name in made for name in (job.name + '.image', job.name + '.image.tt0')):
                raise ReprocessingError('tclean made no image for %s — see the CASA log %s'
                                        % (job.name, state.casa_logfile))
            stop = summary.get('stopcode') if isinstance(summary, dict) else None
            iterations = int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
            if stop == NO_AUTOMASK_STOPCODE and not job.spectral:
                summary = _clean_in_primary_beam_mask(casa, job, arguments, state)
                stop = summary.get('stopcode') if isinstance(summary, dict) else stop
                iterations += int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
            products.extend(ImageProduct.from_working_name(work_dir / name) for name in made)
            if seconds is not None:
                seconds[job.name] = round(time.time() - started, 1)
            say('        %d clean iterations, stopped by %s, %.0f s' % (
                iterations, _STOP_REASONS.get(stop, 'code %s' % stop), time.time() - started))
    finally:
        change_directory(previous_dir)
    return products


NO_AUTOMASK_STOPCODE = 7


def _clean_in_primary_beam_mask(casa, job, arguments, state):
    """The pipeline's fallback when automasking finds nothing in a continuum image with a clear source.

    Sparse uv coverage (few antennas, snapshots) gives high PSF sidelobes, and the sidelobe threshold
    then masks nothing.  Like hif_makeimages, a continuum image whose residual peak is over 10x its
    noise is cleaned again inside the primary beam above 0.3, to a 4 sigma threshold (tlimit 4).
    Cubes are left dirty, with a note, as the pipeline does.
    """
    peak, rms = residual_peak_and_rms(casa, arguments['imagename'] + ('.residual.tt0' if job.nterms else '.residual'))
    if not rms or peak / rms <= 10.0:
        return {}
    say('        no automatic mask was found (residual peak %.3g Jy/beam = %.0f x noise): cleaning inside the '
        'primary beam above %.1f to 4 sigma, as the pipeline does' % (peak, peak / rms, PB_MASK))
    again = dict(arguments, usemask='pb', pbmask=PB_MASK, nsigma=4.0, calcpsf=False, calcres=False, restart=True)
    for name in ('sidelobethreshold', 'noisethreshold', 'lownoisethreshold', 'negativethreshold', 'minbeamfrac',
                 'growiterations', 'dogrowprune', 'minpercentchange', 'fastnoise'):
        again.pop(name, None)
    return casa_task(casa, 'tclean', about=job.name, **again)


def residual_peak_and_rms(casa, residual):
    """Peak (largest absolute value) and rms of a residual image (image_statistics); zeros when unreadable."""
    if not Path(residual).is_dir():
        return 0.0, 0.0
    stats = image_statistics(casa, residual)
    if stats['peak'] != stats['peak']:  # NaN: no valid pixel
        return 0.0, 0.0
    return max(abs(stats['peak']), abs(stats['min'])), stats['rms']
