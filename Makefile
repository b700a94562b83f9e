# `make serve` and `make test` set everything up themselves and are safe to run again.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
MODELS := examples/models

.PHONY: install serve test lint examples bench clean deps-system image grpc-stubs mlflow-server

# The MLflow tracking server that tests/registry/test_mlflow.py runs (and logs models through), in a
# venv of its own: its dependencies (sqlalchemy, pandas, flask...) stay out of mlserve's. The stamp
# names the version, so changing it installs again.
MLFLOW_VERSION := 3.17.2
MLFLOW_VENV    := .venv-mlflow
MLFLOW_STAMP   := $(MLFLOW_VENV)/.installed-$(MLFLOW_VERSION)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this disk, not a multi-GB CUDA download
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(MLFLOW_STAMP):
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q 'mlflow==$(MLFLOW_VERSION)'
	touch $@

mlflow-server: $(MLFLOW_STAMP)

$(MODELS)/.stamp: $(STAMP) mlserve/examples.py mlserve/examples_llm.py
	$(BIN)/python -m mlserve examples $(MODELS)
	touch $@

examples: $(MODELS)/.stamp

serve: install examples
	$(BIN)/python -m mlserve start --models $(MODELS) --host $(HOST) --port $(PORT)

# System tools some tests need, installed when missing and we are root, else those tests skip:
# promtool and prometheus for the monitor deploy tests, kubectl and nginx for tests/deploy,
# Chromium and its driver for the status page's browser tests.
deps-system:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q prometheus; } || \
	  echo "prometheus/promtool not installed: tests/monitor/test_deploy.py skips the tests that need them"
	@command -v kubectl >/dev/null && command -v nginx >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && \
	    apt-get install -y -q $$(command -v kubectl >/dev/null || echo kubernetes-client) $$(command -v nginx >/dev/null || echo nginx-light); } || \
	  echo "kubectl/nginx not installed: tests/deploy skips the tests that need them"
	@command -v redis-server >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q redis-server; } || \
	  echo "redis-server not installed: tests/state and the shared-state replica tests skip"
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q chromium chromium-driver; } || \
	  echo "chromium/chromedriver not installed: tests/ui/test_page_browser.py skips"

# MLflow's own venv (its tests' tracking server) installs in the background while the suite runs;
# tests/registry/mlflowutil.py waits for its stamp (or its failure) when MLSERVE_MLFLOW_INSTALLING is set.
test: install deps-system
	@rm -f $(MLFLOW_VENV).failed
	@{ $(MAKE) -s mlflow-server > $(MLFLOW_VENV).log 2>&1 || touch $(MLFLOW_VENV).failed; } & \
	MLSERVE_MLFLOW_INSTALLING=1 $(BIN)/python -m pytest; rc=$$?; wait; exit $$rc

# ruff over the whole tree, mypy over the packages pyproject.toml's [tool.mypy] lists.
lint: install
	$(BIN)/ruff check mlserve tests benchmarks deploy
	$(BIN)/mypy

# BENCH_ARGS="--seconds 20" for longer points; wrk comes from Debian and is installed when we are root.
bench: install
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	@command -v wrk >/dev/null || { echo "make bench needs wrk (Debian: apt-get install -y wrk)"; exit 1; }
	$(BIN)/python -m benchmarks.serving $(BENCH_ARGS)

# The CPU image with buildah (Debian; installed when missing and we are root); the docker format keeps HEALTHCHECK. IMAGE_ARGS passes more
# build flags, e.g. IMAGE_ARGS="--build-arg EXAMPLES=1"; docker or podman build the same Dockerfile.
image:
	@command -v buildah >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -q && apt-get install -y -q buildah; }
	buildah bud --format docker $(IMAGE_ARGS) -t mlserve:cpu .
# The committed gRPC stubs in mlserve/server/proto/ come from Triton's proto files there. protoc 6.31
# (grpcio-tools 1.73.1) writes code that runs on protobuf 6.31 and later; the sed makes the import package-relative.
GRPC_PROTO := mlserve/server/proto
grpc-stubs: install
	$(BIN)/python -m pip install -q --target $(VENV)/grpc-tools 'grpcio-tools==1.73.1'
	cd $(GRPC_PROTO) && PYTHONPATH=$(CURDIR)/$(VENV)/grpc-tools $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. \
	  --python_out=. --grpc_python_out=. grpc_service.proto model_config.proto
	sed -i 's/^import \(model_config_pb2\|grpc_service_pb2\) as/from . import \1 as/' $(GRPC_PROTO)/*_pb2*.py
	rm -f $(GRPC_PROTO)/model_config_pb2_grpc.py

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) $(MODELS)
