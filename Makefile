# Two set-up commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kseq-installed

.PHONY: demo test test-tf test-jax test-torch lint bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg setup.py
	$(PY) -m pip install --quiet -e ".[test,torch,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kseq demo

test: $(STAMP) lint test-tf test-jax test-torch

lint: $(STAMP)
	$(PY) -m ruff check kseq tests benchmarks
	$(PY) -m mypy kseq --ignore-missing-imports

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -m portable tests

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q -m portable tests

# The site (mkdocs.yml) into site/, strict: a warning (broken cross-reference, missing page, docstring that
# does not render) fails the build. tests/test_docs_site.py builds it too, so `make test` checks it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,torch,bench]"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build site *.egg-info
