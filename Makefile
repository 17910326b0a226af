# The setup contract: `make run` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# LangGraph Studio's server (`langgraph dev`, tests/test_studio.py) lives in its own environment:
# langgraph-api pins jsonschema-rs below what schemathesis (a test extra) needs, so one resolver
# cannot satisfy both. This one holds the project and langgraph-cli[inmem], no test extras.
STUDIO := .venv-studio
STUDIO_STAMP := $(STUDIO)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: that CPU build is on this machine's disk; anything else pulls gigabytes.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(STUDIO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(STUDIO)
	$(STUDIO)/bin/pip install --quiet --upgrade pip
	$(STUDIO)/bin/pip install --quiet torch==2.13.0
	$(STUDIO)/bin/pip install --quiet -e . 'langgraph-cli[inmem]>=0.4'
	touch $(STUDIO_STAMP)

run: $(STAMP)
	$(BIN)/hedgegraph run

test: $(STAMP) $(STUDIO_STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/decision_run.py
	$(BIN)/python benchmarks/quant.py

clean:
	rm -rf $(VENV) $(STUDIO)
