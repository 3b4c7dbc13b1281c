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

# The main job: a whole active-learning campaign on ethanol (PBE/STO-3G, local Parsl
# workers, SQLite, a temporary Prefect server), about 10 minutes on 2 cores.
demo: $(STAMP)
	rm -rf runs/demo
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/sapis campaign examples/campaign_demo.yaml

services:
	bash tests/services/install.sh

test: $(STAMP) services
	$(PY) -m pytest

test-all: $(STAMP) services
	$(PY) -m pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# every benchmark, one after another (each compares its arms side by side in one run);
# hours on 2 cores. Results are appended to bench/results/.
BENCHMARKS := label_throughput ensemble_inference md_speed learning_curve scaling_forecast \
	label_efficiency generator_sources generator_loop conformer_flow al_worlds cheap_pretraining soak

bench: $(STAMP)
	for b in $(BENCHMARKS); do PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs runinfo .pytest_cache
