"""Pipeline task calls, decided without the pipeline: contsub per release, imaging calls (pure)."""

import collections
import json

from ..core.messages import ReprocessingError


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
PipelineContsub = collections.namedtuple('PipelineContsub', 'release flow calls copies_ms notes contdat_grammar')


def pipeline_release_name(revision):
    """'PL2023' for '2023.1.1.9' (the pipeline's revision string); 'unknown release' otherwise."""
    import re
    match = re.match(r'^\D*(20\d\d)\.', str(revision or ''))
    return 'PL%s' % match.group(1) if match else 'unknown release'


def pipeline_contsub_calls(*, revision, task_parameters, vis, mpi_size, datatypes_recorded):
    """The pipeline tasks --contsub calls, and their arguments, for the release at hand (pure).

    task_parameters: {task name: [its parameter names], or None when they cannot be read}; a task
    absent from it does not exist in this release.  The flow follows which tasks exist, not the
    version number.  An argument is passed only when the task declares it, and only the ones that
    are needed: every release has its own defaults for the rest.
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
    if not datatypes_recorded and accepts('hifa_importdata', 'datacolumns'):
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
    return PipelineContsub(release, flow, calls, fits_first, notes,
                           contdat_grammar_read_by(revision, fits_with_uvcontfit=fits_first))


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


def pipeline_task_calls(request, *, targets, targets_line=(), selfcal=(), parallel=False):
    """The pipeline task calls that make the requested images, in order.

    targets/targets_line: paths of the MSes to import; selfcal: those of them
    with a CORRECTED column (Cycle 10+ self-calibrated data).  Every imaging
    parameter the user set reaches hif_makeimlist (robust=0.0 included); the
    ones not set are left out, so the pipeline's heuristics decide them.
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
        arguments = {'specmode': specmode}
        arguments.update(makeimlist_arguments(request, specmode))
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
