# vinspect: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo test test-all bench down clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install vinspect with every extra

browser:  ## install Debian's chromium for the browser tests (needs root)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "warning: could not install chromium; the browser checks will be skipped"; \
	  else echo "chromium missing: sudo apt-get install chromium (browser tests will be skipped)"; fi; }

demo: setup  ## local stack up, dataset, training pipeline (kfp.local), serving; DATA=<cvat export> optional
	$(BIN)/vinspect demo $(if $(DATA),--data $(DATA),)

test: setup browser  ## the default test suite (no cluster, GPU or internet; real local services)
	$(BIN)/pytest -q

test-all: setup browser  ## everything, slow tests included
	$(BIN)/pytest -q --run-slow

bench: setup  ## run every benchmark; each prints one JSON line at the end
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

down:  ## stop the local stack and the demo services
	$(BIN)/vinspect local down

clean: down  ## remove the venv and local state
	rm -rf $(VENV) .vinspect
