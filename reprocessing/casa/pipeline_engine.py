"""The ALMA pipeline: importing it, its tasks and their signatures, the one runner of task calls."""

import collections
import contextlib
import os
import shutil
import sys
from pathlib import Path

from ..core.fileops import make_user_writable, remove_tree
from ..core.layout import SCRIPT_NAME, SHADOW_MARKER, STAGED_COPY_MARKER, WORK_DIR_NAME
from ..core.messages import ReprocessingError, one_line, say, warn
from ..run.staging import find_user_measurement_sets, make_shadow
from .casa_engine import is_monolithic_casa, load_casa, opened_table
from .mpi import change_directory
from .pipeline_calls import PipelineGridSupport, fit_call_to_release, pipeline_line_name, pipeline_release_name


# -- --contsub: the ALMA pipeline, the way each release needs it -------------------------------------
#
# Facts from the pipeline's source (hif/tasks/uvcontsub, h/tasks/importdata, h/cli):
# * PL2022 (Cycle 9, CASA 6.4): hif_uvcontfit writes uvcont tables from cont.dat in the working
#   directory; hif_uvcontsub applies them into CORRECTED of the MS (applycal, FLAG too), splits it
#   into *_targets_line.ms and removes the column — it writes into the MS it is given.
# * PL2023+: no hif_uvcontfit; hif_uvcontsub runs CASA uvcontsub (read-only on its input) with
#   fitspec from cont.dat in the working directory into *_targets_line.ms, replacing one that is there.
#   `parallel` appears in PL2024; `pipelinemode` is dropped with a warning from PL2023;
#   `dryrun`/`acceptresults` are rejected (TypeError) from PL2024.
# * hifa_importdata copies an MS into the working directory unless it is already there (or
#   nocopy=True); it writes HISTORY (data types), FIELD and SOURCE (J2000 -> ICRS) of the MS it imports.

PIPELINE_MISSING = ('the ALMA pipeline is not available in this Python — use --contsub_fast, or run with '
                    'casa --pipeline -c %s ...' % SCRIPT_NAME)
PIPELINE_TASKS = ('h_init', 'hifa_importdata', 'hif_uvcontfit', 'hif_uvcontsub', 'hif_selfcal', 'h_save')


def pipeline_is_installed():
    import importlib.util
    try:
        return importlib.util.find_spec('pipeline') is not None
    except (ImportError, ValueError):
        return False


def require_pipeline_for_contsub():
    """Plan-time check of --contsub: the pipeline must be importable (found without importing it)."""
    if not pipeline_is_installed():
        raise ReprocessingError(PIPELINE_MISSING)


def load_pipeline_tasks(names=PIPELINE_TASKS, *, work_dir=None):
    """(revision, {name: task}) of the installed pipeline; tasks it does not have are left out.

    The pipeline opens its casacalls-<host>.txt in the current directory when it is first
    imported, so it is imported from work_dir (working_reprocess/), not the user's folder.
    """
    previous_dir = os.getcwd()
    try:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            os.chdir(str(work_dir))
        # the pipeline imports casatasks: through load_casa's CASA first, so that it logs where the run does
        load_casa().import_casatasks()
        import pipeline
        tasks = {}
        for name in names:
            task = _find_pipeline_task(name)
            if task is not None:
                tasks[name] = task
    except ReprocessingError:
        raise
    except Exception as error:  # the pipeline's own import can fail in many ways
        raise ReprocessingError('%s (import pipeline: %s)' % (PIPELINE_MISSING, one_line(error)))
    finally:
        os.chdir(previous_dir)
    quiet_pipeline_terminal_log()
    revision = str(getattr(pipeline, 'revision', None) or getattr(pipeline, '__version__', 'unknown'))
    return revision, tasks


def quiet_pipeline_terminal_log():
    """Show only the pipeline's warnings and errors on the terminal.

    The pipeline logs every INFO line to stdout (thousands per run) as well as to the CASA
    log; the CASA log keeps them all, the terminal keeps the script's own progress readable.
    """
    import logging
    module = sys.modules.get('pipeline.infrastructure.logging')
    for logger in getattr(module, '_loggers', []):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler or type(handler).__name__ == 'ColorizingStreamHandler':
                handler.setLevel(max(handler.level, logging.WARNING))


def _find_pipeline_task(name):
    """casa --pipeline puts the tasks in the script's namespace; PL2023+ keeps its functions in
    pipeline.X.cli.  PL2022 has two CASA task objects per task: pipeline.X.cli.gotasks' for CASA's
    shell (in plain Python they fail: "could not find CASAshell global frame") and pipeline.X.cli's,
    as modular casatasks has them."""
    import importlib
    # The script's globals under casa -c (runpy runs it as __main__); the same place for the package.
    task = getattr(sys.modules.get('__main__'), name, None)
    if callable(task):
        return task
    package = name.split('_')[0]
    modules = ['pipeline.%s.cli.gotasks' % package, 'pipeline.%s.cli' % package]
    if not is_monolithic_casa():
        modules.reverse()
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        task = getattr(module, name, None)
        if callable(task):
            return task
    return None


