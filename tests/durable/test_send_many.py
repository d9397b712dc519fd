"""``send_many``: a group of messages accepted as one. Memory mode through a hub (one
admission, reports in order, delivered once each), SQLite (one transaction for the
group's outbox rows before it returns; a failed commit raises and sends none; a bad
message raises before any is sent; inside a handler the group joins its unit), and both
stores with real processes: a sender killed with -9 right after a group's commit, with
earlier groups in flight, loses nothing and delivers nothing twice after its restart."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import helpers
import pytest
from ackbus import BlockingEndpoint, Context, StoreError, Untyped
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore
from ackbus.wire_pb2 import Bye, Refusal
from helpers import settle
from proc_harness import Procs
from store_db import Db, order_receiver, outcome, run_tx_sender

FAST = helpers.FAST.with_(deadline=5.0)


def endpoint(hub: helpers.HubBus, service: str, store: str | None = None, **kw: object) -> Endpoint:
    return Endpoint(
        service,
        hub.address,
        backend=hub.backend,
        policy=FAST,
        heartbeat=helpers.HEARTBEAT,
        store=store,
        **kw,  # type: ignore[arg-type]
    )


def receiver(hub: helpers.HubBus) -> tuple[Endpoint, list[str]]:
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    ep = endpoint(hub, "table")
    ep.register_handler(Bye, on_bye)
    return ep, got


async def test_a_group_is_delivered_once_each_with_its_reports_in_order(
    memory_hub: helpers.HubBus,
) -> None:
    table, got = receiver(memory_hub)
    texts = [str(i) for i in range(300)]
    async with table, endpoint(memory_hub, "dealer", window=16) as dealer:
        # A group larger than the window: admitted once, the rest queued by the tracker.
        reports = await dealer.send_many([Bye(reason=t) for t in texts])
        assert all(reports), [r for r in reports if not r][:3]
        assert len({r.message_id for r in reports}) == 300
        # Two groups at once and single sends beside them: every message once.
        more = await asyncio.gather(
            dealer.send_many([Bye(reason=f"a{i}") for i in range(100)], wait_ack=False),
            dealer.send_many([Bye(reason=f"b{i}") for i in range(100)], wait_ack=False),
            dealer.send(Bye(reason="single")),
        )
        await settle([*more[0], *more[1]])
        assert all(more[0])
        assert all(more[1])
        assert more[2]
        assert await dealer.send_many([]) == []
    assert Counter(got) == Counter(
        texts + [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(100)] + ["single"]
    )
    # In the order of the group (one sender, one receiver, nothing lost on the way).
    assert [t for t in got if t.isdigit()] == texts


async def test_a_groups_outbox_rows_commit_in_one_transaction_before_it_returns(
    memory_hub: helpers.HubBus, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "dealer.db")
    async with endpoint(memory_hub, "dealer", store) as dealer:
        # What the endpoint wrote as it started (its lazy prune) commits first: a slow
        # writer thread (a loaded machine) must not commit it during the group.
        await store.write(("DELETE FROM ackbus_outbox WHERE 0", ())).wait()
        before = store.writer.commits
        reports = await dealer.send_many([Bye(reason=str(i)) for i in range(500)], wait_ack=False)
        assert store.writer.commits - before == 1, "one transaction for the whole group"
        assert not any(r.done for r in reports)  # nobody handles Bye here
        with sqlite3.connect(tmp_path / "dealer.db") as conn:
            rows = conn.execute("SELECT id FROM ackbus_outbox ORDER BY rowid").fetchall()
        assert [r[0] for r in rows] == [r.message_id for r in reports]


async def test_a_failed_group_commit_raises_and_sends_none_of_it(
    memory_hub: helpers.HubBus, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "dealer.db")
    store.execute_script(
        "CREATE TRIGGER IF NOT EXISTS refuse BEFORE INSERT ON ackbus_outbox "
        "WHEN NEW.type = 'ackbus.Refusal' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
    )
    table, got = receiver(memory_hub)
    async with table, endpoint(memory_hub, "dealer", store) as dealer:
        group: list[Bye | Refusal] = [Bye(reason="x"), Refusal(reason="y"), Bye(reason="z")]
        with pytest.raises(StoreError, match="refused by a trigger"):
            await dealer.send_many(group)
        report = await dealer.send(Bye(reason="after"))  # the store goes on
        assert report
    assert got == ["after"], "no message of the failed group was sent"
    assert store.counts()["outbox"] == 0


async def test_a_message_that_cannot_be_sent_fails_the_group_before_any_is_sent(
    memory_hub: helpers.HubBus, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "dealer.db")
    table, got = receiver(memory_hub)
    async with table, endpoint(memory_hub, "dealer", store) as dealer:
        before = store.writer.commits
        with pytest.raises(ValueError, match="names a command's rpc"):
            await dealer.send_many(
                [Bye(reason="x"), Untyped("test.Loose", {"a": 1})], method="poker.Table/StartHand"
            )
        with pytest.raises(ValueError, match="timeout must be > 0"):
            await dealer.send_many([Bye(reason="x")], timeout=0)
        assert store.writer.commits == before
        assert await dealer.send(Bye(reason="after"))
    assert got == ["after"]


async def test_a_group_sent_from_a_handler_joins_its_unit_and_leaves_after_its_commit(
    memory_hub: helpers.HubBus, tmp_path: Path
) -> None:
    table, got = receiver(memory_hub)
    pending: list[bool] = []
    relayed = asyncio.get_running_loop().create_future()

    async def on_refusal(msg: Refusal, ctx: Context) -> None:
        reports = await relay.send_many([Bye(reason=f"{msg.reason}{i}") for i in range(5)])
        pending.append(not any(r.done for r in reports))  # they leave after this commit
        relayed.set_result(reports)

    relay = endpoint(memory_hub, "relay", f"sqlite:///{tmp_path / 'relay.db'}")
    relay.register_handler(Refusal, on_refusal)
    async with table, relay, endpoint(memory_hub, "dealer") as dealer:
        assert await dealer.send(Refusal(reason="r"))
        await settle(await asyncio.wait_for(relayed, 5.0))
    assert pending == [True]
    assert sorted(got) == [f"r{i}" for i in range(5)]


async def test_the_blocking_endpoint_sends_a_group(hub: str) -> None:
    got: list[str] = []

    async def on_bye(msg: Bye, ctx: Context) -> None:
        got.append(msg.reason)

    table = Endpoint("table", hub, policy=FAST, heartbeat=helpers.HEARTBEAT)
    table.register_handler(Bye, on_bye)
    async with table:

        def send() -> list[bool]:
            with BlockingEndpoint("dealer", hub, policy=FAST) as dealer:
                return [bool(r) for r in dealer.send_many([Bye(reason=str(i)) for i in range(20)])]

        assert await asyncio.wait_for(asyncio.to_thread(send), 30.0) == [True] * 20
    assert sorted(got, key=int) == [str(i) for i in range(20)]


async def test_a_sender_killed_after_a_groups_commit_loses_nothing_and_doubles_nothing(
    procs: Procs, db: Db
) -> None:
    hub, table, got = order_receiver(procs)
    first = [f"m{i}" for i in range(30)]
    killed = [f"k{i}" for i in range(40)]
    async with table:
        done = await run_tx_sender(procs, hub, db, "many", first)
        assert outcome(done) == ["ACKED"] * 30
        done = await run_tx_sender(procs, hub, db, "many-kill", killed)
        assert done.returncode == -signal.SIGKILL
        assert db.outbox() >= 10, "the last group is in the outbox"
        assert all(got[k] == 0 for k in killed[30:]), "killed before it was transmitted"
        done = await run_tx_sender(procs, hub, db, "resume", [])
        assert set(outcome(done)) == {"ACKED"}
        await helpers.eventually(lambda: all(got[k] == 1 for k in killed), timeout=10.0)
        await asyncio.sleep(0.3)
    assert got == Counter(first + killed), "every accepted message once"
    assert db.outbox() == 0
