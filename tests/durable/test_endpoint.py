"""An endpoint with a SQLite store, end to end through a hub (in-memory transport):
outbox before send returns, resume after restart, inbox across restarts, the
transactional inbox (ctx.tx and sends from handlers), dead letters, retention."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import helpers
import pytest
from ackbus import Cancelled, Context, DeliveryReport, Reject, StoreError
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore, Transaction
from ackbus.transport import Backend
from ackbus.wire_pb2 import Bye, Refusal
from helpers import settle

FAST = helpers.FAST.with_(deadline=5.0)
EFFECTS = "CREATE TABLE IF NOT EXISTS effects (msg_id BLOB NOT NULL, text TEXT NOT NULL)"


class Bus:
    def __init__(self, backend: Backend, address: str, tmp: Path) -> None:
        self.backend = backend
        self.address = address
        self.tmp = tmp

    def endpoint(self, service: str, db: str | None = None, **kw: object) -> Endpoint:
        if db is not None:
            kw["store"] = f"sqlite:///{self.tmp / db}"
        return Endpoint(
            service,
            self.address,
            backend=self.backend,
            policy=FAST,
            heartbeat=helpers.HEARTBEAT,
            **kw,  # type: ignore[arg-type]
        )

    def rows(self, db: str, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.tmp / db) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def bus(memory_hub: helpers.HubBus, tmp_path: Path) -> Bus:
    return Bus(memory_hub.backend, memory_hub.address, tmp_path)


async def test_send_returns_only_once_the_outbox_row_is_on_disk(bus: Bus) -> None:
    async with bus.endpoint("dealer", "dealer.db") as dealer:
        report = await dealer.send(Bye(reason="hi"), wait_ack=False)
        assert not report.done  # nobody handles Bye yet
        # Another connection sees the committed row while the message is pending.
        rows = bus.rows("dealer.db", "SELECT id, type FROM ackbus_outbox")
        assert rows == [(report.message_id, "ackbus.Bye")]


async def test_a_restarted_sender_resumes_its_outbox_with_the_same_ids(bus: Bus) -> None:
    async with bus.endpoint("dealer", "dealer.db") as dealer:
        first = dealer.identity
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(20)]
    # close() cancelled the reports, but the messages stay in the outbox.
    assert all(isinstance(r.error, Cancelled) for r in reports)
    assert len(bus.rows("dealer.db", "SELECT id FROM ackbus_outbox")) == 20

    got: list[bytes] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(ctx.message_id)

    table = bus.endpoint("table")
    table.register_handler(Bye, on_bye)
    async with table, bus.endpoint("dealer", "dealer.db") as dealer:
        assert dealer.identity == first, "the store keeps the instance's identity"
        assert [r.message_id for r in dealer.resumed] == [r.message_id for r in reports]
        await settle(dealer.resumed)
        assert all(dealer.resumed)
    assert sorted(got) == sorted(r.message_id for r in reports)
    assert bus.rows("dealer.db", "SELECT count(*) FROM ackbus_outbox") == [(0,)]


async def test_a_restarted_receiver_still_recognises_duplicates(bus: Bus) -> None:
    runs: list[bytes] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        runs.append(ctx.message_id)

    async with bus.endpoint("dealer") as dealer:
        async with bus.endpoint("table", "table.db") as table:
            table.register_handler(Bye, on_bye)
            await asyncio.sleep(0.05)
            report = await dealer.send(Bye(reason="once"), wait_ack=False)
            frame = dealer._pending[report.message_id]._frame
            await settle([report])
        assert report
        async with bus.endpoint("table", "table.db") as table:
            table.register_handler(Bye, on_bye)
            await asyncio.sleep(0.05)
            # The same message again, as a sender that never saw the ack would resend it.
            again = DeliveryReport(report.message_id, report.message_type)
            dealer._track(again, frame, "ackbus.Bye", 1, FAST, asyncio.get_running_loop().time())
            await settle([again])
            assert table.stats.duplicates == 1
    assert again
    assert runs == [report.message_id], "the handler ran again after a restart"


async def test_ctx_tx_commits_with_the_inbox_record_exactly_once(bus: Bus) -> None:
    SqliteStore(bus.tmp / "table.db").execute_script(EFFECTS)
    runs = 0

    async def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        assert ctx.tx is not None
        await asyncio.sleep(0)  # writes survive a handler that suspends
        ctx.tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id, msg.reason))

    # A deduper that remembers one message: the store's inbox must catch the rest.
    async with bus.endpoint("table", "table.db", dedupe_capacity=1) as table:
        table.register_handler(Bye, on_bye)
        async with bus.endpoint("dealer") as dealer:
            await asyncio.sleep(0.05)
            reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(5)]
            frames = [dealer._pending[r.message_id]._frame for r in reports]
            await settle(reports)
            again = [DeliveryReport(r.message_id, r.message_type) for r in reports]
            for r, frame in zip(again, frames, strict=True):
                dealer._track(r, frame, "ackbus.Bye", 1, FAST, asyncio.get_running_loop().time())
            await settle(again)
    assert all(reports)
    assert all(again)
    assert runs > 5, "the in-memory deduper forgot, so handlers ran again"
    rows = bus.rows("table.db", "SELECT text, count(*) FROM effects GROUP BY text ORDER BY text")
    assert rows == [(str(i), 1) for i in range(5)], "an effect was applied twice"


async def send_good_and_bad(
    bus: Bus, table: Endpoint, sent: list[DeliveryReport], more: int = 0
) -> tuple[DeliveryReport, DeliveryReport, list[DeliveryReport], list[str]]:
    """Sends "good", "bad" and ``more`` others to ``table``, whose handler sends a Refusal
    to an audit service (appending its report to ``sent``), and waits for everything:
    the reports of good, bad and the others, and what audit got."""
    audited: list[str] = []

    async def on_refusal(msg: Refusal, ctx: Context) -> None:
        audited.append(msg.reason)

    audit = bus.endpoint("audit")
    audit.register_handler(Refusal, on_refusal)
    async with table, audit, bus.endpoint("dealer") as dealer:
        await asyncio.sleep(0.05)
        good = await dealer.send(Bye(reason="good"))
        bad = await dealer.send(Bye(reason="bad"))
        others = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(more)]
        await settle(others)
        await settle(sent)
    return good, bad, others, audited


async def test_a_handler_that_raises_writes_and_sends_nothing(bus: Bus) -> None:
    SqliteStore(bus.tmp / "table.db").execute_script(EFFECTS)
    sent: list[DeliveryReport] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        assert ctx.tx is not None
        ctx.tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id, msg.reason))
        # Joins the handler's unit: returns at once, pending, sent only after the commit.
        sent.append(await table.send(Refusal(reason=msg.reason), to="audit"))
        assert not sent[-1].done
        if msg.reason == "bad":
            raise Reject("no")

    table = bus.endpoint("table", "table.db")
    table.register_handler(Bye, on_bye)
    good, bad, _, audited = await send_good_and_bad(bus, table, sent)
    assert good
    assert not bad
    assert sent[0], "the good handler's send went out after its commit"
    assert isinstance(sent[1].error, Cancelled)
    assert "rejected" in str(sent[1].error)
    assert audited == ["good"]
    assert bus.rows("table.db", "SELECT text FROM effects") == [("good",)]
    # The rejection is remembered in the inbox (a duplicate is refused again, not re-run).
    outcomes = bus.rows("table.db", "SELECT error_type, error_permanent FROM ackbus_inbox")
    assert sorted(outcomes) == [("", 0), ("Reject", 1)]


async def test_a_def_handler_writes_and_sends_through_its_unit_from_its_thread(bus: Bus) -> None:
    """A plain ``def`` handler runs in a worker thread: its ``ctx.tx`` writes and a send
    it hands to the loop commit with its inbox record, exactly once, or not at all."""
    SqliteStore(bus.tmp / "table.db").execute_script(EFFECTS)
    sent: list[DeliveryReport] = []
    threads: set[str] = set()
    loop = asyncio.get_running_loop()

    def on_bye(msg: Bye, ctx: Context) -> None:
        threads.add(threading.current_thread().name)
        assert ctx.tx is not None
        ctx.tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id, msg.reason))
        send = table.send(Refusal(reason=msg.reason), to="audit")
        report = asyncio.run_coroutine_threadsafe(send, loop).result(2)
        assert not report.done  # joined the unit: sent only after the commit
        sent.append(report)
        if msg.reason == "bad":
            raise Reject("no")

    # A deduper that remembers one message: the store's inbox must catch the rest.
    table = bus.endpoint("table", "table.db", dedupe_capacity=1)
    table.register_handler(Bye, on_bye)
    good, bad, more, audited = await send_good_and_bad(bus, table, sent, more=3)
    assert good
    assert not bad
    assert all(more)
    assert len(sent) == 5
    assert all(r for r in sent if r is not sent[1])
    assert isinstance(sent[1].error, Cancelled)
    assert sorted(audited) == ["0", "1", "2", "good"]
    rows = bus.rows("table.db", "SELECT text FROM effects ORDER BY text")
    assert rows == [("0",), ("1",), ("2",), ("good",)]
    assert threading.current_thread().name not in threads


async def test_a_failing_statement_rolls_back_the_unit_and_rejects(bus: Bus) -> None:
    SqliteStore(bus.tmp / "table.db").execute_script(EFFECTS)

    async def on_bye(msg: Bye, ctx: Context) -> None:
        assert ctx.tx is not None
        ctx.tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id, msg.reason))
        ctx.tx.execute("INSERT INTO no_such_table VALUES (1)")

    table = bus.endpoint("table", "table.db")
    table.register_handler(Bye, on_bye)
    async with table, bus.endpoint("dealer") as dealer:
        await asyncio.sleep(0.05)
        report = await dealer.send(Bye(reason="x"))
        ok = await dealer.send(Refusal(reason="no handler"), timeout=0.3)
    assert not report
    assert "no_such_table" in str(report.error)
    assert not ok
    assert bus.rows("table.db", "SELECT count(*) FROM effects") == [(0,)]
    assert bus.rows("table.db", "SELECT count(*) FROM ackbus_inbox") == [(0,)]
    with pytest.raises(ValueError, match="COMMIT is not allowed"):
        Transaction(None).execute("COMMIT")


async def test_failed_messages_become_dead_letters(bus: Bus) -> None:
    async with bus.endpoint("dealer", "dealer.db") as dealer:
        report = await dealer.send(Bye(reason="nobody"), timeout=0.3)
        assert not report
        await asyncio.sleep(0.05)  # the lazy move rides on the next commit
        await dealer.send(Refusal(reason="flush"), wait_ack=False)
    store = SqliteStore(bus.tmp / "dealer.db")
    [dead] = store.dead_letters()
    assert dead.msg_id == report.message_id
    assert dead.msg_type == "ackbus.Bye"
    assert dead.reason == "no-route"
    assert dead.attempts >= 1
    assert "no live service" in dead.error or "gave up" in dead.error
    assert store.find_dead_letters(report.message_id.hex()[:8]) == [dead]
    outbox = bus.rows("dealer.db", "SELECT id FROM ackbus_outbox")
    assert (report.message_id,) not in outbox


async def test_inbox_stays_bounded_under_a_steady_stream(bus: Bus) -> None:
    async def on_bye(msg: Bye, ctx: Context) -> None:
        return None

    table = bus.endpoint("table", "table.db", dedupe_ttl=0.2)
    table.register_handler(Bye, on_bye)
    async with table, bus.endpoint("dealer", "dealer.db") as dealer:
        await asyncio.sleep(0.05)
        counts = []
        for _ in range(12):
            reports = await asyncio.gather(
                *(dealer.send(Bye(reason="x"), wait_ack=False) for _ in range(100))
            )
            await settle(list(reports))
            await asyncio.sleep(0.1)
            counts.append(bus.rows("table.db", "SELECT count(*) FROM ackbus_inbox")[0][0])
        outbox = bus.rows("dealer.db", "SELECT count(*) FROM ackbus_outbox")[0][0]
        # Acked in groups after each commit, and counted as in memory mode.
        assert (table.stats.received, table.stats.handled, dealer.stats.acked) == (1200,) * 3
    # 1,200 messages handled; only the last ttl's worth (plus a prune interval) is kept.
    assert max(counts[4:]) <= 400, counts
    assert outbox <= 100, "acked rows are deleted"


async def test_memory_mode_has_no_tx_and_store_mode_refuses_a_second_owner(bus: Bus) -> None:
    seen: list[object] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        seen.append(ctx.tx)

    async with bus.endpoint("table") as table, bus.endpoint("dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        assert await dealer.send(Bye())
        assert table.store is None
        assert table.resumed == []
    assert seen == [None]
    async with bus.endpoint("table", "table.db"):
        with pytest.raises(StoreError, match="in use by another live process"):
            bus.endpoint("table", "table.db")


async def test_a_send_cancelled_while_committing_is_still_delivered(bus: Bus) -> None:
    got: list[str] = []
    handled = asyncio.Event()

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)
        handled.set()

    table = bus.endpoint("table")
    table.register_handler(Bye, on_bye)
    async with table, bus.endpoint("dealer", "dealer.db") as dealer:
        await asyncio.sleep(0.05)
        task = asyncio.create_task(dealer.send(Bye(reason="cancelled"), wait_ack=False))
        await asyncio.sleep(0)  # the send now waits for its commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(3):
            await handled.wait()
        await asyncio.sleep(0.1)  # its ack comes back and the row is deleted
        assert dealer.pending == 0
    assert got == ["cancelled"], "the committed row was delivered in the same run"
    assert bus.rows("dealer.db", "SELECT count(*) FROM ackbus_outbox") == [(0,)]


async def test_a_restarted_publisher_keeps_each_subscribers_own_deadline(bus: Bus) -> None:
    """An event whose own deadline (and Lobby's) passes while its durable publisher is
    down, within Audit's own: resumed, it still waits for Audit, and is true once Audit,
    started last, acked (Lobby answers the re-send from its dedupe memory)."""
    from ackbus import SubscriberPolicy
    from poker import lobby_ackbus, table_ackbus, table_pb2

    policy = table_ackbus.HAND_STARTED_EVENT_POLICY.with_(
        ack_timeout=0.2,
        backoff_cap=0.2,
        deadline=1.0,
        subscriber_policies=(SubscriberPolicy("poker.Audit", deadline=20.0),),
    )
    seen: dict[str, list[bytes]] = {"audit": [], "lobby": []}

    class Audit(lobby_ackbus.AuditHandler):
        async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
            seen["audit"].append(ctx.message_id)

    class Lobby(lobby_ackbus.LobbyHandler):
        async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
            seen["lobby"].append(ctx.message_id)

    lobby = bus.endpoint("lobby")
    lobby.register(Lobby())
    async with lobby:
        async with bus.endpoint("table", "table.db") as table:
            events = table_ackbus.TableEvents(table)
            report = await events.publish_hand_started(table_id="t", wait_ack=False, policy=policy)
            await helpers.eventually(lambda: seen["lobby"] == [report.message_id], timeout=5)
        assert isinstance(report.error, Cancelled)  # closed while it waited for Audit
        await asyncio.sleep(1.5)  # the event's own 1 s (and Lobby's) pass while it is down
        audit = bus.endpoint("audit")
        audit.register(Audit())
        async with bus.endpoint("table", "table.db") as table, audit:
            (resumed,) = table.resumed
            await settle([resumed], 10)
    assert resumed, resumed.error
    assert sorted(i.service for i in resumed.acked_by) == ["audit", "lobby"]
    assert seen == {"audit": [report.message_id], "lobby": [report.message_id]}
