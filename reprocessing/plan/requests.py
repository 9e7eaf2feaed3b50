"""The command line turned into requests: the one place that reads the argparse Namespace of a run.

Every path is resolved here, once, against the delivery; the plan and everything below it read the
requests (core/requests.py), never the Namespace.
"""

from pathlib import Path

from ..core.requests import CombineRequest, ContsubRequest, RunRequest, WeblogRequest
from .imaging_options import COMBINE_GRID_OPTIONS, imaging_request


ACTION_NAMES = ('check', 'contsub', 'contsub_fast', 'image', 'calibrated_final', 'calibrated_final_line',
                'cleanup', 'weblog', 'combine')


def chosen_actions(options):
    """The actions the command line asks for, in the order they run."""
    given = vars(options)
    return [name for name in ACTION_NAMES if given.get(name) not in (None, False)]


def run_request(options, root):
    """The run's request from the parsed (and already checked) command line; root is the delivery."""
    contsub = None
    if options.contsub or options.contsub_fast:
        contsub = ContsubRequest(engine='pipeline' if options.contsub else 'casa',
                                 overwrite_line=options.overwrite_line, update=options.update,
                                 refit=options.refit, fitorder=options.fitorder)
    weblog = None if options.weblog is None else WeblogRequest(
        name=options.weblog, port=options.port, open_browser=not options.no_browser)
    return RunRequest(actions=tuple(chosen_actions(options)), check=options.check, contsub=contsub,
                      image=None if options.image is None else imaging_request(options, root),
                      concat_targets=options.calibrated_final, concat_lines=options.calibrated_final_line,
                      cleanup=options.cleanup, weblog=weblog, dry_run=options.dry_run, update=options.update,
                      combine=combine_request(options), jobs=options.jobs,
                      memory_per_worker=options.memory_per_worker, split_cube=options.split_cube)


def combine_request(options):
    """CombineRequest of --combine DIR [DIR ...], --feather TP_IMAGE, --contdat and the cube grid (None without
    --combine)."""
    if not options.combine:
        return None
    feather = Path(options.feather).resolve() if options.feather else None
    contdat = options.contdat
    if contdat is not None and contdat != 'merge':
        contdat = Path(contdat).expanduser().resolve()
    given = vars(options)
    return CombineRequest(tuple(Path(d).resolve() for d in options.combine), feather, contdat,
                          tuple(options.specmodes or ('mfs', 'cube')),
                          **dict((name, given.get(name)) for name in COMBINE_GRID_OPTIONS))
