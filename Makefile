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

data/austen_sp1024/manifest.json: $(BIN)/golf
	$(BIN)/golf data prepare --out data/austen_sp1024 --vocab 1024

demo: $(BIN)/golf data/austen_sp1024/manifest.json
	$(BIN)/golf fit --config configs/tiny_cpu.yaml --trainer.enable_progress_bar false

# Wheels the GPU image lacks (Python 3.12), carried to the device machine in .whl/ (see README).
wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 brotli==1.2.1 zstandard==0.25.0

test: $(BIN)/golf
	TRITON_INTERPRET=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -x --durations=15 tests

.PHONY: setup demo test wheels
