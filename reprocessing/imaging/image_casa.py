"""The pipeline-free imaging engine's jobs: one tclean call per image, its geometry, spectral grid and threshold inputs."""

import collections

from ..casa.ms_imaging import virtual_spw_map
from ..contdat.channels import ChannelConverter
from ..core.lookalikes import lookalike_hint
from ..core.fileops import require_free_space
from ..core.messages import ReprocessingError, UsageError
from ..core.requests import nbins_for_spw
from .heuristics import autobox_parameters, baseline_percentile, cube_weighting, distinct_pointings, fractional_bandwidth, heuristic_cell_arcsec, lsrk_intersection, mosaic_pixels, mtmfs_reffreq_hz, pointing_geometry, primary_beam_radius_arcsec, representative_nbin, sanitize_name, single_field_pixels, synthesized_beam_arcsec
from .spectral_grid import GRID_NAMES, TCLEAN_SPECTRAL_KEYS, cube_spectral, read_source_rest_frequencies, value_for_spw



# --- Pipeline-free engine: one tclean call per image -----------------------------

ImageJob = collections.namedtuple(
    'ImageJob', 'name specmode field spw_ids vis field_ids spw_selection datacolumn imsize cell cell_arcsec '
                'phasecenter gridder deconvolver nterms reffreq spectral autobox nchan beam_arcsec dish_m')

TCLEAN_NITER = 1000000  # a cap that is never reached: cleaning stops at the threshold
TCLEAN_NSIGMA = 2.0     # without a theoretical sensitivity: twice the residual's rms (the pipeline's tlimit)
PB_LIMIT = 0.2          # image out to the 0.2 level of the primary beam (the pipeline's pblimit)
PB_MASK = 0.3           # the fallback's mask: the primary beam above 0.3 (the pipeline's pblimit_cleanmask)
# hif_tclean passes no pbmask (tclean's 0.0); here automasking stays inside the primary beam above 0.3.
# Measured (CASA 6.7.0, 2-EB 25-antenna simulated cube, 0.5 Jy line): with pbmask 0 the mask grew into
# PSF sidelobes and clean put 0.566 Jy of model in the line's channel (restored peak 0.575); with 0.3,
# 0.489 Jy and a peak of 0.497.  A deliberate difference from the pipeline (README).
AUTOMASK_PB_LEVEL = 0.3


def image_name(ous, field, spw_ids, specmode, iteration=1):
    """The pipeline's image name without the stage: <ous>.<field>_sci.spw<ids>.<specmode>.I.iter<N>."""
    return '%s.%s_sci.spw%s.%s.I.iter%d' % (ous, sanitize_name(field), '_'.join(str(i) for i in sorted(spw_ids)),
                                           specmode, iteration)


def image_geometry(casa, request, *, infos, pointings, beam, pb_frequency_hz):
    """(imsize, cell strings, cell arcsec, phasecenter, gridder) by the pipeline's rules.

    beam: (major, minor) arcsec of the PSF of the call's highest-frequency spw (hif_makeimlist picks the
    smallest beam for the cell); pb_frequency_hz: the reference frequency of its lowest-frequency spw
    (hif_makeimlist sizes every image of a specmode from the largest primary beam).
    """
    import math
    quanta = casa.casatools.quanta()
    if isinstance(request.cell, list):
        cell = [str(c) for c in request.cell]
        cell_arcsec = float(quanta.convert(quanta.quantity(cell[0]), 'arcsec')['value'])
    else:
        per_beam = float(request.cell[:-len('ppb')]) if request.cell else 5.0
        cell_arcsec = heuristic_cell_arcsec(beam[1], per_beam)
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
        imsize = [optimum_size(casa, max(int(n), 16)) for n in pixels]
    return imsize, cell, cell_arcsec, phasecenter, gridder


def optimum_size(casa, pixels):
    utils = casa.casatools.synthesisutils()
    try:
        return int(utils.getOptimumSize(int(pixels)))
    finally:
        utils.done()


def data_column_of(infos):
    """'corrected' (self-calibrated) when any MS has it; tclean takes one column for all.

    tclean with datacolumn='corrected' reads DATA of an MS without CORRECTED_DATA (measured with
    CASA 6.7.0: the same image either way), so a mixed delivery keeps its self-calibration.
    """
    return 'corrected' if any(info.datacolumn == 'corrected' for info in infos) else 'data'


def field_selection(infos, field, virtual_ids, spw_map):
    """[(info, field ids, [ImagingSpw])] of the MSes with data of field in any of virtual_ids."""
    chosen = []
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        spws = [spw_map[v][info.name] for v in virtual_ids if info.name in spw_map.get(v, {})]
        spws = [spw for spw in spws if ids and info.layout.has_data(ids, spw.spw_id)]
        if spws:
            chosen.append((info, ids, spws))
    return chosen


