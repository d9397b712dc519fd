"""The hub's run-by-run forwarding end to end, over real ZeroMQ sockets on TCP loopback.

A sender's pipelined sends reach the hub as packed groups; the hub forwards runs of
commands of one type as chunks (``wire.scan_messages``, ``RoutingTable.route_commands``,
``Outbox.packed``). These scenarios put what a run must not change into one group:
several instances, several types, a type nobody handles, events and a hub restart.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from ackbus import Context, DeliveryReport, Kind, NoRoute
from ackbus import hub as hub_module
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from ackbus.transport import ZmqBackend
from ackbus.wire import DEFAULT_LIMITS, Limits, MessageItem, PackedRun
from ackbus.wire_pb2 import Bye, Refusal, Welcome
from helpers import FAST, HEARTBEAT, settle
from proc_harness import free_port

# An ack timeout longer than any scenario here takes: a report settled by a retry
# after an ack timeout would show in the timings.
QUICK = FAST.with_(ack_timeout=3.0, deadline=8.0)
Seen = list[list[PackedRun | MessageItem]]


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """What the hub's scan made of each MESSAGE multipart it read."""
    scans: Seen = []
    scan = hub_module.scan_messages

    def spy(*args: object) -> list[PackedRun | MessageItem]:
        entries = scan(*args)  # type: ignore[arg-type]
        scans.append(entries)
        return entries

    monkeypatch.setattr(hub_module, "scan_messages", spy)
    return scans


@pytest.fixture
async def address() -> AsyncIterator[str]:
    address = f"tcp://127.0.0.1:{free_port()}"
    async with Hub(address, backend=ZmqBackend(), heartbeat=HEARTBEAT):
        yield address


def endpoint(
    address: str, service: str, instance: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> Endpoint:
    return Endpoint(
        service,
        address,
        instance=instance,
        backend=ZmqBackend(),
        policy=QUICK,
        heartbeat=HEARTBEAT,
        limits=limits,
    )


Handler = Callable[[Any, Context], Coroutine[Any, Any, None]]


def recorder(runs: list[tuple[str, bytes, str]], name: str, delay: float = 0.0) -> Handler:
    async def handle(msg: Bye | Welcome, ctx: Context) -> None:
        runs.append((name, ctx.message_id, str(getattr(msg, "reason", ""))))
        if delay:
            await asyncio.sleep(delay)

    return handle


def runs_of_more_than_one(seen: Seen) -> int:
    return sum(
        1 for entries in seen for e in entries if isinstance(e, PackedRun) and len(e.ids) > 1
    )


async def test_a_run_is_spread_over_two_instances_and_each_message_runs_once(
    address: str, seen: Seen
) -> None:
    runs: list[tuple[str, bytes, str]] = []
    async with (
        endpoint(address, "table", "t-0") as t0,
        endpoint(address, "table", "t-1") as t1,
        endpoint(address, "dealer") as dealer,
    ):
        t0.register_handler(Bye, recorder(runs, "t-0"))
        t1.register_handler(Bye, recorder(runs, "t-1"))
        await asyncio.sleep(0.1)
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(300)]
        await settle(reports, 10)
    assert all(reports), [r.error for r in reports if not r]
    assert sorted(int(reason) for _, _, reason in runs) == list(range(300))
    per_instance = Counter(name for name, _, _ in runs)
    assert per_instance["t-0"] > 50
    assert per_instance["t-1"] > 50
    for report in reports:  # each acked by the instance that ran it
        assert len(report.acked_by) == 1
    assert runs_of_more_than_one(seen) > 0


