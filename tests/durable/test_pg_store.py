"""The PostgreSQL store against a real server (tests/support/pg_server.py): URLs, bad
input (a wrong URL, an unreachable server, a refused login, a missing database, a newer
or foreign schema), instance claims and their release by a killed process, the takeover
of a gone instance's outbox, and the shared inbox deciding between siblings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from ackbus import StoreError
from ackbus.store import Durability, InboxRecord, OutboxRow, PostgresStore, _pg, open_store
from ackbus.store._pg_schema import SCHEMA_VERSION, parse_url
from ackbus.store._unit import Transaction
from pg_server import PASSWORD, PASSWORD_ROLE, PgServer
from proc_harness import ROOT, free_port

TIMEOUT = 10.0


def row(i: int) -> OutboxRow:
    return OutboxRow(i.to_bytes(16, "big"), "T", "T", 1, False, "{}", 1.0, 2.0, b"frame")


def sql(url: str, text: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run ``text`` on a connection of the test's own; its rows, if any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(text, params)
        return list(cur.fetchall()) if cur.description else []


@pytest.fixture
async def started(pg_url: str) -> AsyncIterator[PostgresStore]:
    """A claimed and started store (instance "a" of service "svc")."""
    store = PostgresStore(pg_url)
    store.claim("svc", "a")
    store.start(asyncio.get_running_loop())
    try:
        yield store
    finally:
        await asyncio.wait_for(store.aclose(), TIMEOUT)


def test_url_forms() -> None:
    url = parse_url("postgresql://u:secret@db.example:6543/app?sslmode=disable")
    assert url.schema == "ackbus"
    assert url.durability is Durability.FULL
    assert url.location == "postgresql://u:***@db.example:6543/app?sslmode=disable"
    assert "secret" in url.conninfo
    assert "connect_timeout=10" in url.conninfo
    other = parse_url("postgres:///app?schema=bus_2&durability=relaxed&connect_timeout=3")
    assert (other.schema, other.durability) == ("bus_2", Durability.RELAXED)
    assert "schema" not in other.conninfo
    assert other.conninfo.count("connect_timeout") == 1
    for bad, says in [
        ("postgresql:///app?schema=Robert'); DROP", "schema must be"),
        ("postgresql:///app?durability=never", "durability must be"),
        ("postgresql:///app?no_such_libpq_option=1", "bad store URL"),
        ("mysql://host/app", "store URL must look like"),
    ]:
        with pytest.raises(ValueError, match=says):
            open_store(bad)


def test_an_unreachable_server_is_a_store_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/app?connect_timeout=2"
    store = PostgresStore(url)
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL: .*127\.0\.0\.1"):
        store.claim("svc", None)


def test_a_refused_login_is_a_store_error_without_the_password(pg_server: PgServer) -> None:
    db = pg_server.new_database()
    wrong = PostgresStore(pg_server.tcp_url(db, user=PASSWORD_ROLE, password="wrong-one"))
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        wrong.claim("svc", None)
    assert "wrong-one" not in str(caught.value)
    assert "***" in str(caught.value)
    right = PostgresStore(pg_server.tcp_url(db, user=PASSWORD_ROLE, password=PASSWORD))
    assert right.claim("svc", None)
    asyncio.run(right.aclose())


def test_a_missing_database_is_a_store_error(pg_server: PgServer) -> None:
    with pytest.raises(StoreError, match='database "no_such_db" does not exist'):
        PostgresStore(pg_server.url("no_such_db")).claim("svc", None)


def test_schema_is_created_with_its_version_and_reused(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    first.claim("svc", None)
    asyncio.run(first.aclose())
    assert sql(pg_url, "SELECT value FROM ackbus.meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    second = PostgresStore(pg_url)
    second.claim("svc", None)
    asyncio.run(second.aclose())
    other = PostgresStore(pg_url + "&schema=elsewhere")  # a second, independent schema
    other.claim("svc", None)
    asyncio.run(other.aclose())
    assert sql(pg_url, "SELECT count(*) FROM elsewhere.instances") == [(1,)]


def test_a_newer_schema_is_refused_untouched(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.claim("svc", None)
    asyncio.run(store.aclose())
    sql(pg_url, "UPDATE ackbus.meta SET value = '99' WHERE key = 'schema_version'")
    before = sql(pg_url, "SELECT count(*) FROM ackbus.instances")
    with pytest.raises(StoreError, match=r"layout version 99, made by a newer ackbus.*upgrade"):
        PostgresStore(pg_url).claim("svc", None)
    assert sql(pg_url, "SELECT count(*) FROM ackbus.instances") == before


def test_a_foreign_schema_of_the_same_name_is_refused(pg_url: str) -> None:
    sql(pg_url, "CREATE SCHEMA ackbus; CREATE TABLE ackbus.orders (id int)")
    with pytest.raises(StoreError, match="not an ackbus store"):
        PostgresStore(pg_url).claim("svc", None)
    assert sql(pg_url, "SELECT count(*) FROM ackbus.orders") == [(0,)]


def test_an_instance_is_claimed_by_one_live_process(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    assert first.claim("svc", "i1") == "i1"
    with pytest.raises(StoreError, match=r"instance 'i1' of service 'svc' is in use .*pid"):
        PostgresStore(pg_url).claim("svc", "i1")
    sibling = PostgresStore(pg_url)
    fresh = sibling.claim("svc", None)  # no instance=: a fresh identity per start
    assert len(fresh) == 32
    asyncio.run(first.aclose())
    again = PostgresStore(pg_url)
    assert again.claim("svc", "i1") == "i1"
    asyncio.run(again.aclose())
    asyncio.run(sibling.aclose())


def test_a_killed_process_releases_its_claim(pg_url: str) -> None:
    code = textwrap.dedent(
        f"""
        import time
        from ackbus.store import PostgresStore
        store = PostgresStore({pg_url!r})
        store.claim("svc", "i1")
        print("claimed", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT / "runtime")},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"claimed"
        with pytest.raises(StoreError, match="in use by another live process"):
            PostgresStore(pg_url).claim("svc", "i1")
        proc.kill()
        proc.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT  # the server notices the closed socket
        while True:
            store = PostgresStore(pg_url)
            try:
                store.claim("svc", "i1")
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        asyncio.run(store.aclose())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


