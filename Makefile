# One command each, on a fresh machine:
#   make demo   - create .venv, install, run the offline demo (synthetic dataset, pretrained EfficientNet-Lite0)
#   make test   - create .venv, install, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch/torchvision as pinned for this project's machines; override e.g. TORCH="torch torchvision".
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all
BIN := $(VENV)/bin

.PHONY: setup compile demo bottle bottle-best study report rehearsal test test-all test-fast bench dry-run slurm-dry-run config-readme clean

setup: $(VENV)/.installed

# pip byte-compiles every file it installs (13,000, on one core: half of an install's time); instead, the
# modules that the pipeline and its tests import (4,000) are compiled once, by importing them with bytecode
# writing on, in two processes (where PYTHONDONTWRITEBYTECODE is set, no later import would write them)
WARM_A := import torch, torch._dynamo, torch.jit, torchvision, timm
WARM_B := import sklearn.metrics, sklearn.decomposition, scipy.ndimage, matplotlib.pyplot, pandas, h5py, \
	tifffile, snakemake.cli, pytest, xdist
WARM_DFR := import importlib, pkgutil, dfr; [importlib.import_module(m.name) for m in \
	pkgutil.walk_packages(dfr.__path__, 'dfr.') if '._' not in m.name]; import matplotlib.backends.backend_agg

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile $(TORCH)
	$(BIN)/pip install --quiet --no-compile -e '.[test,lite]'
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -c "$(WARM_A)" & a=$$!; PYTHONDONTWRITEBYTECODE= $(BIN)/python -c "$(WARM_B)" && wait $$a
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -c "$(WARM_DFR)"
	touch $@

# byte-compile the package (where PYTHONDONTWRITEBYTECODE is set, nothing else would: every job would compile
# what it imports from source); up-to-date files are skipped, stale ones are never read
compile: setup
	$(BIN)/python -m compileall -q workflow/dfr

demo: setup compile
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@echo; cat results/demo/tables/synthetic.md

bottle: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/bottle.yaml
	@echo; cat results/bottle/tables/mvtec_bottle.md

# config/best.yaml's ensemble on the bottle alone: its bundle (all four members), then dfr predict serving it
bottle-best: setup
	$(BIN)/snakemake results/best/mvtec_bottle/bottle/bundle.pt --cores $(CORES) --configfile config/best.yaml
	$(BIN)/dfr predict results/best/mvtec_bottle/bottle/bundle.pt ../shared/data/mvtec-bottle-256/bottle/test \
		--out predictions/best-bottle

study: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/study-demo.yaml
	@echo; head -16 results/study-demo/comparison/study.md

# the HTML report of a finished run: make report CONFIG=config/study-demo.yaml
CONFIG ?= config/demo.yaml
report: setup
	$(BIN)/snakemake --report report.html --configfile $(CONFIG)

rehearsal: setup
	$(BIN)/python -m dfr.tools.rehearsal --configfile config/rehearsal.yaml --run --cores $(CORES)

# CI's suite: every stage end to end at least once (the tiny run, each head, an ensemble, a study, MVTec AD 2's
# submission), under 10 minutes on 2 cores; one pytest-xdist worker per core, a test file per worker at a time
# (the workers share the session's tiny run: tests/conftest.py)
test: setup compile
	$(BIN)/python -m pytest -ra --durations=30 -m "not extended" -n auto --dist loadfile

# everything: also reruns, faults, GPU scheduling, real data, benchmarks, the browser-rendered report (Debian's
# chromium) and a real single-node SLURM cluster (as root on Debian: scripts/slurm-cluster.sh install); the
# last two are skipped where their tools are missing
test-all: setup compile
	$(BIN)/python -m pytest -ra --durations=30 -n auto --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -ra -m "not slow"

bench: setup
	$(BIN)/python -m dfr.tools.bench

# config/README.md's table of every key, from the schema (tests/test_config.py checks that it is current)
config-readme: setup
	$(BIN)/python -m dfr.planning.config

dry-run: setup
	$(BIN)/snakemake -n --quiet rules

# the dry run under profiles/slurm, and how many SLURM submissions it makes: make slurm-dry-run CONFIG=config/config.yaml
slurm-dry-run: setup
	$(BIN)/python -m dfr.tools.slurm_plan --configfile $(CONFIG)

clean:
	rm -rf results logs benchmarks .snakemake
