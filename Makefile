# Two entry points: `make demo` (whole graph on the embedded CPU teacher) and `make test` (the whole suite).
# Both create everything they need from the lockfile on a fresh machine and are safe to re-run.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := .tools/bin/uv
PY := .venv/bin/python

export DAGSTER_HOME := $(CURDIR)/.dagster_home
export DAGSTER_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1

.PHONY: demo test setup dev serve-teacher gpu-env clean

demo: setup
	$(PY) -m pipelines.cli materialize --preset tiny

test: setup
	$(PY) -m pytest

dev: setup
	.venv/bin/dagster dev -h 127.0.0.1

serve-teacher: setup
	$(PY) -m persona_factory.teacher.embedded serve

setup: .venv/.synced $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m persona_factory.teacher.prepare

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --extra cpu --group dev
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

# GPU machines only: the CUDA build of vLLM needs its own environment (.venv is locked to CPU PyTorch)
gpu-env:
	python3 -m venv .venv-gpu
	.venv-gpu/bin/pip install --quiet -e . vllm==0.33.0

clean:
	rm -rf output .dagster_home
