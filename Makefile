# The workbook's commands. Each one creates the environment it needs when it is missing.
#   make tutorial   execute every notebook against the local AWS endpoint, write build/
#   make test       the whole test suite (unit, fault and papermill tests), offline
#   make bench      the performance benchmark: build/bench.json and a table (BENCH_ARGS=--quick for a short run)
# Set PYTHON to another Python 3.11 interpreter, or VENV to an existing environment (a conda env).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

TUTORIAL_STAMP := $(VENV)/.tutorial-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: tutorial test bench env clean

env: $(TUTORIAL_STAMP)

$(TUTORIAL_STAMP): environment.yml tools/env_requirements.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/env_requirements.py environment.yml > $(VENV)/requirements.txt
	@echo "Installing the workbook's environment into $(VENV) (about 5 minutes the first time)"
	$(PIP) install -qq --requirement $(VENV)/requirements.txt
	$(PIP) check
	touch $@

$(TEST_STAMP): $(TUTORIAL_STAMP) tests/requirements.txt
	$(PIP) install -qq --requirement tests/requirements.txt
	touch $@

tutorial: $(TUTORIAL_STAMP)
	$(PY) tools/run_notebooks.py --output build

test: $(TEST_STAMP)
	$(PY) -m pytest

bench: $(TEST_STAMP)
	$(PY) tools/bench.py --output build/bench.json $(BENCH_ARGS)

clean:
	rm -rf build
