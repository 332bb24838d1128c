# make run  : create .venv if missing, install what the main job needs, run it on the embedded model
# make test : the same set-up plus test tools and every extra, then the import contracts
#             (lint-imports, see [tool.importlinter] in pyproject.toml) and the whole test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch 2.13.0 has a CPU wheel on this machine's local disk; an unpinned torch pulls CUDA.
TORCH  := torch==2.13.0

.PHONY: run test lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.run-deps: $(PY) pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[local,embed,tasks,report,train]'
	touch $@

$(VENV)/.test-deps: $(VENV)/.run-deps pyproject.toml
	$(PIP) install -q -e '.[local,embed,tasks,report,serve,train,rl,hf,structured,ray,metarl,dev]'
	touch $@

run: $(VENV)/.run-deps
	$(VENV)/bin/metaskill run --time-budget 14 --out metaskill-run

test: $(VENV)/.test-deps
	@# bubblewrap sandboxes model-written code (tasks/sandbox.py); Debian's package, as root
	@command -v bwrap >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq bubblewrap >/dev/null) || echo "warning: could not install bubblewrap"
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest tests src/metaskill -q -p no:cacheprovider

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check src tests benchmarks
