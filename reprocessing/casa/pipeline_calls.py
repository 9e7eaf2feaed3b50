"""Pipeline task calls, decided without the pipeline: contsub per release, imaging calls (pure)."""

import collections
import json
import math

from ..core.messages import ReprocessingError
from ..core.units import SPEED_OF_LIGHT_KMS


# Which cont.dat grammar each release reads (measured in each tag's contfilehandler.py; contdat/grammar.py
# says what the older ones do with a v3 line).
FIRST_REVISION_READING_V3 = (2024, 0, 0, 96)


def contdat_grammar_read_by(revision, *, fits_with_uvcontfit=False):
    """3 when the pipeline of this revision (e.g. '2023.1.0.124') reads cont.dat v3, else 2 (v1/v2 only).

    An unreadable revision is judged by the flow: only PL2022 has hif_uvcontfit, and reads v2.
    """
    import re
    match = re.match(r'^\D*(\d{4})\.(\d+)\.(\d+)\.(\d+)', str(revision or ''))
    if not match:
        return 2 if fits_with_uvcontfit else 3
    return 3 if tuple(int(part) for part in match.groups()) >= FIRST_REVISION_READING_V3 else 2


# The data type of DATA in a *_targets.ms, for an MS whose HISTORY does not record it.
TARGETS_DATA_TYPE = 'regcal_contline_science'

# calls: [(task name, keyword arguments)] in order; h_save is called after them, even on failure.
# copies_ms: the flow writes into the MS it imports, so the pipeline gets a copy, not a shadow.
# contdat_grammar: the cont.dat version the release reads (2: v1/v2 only, 3: v3 too).
# selfcal_restore: the *.auxproducts.tgz hif_selfcal(restore_only=True) applies to the new line MSes, or None.
PipelineContsub = collections.namedtuple('PipelineContsub',
                                         'release flow calls copies_ms notes contdat_grammar selfcal_restore')

# The data types of a self-calibrated uid*_targets.ms, given to hifa_importdata when hif_selfcal restores: with
# CORRECTED_DATA registered as SELFCAL_CONTLINE_SCIENCE, hif_selfcal(restore_only=True) leaves the MS alone
# (selfcal.py prepare: "Skip applying selfcal solutions to the REGCAL_CONT*_SCIENCE MS(es) due to the presence
# of DataType:SELFCAL_CONT*_SCIENCE", overwrite=False) and applies its tables to the REGCAL_LINE_SCIENCE line
# MSes hif_uvcontsub registered.
SELFCAL_TARGETS_DATA_TYPES = {'data': 'regcal_contline_science', 'corrected': 'selfcal_contline_science'}


def pipeline_release_name(revision):
    """'PL2023' for '2023.1.1.9' (the pipeline's revision string); 'unknown release' otherwise."""
    import re
    match = re.match(r'^\D*(20\d\d)\.', str(revision or ''))
    return 'PL%s' % match.group(1) if match else 'unknown release'


