# One entry point for every task. `make run` and `make test` set up a fresh machine themselves.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Where the tests find the published reference data (never copied into this repo).
export SUPERTONIC_REFERENCE_DIR ?= $(abspath ../shared/reference/supertonic-2)

.PHONY: install dev-install go-tools ops-tools run test test-fast lint format proto proto-check go-stubs k8s-rules bench loadtest loadtest-smoke clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	# The light client package first: the server depends on it (it is not on PyPI).
	$(PIP) install -q -e clients/python
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

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

test: install go-tools ops-tools
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Regenerate the Python stubs into supertonic_grpc/_proto (the one generated package).
proto: install
	$(PY) -m supertonic_grpc._tools.gen_proto

proto-check: install
	$(PY) -m supertonic_grpc._tools.gen_proto --check
	@if command -v protoc-gen-go >/dev/null; then cd clients/go && ./generate.sh --check; fi

go-stubs: go-tools
	cd clients/go && ./generate.sh

# The PrometheusRule in deploy/k8s/base, from deploy/prometheus/*.rules.yml.
k8s-rules: install
	$(PY) deploy/k8s/gen_prometheusrule.py

bench: install
	$(PY) -m supertonic_grpc.cli bench $(ARGS)

loadtest: install
	$(PY) -m loadtest $(ARGS)

loadtest-smoke: install
	$(PY) -m loadtest --spawn --smoke $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache reports
