"""The beams that set the cells: the PSF the pipeline fits for each (field, spw), found once, kept between runs.

The cell of every image comes from the beam of an mfs PSF of the whole spw, as the pipeline's
(hif/heuristics/imageparams_base.py synthesized_beam(); psf_beam_finder).  The pipeline makes each PSF once and
keeps its beam in its context for the later stages (known_beams).  A user re-images the same delivery many
times (another grid, another robust, moments): without KnownBeams every run made the same PSF again, whose cost
grows with the spw's data, not with the cube asked for.  Measured (bench/bench_grid.py --size xlarge: 4 EBs of 43
antennas, a spw of 960 channels, a cube of 200): the PSF took 7.0 s of the tool's 54.4-s first run, whose cube
took 47.5 s by hand.

A beam is kept under a key of all the PSF depends on: the measurement sets' files (ms_tables.settled_ms_state:
name, size, time and inode of every file of the main table and its subtables, so a flag, a weight or a FIELD row
the user changes makes a new key), the fields, spws and data column, robust, uvtaper, uvrange, the CASA version,
and HEURISTIC (raised when the way the beam is found changes).  An MS written in the last seconds is not settled
(a change within the file times' resolution would go unseen): its beams are not kept.  Only found beams are kept,
never a failure (a full disk is not a property of the data).  The file is the tool's (cleanup removes it); it is
replaced whole, so a run killed while writing it leaves the old one.
"""

import hashlib
import json
from pathlib import Path

from ..casa.casa_engine import casa_task, opened_tool
from ..casa.ms_tables import settled_ms_state
from ..core.fileops import remove_tree, write_atomically
from ..core.messages import ReprocessingError
from .heuristics import distinct_pointings, mosaic_pixels, pointing_geometry, primary_beam_radius_arcsec, psf_imaging_cell_arcsec, psf_imaging_pixels, round_beam_arcsec, sanitize_name
from .image_casa import data_column_of, field_selection, optimum_size


def psf_beam_finder(casa, request, *, infos, spw_map, work_dir, known_beams=None):
    """beam_for(field, virtual spw) -> (major, minor) arcsec of the PSF the pipeline fits for the cell.

    pipeline/hif/heuristics/imageparams_base.py synthesized_beam(): imager.advise's cell / 2.5 on an image
    1.5 primary-beam radii wide, an mfs PSF of the whole spw with briggs weighting at the imaging robust and
    uvtaper (makePSF; here tclean with niter=0 and calcres=False, the same PSF), its fitted beam rounded to
    three digits.  Each (field, spw) is computed once and shared by all specmodes, as the pipeline's
    known_synthesized_beams.  None when the spw has no data of the field or the fit failed.
    known_beams: a KnownBeams whose beams an earlier run found for the same data and settings are taken
    instead of a new PSF; beam_for.kept lists the (field, virtual spw) taken so.
    """
    cache = {}
    robust = 0.5 if request.robust is None else request.robust

    def beam_for(field, virtual_id):
        key = (field, virtual_id)
        if key not in cache:
            cache[key] = _psf_beam(casa, request, field, virtual_id, robust=robust, infos=infos, spw_map=spw_map,
                                   work_dir=work_dir, known_beams=known_beams, kept=beam_for.kept)
        return cache[key]
    beam_for.kept = []
    return beam_for


def _psf_beam(casa, request, field, virtual_id, *, robust, infos, spw_map, work_dir, known_beams=None, kept=None):
    chosen = field_selection(infos, field, [virtual_id], spw_map)
    if not chosen:
        return None
    known_key = known_beams and known_beams.key(
        vis=[str(info.path) for info, _i, _s in chosen], casa_version=casa.version, field=field,
        selection=[[list(ids), spws[0].spw_id] for _info, ids, spws in chosen],
        datacolumn=data_column_of([info for info, _i, _s in chosen]), robust=robust,
        uvtaper=list(request.uvtaper or []), uvrange=request.uvrange or '')
    beam = known_beams.get(known_key) if known_beams else None
    if beam is not None:
        if kept is not None:
            kept.append((field, virtual_id))
        return beam
    beam = _new_psf_beam(casa, request, field, virtual_id, chosen, robust=robust, spw_map=spw_map, work_dir=work_dir)
    if known_beams:
        known_beams.put(known_key, beam)
    return beam


def _new_psf_beam(casa, request, field, virtual_id, chosen, *, robust, spw_map, work_dir):
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
                  datacolumn=data_column_of([info for info, _i, _s in chosen]), imagename=name,
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


HEURISTIC = 1  # psf_beam_finder's way: imager.advise, an mfs PSF of the whole spw, its beam to three digits


class KnownBeams(object):
    """The kept beams of a delivery: a JSON file of {key: [major, minor] arcsec}.

    user_ms: {path tclean is given (a shadow): the user's MS it stands in for}, whose files the key reads.
    """

    def __init__(self, path, user_ms=None):
        self.path = path
        self.user_ms = dict((str(k), v) for k, v in (user_ms or {}).items())

    def key(self, *, vis, casa_version, **settings):
        """The key of a PSF of vis (paths tclean is given) with settings (JSON-able); None when an MS is not
        settled or cannot be read (the beam is then made and not kept)."""
        states = []
        for path in vis:
            state = settled_ms_state(self.user_ms.get(str(path), path))
            if state is None:
                return None
            states.append(state)
        text = json.dumps({'heuristic': HEURISTIC, 'casa': casa_version, 'ms': states,
                           'settings': settings}, sort_keys=True)
        return hashlib.sha256(text.encode('utf-8')).hexdigest()

    def _read(self):
        try:
            with open(str(self.path), encoding='utf-8') as handle:
                kept = json.load(handle)
        except (OSError, ValueError):  # none yet, or not ours to trust: made again
            return {}
        return kept if isinstance(kept, dict) else {}

    def get(self, key):
        """(major, minor) arcsec kept under key, or None."""
        if key is None:
            return None
        beam = self._read().get(key)
        if isinstance(beam, list) and len(beam) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in beam):
            return float(beam[0]), float(beam[1])
        return None

    def put(self, key, beam):
        """Keep beam under key; a file that cannot be written (a full disk) only means the next run makes the
        PSF again."""
        if key is None or beam is None:
            return
        kept = self._read()
        kept[key] = [float(beam[0]), float(beam[1])]
        try:
            write_atomically(self.path, json.dumps(kept, indent=1, sort_keys=True) + '\n')
        except ReprocessingError:
            pass
