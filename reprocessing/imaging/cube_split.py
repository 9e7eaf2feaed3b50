"""A cube made in channel chunks (--split-cube; engine B of README "One cube over several workers"), resumable.

The chunks (cube_chunks.chunk_job: the whole cube's grid restricted by start/nchan) are imaged by the run's
workers in two rounds: every chunk's dirty image, then, with the one threshold of the whole cube (its
sensitivity and the dirty peak over every chunk), every chunk cleaned, brightest first.  Each chunk, once its
dirty image, once its automasking pass found nothing (its record only: the images stay the dirty ones) before its
fallback cleaning, once cleaned when its cube-health pass has channels to redo (before it redoes them), and once
finished, is kept with its record (the whole cube's record: inputs, parameters, CASA version; its channels; its
dirty peak; the threshold it was cleaned to) in working_reprocess/imaging-chunks/<cube>/<chunk>/, a folder named
only when complete (image_resume.save_finished); so is the cube's channel grid (<cube>.grid: cube_start_hz).
A run stopped on the way (SIGKILL, a scheduler's SIGTERM) leaves them; the same command again reuses every
chunk whose record equals what it would make now (a cleaned chunk only when the threshold is the same; one kept
before its fallback or its health pass makes only what was left) and the grid, and makes the others; then the
chunks are joined plane by plane into the cube (cube_chunks.join_chunks, each image under a partial name until
complete): the images its products come from, every image with --all-products.
"""

import time
from pathlib import Path

from ..core.fileops import remove_tree
from ..core.messages import duration_text
from ..core.requests import request_as_json
from ..run.provenance import image_differences, read_record
from .cube_chunks import (BEFORE_HEALTH, CUBE_SUFFIXES, NOTHING_AUTOMASKED, PRODUCT_SUFFIXES, chunk_job, cube_start_hz,
                          join_chunks, threshold_text, whole_cube_threshold)
from .image_resume import GRID_STAGE, RECORD_NAME, kept_folders, save_finished
from .tclean_run import cube_products


def make_split_cube(casa, request, job, ranges, *, work_dir, workers, store_dir, report, finished=None, record=None):
    """Make job's cube from the chunks ranges ([(first channel, count)]) on workers (EbWorkers), into
    work_dir/<job.name>.* as one tclean would name them; finished, record: as run_image_job (the whole cube is kept
    there once made).  Returns run_image_job's result."""
    started = time.time()
    work_dir = Path(work_dir)
    chunk_dir = work_dir / 'chunks'
    chunk_dir.mkdir(parents=True, exist_ok=True)
    store = Path(store_dir) / job.name
    start_hz = grid_start_hz(casa, job, request, record, store=store, chunk_dir=chunk_dir, report=report)
    chunks = [chunk_job(job, index, first, count, start_hz=start_hz) for index, (first, count) in enumerate(ranges)]
    records = dict((chunk.name, {'cube': record or {}, 'first': first, 'count': count,
                                 'start': chunk.spectral['start']})
                   for chunk, (first, count) in zip(chunks, ranges))
    found = resume_chunks(store, dict(records, **{job.name + GRID_PROBE: grid_record(record)}))
    found.pop(job.name + GRID_PROBE, None)
    request_json = request_as_json(request)

    def task(function, chunk, **extra):
        return {'function': function, 'eb': '%s %s' % ('.'.join(job.name.split('.')[-4:-2]), chunk.name.split('.')[-1]),
                'arguments': dict(job=chunk._asdict(), request=request_json, imagename=str(chunk_dir / chunk.name),
                                  store=str(store), record=records[chunk.name], **extra)}

    dirty = [chunk for chunk in chunks if chunk.name not in found]
    cleaned_before = [name for name, kept in found.items() if kept.get('stage') in ('cleaned', BEFORE_HEALTH)]
    if found:
        health = sum(1 for kept in found.values() if kept.get('stage') == BEFORE_HEALTH)
        nothing = sum(1 for kept in found.values() if kept.get('stage') == NOTHING_AUTOMASKED)
        report('%d of %d chunks kept from a run that was stopped, with the same inputs and parameters (%d cleaned, %s'
               '%d dirty images%s): not made again' % (
                   len(found), len(chunks), len(cleaned_before),
                   '%d of them before their cube-health pass, ' % health if health else '',
                   len(found) - len(cleaned_before),
                   ', %d of them after an automasking pass that found nothing' % nothing if nothing else ''))
    peaks = dict((name, kept.get('peak')) for name, kept in found.items())
    progress = ChunkProgress(report, len(chunks), len(dirty), done=len(cleaned_before))
    if dirty:
        answers = workers.run([task('cube_chunk_dirty', chunk) for chunk in dirty], casa=casa, unit='chunks',
                              progress=progress.dirty_done)
        peaks.update((chunk.name, peak) for chunk, peak in zip(dirty, answers))
    for name in records:  # kept with the cleaned chunk too: a resumed run's threshold is the same
        records[name]['peak'] = peaks.get(name)
    threshold, sensitivity, peak = whole_cube_threshold(casa, job, request, [peaks[c.name] for c in chunks])
    if threshold is not None:
        report('theoretical sensitivity %.3g mJy/beam, dirty peak %.3g mJy/beam over the %d chunks (dynamic range %.0f): '
               'every chunk cleaned to %.3g mJy/beam, as the pipeline would the whole cube' % (
                   sensitivity * 1e3, peak * 1e3, len(chunks), peak / sensitivity, threshold * 1e3))
    wanted = threshold_text(threshold)
    same = dict((name, kept) for name, kept in found.items() if kept.get('threshold') == wanted)
    done = [c for c in chunks if same.get(c.name, {}).get('stage') == 'cleaned']
    health_left = [c for c in chunks if same.get(c.name, {}).get('stage') == BEFORE_HEALTH]
    # (one kept after its automasking pass, but for another threshold, is cleaned from its dirty images, kept as made)
    fallback_left = [c for c in chunks if same.get(c.name, {}).get('stage') == NOTHING_AUTOMASKED]
    if len(done) + len(health_left) < len(cleaned_before):
        report('%d chunks kept cleaned to another threshold: cleaned again'
               % (len(cleaned_before) - len(done) - len(health_left)))
    # the brightest first (the line's chunks: all of cube health's work, 32 of the 56 s CPU of the cleaning round
    # of 4 chunks on bench_split_run's cube, bench/profile_split.py): the others fill the workers after them
    to_clean = sorted((chunk for chunk in chunks if chunk not in done), key=lambda c: -(peaks.get(c.name) or 0.0))
    progress.cleaning(len(done))
    results = dict((c.name, found[c.name]) for c in done)
    if to_clean:
        answers = workers.run([task('cube_chunk_clean', chunk, threshold=threshold,
                                    cleaned=same[chunk.name] if chunk in health_left else None,
                                    nothing_automasked=same[chunk.name]['residual'] if chunk in fallback_left else None)
                               for chunk in to_clean], casa=casa, unit='chunks', progress=progress.clean_done)
        results.update((chunk.name, answer) for chunk, answer in zip(to_clean, answers))
    joined = time.time()
    join_chunks(casa, [str(store / c.name / c.name) for c in chunks], str(work_dir / job.name),
                suffixes=CUBE_SUFFIXES if request.all_products else PRODUCT_SUFFIXES)
    report('joined the %d chunks into one cube in %s' % (len(chunks), duration_text(time.time() - joined)))
    if request.beam or request.moments:
        cube_products(casa, report, imagename=str(work_dir / job.name), beam=request.beam, moments=request.moments)
    seconds = round(time.time() - started, 1)
    redone = [[first + channel, why] for c, (first, _count) in zip(chunks, ranges)
              for channel, why in results[c.name].get('redone_channels') or []]
    if finished:  # the redone channels stay with the image: a resumed run reports them (image_resume.finished_redone)
        save_finished(work_dir, job.name, finished, dict(record or {}, seconds=seconds, chunks=len(chunks),
                                                         redone_channels=redone))
    remove_tree(store)
    remove_tree(chunk_dir)
    stops = sorted(set(str(results[c.name].get('stop')) for c in chunks))
    return {'iterations': sum(int(results[c.name].get('iterations') or 0) for c in chunks),
            'stop': ','.join(stops), 'seconds': seconds, 'redone_channels': redone, 'chunks': len(chunks)}