def task_parameter_names(task):
    """The keyword parameters a task declares, or None when its signature cannot be read."""
    import inspect
    try:
        parameters = inspect.signature(task).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names or None


def pipeline_reads_datatype_record():
    """Whether the imported pipeline reads the data types an MS's HISTORY records (hifa_importdata).

    Only from 2025.1.0.35 on (pipeline/h/heuristics/importdata.py, get_ms_data_types_from_history;
    absent from 2023.1.0.124, 2024.1.0.8 and 2024.1.1.22).  An older release that is not told the
    data types takes CORRECTED_DATA for the calibrated data: measured with 2024.1.0.8 on a
    self-calibrated delivery, hif_uvcontsub then ran uvcontsub(datacolumn='corrected') and the line
    MS's DATA equalled its CORRECTED_DATA.
    """
    try:
        from pipeline.h.heuristics import importdata
    except ImportError:
        return False
    return hasattr(importdata, 'get_ms_data_types_from_history')


def ms_records_pipeline_datatypes(casa, ms):
    """True when the MS's HISTORY holds the pipeline's data type record (PL2023+ MSes do)."""
    if not (Path(ms) / 'HISTORY' / 'table.dat').is_file():
        return False  # no HISTORY subtable
    with opened_table(casa, Path(ms) / 'HISTORY') as table:
        messages = table.getcol('MESSAGE') if table.nrows() else []
    return any('data_type_per_column' in str(message) for message in messages)


def stage_for_pipeline_contsub(state, targets, work_dir, *, copy):
    """{ms: its stand-in in work_dir}, named like the MS so that the pipeline imports it in place.

    A stand-in is a shadow whose subtables are all private (importdata writes HISTORY, FIELD and
    SOURCE; copying the small others too costs little and leaves only the main table's data files
    shared, which uvcontsub only reads), or, when the pipeline writes into the MS itself (copy=True,
    PL2022), a full copy.  Leftovers of this tool are replaced; anything else there stops the run
    before anything is written.
    """
    work_dir = Path(work_dir)
    for ms in targets:
        _check_pipeline_slot(work_dir / ms.name, ours=True)
        _check_pipeline_slot(work_dir / pipeline_line_name(ms.name), ours=False)
    stranded = find_user_measurement_sets(work_dir) if work_dir.is_dir() else []
    if stranded:
        raise ReprocessingError('%s holds measurement sets this tool did not make: %s — move them back to '
                                'measurement_sets/ first' % (work_dir, ', '.join(p.name for p in stranded)))
    work_dir.mkdir(parents=True, exist_ok=True)
    staged = collections.OrderedDict()
    for ms in targets:
        stand_in = work_dir / ms.name
        if stand_in.exists() or stand_in.is_symlink():
            remove_tree(stand_in)
        state.will_create(stand_in)
        if copy:
            shutil.copytree(str(ms), str(stand_in), symlinks=False)
            make_user_writable(stand_in)  # copytree keeps the modes of a read-only MS; the pipeline writes here
            (stand_in / STAGED_COPY_MARKER).write_text(str(Path(ms).resolve()))
        else:
            make_shadow(ms, stand_in, private=tuple(entry.name for entry in Path(ms).iterdir() if entry.is_dir()))
        staged[ms] = stand_in
    return staged


def _check_pipeline_slot(path, *, ours):
    if not (path.exists() or path.is_symlink()):
        return
    if ours and path.is_dir() and not path.is_symlink() and (
            (path / SHADOW_MARKER).exists() or (path / STAGED_COPY_MARKER).exists()):
        return  # a stand-in left by an earlier run of this tool
    raise ReprocessingError('%s/%s exists and the pipeline would %s it — move it elsewhere (or run --cleanup if '
                            'it is a leftover of an earlier run)'
                            % (WORK_DIR_NAME, path.name, 'import' if ours else 'replace'))


@contextlib.contextmanager
def working_directory(path):
    """chdir into path for the pipeline, and always back."""
    previous = os.getcwd()
    change_directory(path)  # the MPI servers follow, if any
    try:
        yield Path(path)
    finally:
        change_directory(previous)