def call_geometry(casa, request, field, call_ids, *, infos, spw_map, beam_for):
    """The geometry shared by every image of one specmode (one hif_makeimlist call): pipeline/hif/tasks/
    makeimlist/makeimlist.py, cell from the beam of the highest-frequency spw with a valid beam, image size
    from the lowest-frequency spw's primary beam; (imsize, cell, cell arcsec, phasecenter, gridder, beam)."""
    chosen = field_selection(infos, field, call_ids, spw_map)
    if not chosen:
        return None
    present = [v for v in call_ids if any(v in spw_map and info.name in spw_map[v] for info, _i, _s in chosen)]
    reference = {v: next(iter(spw_map[v].values())) for v in present}
    by_frequency = sorted(present, key=lambda v: reference[v].centre, reverse=True)
    beam = None
    # the PSF's beam decides the cell only: a cell given as an angle (--cell 0.3arcsec) needs no PSF
    for virtual_id in (by_frequency if not isinstance(request.cell, list) else []):
        beam = beam_for(field, virtual_id)
        if beam is not None:
            break
    used = [info for info, _i, _s in chosen]
    if beam is None:  # no spw gave a valid PSF (heavy flagging), or none was needed: the uv-coverage estimate
        beam = estimated_beam_finder(used, spw_map)(field, by_frequency[0])
    pointings = [p for info in used for p in info.fields[field]]
    geometry = image_geometry(casa, request, infos=used, pointings=pointings, beam=beam,
                              pb_frequency_hz=reference[by_frequency[-1]].ref_freq)
    return geometry + (beam,)


def estimated_beam_finder(infos, spw_map):
    """beam_for(field, virtual spw) from the uv coverage (0.574 lambda / L80): for sizing a plan without
    running tclean (the --dry-run and the pre-flight); the images use the PSF's (psf_beam_finder)."""
    def beam_for(field, virtual_id):
        spw = next(iter(spw_map[virtual_id].values()))
        beam = synthesized_beam_arcsec(spw.centre, baseline_percentile(infos, 80.0))
        return beam, beam
    return beam_for


def continuum_job(casa, request, specmode, field, virtual_ids, *, call_ids, infos, spw_map, channels_for, contdat,
                  ous, beam_for):
    """The mfs (one spw) or cont (all spws) image of a field, from the continuum channels of cont.dat."""
    vis, field_ids, selections, used, notes, observed = [], [], [], [], [], set()
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
    geometry = call_geometry(casa, request, field, call_ids, infos=infos, spw_map=spw_map, beam_for=beam_for) \
        if vis else None
    if geometry is None:
        return None, ['no data of field %s in spw %s' % (field, ','.join(str(i) for i in virtual_ids))]
    # A target observed in some of the spws only (multi-source SBs set up spws per target): its cont
    # image is named after, and its frequencies taken from, the spws that hold its data.
    virtual_ids = [v for v in virtual_ids if v in observed]
    reference = [next(iter(spw_map[v].values())) for v in virtual_ids if spw_map[v]]
    low = min(min(s.freqs) - s.width / 2.0 for s in reference)
    high = max(max(s.freqs) + s.width / 2.0 for s in reference)
    deconvolver, nterms, reffreq = 'hogbom', None, None
    if specmode == 'cont' and fractional_bandwidth(low, high) > 0.1:
        deconvolver, nterms = 'mtmfs', 2
        ranges = _contdat_ranges(contdat, field, virtual_ids) or [(min(s.freqs), max(s.freqs)) for s in reference]
        reffreq = '%.6fGHz' % (mtmfs_reffreq_hz(ranges) / 1e9)
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = geometry
    phasecenter = _ephemeris_phasecenter(used, field, phasecenter)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, virtual_ids, specmode), specmode, field, list(virtual_ids), vis, field_ids,
                   selections, data_column_of(used), imsize, cell, cell_arcsec, phasecenter, gridder, deconvolver,
                   nterms, reffreq, None, autobox, 1, beam, min(i.min_diameter for i in used))
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


