# The verbs a user types. Every target depends on `setup`, so on a fresh clone
# `make test` (or `make demo`) alone builds the virtualenv and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
SEEDS  ?= 2000
export PYTHONPATH := $(CURDIR)/generated

.PHONY: setup postgresql generate check-generated lint typecheck layers pytest test demo bench simulate chaos clean

setup: $(VENV)/.installed postgresql

# The PostgreSQL store's tests start a throwaway server of their own (initdb, postgres):
# install the server's binaries when they are missing (as root, the Debian package;
# otherwise say what to install). Quick when they are there: one `ls`.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing the PostgreSQL server for the tests (apt-get install postgresql)"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
		else \
			echo "note: no PostgreSQL server found; the PostgreSQL tests will fail until it is installed (Debian: sudo apt-get install postgresql)"; \
		fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Regenerate the runtime's own protos and the example schemas' typed code.
generate: setup
	$(PY) -m ackbus_codegen.build

# Fail when generated/ (or the runtime's own generated protos) is stale.
check-generated: setup
	$(PY) -m ackbus_codegen.build --check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy runtime codegen $(wildcard generated/*/)

# Imports point only downward (the `layers` contract in pyproject.toml; DESIGN.md, "Layers").
layers: setup
	$(BIN)/lint-imports --no-logo

pytest: setup
	$(BIN)/pytest -q

# What CI runs (.ci/run): the stale-generated-code check, the linter, mypy --strict, the
# layers check, the suite.
test: check-generated lint typecheck layers pytest

demo: setup
	$(PY) examples/demo.py $(if $(SECURE),--secure,)

bench: setup
	$(PY) -m bench $(if $(FULL),--full,)

simulate: setup
	$(PY) -m ackbus.testing.simulate --seeds $(SEEDS)

# The long real-process scenarios (the suite runs their short versions): 2,500 commands to
# two table instances and the 2,500 events they publish across five hub kill -9s; events across
# five hub kill -9s in a 5,000-event stream, a subscriber down while 1,000 go out, a
# durable publisher killed -9 halfway through 1,000, a 50 ms blocking def handler under
# 2,000 pipelined sends, a 20 s handler under the default policy and one outliving its
# 30 s deadline, 10,000 garbage connections against a hub (its RSS before and after),
# and 3,000 messages to two instances sharing a PostgreSQL store with five kill -9s of
# the instance that committed last.
chaos: setup
	ACKBUS_CHAOS=1 $(BIN)/pytest -q -p no:randomly --timeout 600 tests/integration/test_events.py \
		tests/integration/test_sync_handlers.py::test_a_blocking_def_handler_under_pipelined_load_loses_nothing \
		tests/integration/test_lease.py \
		tests/integration/test_peer_cost.py \
		tests/durable/test_pg_shared.py \
		tests/integration/test_mixed_stream.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
