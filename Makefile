# One entry point for every task. `make run` and `make test` set up a fresh machine themselves.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Where the tests find the published reference data (never copied into this repo).
export SUPERTONIC_REFERENCE_DIR ?= $(abspath ../shared/reference/supertonic-2)

.PHONY: install dev-install go-tools ops-tools proto-tools client-venvs run test test-fast lint format proto proto-check go-stubs k8s-rules bench gpu-check loadtest loadtest-smoke clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	# The light client package first: the server depends on it (it is not on PyPI).
	$(PIP) install -q -e clients/python
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The stub generator in its own venv: grpcio-tools 1.71 writes protobuf 5.29 gencode, which
# runs on every protobuf runtime from 5.29 to 7.x (the server's 7.x and pipecat's <7 alike).
PROTO_VENV := .venv-proto
GRPCIO_TOOLS_VERSION := 1.71.2
$(PROTO_VENV)/.installed-$(GRPCIO_TOOLS_VERSION):
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install -q "grpcio-tools==$(GRPCIO_TOOLS_VERSION)"
	touch $@

proto-tools: $(PROTO_VENV)/.installed-$(GRPCIO_TOOLS_VERSION)

# The light client (clients/python) under the oldest and newest protobuf it supports, and
# with each agent framework from PyPI (their pins clash with the server's), for the tests.
CLIENT_VENVS := .venv-client-old .venv-client-new .venv-pipecat .venv-livekit
CLIENT_SPEC_.venv-client-old := -e clients/python "protobuf==5.29.*" "grpcio==1.71.2" "numpy==1.26.*"
CLIENT_SPEC_.venv-client-new := -e clients/python "protobuf>=7,<8" "grpcio>=1.71.2"
CLIENT_SPEC_.venv-pipecat := -e "clients/python[pipecat]"
CLIENT_SPEC_.venv-livekit := -e "clients/python[livekit]"
$(addsuffix /.installed,$(CLIENT_VENVS)): %/.installed: clients/python/pyproject.toml
	test -x $*/bin/python || $(PYTHON) -m venv $*
	$*/bin/python -m pip install -q $(CLIENT_SPEC_$*) "pytest>=8"
	touch $@

client-venvs: $(addsuffix /.installed,$(CLIENT_VENVS))

# Test tools from Debian: the Go toolchain with the gRPC/protobuf modules (the Go client
# builds offline against them), and jq + sox for the README's grpcurl recipes.
APT_TOOLS := golang-go golang-google-grpc-dev golang-google-protobuf-dev protobuf-compiler \
	protoc-gen-go protoc-gen-go-grpc golang-github-golang-protobuf-1-5-dev jq sox
go-tools:
	@if ! dpkg -s $(APT_TOOLS) >/dev/null 2>&1; then \
	  echo "installing $(APT_TOOLS)"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(APT_TOOLS) >/dev/null; \
	fi

# Operations test tools from Debian: Prometheus 2.42 with promtool (rules, unit tests, a live
# server evaluating the dashboard) and nginx 1.22 (grpc_pass in front of two replicas).
# No recommends: prometheus would pull in node-exporter. Package scripts do not start the
# daemons where policy-rc.d forbids it; the tests run their own on free loopback ports.
OPS_TOOLS := prometheus nginx
ops-tools:
	@if ! dpkg -s $(OPS_TOOLS) >/dev/null 2>&1; then \
	  echo "installing $(OPS_TOOLS)"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(OPS_TOOLS) >/dev/null; \
	fi

run: install
	$(PY) -m supertonic_grpc.cli serve $(ARGS)

# The gate: lint (ruff, mypy) first, then every test.
test: lint go-tools ops-tools proto-tools client-venvs
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# mypy's files and settings are in pyproject.toml ([tool.mypy]): the package, the load tester,
# the benchmarks, the light client and the tests' helper modules; generated stubs excluded.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Regenerate the Python stubs into clients/python/supertonic_client/_proto (the one
# generated package; the server imports it from there).
proto: proto-tools
	$(PROTO_VENV)/bin/python -m supertonic_grpc._tools.gen_proto

proto-check: proto-tools
	$(PROTO_VENV)/bin/python -m supertonic_grpc._tools.gen_proto --check
	@if command -v protoc-gen-go >/dev/null; then cd clients/go && ./generate.sh --check; fi

go-stubs: go-tools
	cd clients/go && ./generate.sh

# The PrometheusRule in deploy/k8s/base, from deploy/prometheus/*.rules.yml.
k8s-rules: install
	$(PY) deploy/k8s/gen_prometheusrule.py

# The engine beside ONNX Runtime (same stages, exported once to .cache/onnx) and in bf16,
# interleaved, then the serving-overhead phase. See docs/BENCHMARKS.md.
bench: install
	$(PY) -m supertonic_grpc.cli bench $(ARGS)

# On a CUDA machine (a CUDA build of torch installed in the venv): GPU tests, engine bench in
# fp32/bf16 with CUDA graphs, a 50/100/200-stream load test; figures in reports/gpu-check/.
gpu-check: install
	$(PY) -m benchmarks.gpu_check $(ARGS)

loadtest: install
	$(PY) -m loadtest $(ARGS)

loadtest-smoke: install
	$(PY) -m loadtest --spawn --smoke $(ARGS)

clean:
	rm -rf $(VENV) $(PROTO_VENV) $(CLIENT_VENVS) .pytest_cache .ruff_cache .mypy_cache reports
