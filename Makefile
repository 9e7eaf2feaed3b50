# make demo   set up .venv (modular CASA from PyPI) and run the script on a simulated delivery
# make test   set up .venv if needed and run the whole test suite (what CI runs)
# make bench  run the benchmarks (prints ratios measured side by side)
# make build  regenerate scriptForReprocessing.py and reprocessing_prep.py from the package reprocessing/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-pipeline bench clean-demo setup-mpi test-mpi build

setup: $(STAMP)

# Modular CASA 6.7 has wheels for Python 3.10 to 3.13 only: anything else stops here, in one line.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 13) else "ERROR: $(PYTHON) is Python %d.%d, but the development environment needs Python 3.10 to 3.13 (modular CASA has wheels for those only) — install one and run e.g. make PYTHON=python3.12 test" % v)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# Two test processes (pytest-xdist), a test file each at a time (--dist loadfile: a file's module fixtures are
# made once): most tests wait on CASA in subprocesses or on signals, time limits and MPI ranks.
# TEST_PROCESSES=1 runs them one after another.  --durations: CI's log lists the 20 slowest tests.
# Measured (.ci/run, fresh clone, 2 quiet cores, 2026-12-07): 532 tests in 21 min in two processes; 527 took
# 26.6 min in one the day before (its .ci/run 28.8 min; 30.9 min in the CI of that landing).
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile tests --durations=20

# The pipeline tests need a Python with the ALMA pipeline installed (not on PyPI); they skip elsewhere.
# Any release's Python will do (PL2022 on 3.6, PL2023 on 3.8, PL2024+ on 3.10+: README "ALMA eras").
# pytest is installed into that Python first when it lacks it; the pipeline's plotms needs a display:
# without one, xvfb-run gives it one (when installed).
test-pipeline:
	$(PYTHON) -m pytest --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet pytest
	$(if $(DISPLAY),,$(if $(shell command -v xvfb-run),xvfb-run -a)) $(PYTHON) -m pytest -q -m pipeline tests

# MPI (optional): Open MPI comes from the system (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev,
# ~20 s); casampi and mpi4py from PyPI (~2 s).  Without them the MPI tests skip.
setup-mpi: $(STAMP)
	@command -v mpirun >/dev/null || { echo "mpirun not found: install Open MPI first" \
		"(Debian/Ubuntu: sudo apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }
	$(PY) -m pip install --quiet -e '.[test,mpi]'

test-mpi: setup-mpi
	$(PY) -m pytest -q -m mpi tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-demo:
	rm -rf demo

# The two user scripts are generated: edit reprocessing/*.py, then run this and commit all of it.
# (The standard library is enough: no venv needed.  tests/test_build.py checks the result.)
build:
	$(PYTHON) tools/build.py
