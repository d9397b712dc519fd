# The verbs a user types. Every target depends on `setup`, so on a fresh clone
# `make test` (or `make demo`) alone builds the virtualenv and runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
SEEDS  ?= 2000
FUZZ_RUNS ?= 1000000
FUZZ_JOBS ?= 1
export PYTHONPATH := $(CURDIR)/generated

.PHONY: setup postgresql browser generate check-generated lint typecheck layers pytest test demo bench bench-peers simulate chaos docs docs-screenshot fuzz clean

setup: $(VENV)/.installed postgresql

# $(call apt-install,FOUND,PACKAGES,WHAT): unless the shell test FOUND passes, install the
# Debian PACKAGES (as root: apt-get update once, then install), or say what to install.
define apt-install
	@if ! { $(1); } >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing $(2) for the tests (no $(3) found)"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2); \
		else \
			echo "note: no $(3) found; the tests that need it will fail until it is installed (Debian: sudo apt-get install $(2))"; \
		fi; \
	fi
endef

# The PostgreSQL store's tests start a throwaway server of their own (initdb, postgres):
# install the server's binaries when they are missing. Quick when they are there: one `ls`.
postgresql:
	$(call apt-install,ls /usr/lib/postgresql/*/bin/initdb || command -v initdb,postgresql,PostgreSQL server)

# The catalogue's browser test (tests/codegen/test_docs.py) drives Debian's headless
# Chromium through its chromedriver; without them it fails naming both.
browser:
	$(call apt-install,command -v chromium && command -v chromedriver,chromium chromium-driver,Chromium with chromedriver)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Regenerate the runtime's own protos and the example schemas' typed code, after checking
# schemas/ against its last commit for breaking changes (`ackbus breaking`'s rules; the
# run fails with the report). ALLOW=RULE,NAME accepts breaks; AGAINST=REF compares with
# another commit.
generate: setup
	$(PY) tools/generate.py $(if $(ALLOW),--allow '$(ALLOW)',) $(if $(AGAINST),--against '$(AGAINST)',)

# Fail when generated/ (or the runtime's own generated protos) is stale.
check-generated: setup
	$(PY) tools/generate.py --check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy runtime codegen fuzz tools $(wildcard generated/*/)

# Imports point only downward (the `layers` contract in pyproject.toml; DESIGN.md, "Layers").
layers: setup
	$(BIN)/lint-imports --no-logo

pytest: setup browser
	$(BIN)/pytest -q

# What CI runs (.ci/run): the stale-generated-code check, the linter, mypy --strict, the
# layers check, the suite.
test: check-generated lint typecheck layers pytest

demo: setup
	$(PY) examples/demo.py $(if $(SECURE),--secure,)

bench: setup
	$(PY) -m bench $(if $(FULL),--full,)

# ackbus beside real NATS (JetStream), Redis and RabbitMQ servers, the same workloads in one
# sitting (bench/peers.py; docs/performance.md, "Against brokers"). It installs the Debian
# servers when run as root and the brokers' Python clients (the peers extra); never in `make test`.
bench-peers: setup $(VENV)/.peers-installed
	$(PY) -m bench.peers $(if $(FULL),--full,)

$(VENV)/.peers-installed: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,peers]'
	touch $@

simulate: setup
	$(PY) -m ackbus.testing.simulate --seeds $(SEEDS)

# The long real-process scenarios (the suite runs their short versions): 2,500 commands to
# two table instances and the 2,500 events they publish across five hub kill -9s; events across
# five hub kill -9s in a 5,000-event stream, a subscriber down while 1,000 go out, a
# durable publisher killed -9 halfway through 1,000, a 50 ms blocking def handler under
# 2,000 pipelined sends, a 20 s handler under the default policy and one outliving its
# 30 s deadline, 10,000 garbage connections against a hub (its RSS before and after),
# 3,000 messages to two instances sharing a PostgreSQL store with five kill -9s of
# the instance that committed last, 2,000 pipelined sends to a 50 ms async handler
# that blocks its loop, and 100 ordering keys x 20 messages to a durable receiver
# killed -9 twice (every key in order, exactly once; a poison message dead-lettered).
chaos: setup
	ACKBUS_CHAOS=1 $(BIN)/pytest -q -p no:randomly --timeout 600 tests/integration/test_events.py \
		tests/integration/test_sync_handlers.py::test_a_blocking_def_handler_under_pipelined_load_loses_nothing \
		tests/integration/test_lease.py \
		tests/integration/test_peer_cost.py \
		tests/durable/test_pg_shared.py \
		tests/integration/test_mixed_stream.py \
		tests/integration/test_multihub.py \
		tests/integration/test_stalls.py::test_an_async_handler_that_blocks_is_named_and_no_message_fails \
		tests/durable/test_ordered_crash.py \
		tests/run/test_rolling_restart.py

# The AsyncAPI document and the HTML catalogue of the example schemas, in build/docs/
# (built, not committed: they follow from schemas/; docs/codegen.md shows the page).
DOC_PROTOS := $(sort $(filter-out schemas/ackbus/%,$(shell find schemas -name '*.proto')))
docs: setup
	$(BIN)/ackbus docs -I schemas -o build/docs --title "ackbus example: poker" $(DOC_PROTOS)

# docs/catalogue.png, the picture of build/docs/index.html in docs/codegen.md.
docs-screenshot: docs browser
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,700 \
		--screenshot=docs/catalogue.png file://$(CURDIR)/build/docs/index.html

# The decoders under atheris (libFuzzer), FUZZ_RUNS inputs per target (docs/security.md,
# "Fuzzed decoders"); FUZZ_TARGETS="wire legacy" for some, FUZZ_JOBS=2 to run two at
# once. CPU heavy: nice it on a shared machine. Crashing inputs land in .fuzz/crashes/,
# logs in .fuzz/logs/.
fuzz: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[fuzz]'
	$(PY) fuzz/all.py --runs $(FUZZ_RUNS) --jobs $(FUZZ_JOBS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .fuzz