async def test_a_gone_instances_outbox_is_taken_over_by_the_next_one(pg_url: str) -> None:
    gone = PostgresStore(pg_url)
    gone.claim("svc", "gone")
    gone.start(asyncio.get_running_loop())
    await asyncio.wait_for(
        asyncio.gather(*(gone.put_outbox(row(i)).wait() for i in range(3))), TIMEOUT
    )
    gone.forget_outbox(row(1).msg_id)
    await asyncio.wait_for(gone.aclose(), TIMEOUT)
    live = PostgresStore(pg_url)  # another service's instance takes nothing
    live.claim("other", None)
    assert live.pending_outbox() == []
    await live.aclose()
    heir = PostgresStore(pg_url)
    heir.claim("svc", None)
    assert heir.pending_outbox() == [row(0), row(2)]
    assert sql(pg_url, "SELECT count(*) FROM ackbus.instances WHERE instance = 'gone'") == [(0,)]
    await heir.aclose()


async def test_outbox_inbox_dead_letters_and_pruning(started: PostgresStore, pg_url: str) -> None:
    store = started
    await asyncio.wait_for(store.put_outbox(row(1)).wait(), TIMEOUT)
    await asyncio.wait_for(store.put_outbox(row(2)).wait(), TIMEOUT)
    store.dead_letter(row(2).msg_id, "no-route", 3, "nobody")
    old = InboxRecord(b"o" * 16, 1, 100.0)
    new = InboxRecord(b"n" * 16, 3, time.time(), b"", "Reject", "no", True)
    await asyncio.wait_for(store.put_inbox(old).wait(), TIMEOUT)
    await asyncio.wait_for(store.put_inbox(new).wait(), TIMEOUT)
    assert store.pending_outbox() == [row(1)]
    assert store.inbox_since(0) == [old, new]
    assert store.inbox_since(0, limit=1) == [new]
    store.prune_inbox(200.0)
    await asyncio.wait_for(store.put_inbox(new).wait(), TIMEOUT)  # a no-op that waits
    assert store.inbox_since(0) == [new]
    [letter] = store.dead_letters()
    assert (letter.msg_id, letter.reason, letter.attempts, letter.error) == (
        row(2).msg_id, "no-route", 3, "nobody",
    )  # fmt: skip
    assert store.find_dead_letters(row(2).msg_id.hex()[:30]) == [letter]
    assert store.remove_dead_letters([row(2).msg_id]) == 1
    assert store.counts() == {"outbox": 1, "inbox": 1, "dead_letters": 0}


