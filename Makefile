# SAMI Workbench: set-up, tests, demo.
# `make test` and `make demo` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned and installed first: on this CPU machine 2.13.0 is a local CPU build;
# on a GPU node the same spec takes PyPI's CUDA build. Override e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=
# The workspace of `make demo-queue` (database + run directories).
SAMI_HOME ?= .sami
# `make run`: the port the workbench serves on (127.0.0.1 only).
PORT ?= 8501

.PHONY: install test test-unit demo demo-queue run bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: install
	$(PY) -m sami_core demo --run-dir $(RUN_DIR)

# The demo experiment through the queue (3 SAMI iterations): submit it, run a local worker
# until no work is left, list the jobs (fails unless every job succeeded), then print
# per iteration the held-out MI and the win rate against the base model.
demo-queue: install
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli init
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli submit sami_core/examples/demo.yaml
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli worker --exit-when-idle
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli jobs --experiment latest --check
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli summary --experiment latest

# The workbench in the browser: workspace, the shipped published responses (content at
# once), the demo experiment (submitted once per workspace; the bundled worker runs it
# while the UI is open), one local worker (stopped with the UI), the UI on 127.0.0.1.
run: install
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli init
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli import-results --shipped
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli submit sami_core/examples/demo.yaml --if-absent
	SAMI_HOME=$(SAMI_HOME) $(PY) -m cli ui --with-worker --port $(PORT)

bench: install
	$(PY) benchmarks/logprob_matrix.py
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/queue.py
	$(PY) benchmarks/judge.py
	$(PY) benchmarks/evaluate.py
	$(PY) benchmarks/app.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