def pipeline_contsub_calls(*, revision, task_parameters, vis, mpi_size, datatypes_recorded, selfcal_resources=None):
    """The pipeline tasks --contsub calls, and their arguments, for the release at hand (pure).

    task_parameters: {task name: [its parameter names], or None when they cannot be read}; a task
    absent from it does not exist in this release.  The flow follows which tasks exist, not the
    version number.  An argument is passed only when the task declares it, and only the ones that
    are needed: every release has its own defaults for the rest.
    selfcal_resources: the path of the delivery's *.auxproducts.tgz with self-calibration tables for every MS of
    vis (all self-calibrated); hif_selfcal(restore_only=True) then applies them to the new line MSes, when this
    release's hif_selfcal has restore_only (2025 on), else (None in selfcal_restore) the caller does it its way.
    """
    needed = ('h_init', 'hifa_importdata', 'hif_uvcontsub', 'h_save')
    missing = [name for name in needed if name not in task_parameters]
    release = pipeline_release_name(revision)
    if missing:
        raise ReprocessingError('the pipeline %s (%s) has no %s — use --contsub_fast'
                                % (revision, release, ', '.join(missing)))

    def accepts(task, parameter):
        parameters = task_parameters.get(task)
        return parameters is not None and parameter in parameters

    notes = []
    importdata = {'vis': list(vis)}
    if accepts('hifa_importdata', 'dbservice'):
        importdata['dbservice'] = False
    restore = None
    if selfcal_resources is not None:
        if not (accepts('hif_selfcal', 'restore_only') and accepts('hif_selfcal', 'restore_resources')):
            notes.append('hif_selfcal of %s has no restore_only: the self-calibration tables in %s are not applied '
                         'by the pipeline' % (release, selfcal_resources))
        elif not accepts('hifa_importdata', 'datacolumns'):
            notes.append('hifa_importdata of %s has no datacolumns: the self-calibration tables in %s are not applied '
                         'by the pipeline' % (release, selfcal_resources))
        else:
            restore = str(selfcal_resources)
    if restore is not None:
        importdata['datacolumns'] = dict(SELFCAL_TARGETS_DATA_TYPES)
    elif not datatypes_recorded and accepts('hifa_importdata', 'datacolumns'):
        importdata['datacolumns'] = {'data': TARGETS_DATA_TYPE}
        notes.append('the MSes do not record their data type, or this release does not read the record: '
                     'importing DATA as %s' % TARGETS_DATA_TYPE)
    uvcontsub = {}
    if mpi_size > 1:
        if accepts('hif_uvcontsub', 'parallel'):
            uvcontsub['parallel'] = True
        else:
            notes.append('hif_uvcontsub of %s has no "parallel" option: it runs on this process only' % release)
    calls = [('h_init', {}), ('hifa_importdata', importdata)]
    fits_first = 'hif_uvcontfit' in task_parameters
    if fits_first:
        calls.append(('hif_uvcontfit', {}))
        flow = 'hif_uvcontfit then hif_uvcontsub (fit tables from cont.dat, then apply them; Cycle 9 style)'
    else:
        flow = 'hif_uvcontsub (CASA uvcontsub with the cont.dat ranges)'
    calls.append(('hif_uvcontsub', uvcontsub))
    if restore is not None:
        calls.append(('hif_selfcal', {'restore_only': True, 'restore_resources': restore}))
        flow += ', then hif_selfcal(restore_only=True) with the delivery\'s self-calibration tables'
    return PipelineContsub(release, flow, calls, fits_first, notes,
                           contdat_grammar_read_by(revision, fits_with_uvcontfit=fits_first), restore)


def pipeline_line_name(ms_name):
    """The name hif_uvcontsub gives the line MS of ms_name (every release)."""
    if '_targets' in ms_name:
        return ms_name.replace('_targets', '_targets_line')
    return ms_name[:-len('.ms')] + '_line.ms' if ms_name.endswith('.ms') else ms_name + '_line.ms'


# --- Pipeline engine: the task calls (pure), then running them ------------------

PipelineCall = collections.namedtuple('PipelineCall', 'task arguments optional')
PipelineCall.__doc__ = """One pipeline task call.  `optional` names arguments that may be left out
when the release's task does not take them (parallel, dbservice); any other argument the release
does not take stops the run before the pipeline starts."""

REGCAL_CONTLINE = {'data': 'regcal_contline'}
SELFCAL_CONTLINE = {'data': 'regcal_contline', 'corrected': 'selfcal_contline'}
REGCAL_LINE = {'data': 'regcal_line'}
SELFCAL_LINE = {'data': 'regcal_line', 'corrected': 'selfcal_line'}


def pipeline_task_calls(request, *, targets, targets_line=(), selfcal=(), parallel=False, cube_calls=None):
    """The pipeline task calls that make the requested images, in order.

    targets/targets_line: paths of the MSes to import; selfcal: those of them
    with a CORRECTED column (Cycle 10+ self-calibrated data).  Every imaging
    parameter the user set reaches hif_makeimlist (robust=0.0 included); the
    ones not set are left out, so the pipeline's heuristics decide them.
    cube_calls: the cubes on the user's grid (group_cube_grids), one hif_makeimlist
    and hif_makeimages each; None: one call makes every cube.
    """
    def datacolumns(ms, regcal, selfcal_columns):
        return dict(selfcal_columns if str(ms) in {str(s) for s in selfcal} else regcal)

    calls = [PipelineCall('h_init', {}, ())]
    groups = [(list(targets), REGCAL_CONTLINE, SELFCAL_CONTLINE, ('dbservice', 'datacolumns')),
              (list(targets_line), REGCAL_LINE, SELFCAL_LINE, ('dbservice',))]
    for group, regcal, selfcal_columns, optional in groups:
        # one import per set of data columns: hifa_importdata applies one datacolumns to all its vis
        by_columns = collections.OrderedDict()
        for ms in group:
            key = json.dumps(datacolumns(ms, regcal, selfcal_columns), sort_keys=True)
            by_columns.setdefault(key, []).append(str(ms))
        for key, vis in by_columns.items():
            calls.append(PipelineCall('hifa_importdata', {'vis': vis, 'dbservice': False,
                                                          'datacolumns': json.loads(key)}, optional))
    parallel_argument = {'parallel': 'automatic'} if parallel else {}
    calls.append(PipelineCall('hifa_imageprecheck', dict(parallel_argument), ('parallel',)))
    if request.mitigation:
        limits = {name: getattr(request, name) for name in ('maxproductsize', 'maxcubesize', 'maxcubelimit')
                  if getattr(request, name) is not None}
        limits.update(parallel_argument)
        calls.append(PipelineCall('hif_checkproductsize', limits, ('parallel',)))
    for specmode in request.specmodes:
        for grid in (cube_calls if specmode == 'cube' and cube_calls else [{}]):
            arguments = {'specmode': specmode}
            arguments.update(makeimlist_arguments(request, specmode))
            arguments.update(grid)
            if 'width' in grid:
                # the grid's width is the binning, and the pipeline's tclean refuses a width beside a binning: '25:-1'
                # is "no binning" for that spw, also over the nbins a size mitigation put in the context
                arguments['nbins'] = ','.join('%s:-1' % spw for spw in grid['spw'].split(','))
            arguments.update(parallel_argument)
            calls.append(PipelineCall('hif_makeimlist', arguments, ('parallel',)))
            calls.append(PipelineCall('hif_makeimages', dict(parallel_argument), ('parallel',)))
    return calls


