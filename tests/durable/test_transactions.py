"""Transactions on both stores, through a hub (in-memory transport): ``ep.transaction()``
(the user's rows and typed sends commit as one; rolled back, nothing is written or sent),
``ctx.tx`` with the same entry points (``await ctx.tx.execute``, sends joining it through
a generated client bound to it), PostgreSQL's live ``ctx.tx`` reading what it writes, from
an ``async def`` handler and from a plain ``def`` one, and the bound on live transactions.

Each test runs on SQLite and on PostgreSQL (a real server, tests/support/pg_server.py):
the code is the same but for the URL and the SQL's parameter style."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import helpers
import psycopg
import pytest
from ackbus import BlockingEndpoint, Cancelled, Context, StoreError
from ackbus.endpoint import Endpoint
from ackbus.store import BlockingTx, PostgresStore
from helpers import eventually
from poker import table_ackbus, table_pb2
from store_db import Db

FAST = helpers.FAST.with_(deadline=5.0)


def endpoint(bus: helpers.HubBus, service: str, store: Any = None, **kw: Any) -> Endpoint:
    return Endpoint(
        service,
        bus.address,
        backend=bus.backend,
        policy=FAST,
        heartbeat=helpers.HEARTBEAT,
        store=store,
        **kw,
    )


def receiver(bus: helpers.HubBus, got: list[str]) -> Endpoint:
    table = endpoint(bus, "table")

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg.table_id)

    table.register_handler(table_pb2.StartHand, on_start_hand)
    return table


async def test_a_user_transaction_commits_its_rows_and_typed_sends_as_one(
    memory_hub: helpers.HubBus, db: Db
) -> None:
    got: list[str] = []
    async with receiver(memory_hub, got), endpoint(memory_hub, "dealer", db.url) as dealer:
        await asyncio.sleep(0.05)
        async with dealer.transaction() as tx:
            await tx.execute(f"INSERT INTO orders VALUES ({db.p}, {db.p})", ("o1", 6))
            report = await table_ackbus.TableClient(tx).send_start_hand(table_id="o1", seats=6)
            assert not report.done, "joined the transaction: sent only after the commit"
            assert got == []
        assert await asyncio.wait_for(report.wait(), 5.0)
        await asyncio.sleep(0.1)
    assert got == ["o1"], "delivered once"
    assert db.rows("SELECT id, seats FROM orders") == [("o1", 6)]
    assert db.outbox() == 0


async def test_a_rolled_back_user_transaction_writes_and_sends_nothing(
    memory_hub: helpers.HubBus, db: Db
) -> None:
    got: list[str] = []
    async with receiver(memory_hub, got), endpoint(memory_hub, "dealer", db.url) as dealer:
        await asyncio.sleep(0.05)
        with pytest.raises(KeyError):  # noqa: PT012 - the block is the transaction
            async with dealer.transaction() as tx:
                await tx.execute(f"INSERT INTO orders VALUES ({db.p}, {db.p})", ("o2", 4))
                report = await tx.send(table_pb2.StartHand(table_id="o2"))
                raise KeyError("the user's code failed")
        assert isinstance(report.error, Cancelled)
        assert "rolled back" in str(report.error)
        with pytest.raises(RuntimeError, match="over"):
            await tx.send(table_pb2.StartHand(table_id="late"))
        with pytest.raises(TypeError, match="request"):
            await tx.request(table_pb2.StartHand(), table_pb2.StartHand)
        # A failing statement rolls back the whole transaction too.
        with pytest.raises((StoreError, psycopg.Error)):  # noqa: PT012 - as above
            async with dealer.transaction() as tx:
                await tx.send(table_pb2.StartHand(table_id="o3"))
                await tx.execute("INSERT INTO no_such_table VALUES (1)")
        await asyncio.sleep(0.3)
    assert got == []
    assert db.rows("SELECT id FROM orders") == []
    assert db.outbox() == 0


async def test_handler_sends_through_ctx_tx_join_it_and_leave_only_after_its_commit(
    memory_hub: helpers.HubBus, db: Db
) -> None:
    got: list[str] = []
    runs: list[str] = []

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        assert ctx.tx is not None
        runs.append(msg.table_id)
        await ctx.tx.execute(f"INSERT INTO orders VALUES ({db.p}, {db.p})", (msg.table_id, 2))
        report = await table_ackbus.TableClient(ctx.tx).send_start_hand(
            table_id="audit-" + msg.table_id, to="audit"
        )
        assert not report.done
        if msg.table_id == "bad":
            raise RuntimeError("fails after writing and sending: none of it happens")

    async def on_audit(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg.table_id)

    dealer = endpoint(memory_hub, "dealer", db.url)
    dealer.register_handler(table_pb2.StartHand, on_start_hand)
    audit = endpoint(memory_hub, "audit")
    audit.register_handler(table_pb2.StartHand, on_audit)
    async with dealer, audit, endpoint(memory_hub, "front") as front:
        await asyncio.sleep(0.05)
        good = await front.send(table_pb2.StartHand(table_id="good"), to="dealer")
        bad = await front.send(
            table_pb2.StartHand(table_id="bad"), to="dealer", wait_ack=True, timeout=0.5
        )
        await eventually(lambda: got == ["audit-good"], timeout=5.0)
    assert good
    assert not bad
    assert runs.count("bad") >= 1
    assert db.rows("SELECT id FROM orders") == [("good",)]


async def test_the_blocking_endpoints_transaction_commits_and_rolls_back(hub: str, db: Db) -> None:
    got: list[str] = []
    table = Endpoint("table", hub, policy=FAST, heartbeat=helpers.HEARTBEAT)

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg.table_id)

    table.register_handler(table_pb2.StartHand, on_start_hand)

    def dealer_thread() -> list[bool]:
        with BlockingEndpoint("dealer", hub, policy=FAST, store=db.url) as ep:
            with ep.transaction() as tx:
                tx.execute(f"INSERT INTO orders VALUES ({db.p}, {db.p})", ("b1", 3))
                sent = table_ackbus.TableBlockingClient(tx).send_start_hand(table_id="b1")
            try:
                with ep.transaction() as tx:
                    tx.execute(f"INSERT INTO orders VALUES ({db.p}, {db.p})", ("b2", 3))
                    dropped = tx.send(table_pb2.StartHand(table_id="b2"))
                    raise ValueError("rolled back")
            except ValueError:
                pass
            return [bool(ep.wait(sent, 5.0)), isinstance(dropped.error, Cancelled)]

    async with table:
        await asyncio.sleep(0.05)
        results = await asyncio.wait_for(asyncio.to_thread(dealer_thread), 30.0)
        await eventually(lambda: got == ["b1"], timeout=5.0)
    assert results == [True, True]
    assert db.rows("SELECT id FROM orders") == [("b1",)]


# -- PostgreSQL: a live ctx.tx ------------------------------------------------------------


@pytest.fixture
def pg(pg_url: str) -> Db:
    d = Db("postgresql", pg_url)
    d.script("CREATE TABLE counters (k text PRIMARY KEY, n integer NOT NULL)")
    d.script("INSERT INTO counters VALUES ('async', 0), ('sync', 0)")
    return d


async def test_pg_ctx_tx_reads_what_it_writes_from_async_and_def_handlers_once_each(
    memory_hub: helpers.HubBus, pg: Db
) -> None:
    """Read-modify-write through ``ctx.tx`` (no ``n = n + 1``): each message counts once,
    also when the deduper forgot and the message came again, and from a worker thread."""
    threads: set[str] = set()

    async def on_async(msg: table_pb2.StartHand, ctx: Context) -> None:
        assert ctx.tx is not None
        cur = await ctx.tx.execute("SELECT n FROM counters WHERE k = 'async' FOR UPDATE")
        (n,) = await cur.fetchone()
        await asyncio.sleep(0.001)
        await ctx.tx.execute("UPDATE counters SET n = %s WHERE k = 'async'", (n + 1,))
        conn = await ctx.tx.connection()  # type: ignore[attr-defined]
        assert conn.info.transaction_status.name == "INTRANS"

    def on_sync(msg: table_pb2.StartHand, ctx: Context) -> None:
        threads.add(threading.current_thread().name)
        tx = ctx.tx
        assert isinstance(tx, BlockingTx)
        row = tx.execute("SELECT n FROM counters WHERE k = 'sync' FOR UPDATE").fetchone()
        assert row is not None
        tx.execute("UPDATE counters SET n = %s WHERE k = 'sync'", (row[0] + 1,))

    a = endpoint(memory_hub, "a", pg.url, dedupe_capacity=1)
    a.register_handler(table_pb2.StartHand, on_async)
    s = endpoint(memory_hub, "s", pg.url, dedupe_capacity=1)
    s.register_handler(table_pb2.StartHand, on_sync)
    async with a, s, endpoint(memory_hub, "front") as front:
        await asyncio.sleep(0.05)
        for to in ("a", "s"):
            reports = await asyncio.gather(
                *(front.send(table_pb2.StartHand(table_id=str(i)), to=to) for i in range(20))
            )
            assert all(reports)
    assert sorted(pg.rows("SELECT k, n FROM counters")) == [("async", 20), ("sync", 20)]
    assert threading.current_thread().name not in threads


async def test_pg_live_transactions_are_bounded_by_the_pool(
    memory_hub: helpers.HubBus, pg: Db
) -> None:
    """``pool_size=3``: two live transactions at once (one connection stays the group
    commit's), so ten handlers that hold ``ctx.tx`` for a while queue for it."""
    now = 0
    most = 0

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        nonlocal now, most
        assert ctx.tx is not None
        await ctx.tx.execute("SELECT 1")
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.05)
        now -= 1

    store = PostgresStore(pg.url, pool_size=3)
    assert store.max_transactions == 2
    table = endpoint(memory_hub, "table", store)
    table.register_handler(table_pb2.StartHand, on_start_hand)
    async with table, endpoint(memory_hub, "front") as front:
        await asyncio.sleep(0.05)
        reports = await asyncio.gather(
            *(front.send(table_pb2.StartHand(table_id=str(i))) for i in range(10))
        )
    assert all(reports)
    assert most == 2


