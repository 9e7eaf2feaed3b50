"""Step --check: cont.dat against the measurement sets, and the channels each execution block would fit."""

from ..contdat.against_ms import contdat_preflight, say_fit_table
from ..contdat.grammar import describe_problem
from ..core.messages import ReprocessingError, say


def run_check(plan, state, step, casa):
    """--check: cont.dat against the measurement sets, and the channels each EB would fit."""
    try:
        analysis = contdat_preflight(plan, casa)
    except ReprocessingError:
        if plan.contdat_analysis is not None:  # the channels of what is right still help
            say_fit_table(plan.contdat_analysis)
        raise
    say_fit_table(analysis)
    warnings = [p for p in analysis.problems if p.severity == 'warning']
    say('  %s: no errors, %d warning%s' % (analysis.contdat.display, len(warnings), '' if len(warnings) == 1 else 's'))
    return {'errors': 0, 'warnings': len(warnings), 'problems': [describe_problem(p) for p in analysis.problems]}
