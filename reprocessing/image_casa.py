"""The pipeline-free imaging engine: what the MSes hold, one tclean job per image, running tclean."""

import collections
import os
import time
from pathlib import Path

from .casa_engine import _full_disk_among, casa_log_path, casa_task, opened_table, opened_tool
from .channels import ChannelConverter
from .fileops import human_bytes, remove_tree, require_free_space
from .heuristics import ARCSEC_PER_RADIAN, autobox_parameters, bandwidth_correction_factor, baseline_percentile, cube_channel_grid, dynamic_range_threshold, cube_weighting, distinct_pointings, fractional_bandwidth, heuristic_cell_arcsec, lsrk_intersection, mosaic_overlap_factor, mosaic_pixels, mtmfs_reffreq_hz, pointing_geometry, primary_beam_radius_arcsec, psf_imaging_cell_arcsec, psf_imaging_pixels, representative_nbin, round_beam_arcsec, sanitize_name, single_field_pixels, synthesized_beam_arcsec
from .image_stats import image_statistics
from .imaging_options import ImagingRequest, nbins_for_spw
from .messages import ReprocessingError, duration_text, one_line, say
from .mpi import change_directory, tclean_parallel
from .ms_tables import column_names, read_ms_layout, same_window, virtual_spws
from .products import ImageProduct, is_casa_image
from .run_state import pause_point
from .tclean_progress import tclean_progress


TARGET_INTENT_PREFIX = 'OBSERVE_TARGET'

ImagingPointing = collections.namedtuple('ImagingPointing', 'field_id ra dec frame')
ImagingSpw = collections.namedtuple('ImagingSpw', 'spw_id name nchan freqs width centre ref_freq')
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
            ref_freq = float(msmd.reffreq(spw_id)['m0']['value'])  # the primary beam's frequency (primary_beam_size)
            spws[spw_id] = ImagingSpw(spw_id, spw.name, spw.nchan, freqs, width, (min(freqs) + max(freqs)) / 2.0,
                                      ref_freq)
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
    """{virtual spw id: {ms name: ImagingSpw}} of the imaged windows: the virtual ids (virtual_spws: the first
    MS's ids, then those of windows only later MSes have), matched in each MS by spw name."""
    mapping = collections.OrderedDict()
    for virtual_id, (_defining, window) in virtual_spws([info.layout for info in infos]).items():
        matches = [(info.name, info.spws.get(same_window(info.layout, name=window.name, spw_id=window.id)))
                   for info in infos]
        matches = [(name, match) for name, match in matches if match is not None]
        if matches:  # channel-averaged and WVR windows are not imaged
            mapping[virtual_id] = collections.OrderedDict(matches)
    return mapping


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


def _datacolumn(infos):
    """'corrected' (self-calibrated) when any MS has it; tclean takes one column for all.

    tclean with datacolumn='corrected' reads DATA of an MS without CORRECTED_DATA (measured with
    CASA 6.7.0: the same image either way), so a mixed delivery keeps its self-calibration.
    """
    return 'corrected' if any(info.datacolumn == 'corrected' for info in infos) else 'data'


def _field_selection(infos, field, virtual_ids, spw_map):
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
    chosen = _field_selection(infos, field, call_ids, spw_map)
    if not chosen:
        return None
    present = [v for v in call_ids if any(v in spw_map and info.name in spw_map[v] for info, _i, _s in chosen)]
    reference = {v: next(iter(spw_map[v].values())) for v in present}
    by_frequency = sorted(present, key=lambda v: reference[v].centre, reverse=True)
    beam = None
    for virtual_id in by_frequency:
        beam = beam_for(field, virtual_id)
        if beam is not None:
            break
    used = [info for info, _i, _s in chosen]
    if beam is None:  # no spw gave a valid PSF (heavy flagging): the uv-coverage estimate, not no image
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


def psf_beam_finder(casa, request, *, infos, spw_map, work_dir):
    """beam_for(field, virtual spw) -> (major, minor) arcsec of the PSF the pipeline fits for the cell.

    pipeline/hif/heuristics/imageparams_base.py synthesized_beam(): imager.advise's cell / 2.5 on an image
    1.5 primary-beam radii wide, an mfs PSF of the whole spw with briggs weighting at the imaging robust and
    uvtaper (makePSF; here tclean with niter=0 and calcres=False, the same PSF), its fitted beam rounded to
    three digits.  Each (field, spw) is computed once and shared by all specmodes, as the pipeline's
    known_synthesized_beams.  None when the spw has no data of the field or the fit failed.
    """
    cache = {}
    robust = 0.5 if request.robust is None else request.robust

    def beam_for(field, virtual_id):
        key = (field, virtual_id)
        if key not in cache:
            cache[key] = _psf_beam(casa, request, field, virtual_id, robust=robust, infos=infos, spw_map=spw_map,
                                   work_dir=work_dir)
        return cache[key]
    return beam_for


