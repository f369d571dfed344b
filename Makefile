# vinspect: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Scanners with pins the project's venv cannot share (network-config-analyzer pins networkx 3.2.1
# and PyYAML 6.0.2, checkov pins networkx<2.7): each gets its own venv (infra/tools.py finds them).
NCA_VERSION     := 2.1.0
CHECKOV_VERSION := 3.3.30

.PHONY: setup browser demo lint format test test-all bench down clean help scanners .venv-nca .venv-checkov

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install vinspect with every extra

.venv-nca/.installed: Makefile
	$(PYTHON) -m venv .venv-nca
	.venv-nca/bin/pip install --quiet 'network-config-analyzer==$(NCA_VERSION)'
	touch $@

.venv-checkov/.installed: Makefile
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

.venv-nca: .venv-nca/.installed  ## network-config-analyzer for the connectivity check
.venv-checkov: .venv-checkov/.installed  ## checkov for the manifest scan
scanners: .venv-nca/.installed .venv-checkov/.installed  ## both scanners, each in its own venv

browser:  ## install Debian's chromium for the browser tests (needs root)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "warning: could not install chromium; the browser checks will be skipped"; \
	  else echo "chromium missing: sudo apt-get install chromium (browser tests will be skipped)"; fi; }

demo: setup  ## local stack up, dataset, training pipeline (kfp.local), serving; DATA=<cvat export> optional
	$(BIN)/vinspect demo $(if $(DATA),--data $(DATA),)

lint: setup  ## ruff: format check, pyflakes, import order, line length (settings in pyproject.toml)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup  ## rewrite the code in ruff's format and fix what ruff can fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Under make test a missing scanner fails its checks instead of skipping them. pytest-randomly runs
# the tests in a new random order each time (the seed is printed at the end; rerun that order
# with pytest --randomly-seed=N, or keep file order with -p no:randomly), so an order dependency shows in CI.
test: setup browser scanners lint  ## lint, then the default test suite (no cluster, GPU or internet; real local services)
	VINSPECT_REQUIRE_SCANNERS=1 $(BIN)/pytest -q

test-all: setup browser scanners  ## everything, slow tests included
	VINSPECT_REQUIRE_SCANNERS=1 $(BIN)/pytest -q --run-slow

bench: setup  ## run every benchmark; each prints one JSON line at the end
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

down:  ## stop the local stack and the demo services
	$(BIN)/vinspect local down

clean: down  ## remove the venv and local state
	rm -rf $(VENV) .venv-nca .venv-checkov .vinspect
