# The two commands of the README's quick start. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt

.PHONY: demo test install install-dev lint bench clean

$(BIN)/covidlens: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev-installed: $(BIN)/covidlens
	$(PIP) -e '.[dev]'
	touch $@

install: $(BIN)/covidlens

install-dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/covidlens demo

test: install-dev
	$(BIN)/python -m pytest -n 2

lint: install-dev
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_resnet3d.py

clean:
	rm -rf $(VENV) runs demo-run