def makeimlist_arguments(request, specmode):
    """hif_makeimlist's name for every parameter the user set (None: left to the pipeline)."""
    mapping = (('robust', 'robust'), ('uvtaper', 'uvtaper'), ('uvrange', 'uvrange'), ('field', 'field'),
               ('spw', 'spw'), ('phasecenter', 'phasecenter'), ('imsize', 'hm_imsize'), ('cell', 'hm_cell'))
    arguments = {}
    for ours, theirs in mapping:
        value = getattr(request, ours)
        if value is not None:
            arguments[theirs] = value
    if request.nbins is not None and specmode == 'cube':
        # repBW's binning is the representative bandwidth: the pipeline computes it
        arguments['nbins'] = request.nbins
    return arguments


_MISSING_ARGUMENT_HINTS = {
    'datacolumns': 'it cannot tell continuum-subtracted line MSes from the others: use --engine casa, or '
                   '--specmodes mfs,cont',
}


def fit_call_to_release(call, accepted):
    """call.arguments the release takes; optional ones it lacks are dropped, others stop the run."""
    if accepted is None:
        return dict(call.arguments)
    arguments = {}
    for name, value in call.arguments.items():
        if name in accepted:
            arguments[name] = value
        elif name not in call.optional:
            raise ReprocessingError('this pipeline release\'s %s does not take "%s" — %s' % (
                call.task, name, _MISSING_ARGUMENT_HINTS.get(name, 'leave that option out, or use --engine casa')))
    return arguments


# --- The cube grid (--start/--width/--nchan/--restfreq/--outframe/--veltype) through hif_makeimlist ---------------
#
# Read in each release's source (hif/cli/hif_makeimlist.py, hif/tasks/makeimlist/makeimlist.py and cleantarget.py,
# hif/tasks/tclean/tclean.py and cleanbase.py) of 2024.1.0.8, 2025.1.0.35 and the development head (fbf19139c1):
# * hif_makeimlist takes start, width, nchan, nbins and outframe, but no restfreq and no veltype.  start, width and
#   nchan are one value for every spw and field of the call (nbins alone is per spw); they reach tclean unchanged
#   through the clean target.  outframe is stored and never used: the clean target has no outframe, and every
#   cube is LSRK (an ephemeris target's in its rest frame, outframe '').
# * A velocity start or width is turned into a frequency with the clean target's restfreq, which hif_makeimlist
#   leaves None (the ALMA heuristics give none): the task then fails.  So the tool gives frequencies: radio
#   velocities are linear in frequency, so a velocity grid is exactly a frequency grid (descending in frequency).
# * A width finer than the native channel (the pipeline's, in LSRK over every EB) stops the cube: 2024/2025 at any
#   amount finer, the head beyond 5 % (within it, the native width is used).  A width and a binning (nbins, also
#   set by the size mitigation, hif_checkproductsize) together stop it too ("width and nbin are mutually
#   exclusive"); nbins 'SPW:-1' (makeimlist: int(value), -1 = none) gives that spw no binning.
GRID_ARGUMENTS = ('start', 'width', 'nchan')
PipelineGridSupport = collections.namedtuple('PipelineGridSupport', 'release makeimlist_parameters outframe_used')
PipelineGridSupport.__doc__ = """What the installed pipeline's hif_makeimlist takes: its release name (PL2025),
its parameter names (None when unreadable) and whether its clean targets carry an outframe (no release does yet)."""


def grid_options_given(request):
    return [name for name in ('start', 'width', 'nchan', 'restfreq', 'outframe', 'veltype')
            if getattr(request, name, None) is not None]


