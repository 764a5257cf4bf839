# Two commands matter: `make demo` runs the main job, `make test` runs the suite.
# Both create .venv and install the package on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Every dependency pinned (made on Python 3.11, Linux x86_64); installs use it as constraints.
LOCK := requirements/lock.txt

.PHONY: demo test lint bench clean audit lock

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev,dask,plots,redis,ray]'
	touch $(STAMP)

# The demo keeps its Prefect home (and embedded SQLite server) inside the repo.
demo: $(STAMP)
	PREFECT_HOME=$(CURDIR)/.prefect-demo PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python flows/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python requirements/deps.py audit
	$(BIN)/python -m pytest

# Known vulnerabilities in the locked dependencies (pip-audit; AUDIT_FLAGS=--strict also
# fails when a package could not be audited, e.g. the vulnerability service is unreachable).
audit: $(STAMP)
	$(BIN)/python requirements/deps.py audit $(AUDIT_FLAGS)

# Resolve pyproject.toml's dependencies afresh (newest versions) and rewrite the lock.
lock: $(STAMP)
	$(BIN)/python requirements/deps.py lock

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .prefect-demo .pytest_cache .hypothesis
