# lmlab. On a fresh machine: `make train` (creates .venv, installs, trains the default) and
# `make test`. TORCH_SPEC pins the torch build; the default 2.13.0 resolves to the CPU wheel
# on machines that carry it locally. Elsewhere: `make install TORCH_SPEC=torch` (or any spec).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: help install lock train test test-all test-fast test-gpu lint format bench bench-gpu gpu-wheels clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# pip finds torch's wheel (TORCH_SPEC, where pip is configured to look: here the local CPU
# build) and installs uv; uv installs that wheel and the rest, downloading in parallel and
# byte-compiling on every core. Where uv cannot install (no uv wheel for the platform, an
# index only pip is configured for), pip does. Whole install on the 2-core machine: README.
#
# LOCK (constraints.txt) holds every other package at the version the suite passed with, so a
# fresh install today and next month get the same stack; `make install LOCK=` installs the
# newest versions pyproject.toml allows instead, and `make lock` re-resolves the file.
LOCK ?= constraints.txt
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	-$(PY) -m pip install --quiet uv
	rm -rf $(VENV)/torch-wheel
	$(PY) -m pip download --quiet --no-deps -d $(VENV)/torch-wheel "$(TORCH_SPEC)"
	$(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode $(VENV)/torch-wheel/*.whl -e ".[dev]" $(if $(LOCK),-c $(LOCK)) \
	  || $(PY) -m pip install --quiet $(VENV)/torch-wheel/*.whl -e ".[dev]" $(if $(LOCK),-c $(LOCK))
	rm -rf $(VENV)/torch-wheel
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install lmlab with its dev tools (once)

# The newest versions pyproject.toml allows, for every Python from 3.10 on and every platform
# (markers where they differ), with torch at TORCH_SPEC's version. torch and the CUDA packages
# it pulls in (triton, nvidia-*, cuda-*) are left out: TORCH_SPEC chooses the build. So is
# setuptools, whose range torch sets (2.11: below 82; 2.13: 77.0.3 or later). Run the
# whole suite (`make test-all`) on the new file before committing it.
LOCK_DROP := ^(torch|triton|setuptools|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==
lock:  ## re-resolve constraints.txt to the newest versions pyproject.toml allows
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m uv --version > /dev/null 2>&1 || $(PY) -m pip install --quiet uv
	printf '%s\n' "$(TORCH_SPEC)" > $(VENV)/lock-torch.txt
	$(PY) -m uv pip compile --quiet pyproject.toml --extra dev --extra cluster --universal \
	  --python-version 3.10 --no-annotate --no-header --override $(VENV)/lock-torch.txt -o $(VENV)/lock.txt
	{ printf '%s\n' "# Written by \`make lock\` ($(TORCH_SPEC)); \`make install\` installs with it (-c)." \
	  "# Every Python from 3.10 on; torch, its CUDA packages and setuptools are TORCH_SPEC's."; \
	  grep -Ev '$(LOCK_DROP)' $(VENV)/lock.txt; } > constraints.txt

train: $(STAMP)  ## train the embedded default (gpt_tiny on the stdlib corpus, CPU); ARGS=overrides
	$(PY) src/train.py $(ARGS)

# pytest-xdist: a worker per logical CPU (at most 4), each test file on one worker, the files
# in the order tests/conftest.py gives them (the longest first); conftest.py also gives each
# worker its share of the CPUs' threads
XDIST := -n logical --maxprocesses=4 --dist loadfile --no-loadscope-reorder

# `make test` (CI's: 10 minutes on 2 cores, the install included) leaves out the tests
# marked e2e, which run real child processes (DDP/FSDP ranks, kill -9 and signals from
# outside, W&B's agent, Inductor's compile workers) or make bench-gpu's cases on the CPU, and
# would take it past those 10 minutes. `make test-all` runs them too: before changing
# checkpoints, resume, signals, run directories, distributed paths or the benchmarks.
test: $(STAMP)  ## the test suite without the e2e tests (CI)
	$(PY) -m pytest tests -m "not e2e" $(XDIST)

test-all: $(STAMP)  ## the whole suite, the e2e tests (kill -9, signals, DDP/FSDP ranks) too
	$(PY) -m pytest tests $(XDIST)

test-fast: $(STAMP)  ## the tests that prepare no data and train nothing (pytest -m "not slow")
	$(PY) -m pytest tests -m "not slow" $(XDIST)

# The GPU targets take lmlab's venv where there is one, else the machine's python3 (a GPU
# image with its own torch): they install nothing. That python3 has no lmlab installed: the
# tests import it from src (bench/run.py adds src to its path itself).
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
test-gpu:  ## the tests marked gpu, on one CUDA GPU (skipped without one)
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m pytest tests/train/test_gpu.py -m gpu -o addopts= -v -rfEs

lint: $(STAMP)  ## ruff check and format check
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

format: $(STAMP)  ## ruff fix and format
	$(PY) -m ruff check --fix src tests bench
	$(PY) -m ruff format src tests bench

bench: $(STAMP)  ## run the benchmark suite and rewrite BENCHMARKS.md; ARGS=--quick|--only ...
	$(PY) bench/run.py $(ARGS)

bench-gpu:  ## the GPU comparison on one CUDA GPU (BENCHMARKS.md's GPU section)
	$(GPU_PY) bench/run.py --only gpu $(ARGS)

# What a GPU image with torch, lightning and transformers but no package registry lacks, as
# pure-Python wheels for bench/gpu_check.sh (antlr4's runtime exists as a source archive only):
# multiprocess for every Python it may have, and datasets 5.0.0 beside 5.2.0 for an image
# whose pyarrow (below 24) is too old for 5.2.0. The script installs them by name.
GPU_PYTHONS := 3.10 3.11 3.12 3.13 3.14
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 datasets==5.0.0 dill==0.4.1
gpu-wheels: $(STAMP)  ## wheels for bench/gpu_check.sh on a GPU machine without a registry, into .whl/
	rm -rf .whl
	for v in $(GPU_WHEELS); do \
	  $(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .whl $$v || exit 1; done
	for py in $(GPU_PYTHONS); do \
	  $(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $$py \
	    -d .whl multiprocess==0.70.19 || exit 1; done
	$(PY) -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3

clean:  ## remove outputs (not .venv, not the data cache)
	rm -rf outputs multirun .pytest_cache .ruff_cache