def _psf_beam(casa, request, field, virtual_id, *, robust, infos, spw_map, work_dir):
    chosen = _field_selection(infos, field, [virtual_id], spw_map)
    if not chosen:
        return None
    quanta = casa.casatools.quanta()
    spw = spw_map[virtual_id][chosen[0][0].name]
    pb_radius = primary_beam_radius_arcsec(spw.ref_freq, min(info.min_diameter for info, _i, _s in chosen))
    imager = casa.casatools.imager()
    try:
        for info, ids, spws in chosen:
            imager.selectvis(vis=str(info.path), field=','.join(str(i) for i in ids), spw=str(spws[0].spw_id),
                             usescratch=False, writeaccess=False)
        advice = imager.advise(takeadvice=False, amplitudeloss=0.5, fieldofview='%4.1farcsec' % (2.0 * pb_radius))
    finally:
        imager.done()
    if not advice[0]:
        return None
    cell = psf_imaging_cell_arcsec(quanta.convert(advice[2], 'arcsec')['value'])
    pixels = optimum_size(casa, psf_imaging_pixels(pb_radius, cell))
    pointings = distinct_pointings([p for info, _i, _s in chosen for p in info.fields[field]])
    gridder, phasecenter = 'standard', ''
    imsize = [pixels, pixels]
    if len(pointings) > 1:
        # synthesized_beam(): centred on the pointing nearest the mosaic's centre, the whole mosaic when it is
        # at most twice one pointing's image, else twice one pointing's image
        import math
        ra, dec, x_spread, y_spread = pointing_geometry(pointings)
        nearest = min(pointings, key=lambda p: ((p.ra - ra) * math.cos(dec)) ** 2 + (p.dec - dec) ** 2)
        phasecenter = '%s %.10fdeg %.10fdeg' % (nearest.frame, math.degrees(nearest.ra), math.degrees(nearest.dec))
        gridder = 'mosaic'
        pixels = optimum_size(casa, mosaic_pixels(pb_radius, 0.0, cell, len(pointings)))  # one pointing's
        mosaic = [optimum_size(casa, mosaic_pixels(pb_radius, spread, cell, len(pointings)))
                  for spread in (x_spread, y_spread)]
        imsize = mosaic if max(mosaic) <= 2 * pixels else [optimum_size(casa, 2 * pixels)] * 2
    name = str(Path(work_dir) / ('psf-for-cell.%s.spw%d' % (sanitize_name(field), virtual_id)))
    try:
        casa_task(casa, 'tclean', about='the PSF for the cell of spw %d' % virtual_id,
                  vis=[str(info.path) for info, _i, _s in chosen],
                  field=[','.join(str(i) for i in ids) for _info, ids, _s in chosen],
                  spw=[str(spws[0].spw_id) for _info, _i, spws in chosen],
                  datacolumn=_datacolumn([info for info, _i, _s in chosen]), imagename=name,
                  imsize=imsize, cell='%garcsec' % cell, phasecenter=phasecenter, specmode='mfs',
                  gridder=gridder, mosweight=gridder == 'mosaic', weighting='briggs', robust=robust,
                  uvtaper=list(request.uvtaper or ['']), uvrange=request.uvrange or '', niter=0, calcres=False,
                  calcpsf=True, restoration=False, pbcor=False, savemodel='none', interactive=False,
                  parallel=False)
        with opened_tool(casa.casatools.image(), name + '.psf') as image:
            fitted = image.restoringbeam()
    except (ReprocessingError, RuntimeError):  # no PSF: the pipeline calls the beam invalid
        return None
    finally:
        for suffix in ('.psf', '.sumwt', '.pb', '.weight', '.residual', '.model', '.image', '.mask'):
            if Path(name + suffix).exists():
                remove_tree(Path(name + suffix))
    if 'beams' in fitted:
        fitted = fitted['beams']['*0']['*0']
    major = quanta.convert(fitted['major'], 'arcsec')['value']
    minor = quanta.convert(fitted['minor'], 'arcsec')['value']
    if not minor > 1e-5:  # a bad PSF: the pipeline marks the beam invalid
        return None
    return round_beam_arcsec(major), round_beam_arcsec(minor)


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
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, deconvolver,
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
    """A cube of one spw in LSRK on the pipeline's channel grid over the frequencies every EB covers."""
    converter = ChannelConverter(casa)
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
        ranges = [tuple(sorted(converter.coverage(info.path, i, spw.spw_id, _cube_frame(infos, field))))
                  for i in ids]
        per_eb_ranges.append(ranges)
        # advisechansel's range is edge to edge: the width is the range over the channels (freq_intersection)
        widths.extend((high - low) / spw.nchan for low, high in ranges)
    geometry = call_geometry(casa, request, field, call_ids, infos=infos, spw_map=spw_map, beam_for=beam_for) \
        if vis else None
    if geometry is None:
        return None, ['no data of field %s in spw %d' % (field, virtual_id)]
    intersection = lsrk_intersection(per_eb_ranges, widths)
    start, width, nchan = cube_channel_grid(intersection[0], intersection[1], max(widths), nbin) \
        if intersection else (None, None, 0)
    if nchan < 1:
        return None, ['spw %d of field %s: the execution blocks share no LSRK frequencies' % (virtual_id, field)]
    spectral = {'nchan': nchan, 'start': start, 'width': width,
                'restfreq': ['%.3fHz' % ((intersection[0] + intersection[1]) / 2.0)]}
    imsize, cell, cell_arcsec, phasecenter, gridder, beam = geometry
    phasecenter = _ephemeris_phasecenter(used, field, phasecenter)
    autobox = autobox_parameters(specmode, l75_m=baseline_percentile(used, 75.0),
                                 diameter_m=min(i.min_diameter for i in used))
    job = ImageJob(image_name(ous, field, [virtual_id], specmode), specmode, field, [virtual_id], vis, field_ids,
                   selections, _datacolumn(used), imsize, cell, cell_arcsec, phasecenter, gridder, 'hogbom', None,
                   None, spectral, autobox, nchan, beam, min(i.min_diameter for i in used))
    return job, []


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
            raise ReprocessingError('--field %s: not a science field of these measurement sets (they have %s) — '
                                    'correct the name' % (', '.join(unknown), ', '.join(known_fields)))
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
        arguments.update(job.spectral)
        arguments.update(outframe='LSRK', veltype='radio', interpolation='linear',
                         perchanweightdensity=perchanweightdensity)
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