def run_pipeline_calls(tasks, calls, *, work_dir, casa_log, after_call=None):
    """Run pipeline task calls [(name, arguments)] in work_dir, then h_save; the one pipeline runner.

    The pipeline writes its context, weblog and products where it runs, so work_dir is the current
    directory meanwhile (on the MPI servers too).  h_save runs once h_init has, also after a failed
    task (the weblog then shows where it stopped).  after_call(name, arguments, new_names) hears
    what each call added to work_dir.  Interrupted passes through untouched.
    """
    initialised = False
    with working_directory(work_dir):
        try:
            for name, arguments in calls:
                shown = sorted((key, '<%d MS>' % len(value) if key == 'vis' and isinstance(value, list) else value)
                               for key, value in arguments.items())
                say('  pipeline: %s(%s)' % (name, ', '.join('%s=%s' % (key, value if key == 'vis' else repr(value))
                                                          for key, value in shown)))
                before = set(os.listdir('.'))
                try:
                    tasks[name](**arguments)
                except ReprocessingError:
                    raise
                except Exception as error:  # whatever the pipeline raises
                    raise ReprocessingError('the pipeline task %s failed (%s) — see its weblog in %s/pipeline-*/ '
                                            'and the CASA log %s' % (name, _root_cause(error), work_dir, casa_log))
                initialised = initialised or name == 'h_init'
                if after_call is not None:
                    after_call(name, arguments, sorted(set(os.listdir('.')) - before))
        finally:
            if initialised:
                try:
                    tasks['h_save']()
                except Exception as error:  # saving the context must not hide the real failure
                    warn('h_save failed (%s): the pipeline context in %s may be incomplete'
                         % (_root_cause(error), work_dir))


def _root_cause(error):
    """The last line of an error's text: the pipeline wraps the real error, traceback and all."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip(')')]
    return one_line(lines[-1] if lines else repr(error))


def check_pipeline_release(calls, tasks):
    """Every call fits the release: checked before h_init, so nothing runs when one does not."""
    missing = sorted({call.task for call in calls if call.task not in tasks})
    if missing:
        raise ReprocessingError('this pipeline release has no %s — use a release from Cycle 10 or later, or '
                                '--engine casa' % ', '.join(missing))
    return [fit_call_to_release(call, task_parameter_names(tasks[call.task])) for call in calls]


def pipeline_call_log():
    """The file the imported pipeline logs every CASA call into (casacalls-<host>.txt), or None.

    pipeline.infrastructure.casa_tools opens it, relative to the current directory, when the pipeline
    is imported: under "casa --pipeline -c" that is CASA's start, in the folder the user started it
    from (seen with 2024.1.0.8, 2025.1.0.35 and the development head: calibrated_final/casacalls-<host>.txt).
    """
    module = sys.modules.get('pipeline.infrastructure.casa_tools')
    logger = getattr(getattr(module, 'CASACALLS_LOG', None), 'logger', None) or getattr(module, 'CASACALLS_LOG', None)
    for handler in getattr(logger, 'handlers', None) or []:
        name = getattr(handler, 'baseFilename', None)
        if name:
            return Path(name)
    return None


def pipeline_grid_support():
    """PipelineGridSupport of the installed pipeline, read from its source files without importing it (planning
    stays quick; under casa --pipeline the imported one is asked): hif_makeimlist's parameters, whether its clean
    targets carry an outframe, and the release from pipeline/_version.py (or the imported revision)."""
    import ast
    import importlib.util
    import re
    revision = None
    module = sys.modules.get('pipeline')
    if module is not None:
        revision = getattr(module, 'revision', None) or getattr(module, '__version__', None)
    try:
        spec = importlib.util.find_spec('pipeline')
    except (ImportError, ValueError):
        spec = None
    folders = list(getattr(spec, 'submodule_search_locations', None) or []) if spec is not None else []
    root = Path(folders[0]) if folders else None

    def source(relative):
        try:
            return (root / relative).read_text() if root is not None else None
        except (OSError, UnicodeDecodeError):
            return None
    if revision is None:
        match = re.search(r'''version\s*=\s*['"]([^'"]+)['"]''', source('_version.py') or '')
        revision = match.group(1) if match else None
    parameters = None
    text = source('hif/cli/hif_makeimlist.py')
    if text is not None:
        try:
            for node in ast.parse(text).body:
                if isinstance(node, ast.FunctionDef) and node.name == 'hif_makeimlist':
                    parameters = [a.arg for a in node.args.args + node.args.kwonlyargs]
        except SyntaxError:
            parameters = None
    elif source('hif/cli/hif_makeimlist.xml') is not None:  # PL2022: CASA task XML
        parameters = re.findall(r'<param[^>]*name="([A-Za-z_]+)"', source('hif/cli/hif_makeimlist.xml'))
    target = source('hif/tasks/makeimlist/cleantarget.py') or ''
    release = '%s (%s)' % (pipeline_release_name(revision), revision) if revision else 'release in this Python'
    return PipelineGridSupport(release, parameters, "self['outframe']" in target)
