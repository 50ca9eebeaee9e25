# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install DSAT and the local Graphite stack, run the demo
#   make test   create the same .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	GRAPHITE_NO_PREFIX=True $(BIN)/python -m pip install --quiet -e '.[graphite,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dsat demo

test: $(STAMP)
	$(BIN)/ruff check dsat satellites tests carbon_conf bench docker
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check dsat satellites tests carbon_conf bench docker
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .dsat docs/_build
