# edge-lora developer entry points. Every target installs what it needs first, so each one works as the
# first command on a fresh machine: `make test`, `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/edge-lora
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out
DEVICE_VENV ?= .venv-device
WHEELS      ?= build/wheels
VERSION     := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' edge_lora/__init__.py)
DEVICE_WHEEL = $(WHEELS)/edge_lora_runtime-$(VERSION)-py3-none-any.whl

.PHONY: install test test-fast lint format demo bench clean gpu-wheels gpu-check-cpu device-wheel device-venv

install: $(STAMP)

# Re-install when the project's dependencies change. torch/torchvision are capped at releases this
# workplace ships on disk (see pyproject); pip takes them from there.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check edge_lora tests benchmarks
	$(VENV)/bin/ruff format --check edge_lora tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format edge_lora tests benchmarks
	$(VENV)/bin/ruff check --fix edge_lora tests benchmarks

# The main job, offline, on the project's own synthetic data (see README "Demo").
demo: $(STAMP)
	DEMO=$(DEMO) CLI=$(CLI) bash scripts/demo.sh

# Benchmarks on DeepPCB (../shared); slow, not part of CI. Results land in benchmarks/results/.
bench: $(STAMP)
	$(PY) benchmarks/lora_vs_full.py

# The GPU check (scripts/gpu_check.sh) runs on a lent GPU machine that has PyTorch but no package registry:
# this fills .whl/ with the wheels it lacks (~6 MiB; the device run carries [".whl"]).
gpu-wheels: $(STAMP)
	PY=$(PY) bash scripts/gpu_wheels.sh

# The GPU check's steps here, on the CPU (--device cpu, .venv; ~8 min on 2 cores).
gpu-check-cpu: $(STAMP)
	GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh

# The device distribution (packaging/runtime/, README "Installing on a line PC / a Jetson"): the wheel a line
# PC or a Jetson installs, built from this checkout (pip fetches hatchling into an isolated build env).
device-wheel:
	$(PYTHON) -m pip wheel --no-deps -q -w $(WHEELS) packaging/runtime
	@echo "built $(DEVICE_WHEEL)"

# .venv-device: only edge-lora-runtime and its OpenVINO extra, as a line PC gets it (no torch, no .venv).
device-venv: device-wheel
	rm -rf $(DEVICE_VENV)
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEVICE_VENV)/bin/python -m pip install --quiet "$(DEVICE_WHEEL)[openvino]"
	$(DEVICE_VENV)/bin/edge-lora --version

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
