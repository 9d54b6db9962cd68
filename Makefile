# kvscale developer entry points. Every target installs what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv plan test test-unit binaries vllm-env lint typecheck crds bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## The main job on a local default: plan a 70B model over the built-in GPU catalog.
plan: venv
	$(VENV)/bin/kvscale plan meta-llama/Llama-3.1-70B-Instruct --max-model-len 32768 --concurrency 32 \
		--quantizations auto fp8 bitsandbytes --show-rejections

## Upstream Kubernetes binaries (cached in ~/.cache/kvscale; built with Go on first use).
binaries: venv
	$(PY) -m kvscale.testing.binaries

## Real vLLM (CPU build) in its own cached virtual environment.
vllm-env: venv
	$(PY) -m kvscale.testing.vllm_install

lint: venv
	$(VENV)/bin/ruff check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

test-unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

## Everything: unit, real control plane, real vLLM.
test: venv binaries vllm-env lint typecheck
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

bench: venv
	$(PY) bench/estimator_accuracy.py
	$(PY) bench/estimator_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
