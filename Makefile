# SAPIS-MD: `make test` and `make demo` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all services lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Until the campaign flow lands, the main job is labelling the example molecules.
demo: $(STAMP)
	$(VENV)/bin/sapis label examples/small_molecules.xyz --config examples/label.yaml
	$(VENV)/bin/sapis db stats --db runs/example/data.db --plot runs/example/stats.png
	$(VENV)/bin/sapis db export --db runs/example/data.db runs/example/labelled.extxyz

services:
	bash tests/services/install.sh

test: $(STAMP) services
	$(PY) -m pytest

test-all: $(STAMP) services
	$(PY) -m pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/label_throughput.py

clean:
	rm -rf $(VENV) runs runinfo .pytest_cache
