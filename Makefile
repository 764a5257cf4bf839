# Two commands matter: `make demo` runs the main job, `make test` runs the suite.
# Both create .venv and install the package on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask,plots]'
	touch $(STAMP)

# The demo keeps its Prefect home (and embedded SQLite server) inside the repo.
demo: $(STAMP)
	PREFECT_HOME=$(CURDIR)/.prefect-demo $(BIN)/python flows/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .prefect-demo .pytest_cache .hypothesis