async def test_pg_handlers_at_once_follow_the_pool_and_the_rest_wait_at_the_hub(
    memory_hub: helpers.HubBus, pg: Db
) -> None:
    """With ``pool_size=3`` (``?pool_size=3`` in the URL) the endpoint's default
    ``max_concurrency`` is the pool's two live transactions: forty messages sent at once,
    whose handlers each hold ``ctx.tx`` for 50 ms, run at most two at a time, none ever
    waits for a connection (the slot is free whenever a handler asks), none fails or is
    retried, and the hub holds the others until a slot frees."""
    now = most = 0
    waited_for_a_connection = 0

    async def on_start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        nonlocal now, most
        now += 1
        most = max(most, now)
        try:
            assert ctx.tx is not None
            await ctx.tx.execute("SELECT pg_sleep(0.05)")
        finally:
            now -= 1

    store = PostgresStore(f"{pg.url}&pool_size=3")
    assert (store.pool_size, store.max_transactions) == (3, 2)
    acquire = store.acquire

    async def watched(timeout: float = 30.0) -> Any:
        nonlocal waited_for_a_connection
        slots = store._slots
        if slots is not None and slots.locked():
            waited_for_a_connection += 1
        return await acquire(timeout)

    store.acquire = watched  # type: ignore[method-assign]
    table = endpoint(memory_hub, "table", store)
    table.register_handler(table_pb2.StartHand, on_start_hand)
    assert table.max_concurrency == 2
    held_before = memory_hub.hub.stats.held
    async with table, endpoint(memory_hub, "front") as front:
        await asyncio.sleep(0.05)
        async with asyncio.timeout(30):
            reports = await asyncio.gather(
                *(front.send(table_pb2.StartHand(table_id=str(i))) for i in range(40))
            )
    assert all(reports), [r.error for r in reports if not r][:3]
    assert most == 2
    assert waited_for_a_connection == 0
    assert [r.attempts for r in reports] == [1] * 40
    assert memory_hub.hub.stats.held - held_before > 0
    assert table.stats.handled == 40


