"""Tests that run on both stores: one store kind's URL, the parameter mark its SQL
uses, and a reader of its rows (the ``db`` fixture of tests/durable/conftest.py); and
the transactional sender process (tests/durable/tx_sender.py) run to its end."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import helpers
import psycopg
from ackbus import Context, Policy
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore, SqliteStore
from poker import table_pb2
from proc_harness import Procs, free_port

POLICY = Policy(ack_timeout=0.5)
TX_SENDER = Path(__file__).resolve().parents[1] / "durable" / "tx_sender.py"


class Db:
    """One store kind: its URL, its SQL's parameter mark, and a reader of its rows."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.p = "%s" if kind == "postgresql" else "?"

    def script(self, sql: str) -> None:
        if self.kind == "postgresql":
            PostgresStore(self.url).execute_script(sql)
        else:
            SqliteStore.from_url(self.url).execute_script(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "postgresql":
            with psycopg.connect(self.url) as conn:
                return list(conn.execute(sql).fetchall())
        with sqlite3.connect(self.url.removeprefix("sqlite:///")) as lite:
            return lite.execute(sql).fetchall()

    def outbox(self) -> int:
        table = "ackbus.outbox" if self.kind == "postgresql" else "ackbus_outbox"
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


async def run_tx_sender(
    procs: Procs, hub: str, db: Db, mode: str, orders: list[str]
) -> subprocess.Popen[bytes]:
    """Run tests/durable/tx_sender.py (instance "front-1" of service "front") to its end."""
    proc = procs.start(
        str(TX_SENDER), "--hub", hub, "--store", db.url, "--mode", mode,
        "--orders", ",".join(orders), ready=b"ready", timeout=30.0,
    )  # fmt: skip
    await asyncio.to_thread(proc.wait, 60)
    return proc


def outcome(proc: subprocess.Popen[bytes]) -> list[str]:
    """The statuses of the reports a tx_sender.py run printed."""
    assert proc.stdout is not None
    lines = proc.stdout.read().decode().splitlines()
    assert lines, f"no outcome: {proc.stderr.read() if proc.stderr else b''!r}"
    return [status for _, status in json.loads(lines[-1])]


def order_receiver(procs: Procs) -> tuple[str, Endpoint, Counter[str]]:
    """A hub process, and an endpoint of service "table" (not started) counting the
    ``poker.StartHand`` messages it handles by ``table_id``."""
    port = free_port()
    procs.hub(port)
    hub = f"tcp://127.0.0.1:{port}"
    got: Counter[str] = Counter()

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        got[msg.table_id] += 1

    table = Endpoint("table", hub, heartbeat=helpers.HEARTBEAT, policy=POLICY)
    table.register_handler(table_pb2.StartHand, on_start_hand)
    return hub, table, got