def cube_job(casa, request, specmode, field, virtual_id, nbin, *, call_ids, infos, spw_map, ous, beam_for):
    """A cube of one spw over the frequencies every EB covers: on the pipeline's LSRK grid, or (specmode cube) on the
    grid --start/--width/--nchan/--restfreq/--outframe/--veltype ask for (spectral_grid.cube_spectral)."""
    converter = ChannelConverter(casa)
    asked = {name: getattr(request, name, None) for name in GRID_NAMES} if specmode == 'cube' else {}
    frame = value_for_spw(asked.get('outframe'), virtual_id) or _cube_frame(infos, field)
    if frame == 'SOURCE' and not _is_ephemeris(infos, field):
        raise UsageError('--outframe SOURCE: field %s is not an ephemeris target (SOURCE is the rest frame of a '
                         'solar-system body) — use LSRK, BARY or TOPO' % field)
    vis, field_ids, selections, used, per_eb_ranges, widths = [], [], [], [], [], []
    for info in infos:
        ids = [p.field_id for p in info.fields.get(field, [])]
        spw = spw_map[virtual_id].get(info.name)
        if not ids or spw is None or not info.layout.has_data(ids, spw.spw_id):
            continue
        vis.append(str(info.path))
        field_ids.append(','.join(str(i) for i in ids))
        selections.append(str(spw.spw_id))
        used.append(info)
        ranges = [tuple(sorted(converter.coverage(info.path, i, spw.spw_id, frame))) for i in ids]
        per_eb_ranges.append(ranges)
        # advisechansel's range is edge to edge: the width is the range over the channels (freq_intersection)
        widths.extend((high - low) / spw.nchan for low, high in ranges)
    geometry = call_geometry(casa, request, field, call_ids, infos=infos, spw_map=spw_map, beam_for=beam_for) \
        if vis else None
    if geometry is None:
        return None, ['no data of field %s in spw %d' % (field, virtual_id)]
    intersection = lsrk_intersection(per_eb_ranges, widths)
    if not intersection:
        return None, ['spw %d of field %s: the execution blocks share no %s frequencies' % (virtual_id, field, frame)]
    first_spw = spw_map[virtual_id][used[0].name]
    others = {v: (min(s.freqs) - s.width, max(s.freqs) + s.width) for v, m in spw_map.items() for s in list(m.values())[:1]}
    try:
        spectral, note = cube_spectral(
            spw_id=virtual_id, field=field, low_hz=intersection[0], high_hz=intersection[1], native_hz=max(widths),
            nbin=nbin, frame=frame, other_spws=others, source_table={
                (name, virtual_id): lines for (name, spw_id), lines in
                read_source_rest_frequencies(casa, used[0].path).items() if spw_id == first_spw.spw_id}, **asked)
    except ValueError as error:
        raise UsageError('%s of field %s' % (error, field) if ' — ' not in str(error) else
                         str(error).replace(' — ', ' (field %s) — ' % field, 1))
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = geometry
    phasecenter = _ephemeris_phasecenter(used, field, phasecenter)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, [virtual_id], specmode), specmode, field, [virtual_id], vis, field_ids,
                   selections, data_column_of(used), imsize, cell, cell_arcsec, phasecenter, gridder, 'hogbom', None,
                   None, spectral, autobox, spectral['nchan'], beam, min(i.min_diameter for i in used))
    return job, [note] if specmode == 'cube' else []


def representative_spw(info, spw_map, nbins=None):
    """(virtual spw, nbin) of the repBW image, or (None, why it is not made)."""
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
    default_nbin = nbins_for_spw(nbins, virtual_id) or 1
    nbin = representative_nbin(bandwidth, spw.width, default_nbin)
    if nbin is None:
        return None, ('repBW skipped: the representative bandwidth (%.4g MHz) is not over 4 times the cube\'s '
                      'channel (%.4g MHz), so the cube already has it (as the pipeline decides)'
                      % (bandwidth / 1e6, default_nbin * spw.width / 1e6))
    return (virtual_id, nbin), None