def test_the_endpoints_concurrency_defaults_to_the_pool_and_an_explicit_one_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    """The default follows the store: PostgreSQL's ``pool_size - 1`` (3 by default), also
    for ``def`` handlers with more workers; SQLite's is unbounded (1,000 as in memory
    mode). An explicit ``max_concurrency`` is kept as given."""

    async def on_async(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    def on_sync(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    cases: list[tuple[dict[str, Any], Any, int]] = [
        ({}, on_async, 3),
        ({"workers": 8}, on_sync, 3),
        ({"workers": 2}, on_sync, 2),
        ({"max_concurrency": 50}, on_async, 50),
    ]
    for kw, fn, expected in cases:
        ep = Endpoint("t", "inmem://nowhere", store=pg_url, **kw)
        ep.register_handler(table_pb2.StartHand, fn)
        assert ep.max_concurrency == expected, kw
        asyncio.run(ep.store.aclose())  # type: ignore[union-attr]
    ep = Endpoint("t", "inmem://nowhere", store=f"sqlite:///{tmp_path / 's.db'}")
    ep.register_handler(table_pb2.StartHand, on_async)
    assert ep.max_concurrency == 1000
    asyncio.run(ep.store.aclose())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="pool_size"):
        PostgresStore(f"{pg_url}&pool_size=1")