def resume_chunks(store, records):
    """{chunk name: its record} of the chunks a stopped run kept in store whose record equals this run's (the
    whole cube's inputs and parameters, the chunk's channels; or the cube's grid, grid_record); every other
    folder there is removed."""
    return kept_folders(store, records, same_record)[0]


def same_record(recorded, expected):
    """A kept chunk's (or grid's) record is this run's: every key expected, the whole cube's record compared
    as an image's (image_differences)."""
    return (all(recorded.get(key) == value for key, value in expected.items() if key != 'cube')
            and not (expected['cube'] and image_differences(recorded.get('cube') or {}, expected['cube'])))


GRID_PROBE = '.grid'  # the folder in a cube's store keeping its first channel's frequency (cube_start_hz)


def grid_record(record):
    return {'cube': record or {}, 'stage': GRID_STAGE}


def grid_start_hz(casa, job, request, record, *, store, chunk_dir, report):
    """cube_start_hz, kept in store with the whole cube's record (its inputs, with their state, and parameters):
    a resumed run with the same record takes it from there instead of probing again (a tclean: 0.6 s CPU, 1.2 s
    wall on bench_split_run's cube, more with more data)."""
    name = job.name + GRID_PROBE
    recorded = read_record(store / name / RECORD_NAME)[0] if (store / name).is_dir() else None
    if recorded and recorded.get('start_hz') is not None and same_record(recorded, grid_record(record)):
        report('the channel grid of a run that was stopped, with the same inputs and parameters: not probed again')
        return float(recorded['start_hz'])
    start_hz = cube_start_hz(casa, job, request, chunk_dir)
    (chunk_dir / (name + '.start')).write_text('%r\n' % start_hz)
    save_finished(chunk_dir, name, store, dict(grid_record(record), start_hz=start_hz))
    return start_hz


class ChunkProgress(object):
    """'chunk k of N done, about T left' for one split cube over its two rounds.  A chunk counts as done once
    cleaned.  While the dirty images are made, only their own time left is said: the cleaning took from as long
    as the dirty images (16 chunks of 32 channels) to ten times as long (2 chunks of 31, automasking and cube
    health's channels cleaned again), too varied to count in advance."""

    def __init__(self, report, total, dirty, done=0):
        self.report, self.total, self.dirty, self.done = report, total, dirty, done

    def dirty_done(self, count, tasks, started, queued=None):
        left = (time.time() - started) / max(1, count) * (tasks - count)
        self.report('dirty image of chunk %d of %d done, %s' % (
            count, tasks, 'about %s left for the dirty images' % duration_text(left) if count < tasks
            else 'the chunks are cleaned next'))

    def cleaning(self, done):
        self.done = done

    def clean_done(self, count, tasks, started, queued=None):
        left = (time.time() - started) / max(1, count) * (tasks - count)
        self.report('chunk %d of %d done, %s' % (self.done + count, self.total, 'about %s left' % duration_text(left)
                                                  if count < tasks else 'all cleaned'))