def run_tclean_jobs(casa, request, jobs, *, work_dir, state, workers=None, seconds=None):
    """Make each job's image in work_dir (in workers' processes when given); the products are the CASA images
    named after each job (job.name + '.image', '.pb', ...).  seconds: a dict given gets each job's duration
    (by job name), for its provenance record."""
    previous_dir = os.getcwd()
    change_directory(work_dir)  # tclean (and monolithic CASA's .last files) write into the working directory
    try:
        for number, job in enumerate(jobs, 1):
            say('  [%d/%d] %s: %s, %dx%d%s, cell %s, %s%s' % (
                number, len(jobs), job.name, job.specmode, job.imsize[0], job.imsize[1],
                ' x %d channels' % job.nchan if job.spectral else '', job.cell[0], job.gridder,
                ', %s nterms=%d' % (job.deconvolver, job.nterms) if job.nterms else ''))
        pause_point('image-product', state)
        # again before the images: the disk may have filled since the plan (other jobs, other users), and a
        # tclean that finds it full is aborted by CASA with no message (exit 134)
        require_free_space(work_dir, estimate_image_bytes(jobs, all_products=request.all_products)[1],
                           what='the image %s%s' % (jobs[0].name, ' and %d more' % (len(jobs) - 1) if len(jobs) > 1 else ''),
                           advice=IMAGE_SPACE_ADVICE)
        pause_point('tclean', state)
        arguments = [dict(job=job._asdict(), request=request._asdict(), imagename=str(work_dir / job.name),
                          parallel=tclean_parallel(job)) for job in jobs]
        if workers is None or workers.count <= 1:
            results = [run_image_job(casa, lambda message, name=job.name: say('  [%s] %s' % (name, message)), **kwargs)
                       for job, kwargs in zip(jobs, arguments)]
        else:  # the largest first, so that no worker is left with a big cube at the end
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i].imsize[0] * jobs[i].imsize[1] * jobs[i].nchan)
            try:
                answers = workers.run([{'function': 'image_job', 'eb': jobs[i].name, 'arguments': arguments[i]}
                                       for i in order], casa=casa, unit='images')
                results = [None] * len(jobs)
                for i, answer in zip(order, answers):
                    results[i] = answer
            except ReprocessingError as error:  # a worker that CASA aborted on a full disk (exit 134) says nothing
                full = _full_disk_among([work_dir], error)
                if full and 'is full' not in str(error):
                    raise ReprocessingError('tclean failed (%s): the disk of %s is full (%s free) — free some space, '
                                            'then run the same command again; your MS was not changed'
                                            % (one_line(error), full[0], human_bytes(full[1])))
                raise
    finally:
        change_directory(previous_dir)
    if seconds is not None:
        seconds.update((job.name, result['seconds']) for job, result in zip(jobs, results))
    products = []
    for job in jobs:
        made = sorted(name for name in os.listdir(str(work_dir)) if name.startswith(job.name + '.')
                      and is_casa_image(work_dir / name))
        if not any(name in made for name in (job.name + '.image', job.name + '.image.tt0')):
            raise ReprocessingError('tclean made no image for %s — see the CASA log %s' % (job.name, state.casa_logfile))
        products.extend(ImageProduct.from_working_name(work_dir / name) for name in made)
    return products