async def test_types_no_route_and_events_mixed_in_one_group(address: str, seen: Seen) -> None:
    """Commands of two types for two services, commands of a type nobody handles and
    events, interleaved in one pipelined burst: every command reaches its service once
    and in order, the unroutable ones fail with NoRoute, the events fan out."""
    runs: list[tuple[str, bytes, str]] = []
    async with (
        endpoint(address, "table") as table,
        endpoint(address, "lobby") as lobby,
        endpoint(address, "audit") as audit,
        endpoint(address, "dealer") as dealer,
    ):
        table.register_handler(Bye, recorder(runs, "table"))
        lobby.register_handler(Welcome, recorder(runs, "lobby"))
        audit.register_handler(Refusal, recorder(runs, "audit"), kind=Kind.EVENT)
        await asyncio.sleep(0.1)
        plan = ["bye", "bye", "welcome", "nobody", "bye", "event", "bye", "nobody", "welcome"] * 6
        reports: list[tuple[str, DeliveryReport]] = []
        for n, what in enumerate(plan):
            if what == "bye":
                report = await dealer.send(Bye(reason=f"b{n}"), wait_ack=False)
            elif what == "welcome":
                report = await dealer.send(Welcome(version=n), wait_ack=False)
            elif what == "nobody":
                report = await dealer.send(Refusal(reason=f"r{n}"), wait_ack=False)
            else:
                report = await dealer.publish(Refusal(reason=f"e{n}"), wait_ack=False)
            reports.append((what, report))
        started = asyncio.get_running_loop().time()
        await settle([r for _, r in reports], 10)
        took = asyncio.get_running_loop().time() - started
    # no report waited for an ack timeout: the hub answered every attempt of the
    # unroutable ones with NO_ROUTE (the sender retries those, quickly, then fails)
    assert took < QUICK.ack_timeout
    for what, report in reports:
        if what == "nobody":
            assert isinstance(report.error, NoRoute), report
        else:
            assert report, (what, report.error)
    byes = [reason for name, _, reason in runs if name == "table"]
    assert byes == [f"b{n}" for n, what in enumerate(plan) if what == "bye"]
    assert sum(1 for name, _, _ in runs if name == "lobby") == plan.count("welcome")
    assert sum(1 for name, _, _ in runs if name == "audit") == plan.count("event")
    assert runs_of_more_than_one(seen) > 0
    kinds = {type(e) for entries in seen for e in entries}
    assert kinds == {PackedRun, MessageItem}  # the events took the item path


async def test_retries_after_a_hub_restart_go_back_to_the_instance_that_has_them() -> None:
    """Two instances hold messages whose handlers are still running when the hub
    restarts; the retries that follow reach the same instances again (rendezvous
    hashing, the sticky map being gone) and no handler runs twice."""
    address = f"tcp://127.0.0.1:{free_port()}"
    runs: list[tuple[str, bytes, str]] = []
    policy = FAST.with_(ack_timeout=0.3, deadline=10.0)
    hub = await Hub(address, backend=ZmqBackend(), heartbeat=HEARTBEAT).start()
    try:
        async with (
            endpoint(address, "table", "t-0") as t0,
            endpoint(address, "table", "t-1") as t1,
            Endpoint(
                "dealer", address, backend=ZmqBackend(), policy=policy, heartbeat=HEARTBEAT
            ) as dealer,
        ):
            t0.register_handler(Bye, recorder(runs, "t-0", delay=1.2))
            t1.register_handler(Bye, recorder(runs, "t-1", delay=1.2))
            await asyncio.sleep(0.1)
            reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(40)]
            await asyncio.sleep(0.2)  # all delivered, all handlers still running
            assert len(runs) == 40
            await hub.close()
            await asyncio.sleep(0.2)
            hub = await Hub(address, backend=ZmqBackend(), heartbeat=HEARTBEAT).start()
            await settle(reports, 10)
            assert all(reports), [r.error for r in reports if not r]
            assert max(r.attempts for r in reports) >= 2  # they were retried
            ran_on = {mid: name for name, mid, _ in runs}
            for report in reports:
                assert [i.instance for i in report.acked_by] == [ran_on[report.message_id]]
    finally:
        await hub.close()
    assert len(runs) == 40  # no handler ran twice
    assert {name for name, _, _ in runs} == {"t-0", "t-1"}


@pytest.mark.parametrize("side", ["receiver", "hub"])
async def test_batches_never_exceed_what_the_peer_accepts(side: str) -> None:
    """A receiver (or a hub) that accepts at most 8 items per MESSAGE says so in its
    HELLO (or WELCOME), and the other side batches to that: a pipelined burst of 300
    arrives without a single refusal. Without it, every batch over 8 is refused as
    MALFORMED, and its retries too."""
    small = Limits(max_batch=8)
    address = f"tcp://127.0.0.1:{free_port()}"
    hub_limits = small if side == "hub" else DEFAULT_LIMITS
    table_limits = small if side == "receiver" else DEFAULT_LIMITS
    runs: list[tuple[str, bytes, str]] = []
    async with Hub(address, backend=ZmqBackend(), heartbeat=HEARTBEAT, limits=hub_limits) as hub:
        table = endpoint(address, "table", limits=table_limits)
        async with table, endpoint(address, "dealer") as dealer:
            table.register_handler(Bye, recorder(runs, "table"))
            await asyncio.sleep(0.1)
            reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(300)]
            await settle(reports, 10)
    assert all(reports), [r.error for r in reports if not r][:3]
    assert sorted(int(reason) for _, _, reason in runs) == list(range(300))
    assert not table.stats.refused
    assert not hub.stats.refused
    assert dealer.stats.retries == 0
