# Two entry points (see README): `make demo` runs the main job end to end on the embedded corpus,
# `make test` runs the test suite. Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

$(BIN)/golf: pyproject.toml requirements-cpu.txt
	$(PY) -m venv $(VENV)
	# torch first and pinned: pip here offers the CPU wheel 2.13.0 from local disk; an unpinned torch pulls ~5 GB of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/golf

demo: $(BIN)/golf
	$(BIN)/golf fit --config configs/tiny_cpu.yaml

test: $(BIN)/golf
	TRITON_INTERPRET=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -x --durations=15 tests

.PHONY: setup demo test
