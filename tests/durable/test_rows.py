"""Rows read back from a damaged store: each is a StoreError naming its table and row,
never another exception (store/_rows.py); and ``make fuzz``'s store target, bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import fuzz_targets
import pytest
from ackbus import Policy, StoreError
from ackbus.cli import main
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore
from ackbus.store._rows import policy_json
from ackbus.wire import encode_message
from helpers import running_hub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ID = b"\x01" * 16
FRAME = encode_message(ID, "poker.StartHand", b"\x08\x01")
OUTBOX = {
    "id": ID, "type": "poker.StartHand", "destination": "", "kind": 1, "request": 0,
    "policy": policy_json(Policy()), "created_at": 1.0e9, "deadline": 1.0e9 + 30, "frame": FRAME,
}  # fmt: skip
INBOX = {
    "id": ID, "outcome": 1, "finished_at": 1.0e9, "response": b"", "error_type": "",
    "error_message": "", "error_permanent": 0,
}  # fmt: skip


def release(store: SqliteStore, instance: str) -> None:
    """Claim ``store`` (creating its file) and let it go, as aclose() does unstarted."""
    store.claim("table", instance)
    store._claimed().close()
    store._unlock()


def damaged_store(path: Path, table: str, row: dict[str, Any]) -> None:
    """A store whose ``table`` holds ``row``, written with SQL as a damaged disk might."""
    release(SqliteStore(path), "t-1")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            f"INSERT INTO ackbus_{table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    conn.close()


@pytest.mark.parametrize(
    ("table", "column", "value", "problem"),
    [
        ("outbox", "id", b"short", "is not 16 bytes"),
        ("outbox", "type", b"poker.StartHand", "type is bytes, not TEXT"),
        ("outbox", "type", "poker StartHand", "invalid type"),
        ("outbox", "destination", b"table", "destination is bytes"),  # an INTEGER would become TEXT
        ("outbox", "kind", 9, "is not a message kind"),
        ("outbox", "request", 2, "is not 0 or 1"),
        ("outbox", "policy", "{not json", "policy is not JSON"),
        ("outbox", "policy", '{"ack_timeout": NaN}', "policy is not JSON"),
        ("outbox", "policy", '{"max_attempts": 0}', "policy max_attempts 0 is not an integer"),
        (
            "outbox",
            "policy",
            '{"ack_timeout": "1"}',
            "policy ack_timeout '1' is not a finite number",
        ),
        ("outbox", "policy", '{"kind": 1}', "policy kind 1 is not a kind"),
        ("outbox", "policy", '{"deadline": -5}', "deadline must be > 0"),
        ("outbox", "policy", '{"colour": "red"}', "is not a policy's fields"),
        ("outbox", "policy", "[]", "is not a policy's fields"),
        ("outbox", "created_at", "yesterday", "created_at 'yesterday' is not a finite number"),
        ("outbox", "frame", b"x" * 10, "frame is not a message item"),
        (
            "outbox",
            "frame",
            encode_message(b"\x02" * 16, "poker.StartHand", b""),
            "not the row's message",
        ),
        ("inbox", "outcome", 99, "outcome 99 is not an outcome"),
        ("inbox", "outcome", "OK", "outcome 'OK' is not an outcome"),
        ("inbox", "finished_at", "later", "finished_at 'later' is not a finite number"),
        ("inbox", "response", "text", "response is str"),
        ("inbox", "error_permanent", 5, "error_permanent 5 is not 0 or 1"),
        ("inbox", "id", b"\x01" * 17, "is not 16 bytes"),
    ],
)
def test_a_damaged_row_is_a_store_error_naming_it(
    tmp_path: Path, table: str, column: str, value: object, problem: str
) -> None:
    damaged_store(
        tmp_path / "s.db", table, {**(OUTBOX if table == "outbox" else INBOX), column: value}
    )
    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", "t-1")
    with pytest.raises(StoreError, match=f"ackbus_{table} rowid 1") as err:
        store.pending_outbox() if table == "outbox" else store.inbox_since(0.0)
    assert problem in str(err.value)


async def test_an_endpoint_on_a_damaged_store_fails_to_start_with_a_store_error(
    tmp_path: Path,
) -> None:
    """Before the checks the same row raised json.JSONDecodeError out of start()."""
    damaged_store(tmp_path / "s.db", "outbox", {**OUTBOX, "policy": "{not json"})
    async with running_hub("memory") as bus:
        ep = Endpoint(
            "table", bus.address, backend=bus.backend, store=SqliteStore(tmp_path / "s.db")
        )
        with pytest.raises(StoreError, match=r"ackbus_outbox rowid 1.*policy is not JSON"):
            await ep.start()
        await ep.close()


def test_a_damaged_instance_in_the_store_is_refused_at_claim(tmp_path: Path) -> None:
    release(SqliteStore(tmp_path / "s.db"), "t-1")
    conn = sqlite3.connect(tmp_path / "s.db")
    with conn:
        conn.execute("UPDATE ackbus_meta SET value = x'00ff' WHERE key = 'instance'")
    conn.close()
    with pytest.raises(StoreError, match=r"ackbus_meta instance .* is not a name"):
        SqliteStore(tmp_path / "s.db").claim("table", None)


def test_dead_letters_with_a_damaged_row_say_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {
        "id": ID, "type": "poker.StartHand", "destination": "", "kind": 1, "reason": "timeout",
        "attempts": 3, "error": "no ack", "created_at": 1.0e9, "failed_at": "soon",
        "frame": FRAME,
    }  # fmt: skip
    damaged_store(tmp_path / "s.db", "dead_letters", row)
    assert main(["dead-letters", "list", "--store", str(tmp_path / "s.db")]) == 1
    err = capsys.readouterr().err
    assert "ackbus_dead_letters rowid 1: failed_at 'soon' is not a finite number" in err


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.integers(0, 2**64 - 1), st.integers(1, 4))
def test_the_store_fuzz_targets_inputs(seed: int, steps: int) -> None:
    """``make fuzz``'s store target, bounded: valid rows changed column by column, written
    into a real store's tables and read back as a restarting endpoint reads them."""
    fuzz_targets.exercise("store", seed, steps)
