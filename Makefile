# kvscale developer entry points. Every target installs what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo plan test test-unit binaries vllm-env images system-deps lint typecheck crds deploy-manifests bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## The main job, locally: control plane + GPU nodes, operator, real vLLM (CPU), load ramp, live view.
demo: venv binaries vllm-env system-deps images
	$(VENV)/bin/kvscale demo

## Size a 70B model over the built-in GPU catalog (no cluster needed).
plan: venv
	$(VENV)/bin/kvscale plan meta-llama/Llama-3.1-70B-Instruct --max-model-len 32768 --concurrency 32 \
		--quantizations auto fp8 bitsandbytes --show-rejections

## Upstream Kubernetes binaries (cached in ~/.cache/kvscale; built with Go on first use).
binaries: venv
	$(PY) -m kvscale.testing.binaries

## Debian packages: Prometheus for the Prometheus-source tests; containerd, runc, the CNI plugins, iptables,
## conntrack for real nodes; debootstrap for the images they run.
SYSTEM_COMMANDS := prometheus containerd runc iptables conntrack debootstrap
SYSTEM_PACKAGES := prometheus containerd runc containernetworking-plugins iptables conntrack debootstrap
system-deps:
	@missing=0; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	test -x /usr/lib/cni/bridge || missing=1; \
	if [ $$missing = 1 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); fi

## Container images for real nodes (pause, vLLM CPU, operator), assembled locally; cached in ~/.cache/kvscale/images.
images: venv system-deps
	$(PY) -m kvscale.testing.images

## Real vLLM (CPU build) in its own cached virtual environment.
vllm-env: venv
	$(PY) -m kvscale.testing.vllm_install
	$(PY) -m kvscale.testing.train_deps

lint: venv
	$(VENV)/bin/ruff check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

test-unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

## Everything: lint, types, unit, real control plane, real vLLM, real Prometheus.
test: venv binaries vllm-env system-deps images lint typecheck
	$(PY) -m pytest tests -q --durations=25 $(PYTEST_ARGS)

## Regenerate what is generated: the CRD (top level and chart copy) and the kustomize base.
crds: venv
	$(VENV)/bin/kvscale crd -o crds/kvscale.io_llmdeployments.yaml
	cp crds/kvscale.io_llmdeployments.yaml charts/kvscale/files/

deploy-manifests: venv binaries
	"$$($(PY) -m kvscale.testing.binaries --which helm)" template kvscale charts/kvscale -n kvscale-system \
		--set crds.install=false \
		> deploy/base/kvscale.yaml

bench: venv
	$(PY) bench/estimator_accuracy.py
	$(PY) bench/estimator_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
