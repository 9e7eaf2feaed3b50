"""--update of images: each image's provenance record, and which requested images are kept or remade (and why).

An image (all its files in the images folder) is kept only when its record says it was made from the
same measurement sets (for a line MS: the same source MS and the same continuum fit of the image's spw),
the same data column, the same engine and version, and the same tclean parameters this run would use,
and every file it names is there.  Anything else — no record, a record that cannot be read, a file
missing — makes it stale, and it is remade.
"""

import collections
from pathlib import Path

from ..casa.casa_engine import casatools_version
from ..core.fileops import directory_bytes, human_bytes, move_tree
from ..core.messages import ReprocessingError, say
from ..run.provenance import image_differences, image_record_path, line_ms_record_path, ms_identity, read_record, same_ms, write_record
from .image_casa import tclean_arguments
from .products import ImageProduct

ImageDecision = collections.namedtuple('ImageDecision', 'job stem record_path expected recorded reasons')


def image_stem(job, ous):
    return ImageProduct.from_working_name(Path(job.name + '.image')).archive_stem(ous)


def engine_version(casa):
    return casatools_version(casa.casatools)


def measurement_set_input(ms, infos_by_name, spw_selection, *, delivery_ms_dir, line_records=None):
    """What an image records of one of its measurement sets.

    A line MS with a valid record of its own (unchanged since it was written) is described by what it
    was made from and the continuum fit of the image's spws only, so that refitting another spw does
    not make this image stale; any other MS by its identity.
    """
    name = Path(ms).name
    line_records = line_records or {}
    original = Path(delivery_ms_dir) / name
    identity = ms_identity(original)
    if name in line_records:  # --dry-run: the record this run's continuum subtraction would write
        record = dict(line_records[name], identity=identity)
    else:
        record, _why = read_record(line_ms_record_path(original))
    if record is None or not same_ms(record.get('identity'), identity) or record.get('product') != 'line MS':
        return {'name': name, 'identity': identity}
    info = infos_by_name.get(name)
    continuum = {}
    for part in str(spw_selection).split(','):
        spw_id = int(part.split(':')[0])
        spw = info.spws.get(spw_id) if info is not None else None
        if spw is None:
            return {'name': name, 'identity': identity}
        continuum[spw.name] = (record.get('continuum') or {}).get(spw.name)
    if len(continuum) == 1:
        continuum = next(iter(continuum.values()))
    return {'name': name, 'made_from': record.get('source'), 'method': record.get('method'),
            'tables': record.get('tables') or [], 'continuum': continuum}


def expected_record(casa, job, request, *, infos, delivery_ms_dir, ous, line_records=None):
    """The record this run would write for a job's image (without its duration and files)."""
    infos_by_name = dict((info.name, info) for info in infos)
    parameters = tclean_arguments(job, request, imagename=job.name, parallel=False)
    parameters.pop('parallel', None)
    parameters['vis'] = [Path(vis).name for vis in parameters['vis']]
    inputs = [measurement_set_input(vis, infos_by_name, selection, delivery_ms_dir=delivery_ms_dir,
                                    line_records=line_records)
              for vis, selection in zip(job.vis, job.spw_selection)]
    return {'product': 'image', 'image': image_stem(job, ous), 'specmode': job.specmode, 'field': job.field,
            'spws': list(job.spw_ids), 'engine': 'casa', 'engine_version': engine_version(casa),
            'datacolumn': job.datacolumn, 'inputs': inputs, 'parameters': _plain(parameters)}


def _plain(value):
    """JSON's view of a value (tuples as lists), so that a record read back compares equal."""
    import json
    return json.loads(json.dumps(value))


# Decided from a PSF (a tclean call) when the images are made; a plan runs nothing and estimates them
# from the uv coverage (0.30" against 0.31" measured), so --dry-run --update leaves them out.
PSF_DECIDED_PARAMETERS = ('cell', 'imsize')


def decide_images(casa, jobs, request, *, images_dir, infos, delivery_ms_dir, ous, line_records=None,
                  estimated_geometry=False):
    """[ImageDecision] for every job: reasons [] means the image in images_dir is kept.

    estimated_geometry: the jobs' cell and image size are the plan's estimate (--dry-run), so they
    are not compared; the run compares them once the PSF has decided them.
    """
    decisions = []
    for job in jobs:
        expected = expected_record(casa, job, request, infos=infos, delivery_ms_dir=delivery_ms_dir, ous=ous,
                                   line_records=line_records)
        path = image_record_path(images_dir, expected['image'])
        recorded, why = read_record(path)
        if recorded is None:
            reasons = [why if path.exists() else 'not in %s yet (no record of it there)' % Path(images_dir).name]
        else:
            compared = expected
            if estimated_geometry and isinstance(recorded.get('parameters'), dict):
                compared = dict(expected, parameters=dict(expected['parameters']))
                for name in PSF_DECIDED_PARAMETERS:
                    compared['parameters'].pop(name, None)
                    if name in recorded['parameters']:
                        compared['parameters'][name] = recorded['parameters'][name]
            reasons = image_differences(recorded, compared)
            missing = [name for name in recorded.get('files') or [] if not (Path(images_dir) / name).exists()]
            if missing:
                reasons.append('%d of its files are missing (%s)' % (len(missing), ', '.join(missing[:2])))
            if not recorded.get('files'):
                reasons.append('its record lists no files')
        decisions.append(ImageDecision(job, expected['image'], path, expected, recorded, reasons))
    return decisions


