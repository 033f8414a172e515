# Two entry points (see README):
#   make demo   - set up .venv and run the whole demo study with Snakemake
#   make test   - set up .venv and run the test suite (what CI runs via .ci/run)
PYTHON ?= python3
VENV ?= .venv
# On the project's build machines these wheels lie on local disk; a cluster installs its own CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES)

test: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q tests

lint: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

clean:
	rm -rf results resources logs .snakemake
