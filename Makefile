# The whole set-up on a fresh machine is `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.toml
# llama.cpp is compiled for a portable x86-64 level: pip's default native build
# (AVX-512/AMX here) segfaults on quantized GGUF models (see docs/runtimes.md).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
PROTOS := $(wildcard protos/edged/api/*.proto)

.PHONY: run test install stubs check-stubs lint typecheck pytest demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# Re-install only when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The stubs' generator: the protoc of protobuf 6.31 (grpcio-tools 1.80), beside the venv, not in it.
# protobuf loads generated code no newer than its own runtime, and as old as the major release
# before it, so 6.31 gencode runs on every protobuf from 6.31.1 to 7.x: the range pyproject.toml
# declares (docs/architecture.md, "Generated code").
PROTOC_ENV := $(VENV)/protoc-6.31
PROTOC := PYTHONPATH=$(PROTOC_ENV) $(BIN)/python -m grpc_tools.protoc
$(PROTOC_ENV)/.installed: | $(BIN)/python
	$(BIN)/pip install -q --no-deps --target $(PROTOC_ENV) grpcio-tools==1.80.0 protobuf==6.31.1
	touch $@

# The newest tritonclient with the protobuf it pulls in (6.x), overlaid on the venv the way
# `pip install -U tritonclient[grpc]` leaves an application's environment: the daemon and the
# client are driven with it by tests/e2e/test_clients.py.
TRITON_NEWEST := $(VENV)/tritonclient-newest
$(TRITON_NEWEST)/.installed: | $(BIN)/python
	$(BIN)/pip install -q --no-deps --target $(TRITON_NEWEST) 'tritonclient[grpc]' 'protobuf<7'
	touch $@

# Built once (order-only: a re-install does not rebuild it); `rm -rf var` to start over.
var/store/.demo-imported: | $(VENV)/.installed
	$(BIN)/edged demo --config $(CONFIG)
	touch $@

demo: var/store/.demo-imported

run: install demo
	$(BIN)/edged serve --config $(CONFIG)

stubs: install $(PROTOC_ENV)/.installed
	$(PROTOC) -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# Generated stubs are committed; regenerating them must change nothing.
check-stubs: install $(PROTOC_ENV)/.installed
	@tmp=$$(mktemp -d) && \
	$(PROTOC) -I protos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	for f in $$(cd $$tmp && find edged/api -type f); do \
	  cmp -s $$tmp/$$f $$f || { echo "stale generated stub: $$f (run 'make stubs')"; rm -rf $$tmp; exit 1; }; \
	done; \
	for f in $$(find edged/api -name '*_pb2*'); do \
	  [ -f $$tmp/$$f ] || { echo "generated stub without a proto: $$f"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated stubs are fresh"

lint: install
	$(BIN)/ruff check edged tests bench
	$(BIN)/ruff format --check edged tests bench
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

pytest: install $(TRITON_NEWEST)/.installed
	$(BIN)/pytest -q

test: check-stubs lint typecheck pytest

bench: install
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) var
