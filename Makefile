# make demo   set up .venv (modular CASA from PyPI) and run the script on a simulated delivery
# make test   set up .venv if needed and run the whole test suite (what CI runs)
# make bench  run the benchmarks (prints ratios measured side by side)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-pipeline bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# The pipeline tests need a Python with the ALMA pipeline installed (not on PyPI); they skip elsewhere.
test-pipeline:
	$(PYTHON) -m pytest -q -m pipeline tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-demo:
	rm -rf demo
