# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install DSAT and the local Graphite stack, run the demo
#   make test   create the same .venv and run the whole test suite
#   make unit   the fast loop: the unit tests only (no root, no process, no container), under a minute
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GPG_KEY ?=
DIST    ?= dist

.PHONY: demo test unit lint venv docs dist release sign clean

$(STAMP): pyproject.toml setup.py dsat/_speedups.c graphite-web.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	GRAPHITE_NO_PREFIX=True $(BIN)/python -m pip install --quiet -e '.[graphite,test]'
	# graphite-web's own metadata pins Django<3.1; dsat[graphite] brings Django 5.2 (see pyproject.toml)
	GRAPHITE_NO_PREFIX=True $(BIN)/python -m pip install --quiet --no-deps -r graphite-web.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dsat demo

test: $(STAMP)
	$(BIN)/ruff check dsat satellites tests carbon_conf bench docker
	$(BIN)/ruff format --check dsat satellites tests carbon_conf bench docker
	$(BIN)/mypy
	$(BIN)/python -m pytest --durations=25

# The tests no marker calls slow (tests/conftest.py): in this process, on loopback, each under 5 s.
unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

lint: $(STAMP)
	$(BIN)/ruff check dsat satellites tests carbon_conf bench docker
	$(BIN)/ruff format --check dsat satellites tests carbon_conf bench docker
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

# The sdist and the wheel in dist/; make test checks them (tests/test_dist.py: twine check --strict,
# the wheel installed in a fresh venv runs dsat --version and dsat validate on its demo topology).
dist: $(STAMP)
	rm -rf $(DIST)
	$(BIN)/python -m build --outdir $(DIST) .
	$(BIN)/twine check --strict $(DIST)/*

# dist/, each file with a detached GPG signature (.asc); docs/release.rst has the steps around it.
release: dist
	@$(MAKE) --no-print-directory sign DIST=$(DIST)

# Sign what is in $(DIST) (dist/ by default) with GPG_KEY (gpg's default key when empty).
sign:
	@if ! command -v gpg >/dev/null 2>&1; then \
		echo "make release: gpg is not installed; apt-get install gnupg, then make release again" >&2; exit 1; fi
	@if [ -z "$$(gpg --list-secret-keys $(GPG_KEY) 2>/dev/null)" ]; then \
		echo "make release: no GPG secret key$(if $(GPG_KEY), for $(GPG_KEY),) to sign with." >&2; \
		echo "  Create one (gpg --full-generate-key) or import yours (gpg --import KEY.asc)," >&2; \
		echo "  then run make release [GPG_KEY=you@example.org]; $(DIST)/ holds the unsigned files." >&2; exit 1; fi
	@for f in $(DIST)/*.tar.gz $(DIST)/*.whl; do \
		gpg --batch --yes --armor --detach-sign $(if $(GPG_KEY),--local-user $(GPG_KEY),) "$$f" && \
		gpg --verify "$$f.asc" "$$f" 2>/dev/null && echo "signed $$f.asc" || exit 1; \
	done

clean:
	rm -rf $(VENV) .dsat docs/_build dist
