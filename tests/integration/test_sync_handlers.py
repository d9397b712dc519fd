"""Plain ``def`` handlers run in the endpoint's bounded worker pool, never on its loop.

The loop keeps heartbeats, acks and retries going while handlers block; a message is
acked only after its handler returned in its thread; errors map as for ``async def``
handlers; ``close()`` never starts a queued handler and does not ack a running one.
The load test runs the receiver as a process over TCP (``make chaos``: 2,000 sends).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import helpers
import pytest
from ackbus import Context, DeliveryReport, Reject, RetryLater, Untyped
from ackbus.endpoint import Endpoint
from ackbus.transport import Backend
from ackbus.wire_pb2 import Bye, Welcome
from poker import table_ackbus, table_pb2
from proc_harness import Procs

FAST = helpers.FAST.with_(ack_timeout=0.5)
CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
"""``make chaos``: the long version of the load test."""
RECEIVER = Path(__file__).with_name("blocking_receiver.py")

Bus = tuple[Backend, str]


@pytest.fixture(params=["tcp", "memory"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    async with helpers.running_hub(request.param) as running:
        yield running.backend, running.address


def endpoint(bus: Bus, service: str, **kw: Any) -> Endpoint:
    backend, address = bus
    return Endpoint(
        service, address, backend=backend, policy=FAST, heartbeat=helpers.HEARTBEAT, **kw
    )


async def test_a_def_handler_runs_in_a_worker_thread_and_is_acked_after_it_returned(
    bus: Bus,
) -> None:
    ran: list[tuple[str, str]] = []
    returned = threading.Event()

    def on_bye(msg: Bye, ctx: Context) -> None:
        time.sleep(0.05)  # blocks its thread, not the loop
        ran.append((msg.reason, threading.current_thread().name))
        returned.set()

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)  # the hello reaches the hub
        report = await dealer.send(Bye(reason="hi"), wait_ack=False)
        await report.wait(3)
        assert returned.is_set()  # the ack came after the handler returned
    assert report, report.error
    assert report.attempts == 1
    assert ran == [("hi", ran[0][1])]
    assert ran[0][1].startswith("ackbus-table-handler")


Raising = Callable[[Bye, Context], None]


def raising(exc: BaseException) -> Raising:
    def on_bye(msg: Bye, ctx: Context) -> None:
        raise exc

    return on_bye


@pytest.mark.parametrize(
    "exc",
    [Reject("no such table"), Reject("later maybe", permanent=False), ValueError("bad seat")],
    ids=["reject", "reject-transient", "other"],
)
async def test_errors_map_exactly_as_for_async_handlers(bus: Bus, exc: BaseException) -> None:
    sync_fn = raising(exc)

    async def async_fn(msg: Bye, ctx: Context) -> None:
        sync_fn(msg, ctx)

    errors = []
    for fn in (sync_fn, async_fn):
        async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
            table.register_handler(Bye, fn)
            await asyncio.sleep(0.05)
            report = await dealer.send(Bye(), timeout=2)
        assert not report
        errors.append((type(report.error), str(report.error).split(": ", 1)[1]))
    assert errors[0] == errors[1]


async def test_retry_later_from_a_def_handler_is_retried_until_it_returns(bus: Bus) -> None:
    attempts: list[int] = []

    def on_bye(msg: Bye, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryLater(0.01, "warming up")

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.5)  # past the fresh hub's grace (it defers retries)
        report = await dealer.send(Bye(), timeout=3)
    assert report, report.error
    assert attempts == [1, 2, 3]


async def test_a_def_request_handler_answers_with_its_return_value(bus: Bus) -> None:
    def on_bye(msg: Bye, ctx: Context) -> Welcome:
        return Welcome(heartbeat_ms=len(msg.reason))

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye, response=Welcome)
        await asyncio.sleep(0.05)
        reply = await dealer.request(Bye(reason="four"), Welcome, timeout=2)
    assert reply.heartbeat_ms == 4


async def test_def_handlers_by_type_name_get_a_dict(bus: Bus) -> None:
    seen: list[dict[str, Any]] = []

    def on_bye(payload: dict[str, Any], ctx: Context) -> None:
        seen.append(payload)

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler("Seat", on_bye)
        await asyncio.sleep(0.05)
        report = await dealer.send(Untyped("Seat", {"n": 3}), timeout=2)
    assert report, report.error
    assert seen == [{"n": 3}]


async def test_at_most_workers_run_at_once_and_context_vars_stay_in_their_run(bus: Bus) -> None:
    lock = threading.Lock()
    now = peak = 0
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def on_bye(msg: Bye, ctx: Context) -> None:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
            seen.append(var.get())
        var.set(msg.reason)
        time.sleep(0.02)
        with lock:
            now -= 1

    async with endpoint(bus, "table", workers=3) as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(12)]
        await helpers.settle(reports, 5)
    assert all(reports), [r.error for r in reports if not r]
    assert peak == 3
    assert seen == ["unset"] * 12


async def test_close_never_starts_a_queued_handler_and_acks_no_running_one(bus: Bus) -> None:
    release = threading.Event()
    started: list[str] = []

    def on_bye(msg: Bye, ctx: Context) -> None:
        started.append(msg.reason)
        release.wait(5)

    table = endpoint(bus, "table", workers=1)
    async with endpoint(bus, "dealer") as dealer:
        await table.start()
        table.register_handler(Bye, on_bye)
        await asyncio.sleep(0.05)
        reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(3)]
        await helpers.eventually(lambda: started == ["0"])
        t0 = time.monotonic()
        await table.close(timeout=0.2)
        waited = time.monotonic() - t0
        release.set()
        await asyncio.sleep(0.1)  # the running one returns in its thread: nobody to tell
        assert started == ["0"]  # the queued two never started
        assert table.stats.handled == 0  # nothing was acked
        assert not any(r.done for r in reports)
    assert 0.15 < waited < 1.0


async def test_a_plain_function_that_returns_a_coroutine_is_refused_clearly(bus: Bus) -> None:
    async def later(msg: Bye, ctx: Context) -> None:
        return None

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register_handler(Bye, lambda msg, ctx: later(msg, ctx))
        await asyncio.sleep(0.05)
        report = await dealer.send(Bye(), timeout=1)
    assert not report
    assert "returned a coroutine; declare the handler `async def`" in str(report.error)


async def test_a_generated_sync_handler_serves_commands_and_requests(bus: Bus) -> None:
    started: list[str] = []

    class Table(table_ackbus.TableSyncHandler):
        def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
            time.sleep(0.01)
            started.append(threading.current_thread().name)

        def on_get_table_state(
            self, msg: table_pb2.GetTableState, ctx: Context
        ) -> table_pb2.TableState:
            return table_pb2.TableState(table_id=msg.table_id, hand_number=len(started))

    async with endpoint(bus, "table") as table, endpoint(bus, "dealer") as dealer:
        table.register(Table())
        await asyncio.sleep(0.05)
        client = table_ackbus.TableClient(dealer)
        report = await client.send_start_hand(table_id="t1", seats=6, timeout=3)
        state = await client.request_get_table_state(table_id="t1", timeout=3)
    assert report, report.error
    assert (state.table_id, state.hand_number) == ("t1", 1)
    assert started[0].startswith("ackbus-table-handler")


# -- the load test: a blocking handler and many pipelined sends -----------------------------


def receiver_runs(log: Path) -> list[tuple[str, str, int]]:
    """``(message id hex, thread, handlers running at its start)`` per run."""
    out = []
    for line in log.read_text().splitlines():
        mid, thread, running = line.split()
        out.append((mid, thread, int(running)))
    return out


@pytest.mark.slow
async def test_a_blocking_def_handler_under_pipelined_load_loses_nothing(
    procs: Procs, tmp_path: Path
) -> None:
    """The issue's case: 50 ms of ``time.sleep`` per message and a pipelined stream, the
    receiver a process of its own over TCP, every policy and option at its default. All
    are acked, none fails, and the hub never declares the receiver dead (its heartbeats
    kept flowing while every worker blocked). Flow control: the receiver's
    ``max_concurrency`` defaults to its worker count, the hub sends it no more at once
    and holds the rest (telling the sender, which spends no attempt): no handler waits
    in the pool's queue, and the senders hardly retry."""
    n = 2000 if CHAOS else 400
    log = tmp_path / "runs.log"
    async with helpers.running_hub("tcp", heartbeat=0.25) as running:
        address = running.address
        # In a thread: the hub runs on this loop and must welcome the receiver meanwhile.
        argv = (str(RECEIVER), "--hub", address, "--runs", str(log))
        await asyncio.to_thread(procs.start, *argv, ready=b"ready")
        async with Endpoint("dealer", address, heartbeat=0.25) as dealer:
            t0 = time.monotonic()
            reports: list[DeliveryReport] = []
            for i in range(n):
                reports.append(await dealer.send(Bye(reason=str(i)), wait_ack=False))
            await helpers.settle(reports, 60 if CHAOS else 30)
            took = time.monotonic() - t0
        stats = running.hub.stats
    failed = [r.error for r in reports if not r]
    handled = receiver_runs(log)
    runs = Counter(mid for mid, _, _ in handled)
    threads = {thread for _, thread, _ in handled}
    at_once = max(running for _, _, running in handled)
    retries = dealer.stats.retries
    workers = min(32, (os.cpu_count() or 1) + 4)
    print(
        f"\n{n} sends, 50 ms blocking def handler: {n - len(failed)} acked, {len(failed)} "
        f"failed in {took:.1f} s; {retries} retries; {len(threads)} worker threads; at most "
        f"{at_once} handlers at once; hub held {stats.held}, dead peers {stats.dead_peers}",
        file=sys.stderr,
    )
    assert failed == [], failed[:3]
    assert stats.dead_peers == 0
    assert set(runs) == {r.message_id.hex() for r in reports}
    assert max(runs.values()) == 1
    assert len(threads) <= workers
    assert at_once <= workers  # max_concurrency: the worker count, by default
    assert stats.held >= min(n, 1000) // 2  # the sender's window lets 1,000 through at once
    # Held messages spend no attempts and hear from the hub every heartbeat: a retry is
    # rare (before, 7,899 for 2,000 sends: every ack timeout of every queued message).
    assert retries <= n // 20, retries