def pipeline_grid_refusal(request, support):
    """One line saying which grid option this pipeline release cannot take and what to do, or None (pure)."""
    given = grid_options_given(request)
    if not given or 'cube' not in request.specmodes:
        return None
    release = support.release
    instead = 'or use the CASA engine: add --engine casa (or run in plain Python without the pipeline)'
    accepted = support.makeimlist_parameters
    if accepted is not None:
        missing = [name for name in GRID_ARGUMENTS if name not in accepted]
        if missing and any(name in given for name in ('start', 'width', 'nchan', 'restfreq', 'veltype')):
            return ('the pipeline %s\'s hif_makeimlist takes no %s, so it cannot make a cube on your grid — leave '
                    '%s out, %s' % (release, '/'.join(missing), ', '.join('--' + n for n in given), instead))
    frames = set(item.split(':', 1)[1] for item in (request.outframe or '').split(',') if item)
    other = sorted(frames - {'LSRK', 'SOURCE'})
    if other and not support.outframe_used:
        return ('--outframe %s: the pipeline %s makes every cube in LSRK (an ephemeris target\'s in its rest frame); '
                'its hif_makeimlist takes an outframe but does not use it — leave --outframe out, %s'
                % ('/'.join(other), release, instead))
    veltypes = set(item.split(':', 1)[1] for item in (request.veltype or '').split(',') if item)
    if 'optical' in veltypes:
        return ('--veltype optical: the pipeline %s makes cubes in radio velocity only (its channels are equally '
                'spaced in frequency) — leave --veltype out, %s' % (release, instead))
    return None


def makeimlist_grid(spectral, *, native_hz=None):
    """(hif_makeimlist's start, width, nchan as frequencies, the rest frequency Hz) of a CASA engine cube job's
    'spectral' (spectral_grid.cube_spectral: start/width as km/s or GHz/MHz texts, radio velocities).

    A velocity grid becomes the same channels in frequency, first channel first (a negative width).  A width
    within the tolerance below native_hz (the spw's channel) becomes native_hz, which every release accepts.
    """
    import re
    restfreq = float(re.match(r'^([0-9.eE+-]+)Hz$', spectral['restfreq'][0]).group(1))

    def hertz(text):
        number, unit = re.match(r'^([-+0-9.eE]+)([A-Za-z/]+)$', text).groups()
        number = float(number)
        scale = {'hz': 1.0, 'khz': 1e3, 'mhz': 1e6, 'ghz': 1e9}.get(unit.lower())
        if scale is not None:
            return number * scale, False
        return number * (1e-3 if unit.lower() == 'm/s' else 1.0), True  # km/s

    start, start_is_velocity = hertz(spectral['start'])
    width, width_is_velocity = hertz(spectral['width'])
    if start_is_velocity:
        start = restfreq * (1.0 - start / SPEED_OF_LIGHT_KMS)
    if width_is_velocity:
        width = -width / SPEED_OF_LIGHT_KMS * restfreq
    if native_hz is not None and abs(width) < native_hz:
        width = native_hz * (1.0 if width > 0 else -1.0)
    # the pipeline formats the width with 0.1 Hz steps ('%.7fMHz'): rounded away from zero, never finer than asked
    width_text = '%.7fMHz' % (math.copysign(math.ceil(abs(width) * 10.0) / 10.0, width) / 1e6)
    return {'start': '%.10fGHz' % (start / 1e9), 'width': width_text, 'nchan': int(spectral['nchan'])}, restfreq


def group_cube_grids(grids, all_fields):
    """hif_makeimlist calls of specmode cube: [{'spw': ..., 'field': ... (absent: the request's), start, width,
    nchan (absent: the pipeline's grid)}] from grids = [(field, spw id, {start, width, nchan} or None)].

    start/width/nchan of one call apply to all its spws and fields, so one call per spw (per field where the
    fields' grids differ); the spws left on the pipeline's grid share one call."""
    by_spw = collections.OrderedDict()
    for field, spw, grid in grids:
        by_spw.setdefault(spw, []).append((field, grid))
    calls, plain = [], []
    for spw, entries in by_spw.items():
        distinct = []
        for _field, grid in entries:
            if grid not in distinct:
                distinct.append(grid)
        if distinct == [None]:
            plain.append(str(spw))
            continue
        for grid in distinct:
            fields = [field for field, g in entries if g == grid]
            call = {'spw': str(spw)}
            if len(distinct) > 1 or sorted(fields) != sorted(all_fields):
                call['field'] = ','.join(fields)
            call.update(grid or {})
            calls.append(call)
    if plain:
        calls.insert(0, {'spw': ','.join(plain)})
    return calls
