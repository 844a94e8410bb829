# Two commands on a fresh machine with Python 3.11+ and make:
#   make run    set up, migrate, build the classifier model if needed, and start paidan
#   make test   set up and run the whole test suite (SQLite, then PostgreSQL when a server is installed)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PG_DIR := $(CURDIR)/.pg-test

.PHONY: run test test-sqlite test-postgres setup bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("paidan needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/paidan db upgrade
	$(BIN)/paidan model ensure
	$(BIN)/paidan serve

test: setup test-sqlite test-postgres

test-sqlite: setup
	@echo "== test suite on SQLite"
	$(BIN)/python -m pytest

# The PostgreSQL leg: a throwaway cluster on a free loopback port, stopped by its PID afterwards.
test-postgres: setup
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "== SKIPPED the PostgreSQL leg: no PostgreSQL server binaries here (apt-get install postgresql to enable it)"; \
	  exit 0; \
	fi; \
	port=$$($(BIN)/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	rm -rf $(PG_DIR); \
	out=$$(tests/peers/postgres.sh start $(PG_DIR) $$port) || { echo "$$out"; exit 1; }; \
	url=$$(echo "$$out" | sed -n 's/^DATABASE_URL=//p'); \
	echo "== test suite on PostgreSQL ($$url)"; \
	PAIDAN_TEST_DATABASE_URL=$$url $(BIN)/python -m pytest; status=$$?; \
	tests/peers/postgres.sh stop $(PG_DIR); rm -rf $(PG_DIR); exit $$status

bench: setup
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) .pytest_cache $(PG_DIR)
