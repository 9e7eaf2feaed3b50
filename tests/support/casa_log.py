"""What a CASA log says was run: every call of a task with its arguments (tests and benches read the tool's log)."""
import ast
import re


def task_calls_in_log(log, task):
    """[kwargs] of every call of task recorded in a CASA log (CASA logs each call with all its arguments)."""
    calls = []
    pattern = re.compile(r'\t%s\( (.*) \)\s*$' % task)
    with open(str(log)) as handle:
        for line in handle:
            match = pattern.search(line)
            if match:
                call = ast.parse('f(%s)' % match.group(1), mode='eval').body
                calls.append({k.arg: ast.literal_eval(k.value) for k in call.keywords})
    return calls
