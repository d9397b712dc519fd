"""Store rows read back from disk, as a restarting endpoint and ``ackbus dead-letters``
read them: a row that is not what ackbus wrote must end in a
:class:`~ackbus.StoreError` naming it, never another exception, and a row that reads
back must be one the runtime can use.

An input is a table (its first byte) and a row of SQLite values (NULL, INTEGER, REAL,
TEXT, BLOB: :func:`pack_row`), written with SQL into a real store's table (SQLite's
column affinities apply, as on disk) and read back through the store. The structured
mutations change one column: another SQLite type, an edge value, an id of the wrong
length, the policy's JSON value by value, the frame's header or envelope.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import legacy_targets
import wire_targets as w
from ackbus import Policy, StoreError
from ackbus._dead_letters import describe, summary_line
from ackbus._types import DeliveryReport, Kind
from ackbus.endpoint._durable import _dedupe_record
from ackbus.store import SqliteStore
from ackbus.store._rows import policy_from_json, policy_json
from ackbus.store._sqlite import select_inbox
from ackbus.wire import KIND_COMMAND, KIND_EVENT, encode_message

TABLES: Final = ("outbox", "inbox", "dead_letters", "meta")
COLUMNS: Final = {"outbox": 9, "inbox": 7, "dead_letters": 10, "meta": 2}

# --------------------------------------------------------------------------- one row

_NULL, _INT, _REAL, _TEXT, _BLOB = range(5)
_I64: Final = struct.Struct("<q")
_F64: Final = struct.Struct("<d")
_LEN: Final = struct.Struct("<H")


def pack_row(values: Sequence[Any]) -> bytes:
    out = bytearray()
    for v in values:
        if v is None:
            out.append(_NULL)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(_INT)
            out += _I64.pack(max(min(v, 2**63 - 1), -(2**63)))
        elif isinstance(v, float):
            out.append(_REAL)
            out += _F64.pack(v)
        elif isinstance(v, str):
            raw = v.encode("utf-8", "replace")[:0xFFFF]
            out.append(_TEXT)
            out += _LEN.pack(len(raw)) + raw
        else:
            raw = bytes(v)[:0xFFFF]
            out.append(_BLOB)
            out += _LEN.pack(len(raw)) + raw
    return bytes(out)


def unpack_row(data: bytes) -> list[Any]:
    """:func:`pack_row` reversed; any bytes are some row (a cut value ends it)."""
    values: list[Any] = []
    pos = 0
    while pos < len(data) and len(values) < 12:
        tag = data[pos] % 5
        pos += 1
        if tag == _NULL:
            values.append(None)
        elif tag in (_INT, _REAL):
            if pos + 8 > len(data):
                break
            (value,) = (_I64 if tag == _INT else _F64).unpack_from(data, pos)
            values.append(value)
            pos += 8
        else:
            if pos + 2 > len(data):
                break
            (size,) = _LEN.unpack_from(data, pos)
            raw = data[pos + 2 : pos + 2 + size]
            values.append(raw.decode("utf-8", "replace") if tag == _TEXT else raw)
            pos += 2 + size
    return values


# --------------------------------------------------------------------------- the check


class _Db:
    """One claimed store in a temporary folder (tmpfs when there is one), reused."""

    store: SqliteStore | None = None
    conn: sqlite3.Connection

    @classmethod
    def get(cls) -> tuple[SqliteStore, sqlite3.Connection]:
        if cls.store is None:
            shm = Path("/dev/shm")
            folder = tempfile.mkdtemp(prefix="ackbus-fuzz-", dir=shm if shm.is_dir() else None)
            cls.store = SqliteStore(Path(folder) / "store.db")
            cls.store.claim("fuzz", "f-1")
            cls.conn = cls.store._claimed()
        return cls.store, cls.conn


def check(data: bytes) -> None:
    if not data:
        return
    table = TABLES[data[0] % len(TABLES)]
    row = unpack_row(data[1:])
    row = (row + [None] * COLUMNS[table])[: COLUMNS[table]]
    store, conn = _Db.get()
    conn.execute(f"DELETE FROM ackbus_{table}")
    try:
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO ackbus_{table} VALUES ({marks})", row)
    except (sqlite3.Error, OverflowError):
        return  # a row SQLite refuses cannot be on disk
    try:
        error = _read_back(store, conn, table)
    finally:
        conn.execute(f"DELETE FROM ackbus_{table}")
        if table == "meta":
            conn.execute("INSERT INTO ackbus_meta VALUES ('service', 'fuzz'), ('instance', 'f-1')")
    if error is not None:
        assert not w.hides_memory_error(error), "a MemoryError became a StoreError"


def _read_back(store: SqliteStore, conn: sqlite3.Connection, table: str) -> StoreError | None:
    """What the runtime does with rows it reads back (Durable's start and resume, a
    duplicate's lookup, the dead-letter commands, claiming the store); the StoreError
    that refused a row, if one did."""
    try:
        _use(store, conn, table)
    except StoreError as exc:
        return exc
    return None


def _use(store: SqliteStore, conn: sqlite3.Connection, table: str) -> None:
    if table == "outbox":
        for r in store.pending_outbox():
            pol = policy_from_json(r.policy, "outbox")
            pol.with_(deadline=max(r.deadline - 1e9, 0.001))
            DeliveryReport(r.msg_id, r.msg_type)
    elif table == "inbox":
        for rec in store.inbox_since(-math.inf):
            _dedupe_record(rec, 0.0)
            assert select_inbox(conn, rec.msg_id) == rec
    elif table == "dead_letters":
        for d in store._dead_letters_of(conn):
            summary_line(d)
            describe(d)
    else:
        store._meta(conn, "fuzz", None)


# --------------------------------------------------------------------------- valid rows


def random_row(rng: random.Random) -> tuple[str, list[Any]]:
    table = rng.choice(TABLES)
    mid = rng.randbytes(16)
    kind = rng.choice((KIND_COMMAND, KIND_EVENT))
    msg_type = rng.choice(("poker.StartHand", "ev.Tick", "Legacy"))
    frame = encode_message(
        mid, msg_type, rng.randbytes(rng.randrange(20)), envelope=w.random_envelope(rng), kind=kind
    )
    now = 1_764_000_000.0 + rng.random()
    if table == "outbox":
        pol = Policy(
            kind=Kind.EVENT if kind == KIND_EVENT else Kind.COMMAND,
            subscribers=("poker.Audit",) * rng.randrange(2),
            max_attempts=rng.choice((1, 10)),
        )
        row = [mid, msg_type, rng.choice(("", "table")), kind, rng.randrange(2),
               policy_json(pol), now, now + 30, frame]  # fmt: skip
    elif table == "inbox":
        error = rng.choice((("", ""), ("ValueError", "bad")))
        row = [mid, rng.randrange(1, 8), now, rng.randbytes(rng.choice((0, 4))), *error,
               rng.randrange(2)]  # fmt: skip
    elif table == "dead_letters":
        row = [mid, msg_type, "table", kind, "timeout", 3, "no ack", now, now + 1, frame]
    else:
        row = [rng.choice(("service", "instance", "pid")), rng.choice(("fuzz", "f-1", "7"))]
    return table, row


def _encode(table: str, row: Sequence[Any]) -> bytes:
    return bytes([TABLES.index(table)]) + pack_row(row)


def seeds() -> list[bytes]:
    rng = random.Random(3)
    return [_encode(*random_row(rng)) for _ in range(60)]


EDGES: Final[tuple[Any, ...]] = (
    None, 0, 1, -1, 7, 8, 99, 2**63 - 1, -(2**63), 0.0, -0.0, 1e308, -1e308, math.inf,
    1.5, 1e20, "", "x", "a b", "1.5", "2024", "{}", "[]", "null", b"", b"\x00" * 15,
    b"\x00" * 16, b"\x00" * 17, "\x00", "é" * 300,
)  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 2 or rng.random() < 0.2:
        return _encode(*random_row(rng))
    table = TABLES[data[0] % len(TABLES)]
    row = unpack_row(data[1:])
    if not row:
        return _encode(*random_row(rng))
    i = rng.randrange(len(row))
    value = row[i]
    action = rng.randrange(4)
    if action == 0:
        row[i] = rng.choice(EDGES)
    elif action == 1:  # the same value as another SQLite type
        row[i] = rng.choice((str(value), repr(value).encode(), None, len(str(value)), 0.5))
    elif isinstance(value, str) and value.startswith("{"):  # the policy's JSON
        try:
            row[i] = legacy_targets.dumps_json(
                legacy_targets.mutate_json(json.loads(value), rng), rng
            ).decode()
        except (ValueError, RecursionError):
            row[i] = value[: rng.randrange(len(value) + 1)]
    elif isinstance(value, bytes) and len(value) > 60:  # a frame
        row[i] = w.mutate_item(value, rng, w.flip)
    else:
        row[i] = rng.choice(EDGES)
    if rng.random() < 0.05:
        table = rng.choice(TABLES)
    return _encode(table, row)