def unit(msg_id: bytes, *writes: tuple[str, tuple[object, ...]]) -> Transaction:
    tx = Transaction(owner=None)
    for text, params in writes:
        tx.execute(text, params)
    tx.close(InboxRecord(msg_id, 1, time.time()))
    return tx


async def test_a_sibling_finds_the_message_in_the_shared_inbox(
    started: PostgresStore, pg_url: str
) -> None:
    store = started
    store.execute_script("CREATE TABLE effects (msg_id bytea NOT NULL)")
    sibling = PostgresStore(pg_url)
    sibling.claim("svc", "b")
    sibling.start(asyncio.get_running_loop())
    try:
        msg_id = b"m" * 16
        first = unit(msg_id, ("INSERT INTO effects VALUES (%s)", (msg_id,)))
        await asyncio.wait_for(store.put_unit(first).wait(), TIMEOUT)
        assert first.plain
        retry = unit(msg_id, ("INSERT INTO effects VALUES (%s)", (msg_id,)))
        await asyncio.wait_for(sibling.put_unit(retry).wait(), TIMEOUT)
        assert retry.duplicate is not None
        assert retry.duplicate.msg_id == msg_id
        assert sql(pg_url, "SELECT count(*) FROM effects") == [(1,)]
        broken = unit(b"x" * 16, ("INSERT INTO no_such_table VALUES (1)", ()))
        ok = unit(b"y" * 16, ("INSERT INTO effects VALUES (%s)", (b"y" * 16,)))
        batch = sibling.put_unit(broken)
        assert sibling.put_unit(ok) is batch
        await asyncio.wait_for(batch.wait(), TIMEOUT)  # the rest of the batch commits
        assert broken.failed is not None
        assert "no_such_table" in str(broken.failed)
        assert ok.plain
        assert sql(pg_url, "SELECT count(*) FROM ackbus.inbox") == [(2,)]  # m and y
    finally:
        await asyncio.wait_for(sibling.aclose(), TIMEOUT)


@pytest.mark.parametrize("holder_ends", ["commit", "rollback", "never"])
async def test_the_databases_lock_decides_between_concurrent_runs(
    pg_url: str, holder_ends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling's uncommitted record of the same id (its commit in progress) makes this
    commit wait: a duplicate if the sibling commits, this run's effect if it rolls back
    (as the server does for a sibling whose connection died); if the holder outlasts the
    store's lock timeout (here 0.5 s), the unit is busy: nothing of it ran, retry later."""
    session = [q for q in _pg._SESSION if "lock_timeout" not in q]
    monkeypatch.setattr(_pg, "_SESSION", (*session, "SET lock_timeout = '500ms'"))
    store = PostgresStore(pg_url)
    store.claim("svc", "a")
    store.start(asyncio.get_running_loop())
    store.execute_script("CREATE TABLE effects (msg_id bytea NOT NULL)")
    msg_id = b"c" * 16
    with psycopg.connect(pg_url) as holder:  # the sibling, mid-transaction
        holder.execute(
            "INSERT INTO ackbus.inbox VALUES ('svc', %s, 1, 1.0, '', '', '', false)", (msg_id,)
        )
        holder.execute("INSERT INTO effects VALUES (%s)", (msg_id,))
        mine = unit(msg_id, ("INSERT INTO effects VALUES (%s)", (msg_id,)))
        batch = store.put_unit(mine)
        await asyncio.sleep(0.2)
        assert not batch.done  # waiting for the holder's row
        if holder_ends == "commit":
            holder.commit()
        elif holder_ends == "rollback":
            holder.rollback()
        await asyncio.wait_for(batch.wait(), TIMEOUT)
        holder.rollback()
    await asyncio.wait_for(store.aclose(), TIMEOUT)
    assert (mine.duplicate is not None) == (holder_ends == "commit")
    assert (mine.busy is not None) == (holder_ends == "never")
    assert mine.failed is None
    effects = 0 if holder_ends == "never" else 1
    assert sql(pg_url, "SELECT count(*) FROM effects") == [(effects,)]
