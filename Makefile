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

RMD17 := ../shared/data/rmd17
# Until the campaign flow lands, the main job is labelling the example molecules and
# training a small surrogate ensemble on rMD17 malonaldehyde.
demo: $(STAMP)
	$(VENV)/bin/sapis label examples/small_molecules.xyz --config examples/label.yaml
	$(VENV)/bin/sapis db stats --db runs/example/data.db --plot runs/example/stats.png
	$(VENV)/bin/sapis db export --db runs/example/data.db runs/example/labelled.extxyz
	rm -rf runs/surrogate
	$(VENV)/bin/sapis db import $(RMD17)/rmd17_malonaldehyde_train_01.npz --db runs/surrogate/md.db
	$(VENV)/bin/sapis train --db runs/surrogate/md.db --out runs/surrogate/ensemble --size xs --members 2 --max-minutes 1
	$(VENV)/bin/sapis predict runs/surrogate/ensemble $(RMD17)/rmd17_malonaldehyde_test_01.npz runs/surrogate/test_predicted.extxyz

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
	$(PY) bench/ensemble_inference.py
	$(PY) bench/md_speed.py
	$(PY) bench/learning_curve.py

clean:
	rm -rf $(VENV) runs runinfo .pytest_cache