def say_decisions(decisions, *, dry_run=False):
    """One line per image: kept, or remade and why; with the time the remade ones took last time."""
    kept = [d for d in decisions if not d.reasons]
    remade = [d for d in decisions if d.reasons]
    say('  --update: %d image%s kept, %d to %s' % (len(kept), '' if len(kept) == 1 else 's', len(remade),
                                                    'remake' if dry_run else 'make'))
    for decision in kept:
        say('    kept    %s: its inputs and parameters are unchanged%s' % (
            decision.stem, ' (cell and image size are checked when the run has made the PSF)' if dry_run else ''))
    for decision in remade:
        seconds = (decision.recorded or {}).get('seconds')
        say('    remake  %s: %s%s' % (decision.stem, '; '.join(decision.reasons),
                                      ' (took %.0f s last time)' % seconds if isinstance(seconds, (int, float))
                                      else ''))
    expected = [(d.recorded or {}).get('seconds') for d in remade]
    known = [s for s in expected if isinstance(s, (int, float))]
    if remade:
        say('    expected imaging time: %s' % (
            'about %.0f s (from the durations recorded by earlier runs%s)' % (
                sum(known), '' if len(known) == len(remade) else
                '; %d image%s without one not counted' % (len(remade) - len(known),
                                                          '' if len(remade) - len(known) == 1 else 's'))
            if known else 'unknown (no earlier durations recorded)'))


def update_summary(decisions):
    """The step result's view of the decisions: {image: 'kept' or 'remade: why'} (for the report)."""
    return collections.OrderedDict(
        (d.stem, 'kept: unchanged' if not d.reasons else ('remade: ' if d.record_path.exists() or d.recorded
                                                          else 'made: ') + '; '.join(d.reasons)) for d in decisions)


def retire_stale_images(state, decisions, *, images_dir, expected_names):
    """Move the files of stale images that this tool made (they have a record) out of the way, into a
    temporary folder in the images folder, before their new versions are published.

    The move is journalled as an image set (RunState.begin_image_set): until every new image and its
    record is in place (discard_retired), a run that fails, is stopped or is killed gets the old images
    back, as line MSes are, and loses the new files it had put there; never the old ones.
    expected_names: {stem: [names the new products take]}.  A name this run will write that is taken
    by a file without a record is the user's: an error, nothing is moved.
    Returns the temporary folder (None when nothing was moved).
    """
    images_dir = Path(images_dir)
    moves = []
    for decision in decisions:
        if not decision.reasons:
            continue
        names = set(expected_names.get(decision.stem, []))
        ours = decision.record_path.exists()
        if decision.recorded is not None:
            names.update(decision.recorded.get('files') or [])
        taken = sorted(name for name in names if (images_dir / name).exists() or (images_dir / name).is_symlink())
        if taken and not ours:
            raise ReprocessingError('%s holds %s, which no record says this tool made — move it away, or choose '
                                    'another --image DIR' % (images_dir, ', '.join(taken[:3])))
        moves.extend(taken)
        if ours:
            moves.append(decision.record_path.name)
    aside = state.partial_name(images_dir / 'stale-images') if moves else None
    state.begin_image_set(images_dir, aside, moves)
    if aside is None:
        return None
    aside.mkdir()
    for name in moves:
        move_tree(images_dir / name, aside / name)
    return aside


def discard_retired(state, aside):
    """The new images and their records are in place: the old versions go."""
    state.image_set_done()


def write_image_records(decisions, table, *, images_dir, seconds_by_job, placed, ous, state=None):
    """After publishing: a record beside each image made, with its files, duration and table row."""
    rows = dict((row['image'], row) for row in table)
    files = collections.defaultdict(list)
    for product, casa_path, fits_path in placed:
        for path in (casa_path, fits_path):
            if path is not None:
                files[product.archive_stem(ous)].append(Path(path).name)
    for decision in decisions:
        if not decision.reasons:
            continue
        if state is not None:
            state.image_set_records([decision.record_path.name])
        record = dict(decision.expected, seconds=seconds_by_job.get(decision.job.name),
                      files=sorted(files.get(decision.stem, [])), table_row=rows.get(decision.stem))
        write_record(image_record_path(images_dir, decision.stem), record)


def kept_rows(decisions):
    """The image-table rows of the kept images, as their records hold them (computed when they were made)."""
    rows = []
    for decision in decisions:
        if not decision.reasons and isinstance(decision.recorded.get('table_row'), dict):
            row = dict(decision.recorded['table_row'])
            if isinstance(row.get('beam_arcsec'), list):
                row['beam_arcsec'] = tuple(row['beam_arcsec'])  # as describe_image gives it (JSON made it a list)
            if row.get('thumbnail') and not Path(row['thumbnail']).is_file():
                row.pop('thumbnail')
            rows.append(row)
    return rows


def describe_kept(decisions, images_dir):
    kept = [d for d in decisions if not d.reasons]
    total = 0
    for decision in kept:
        for name in decision.recorded.get('files') or []:
            path = Path(images_dir) / name
            if path.exists():
                total += directory_bytes(path)
    return '%d image%s kept (%s)' % (len(kept), '' if len(kept) == 1 else 's', human_bytes(total))


def check_update_names(jobs, images_dir, *, ous, expected_names):
    """Before the first long step: a name an --update run would write that is taken by a file no record
    claims is the user's — stop now, rather than after the continuum subtraction."""
    images_dir = Path(images_dir)
    for job in jobs:
        stem = image_stem(job, ous)
        if image_record_path(images_dir, stem).exists():
            continue
        taken = sorted(name for name in expected_names(job) if (images_dir / name).exists())
        if taken:
            raise ReprocessingError('%s holds %s, which no record says this tool made — move it away, or choose '
                                    'another --image DIR' % (images_dir, ', '.join(taken[:3])))
