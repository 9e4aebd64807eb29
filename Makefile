# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine:
# a git-ignored virtual environment in .venv, torch 2.13.0 (CPU) first, then the package held
# to that torch by constraints.txt (docs/toolchain.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export DS_ACCELERATOR := cpu
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,lucene]"
	# Lucene through Anserini: pyserini without its ~1 GB of unused dependencies (docs/toolchain.md).
	$(PIP) install -q -c constraints.txt --no-deps pyserini==0.25.0
	touch $(STAMP)

demo: setup
	$(PY) -m vimi.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest tests $(TEST_ARGS)

# ruff, configured in pyproject.toml; CI runs it before the tests.
lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/shapeworld_gen.py
	$(PY) benchmarks/retrieval.py
	$(PY) benchmarks/shards.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/service.py
