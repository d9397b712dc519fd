# The verbs a user types. Every target depends on `setup`, so on a fresh clone
# `make test` (or `make demo`) alone builds the virtualenv and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
SEEDS  ?= 2000
export PYTHONPATH := $(CURDIR)/generated

.PHONY: setup generate check-generated lint typecheck layers pytest test demo bench simulate chaos clean

setup: $(VENV)/.installed

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

# The long real-process scenarios (the suite runs their short versions): events across
# five hub kill -9s in a 5,000-event stream, a subscriber down while 1,000 go out, a
# durable publisher killed -9 halfway through 1,000, a 50 ms blocking def handler under
# 2,000 pipelined sends, a 20 s handler under the default policy and one outliving its
# 30 s deadline, and 10,000 garbage connections against a hub (its RSS before and after).
chaos: setup
	ACKBUS_CHAOS=1 $(BIN)/pytest -q -p no:randomly --timeout 600 tests/integration/test_events.py \
		tests/integration/test_sync_handlers.py::test_a_blocking_def_handler_under_pipelined_load_loses_nothing \
		tests/integration/test_lease.py \
		tests/integration/test_peer_cost.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
