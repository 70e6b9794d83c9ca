# Two set-up commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kseq-installed
# The next Keras (setup.cfg's keras-next extra) in a venv of its own: keras-nightly and keras both install the
# `keras` package, so kseq goes in with --no-deps and its other requirements beside the nightly.
NEXT := .venv-next
NEXT_PY := $(NEXT)/bin/python
NEXT_STAMP := $(NEXT)/.kseq-installed

.PHONY: demo test test-tf test-tf-second test-jax test-torch test-next test-exit lanes second-lane lint matrix matrix-main matrix-side wheel-check bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg setup.py
	$(PY) -m pip install --quiet -e ".[test,torch,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kseq demo

# Two lanes on two cores: the TensorFlow suite, and beside it the lint, the JAX and PyTorch legs, the keras-next leg
# and a part of the TensorFlow suite (TF_SECOND: the documentation site and one notebook) that evens the lanes out.
# Each lane's output is printed whole when it ends. tests/test_exit.py (50 fresh TensorFlow processes beside a busy
# core) is `make test-exit`, which .ci/run runs beside the matrix.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target lanes

lanes: test-tf second-lane

second-lane: $(STAMP)
	$(MAKE) --no-print-directory -j1 lint test-jax test-torch test-tf-second test-next

TF_SECOND := tests/test_docs_site.py tests/test_notebooks.py
TF_SECOND_K := test_docs_site or (test_notebooks and image_files)

lint: $(STAMP)
	$(PY) -m ruff check kseq tests benchmarks
	$(PY) -m mypy kseq --ignore-missing-imports

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -m "not distributed" tests --ignore=tests/test_exit.py \
		-k "not ($(TF_SECOND_K))"

test-tf-second: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q $(TF_SECOND) -k "$(TF_SECOND_K)"

test-exit: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests/test_exit.py

# The multi-process tests (JAX and torch processes of their own) run here, in the lane beside TensorFlow's.
test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -m "portable or distributed" tests

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q -m portable tests

$(NEXT_STAMP): $(STAMP) setup.cfg setup.py .ci/requirements.py
	rm -rf $(NEXT)
	$(PYTHON) -m venv $(NEXT) || python3 -m venv $(NEXT)
	$(NEXT_PY) -m pip install --quiet --upgrade pip
	$(NEXT_PY) -m pip install --quiet --no-deps -e .
	$(PY) .ci/requirements.py next > $(NEXT)/requirements.txt
	$(NEXT_PY) -m pip install --quiet -r $(NEXT)/requirements.txt
	KERAS_BACKEND=jax $(NEXT_PY) .ci/requirements.py check-next
	touch $(NEXT_STAMP)

# The portable suite and the multi-process tests on JAX with keras-nightly (the keras-next extra).
test-next: $(NEXT_STAMP)
	KERAS_BACKEND=jax $(NEXT_PY) -m pytest -q -m "portable or distributed" tests

# The release checks (noxfile.py), each in fresh venvs under .nox/ with packages from PyPI: the portable suite on
# Python 3.11-3.13 with the newest releases and with setup.cfg's floors; the built wheel and sdist as users get them.
# Two sessions are left to other parts of CI: 3.11 with the newest releases is make test's JAX leg, and 3.12 with
# the floors installs the very versions of 3.11's floors session (the same pins, one Python apart).
# .ci/run runs the matrix in two parts, one in each lane: MATRIX_SIDE after the exit test and the wheel check.
MATRIX_MAIN := portable-3.11(deps='floors') portable-3.12(deps='newest') portable-3.13(deps='newest')
MATRIX_SIDE := portable-3.13(deps='floors')
MATRIX := $(MATRIX_MAIN) $(MATRIX_SIDE)

matrix: $(STAMP)
	$(PY) -m nox -s $(foreach s,$(MATRIX),"$(s)")

matrix-main: $(STAMP)
	$(PY) -m nox -s $(foreach s,$(MATRIX_MAIN),"$(s)")

matrix-side: $(STAMP)
	$(PY) -m nox -s $(foreach s,$(MATRIX_SIDE),"$(s)")

wheel-check: $(STAMP)
	$(PY) -m nox -s wheel

# The site (mkdocs.yml) into site/, strict: a warning (broken cross-reference, missing page, docstring that
# does not render) fails the build. tests/test_docs_site.py builds it too, so `make test` checks it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,torch,bench]"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(NEXT) .nox build dist site *.egg-info