def run_image_job(casa, report, *, job, request, imagename, parallel):
    """One image: the dirty image and the pipeline's threshold, tclean, the automasking fallback.

    job and request as dicts (they travel to worker processes as JSON); report(line) prints progress.
    """
    job = ImageJob(**job)
    request = ImagingRequest(**request)
    started = time.time()
    arguments = tclean_arguments(job, request, imagename=imagename, parallel=parallel)
    threshold = _dirty_image_and_threshold(casa, job, request, arguments, report)
    if threshold is not None:  # clean the dirty image further, to the pipeline's threshold
        arguments.update(threshold='%.3gJy' % threshold, nsigma=0.0, calcpsf=False, calcres=False)
    summary = _tclean_with_progress(casa, job, report, 'cleaning' if threshold is not None else 'tclean', arguments)
    stop = summary.get('stopcode') if isinstance(summary, dict) else None
    iterations = int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
    if stop == NO_AUTOMASK_STOPCODE and not job.spectral:
        summary = _clean_in_primary_beam_mask(casa, job, arguments, report)
        stop = summary.get('stopcode') if isinstance(summary, dict) else stop
        iterations += int(summary.get('iterdone', 0)) if isinstance(summary, dict) else 0
    report('%d clean iterations, stopped by %s, %s' % (
        iterations, _STOP_REASONS.get(stop, 'code %s' % stop), duration_text(time.time() - started)))
    return {'iterations': iterations, 'stop': stop, 'seconds': round(time.time() - started, 1)}


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
                width_hz = float(job.spectral['width'][:-len('MHz')]) * 1e6
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


def _clean_in_primary_beam_mask(casa, job, arguments, report):
    """The pipeline's fallback when automasking finds nothing in a continuum image with a clear source.

    Sparse uv coverage (few antennas, snapshots) gives high PSF sidelobes, and the sidelobe threshold
    then masks nothing.  Like hif_makeimages, a continuum image whose residual peak is over 10x its
    noise is cleaned again inside the primary beam above 0.3, to a 4 sigma threshold (tlimit 4).
    Cubes are left dirty, with a note, as the pipeline does.
    """
    peak, rms = residual_peak_and_rms(casa, arguments['imagename'] + ('.residual.tt0' if job.nterms else '.residual'))
    if not rms or peak / rms <= 10.0:
        return {}
    report('no automatic mask was found (residual peak %.3g Jy/beam = %.0f x noise): cleaning inside the '
           'primary beam above %.1f to %s, as the pipeline does'
           % (peak, peak / rms, PB_MASK, 'twice the threshold' if arguments.get('nsigma') == 0.0 else '4 sigma'))
    again = dict(arguments, usemask='pb', pbmask=PB_MASK, nsigma=4.0, calcpsf=False, calcres=False, restart=True)
    if arguments.get('nsigma') == 0.0:  # imageparams_alma.py threshold(): iteration 2 cleans to twice the threshold
        again.update(nsigma=0.0, threshold='%.3gJy' % (2.0 * float(arguments['threshold'][:-len('Jy')])))
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