def plan_casa_images(casa, request, *, targets, lines, channels_for, contdat, ous, beam_for=None):
    """The tclean jobs for the requested specmodes, and notes on what was skipped and why.

    beam_for(field, virtual spw) -> (major, minor) arcsec decides the cells (psf_beam_finder for the images;
    by default the uv-coverage estimate, which runs nothing, for sizing a plan).
    """
    spw_map = virtual_spw_map(targets)
    if beam_for is None:
        beam_for = estimated_beam_finder(targets, spw_map)
    known_fields = []
    for info in targets:
        known_fields.extend(name for name in info.fields if name not in known_fields)
    fields = known_fields
    if request.field:
        fields = [name.strip() for name in request.field.split(',')]
        unknown = [name for name in fields if name not in known_fields]
        if unknown:
            hint = lookalike_hint(unknown[0], known_fields)
            raise ReprocessingError('--field %s: not a science field of these measurement sets (they have %s) —%s '
                                    'correct the name' % (', '.join(unknown), ', '.join(known_fields), hint))
    spw_ids = list(spw_map)
    if request.spw:
        spw_ids = [int(i) for i in request.spw.split(',')]
        unknown = [str(i) for i in spw_ids if i not in spw_map]
        if unknown:
            raise ReprocessingError('--spw %s: no such science spw in these measurement sets (they have %s) — use '
                                    'the ids cont.dat uses (those of the first execution block with that spw)'
                                    % (','.join(unknown), ','.join(str(i) for i in spw_map)))
    cube_infos = lines or targets
    cube_map = virtual_spw_map(cube_infos) if lines else spw_map
    cube_ids = [i for i in spw_ids if i in cube_map]
    jobs, notes = [], []

    def add(job_and_notes):
        job, job_notes = job_and_notes
        if job is not None:
            jobs.append(job)
        notes.extend(n for n in job_notes if n not in notes)

    # The beams (so the cells) come from the targets MSes: the line MSes have the same uv coverage and weights.
    for specmode in request.specmodes:
        for field in fields:
            if specmode == 'mfs':
                for spw_id in spw_ids:
                    add(continuum_job(casa, request, 'mfs', field, [spw_id], call_ids=spw_ids, infos=targets,
                                      spw_map=spw_map, channels_for=channels_for, contdat=contdat, ous=ous,
                                      beam_for=beam_for))
            elif specmode == 'cont':
                add(continuum_job(casa, request, 'cont', field, spw_ids, call_ids=spw_ids, infos=targets,
                                  spw_map=spw_map, channels_for=channels_for, contdat=contdat, ous=ous,
                                  beam_for=beam_for))
            elif specmode == 'cube':
                for spw_id in cube_ids:
                    add(cube_job(casa, request, 'cube', field, spw_id, nbins_for_spw(request.nbins, spw_id),
                                 call_ids=cube_ids, infos=cube_infos, spw_map=cube_map, ous=ous, beam_for=beam_for))
            elif specmode == 'repBW':
                representative, why = representative_spw(targets[0], cube_map, request.nbins)
                if representative is None:
                    if why not in notes:
                        notes.append(why)
                elif representative[0] in spw_ids:
                    add(cube_job(casa, request, 'repBW', field, representative[0], representative[1],
                                 call_ids=[representative[0]], infos=cube_infos, spw_map=cube_map, ous=ous,
                                 beam_for=beam_for))
    return jobs, notes


def tclean_arguments(job, request, *, imagename, parallel=False):
    """The tclean call of one job: the job's geometry and selection, the user's weighting (pure)."""
    phasecenter = request.phasecenter or job.phasecenter
    if isinstance(phasecenter, str) and phasecenter.isdigit():
        phasecenter = int(phasecenter)
    weighting, perchanweightdensity = cube_weighting(job.specmode)
    arguments = dict(
        vis=list(job.vis), field=list(job.field_ids), spw=list(job.spw_selection), datacolumn=job.datacolumn,
        imagename=str(imagename), imsize=list(job.imsize), cell=list(job.cell), phasecenter=phasecenter,
        stokes='I', specmode='cube' if job.spectral else 'mfs', gridder=job.gridder,
        mosweight=job.gridder == 'mosaic', pblimit=PB_LIMIT, deconvolver=job.deconvolver, weighting=weighting,
        robust=0.5 if request.robust is None else request.robust, uvtaper=list(request.uvtaper or ['']),
        uvrange=request.uvrange or '', niter=TCLEAN_NITER, threshold='0.0mJy', nsigma=TCLEAN_NSIGMA,
        usemask='auto-multithresh', pbmask=AUTOMASK_PB_LEVEL, restoration=True, pbcor=True, savemodel='none',
        interactive=False, parallel=bool(parallel))
    arguments.update(job.autobox)
    if job.deconvolver == 'mtmfs':
        arguments.update(nterms=job.nterms, reffreq=job.reffreq)
    if job.spectral:
        arguments.update(outframe='LSRK', veltype='radio', interpolation='linear',
                         perchanweightdensity=perchanweightdensity)
        arguments.update((key, value) for key, value in job.spectral.items() if key in TCLEAN_SPECTRAL_KEYS)
        if arguments.get('outframe') == 'SOURCE':  # an ephemeris target: frequencies in its rest frame
            arguments.update(specmode='cubesource')
            del arguments['outframe']
    return arguments


# Bytes a CASA image directory and a FITS file take beyond their pixels (tables, logtable, header).
CASA_IMAGE_OVERHEAD = 40000
IMAGE_SPACE_ADVICE = 'free some space, or image less (--specmodes, --field, --spw, --nbins)'
FITS_OVERHEAD = 20000


def require_image_space(jobs, *, folder, all_products, iterations=1, what='the images'):
    """(delivered, peak, available): the images' bytes (estimate_image_bytes) and the free bytes where they are
    made; one error line when they cannot fit (the plan, the step and each tclean call ask it)."""
    delivered, peak = estimate_image_bytes(jobs, all_products=all_products, iterations=iterations)
    available = require_free_space(folder, peak, what=what, advice=IMAGE_SPACE_ADVICE)
    return delivered, peak, available


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
