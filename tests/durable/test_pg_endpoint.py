"""Endpoints with a PostgreSQL store (a real server, tests/support/pg_server.py), end to
end through a hub (in-memory transport): the outbox row committed before send returns,
an instance's outbox resumed after its restart, ctx.tx effects exactly once, sends from
a handler joining its unit, and a retry that reaches a sibling instance answered from
the service's shared inbox."""

from __future__ import annotations

import asyncio

import helpers
import psycopg
import pytest
from ackbus import Cancelled, Context, DeliveryReport
from ackbus.endpoint import Endpoint
from ackbus.store import PostgresStore
from ackbus.wire_pb2 import Bye, Refusal
from helpers import settle

FAST = helpers.FAST.with_(deadline=5.0)
EFFECTS = "CREATE TABLE IF NOT EXISTS effects (msg_id bytea NOT NULL, text text NOT NULL)"
"""No unique key on purpose: an effect applied twice shows as two rows."""


class Bus:
    def __init__(self, hub: helpers.HubBus, url: str) -> None:
        self.hub = hub
        self.url = url

    def endpoint(self, service: str, *, durable: bool = True, **kw: object) -> Endpoint:
        if durable:
            kw["store"] = self.url
        return Endpoint(
            service,
            self.hub.address,
            backend=self.hub.backend,
            policy=FAST,
            heartbeat=helpers.HEARTBEAT,
            **kw,  # type: ignore[arg-type]
        )

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql).fetchall())


@pytest.fixture
def bus(memory_hub: helpers.HubBus, pg_url: str) -> Bus:
    PostgresStore(pg_url).execute_script(EFFECTS)
    return Bus(memory_hub, pg_url)


def resend(dealer: Endpoint, report: DeliveryReport, frame: bytes) -> DeliveryReport:
    """The same message again, as a sender that never saw the ack would resend it."""
    again = DeliveryReport(report.message_id, report.message_type)
    dealer._track(again, frame, "ackbus.Bye", 1, FAST, asyncio.get_running_loop().time())
    return again


async def test_send_returns_once_the_row_committed_and_a_restart_resumes_it(bus: Bus) -> None:
    async with bus.endpoint("dealer", instance="d1") as dealer:
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(10)]
        rows = bus.rows("SELECT id, instance FROM ackbus.outbox ORDER BY seq")
        assert rows == [(r.message_id, "d1") for r in reports]
    assert all(isinstance(r.error, Cancelled) for r in reports)
    got: list[bytes] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(ctx.message_id)

    table = bus.endpoint("table", durable=False)
    table.register_handler(Bye, on_bye)
    async with table, bus.endpoint("dealer", instance="d1") as dealer:
        assert [r.message_id for r in dealer.resumed] == [r.message_id for r in reports]
        await settle(dealer.resumed)
        assert all(dealer.resumed)
    assert sorted(got) == sorted(r.message_id for r in reports)
    assert bus.rows("SELECT count(*) FROM ackbus.outbox") == [(0,)]


async def test_ctx_tx_and_sends_commit_with_the_inbox_record_exactly_once(bus: Bus) -> None:
    runs = 0
    audited: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        assert ctx.tx is not None
        await asyncio.sleep(0)  # writes survive a handler that suspends
        await ctx.tx.execute("INSERT INTO effects VALUES (%s, %s)", (ctx.message_id, msg.reason))
        report = await table.send(Refusal(reason=msg.reason))
        assert not report.done  # it joined the unit: sent after the commit

    async def on_refusal(msg: Refusal, ctx: Context) -> None:
        audited.append(msg.reason)

    # A deduper that remembers one message: the shared inbox must catch the rest.
    table = bus.endpoint("table", dedupe_capacity=1)
    table.register_handler(Bye, on_bye)
    audit = bus.endpoint("audit", durable=False)
    audit.register_handler(Refusal, on_refusal)
    async with table, audit, bus.endpoint("dealer", durable=False) as dealer:
        await asyncio.sleep(0.05)
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(5)]
        frames = [dealer._pending[r.message_id]._frame for r in reports]
        await settle(reports)
        again = [resend(dealer, r, f) for r, f in zip(reports, frames, strict=True)]
        await settle(again)
        await helpers.eventually(lambda: len(audited) == 5, timeout=5.0)
    assert all(reports)
    assert all(again)
    assert runs > 5, "the in-memory deduper forgot, so handlers ran again"
    rows = bus.rows("SELECT text, count(*) FROM effects GROUP BY text ORDER BY text")
    assert rows == [(str(i), 1) for i in range(5)], "an effect was applied twice"
    assert sorted(audited) == [str(i) for i in range(5)], "a send in a unit went out twice"


async def test_a_retry_that_reaches_a_sibling_is_answered_from_the_shared_inbox(
    bus: Bus,
) -> None:
    runs: list[str] = []

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def on_bye(msg: Bye, ctx: Context) -> None:
            runs.append(name)
            assert ctx.tx is not None
            await ctx.tx.execute("INSERT INTO effects VALUES (%s, %s)", (ctx.message_id, name))

        return on_bye

    # The sibling starts first: its deduper loads an inbox that does not know the message.
    sibling = bus.endpoint("table")
    async with sibling, bus.endpoint("dealer", durable=False) as dealer:
        first = bus.endpoint("table")
        first.register_handler(Bye, handler("first"))
        async with first:
            await asyncio.sleep(0.05)
            report = await dealer.send(Bye(reason="once"), wait_ack=False)
            frame = dealer._pending[report.message_id]._frame
            await settle([report])
        assert report
        assert runs == ["first"]
        # The instance that handled it is gone for good; the sibling gets the retry.
        sibling.register_handler(Bye, handler("sibling"))
        await asyncio.sleep(0.05)
        again = resend(dealer, report, frame)
        await settle([again])
        assert again
        assert sibling.stats.duplicates == 1
    assert bus.rows("SELECT text FROM effects") == [("first",)]
