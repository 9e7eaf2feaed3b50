#!/usr/bin/env python3
"""Run every benchmark in bench/ one after the other; each prints its own ratios.

    make bench                 (or: .venv/bin/python bench/run_all.py)
    .venv/bin/python bench/run_all.py contsub image     (a subset, by name)

Benchmarks whose prerequisites are missing (the ALMA pipeline, OpenMPI) say so and measure
what they can.  Nothing here is a test: these machines are too noisy for timed assertions.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    wanted = set(sys.argv[1:] if argv is None else argv)
    status = 0
    for script in sorted(HERE.glob('bench_*.py')):
        name = script.stem[len('bench_'):]
        if wanted and name not in wanted:
            continue
        print('=== %s ===' % script.name, flush=True)
        code = subprocess.run([sys.executable, str(script)]).returncode
        if code:
            print('%s exited with status %d' % (script.name, code), flush=True)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