@pytest.mark.slow
async def test_the_receiver_keeps_its_limit_when_two_hubs_each_send_it_theirs(
    procs: Procs, tmp_path: Path
) -> None:
    """Each hub counts only what it sent (and a restarted hub starts at zero), so the
    receiver keeps ``max_concurrency`` itself: connected to two hubs, which may each
    send it two at once, it runs at most two, and the others wait in the receiver (by
    priority, under their lease) instead of failing. Without the receiver's own limit
    four run at once (it has eight workers)."""
    n = 120
    log = tmp_path / "runs.log"
    async with (
        helpers.running_hub("tcp", heartbeat=0.25) as one,
        helpers.running_hub("tcp", heartbeat=0.25) as two,
    ):
        hubs = [one.address, two.address]
        argv = [str(RECEIVER), "--runs", str(log), "--sleep", "0.02", "--workers", "8"]
        argv += ["--max-concurrency", "2", "--hub", hubs[0], "--hub", hubs[1]]
        await asyncio.to_thread(procs.start, *argv, ready=b"ready")
        async with Endpoint("dealer", hubs, heartbeat=0.25) as dealer:
            await helpers.eventually(lambda: all(dealer._proto.welcomed(i) for i in (0, 1)))
            reports = [await dealer.send(Bye(reason=str(i)), wait_ack=False) for i in range(n)]
            await helpers.settle(reports, 30)
        held = one.hub.stats.held + two.hub.stats.held
    failed = [r.error for r in reports if not r]
    handled = receiver_runs(log)
    at_once = max(running for _, _, running in handled)
    print(f"\ntwo hubs, max_concurrency 2: at most {at_once} at once; held {held}", file=sys.stderr)
    assert failed == [], failed[:3]
    assert len({mid for mid, _, _ in handled}) == n
    assert at_once <= 2
    assert held > 0
