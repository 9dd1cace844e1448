# Two-command quickstart: `make run` (main job on the embedded dataset) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
export HF_HUB_OFFLINE ?= 1
export RAY_TRAIN_V2_ENABLED ?= 1

.PHONY: install install-test run test bench mutants clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/platform tune masking-layers --profile quickstart

# Ray's token authentication stays the user's choice for `make run`; only the test run turns it off.
test: install-test
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q --durations=15 tests

bench: install
	for b in bench/*.py; do case $$b in bench/mutants.py) ;; *) $(PY) $$b || exit 1;; esac; done

# mutation testing of the numerical cores (~10 min a module on 2 cores)
mutants: install-test
	$(PIP) install -q -e ".[dev]"
	$(PY) bench/mutants.py

clean:
	rm -rf $(VENV) mlflow.db mlruns .mimlab-cache
