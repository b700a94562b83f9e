# `make serve` and `make test` set everything up themselves and are safe to run again.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
MODELS := examples/models

.PHONY: install serve test examples bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this disk, not a multi-GB CUDA download
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(MODELS)/.stamp: $(STAMP) mlserve/examples.py mlserve/examples_llm.py
	$(BIN)/python -m mlserve examples $(MODELS)
	touch $@

examples: $(MODELS)/.stamp

serve: install examples
	$(BIN)/python -m mlserve start --models $(MODELS) --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks.serving

clean:
	rm -rf $(VENV) $(MODELS)
