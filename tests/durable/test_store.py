"""The SQLite store alone: opening, refusing, ownership, identity, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ackbus import Policy, StoreError
from ackbus.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Durability,
    InboxRecord,
    OutboxRow,
    SqliteStore,
    open_store,
)
from ackbus.store._rows import policy_json
from ackbus.wire import encode_message


def row(i: int) -> OutboxRow:
    """A row as an endpoint writes it (rows read back are checked: store/_rows.py)."""
    mid = i.to_bytes(16, "big")
    frame = encode_message(mid, "T", b"")
    return OutboxRow(mid, "T", "T", 1, False, policy_json(Policy()), 1.0, 2.0, frame)


def test_url_forms_and_durability(tmp_path: Path) -> None:
    store = open_store("sqlite:///relative/dir/x.db")
    assert isinstance(store, SqliteStore)
    assert store.path == Path("relative/dir/x.db")
    assert store.durability is Durability.FULL
    absolute = open_store(f"sqlite:///{tmp_path}/y.db?durability=relaxed")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == tmp_path / "y.db"
    assert absolute.durability is Durability.RELAXED
    assert open_store(absolute) is absolute
    for bad in ("mysql:///x", "sqlite://host/x.db", "sqlite:///x.db?durability=never",
                "sqlite:///x.db?fsync=0", "sqlite:///"):  # fmt: skip
        with pytest.raises(ValueError, match=r"store URL|durability"):
            open_store(bad)


def test_new_store_is_marked_as_ackbus_and_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    instance = store.claim("table", None)
    assert len(instance) == 32
    assert store._claimed().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    relaxed = SqliteStore(tmp_path / "r.db", Durability.RELAXED)
    relaxed.claim("table", None)
    assert relaxed._claimed().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    asyncio.run(relaxed.aclose())
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    asyncio.run(store.aclose())


def test_identity_is_kept_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    kept = first.claim("table", "t-1")
    asyncio.run(first.aclose())
    again = SqliteStore(path)
    assert again.claim("table", None) == kept == "t-1"
    asyncio.run(again.aclose())
    with pytest.raises(StoreError, match="belongs to instance 't-1'"):
        SqliteStore(path).claim("table", "t-2")
    with pytest.raises(StoreError, match="belongs to service 'table'"):
        SqliteStore(path).claim("lobby", None)


def test_second_owner_in_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from ackbus.store import SqliteStore
            SqliteStore({str(path)!r}).claim("table", None)
            print("held", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(
            StoreError, match=rf"in use by another live process \(pid {holder.pid}\)"
        ):
            SqliteStore(path).claim("table", None)
    finally:
        holder.kill()
        holder.wait(5)
    # The kernel released the lock with the process: the store opens again.
    store = SqliteStore(path)
    store.claim("table", None)
    asyncio.run(store.aclose())


def test_foreign_and_corrupt_files_are_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_bytes(b"these are my notes, not a database\n" * 200)
    before = text.read_bytes()
    with pytest.raises(StoreError, match="corrupt or not a database"):
        SqliteStore(text).claim("table", None)
    assert text.read_bytes() == before

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    with pytest.raises(StoreError, match="another application"):
        SqliteStore(foreign).claim("table", None)
    with sqlite3.connect(foreign) as db:
        assert db.execute("SELECT name FROM users").fetchall() == [("ada",)]
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0

    newer = tmp_path / "newer.db"
    store = SqliteStore(newer)
    store.claim("table", None)
    asyncio.run(store.aclose())
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer ackbus"):
        SqliteStore(newer).claim("table", None)

    with pytest.raises(StoreError, match="no such ackbus store"):
        SqliteStore(tmp_path / "missing.db").dead_letters()


async def test_group_commit_puts_concurrent_writes_in_few_transactions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    await asyncio.gather(*(store.put_outbox(row(i)).wait() for i in range(500)))
    writer = store.writer
    assert writer.ops == 500
    assert writer.commits <= 3, "500 writes queued together should share a transaction"
    assert len(store.pending_outbox()) == 500
    for i in range(0, 500, 2):
        store.forget_outbox(row(i).msg_id)
    await store.put_inbox(InboxRecord(b"i" * 16, 0, 5.0)).wait()
    assert [r.msg_id for r in store.pending_outbox()] == [row(i).msg_id for i in range(1, 500, 2)]
    assert [r.msg_id for r in store.inbox_since(4.0)] == [b"i" * 16]
    assert store.inbox_since(6.0) == []
    await store.put_inbox(InboxRecord(b"j" * 16, 0, 6.0)).wait()
    await store.put_inbox(InboxRecord(b"k" * 16, 0, 7.0)).wait()
    newest = [r.msg_id for r in store.inbox_since(0.0, limit=2)]
    assert newest == [b"j" * 16, b"k" * 16], "the newest records, oldest first"
    await store.aclose()
    await store.aclose()  # idempotent
    reopened = SqliteStore(tmp_path / "s.db")
    reopened.claim("table", None)
    assert len(reopened.pending_outbox()) == 250
    await reopened.aclose()


async def test_a_failed_transaction_reports_to_every_waiter(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    good = store.put_outbox(row(1))
    bad = store.write(("INSERT INTO no_such_table VALUES (1)", ()))
    assert good is bad, "queued together: one batch"
    with pytest.raises(StoreError, match="no_such_table"):
        await good.wait()
    assert store.pending_outbox() == [], "the whole batch rolled back"
    await store.put_outbox(row(2)).wait()  # the writer survives a failed batch
    assert len(store.pending_outbox()) == 1
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        store.put_outbox(row(3))


async def test_a_store_with_damaged_pages_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    await asyncio.gather(*(store.put_outbox(row(i)).wait() for i in range(300)))
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xa5" * 4096 * 2)
    damaged = path.read_bytes()
    with pytest.raises(StoreError, match=r"(?s)is corrupt .*will not write to it"):
        SqliteStore(path).claim("table", None)
    assert path.read_bytes() == damaged, "nothing was overwritten"


async def test_a_disk_that_does_not_answer_fails_the_wait(tmp_path: Path) -> None:
    import time

    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    writer = store.writer
    writer._commit_timeout = 0.2
    commit = writer._commit

    def hanging_disk(conn: sqlite3.Connection, batch: object) -> None:
        time.sleep(0.6)
        commit(conn, batch)  # type: ignore[arg-type]

    writer._commit = hanging_disk  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(StoreError, match="no commit within"):
        await store.put_outbox(row(1)).wait()
    assert time.monotonic() - started < 0.5
    await store.aclose()  # the late commit still lands; closing waits for it
    reopened = SqliteStore(tmp_path / "s.db")
    reopened.claim("table", None)
    assert len(reopened.pending_outbox()) == 1
    await reopened.aclose()


@pytest.mark.parametrize("variables", [999, 20])
def test_runs_of_one_statement_commit_as_multi_row_statements(
    tmp_path: Path, variables: int
) -> None:
    """Consecutive outbox inserts, deletes and inbox inserts run as multi-row statements
    (chunked to the connection's variable limit: 20 allows two outbox rows per
    statement) with exactly executemany's effect: every row, in order, duplicates
    ignored."""
    from ackbus.store._sqlite import _DELETE_OUTBOX, INSERT_INBOX, INSERT_OUTBOX
    from ackbus.store._writer import _apply, each_value

    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    conn.execute(
        "CREATE TABLE ackbus_outbox (id BLOB PRIMARY KEY, type TEXT, destination TEXT, "
        "kind INT, request INT, policy TEXT, created_at REAL, deadline REAL, frame BLOB)"
    )
    conn.execute(
        "CREATE TABLE ackbus_inbox (id BLOB PRIMARY KEY, outcome INT, finished_at REAL, "
        "response BLOB, error_type TEXT, error_message TEXT, error_permanent INT)"
    )
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
    rows = [row(i) for i in range(701)] + [row(5)]  # the duplicate is ignored
    _apply(conn, [(INSERT_OUTBOX, r) for r in rows])
    stored = conn.execute("SELECT * FROM ackbus_outbox ORDER BY rowid").fetchall()
    assert stored == [(*r[:4], 0, *r[5:]) for r in rows[:701]]
    _apply(conn, [(_DELETE_OUTBOX, (row(i).msg_id,)) for i in range(0, 701, 3)])
    left = [r[0] for r in conn.execute("SELECT id FROM ackbus_outbox ORDER BY rowid")]
    assert left == [row(i).msg_id for i in range(701) if i % 3]
    # An ack group's ids in one operation (each_value): the same multi-row statements.
    _apply(conn, [each_value(_DELETE_OUTBOX, [row(i).msg_id for i in range(1, 701, 3)])])
    left = [r[0] for r in conn.execute("SELECT id FROM ackbus_outbox ORDER BY rowid")]
    assert left == [row(i).msg_id for i in range(701) if i % 3 == 2]
    with pytest.raises(ValueError, match="one-parameter"):
        each_value(INSERT_OUTBOX, [])
    records = [InboxRecord(bytes([i]) * 16, 1, float(i), b"r", "E", "m", True) for i in range(97)]
    _apply(conn, [(INSERT_INBOX, r) for r in records + records[:3]])
    got = conn.execute("SELECT * FROM ackbus_inbox ORDER BY rowid").fetchall()
    assert got == [(*r[:6], 1) for r in records]
    conn.close()


async def test_inbox_records_read_back_as_written(tmp_path: Path) -> None:
    """OK records without a response take a two-parameter statement; every record
    still reads back exactly as written, in order."""
    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    records = [
        InboxRecord(b"a" * 16, 1, 1.0),
        InboxRecord(b"b" * 16, 1, 2.0),
        InboxRecord(b"c" * 16, 1, 3.0, b"response"),
        InboxRecord(b"d" * 16, 3, 4.0, b"", "Reject", "no", True),
        InboxRecord(b"e" * 16, 1, 5.0),
        InboxRecord(b"f" * 16, 1, 6.0, b"", "", "", True),
    ]
    batches = {store.put_inbox(r) for r in records}
    assert len(batches) == 1
    await batches.pop().wait()
    assert store.inbox_since(0.0) == records
    await store.aclose()


async def test_the_inbox_keys_one_senders_records_side_by_side(tmp_path: Path) -> None:
    """The inbox index holds each id's order key (SCHEMA_VERSION 2): one sender's
    records get consecutive keys, so inserts fill the index's last page instead of
    dirtying a random page each; reads give the ids back."""
    from ackbus.store._sqlite import select_inbox
    from ackbus.wire import IdSource, order_key

    store = SqliteStore(tmp_path / "s.db")
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    source = IdSource()
    records = [InboxRecord(source.next(), 1, float(i)) for i in range(50)]
    records.append(InboxRecord(source.next(), 3, 50.0, b"", "Reject", "no", True))
    await store.put_inbox(records[0]).wait()
    for r in records[1:]:
        batch = store.put_inbox(r)
    await batch.wait()
    assert store.inbox_since(0.0) == records
    await store.aclose()
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT id FROM ackbus_inbox ORDER BY rowid")
        keys = [int.from_bytes(k, "big") for (k,) in rows]
        assert [k - keys[0] for k in keys] == list(range(51))  # consecutive
        assert select_inbox(db, records[-1].msg_id) == records[-1]
        assert select_inbox(db, order_key(records[-1].msg_id)) is None
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


async def test_a_schema_1_store_is_converted_when_opened(tmp_path: Path) -> None:
    """A store written by an ackbus whose inbox held the ids themselves: opening it
    rewrites them as order keys, once, and every record reads back as before."""
    from ackbus.store._sqlite import select_inbox
    from ackbus.wire import IdSource, id_of_order_key

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    store.claim("table", None)
    store.start(asyncio.get_running_loop())
    source = IdSource()
    records = [InboxRecord(source.next(), 1, float(i), b"r" * (i % 2)) for i in range(20)]
    for r in records:
        batch = store.put_inbox(r)
    await batch.wait()
    await store.aclose()
    with sqlite3.connect(path) as db:  # as schema 1 had it: the ids themselves
        db.create_function("plain", 1, id_of_order_key, deterministic=True)
        db.execute("UPDATE ackbus_inbox SET id = plain(id)")
        db.execute("PRAGMA user_version=1")
        assert db.execute("SELECT id FROM ackbus_inbox ORDER BY rowid").fetchone()[0] == (
            records[0].msg_id
        )
    again = SqliteStore(path)
    again.claim("table", None)
    assert again.inbox_since(0.0) == records
    await again.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert select_inbox(db, records[7].msg_id) == records[7]
    reopened = SqliteStore(path)  # converted once: opening again changes nothing
    reopened.claim("table", None)
    assert reopened.inbox_since(0.0) == records
    await reopened.aclose()


def test_an_outbox_rows_policy_keeps_its_subscriber_policies() -> None:
    from ackbus import Kind, Policy, StoreError, SubscriberPolicy
    from ackbus.store._rows import policy_from_json, policy_json

    pol = Policy(
        kind=Kind.EVENT,
        deadline=5.0,
        subscribers=("poker.Audit", "poker.Lobby"),
        subscriber_policies=(SubscriberPolicy("poker.Audit", max_attempts=100, deadline=300.0),),
    )
    text = policy_json(pol)
    assert "life" not in text  # derived, not stored
    back = policy_from_json(text, "row")
    assert back == pol
    assert back.life == 300.0
    for bad in (
        '"x"',
        '[{"service":"poker.Audit"}]',
        '[{"service":"poker.Other","max_attempts":null,"deadline":null}]',
    ):
        broken = text.replace(text[text.index("[{") : text.rindex("}]") + 2], bad)
        with pytest.raises(StoreError):
            policy_from_json(broken, "row")
