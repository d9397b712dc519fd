"""Failed reports that never hide a run, and long handlers that hold their lease
(issue 15, item 2), over real sockets.

The receiver runs on an event loop of its own, in a thread (:class:`ThreadEndpoint`): a
handler that blocks that loop blocks neither the hub nor the sender, as when the
receiver is a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from ackbus import Context, NoRoute, OutcomeUnknown, Policy
from ackbus.endpoint import Endpoint
from helpers import HEARTBEAT
from poker import table_ackbus, table_pb2

Handler = Callable[[table_pb2.StartHand, Context], Awaitable[None]]

CHAOS = os.environ.get("ACKBUS_CHAOS") == "1"
"""``make chaos``: the default policy and a 20 s handler, instead of the short versions."""


class ThreadEndpoint:
    """A receiving endpoint ("table", handling StartHand with ``handler``) on its own
    event loop in a thread, from ``async with`` until the block ends."""

    def __init__(self, hub: str, handler: Handler, **options: Any) -> None:
        self.hub = hub
        self.handler = handler
        self.options = options
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            options = {"heartbeat": HEARTBEAT, **self.options}
            ep = Endpoint("table", self.hub, **options)
            ep.register_handler(table_pb2.StartHand, self.handler)
            async with ep:  # started: welcomed, its handler's type in its HELLO
                self.ready.set()
                await self.stop.wait()
        except BaseException as exc:  # reported by __exit__
            self.error = exc
            self.ready.set()

    async def __aenter__(self) -> ThreadEndpoint:
        self.thread.start()  # the hub is on the caller's loop: wait without blocking it
        started = await asyncio.to_thread(self.ready.wait, 10.0)
        assert started, "the receiver did not start"
        if self.error is not None:
            raise self.error
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        await asyncio.to_thread(self.thread.join, 30.0)
        assert not self.thread.is_alive(), "the receiver did not stop"


async def test_a_handler_that_blocks_its_loop_fails_as_outcome_unknown_not_no_route(
    hub: str,
) -> None:
    """The issue's scenario in small: an async handler that blocks its loop with
    time.sleep starves the receiver (no heartbeats, no acks) past the deadline. The
    handlers ran, so no report may say NoRoute. (Before the hub kept a silent instance
    whose connection is up as stalled, it declared this one dead and answered every retry
    NO_ROUTE; test_stalls.py covers the stalled instance.)"""
    runs: list[str] = []

    async def blocking(msg: table_pb2.StartHand, ctx: Context) -> None:
        runs.append(msg.table_id)
        time.sleep(0.4)  # noqa: ASYNC251 (the point: a handler that blocks its loop)

    policy = Policy(
        ack_timeout=0.2, max_attempts=100, backoff_base=0.01, backoff_cap=0.05, deadline=1.5
    )
    async with (
        ThreadEndpoint(hub, blocking),
        Endpoint("dealer", hub, heartbeat=HEARTBEAT) as ep,
    ):
        await asyncio.sleep(0.1)  # the table's HELLO reaches the hub
        client = table_ackbus.TableClient(ep)
        sends = [client.send_start_hand(table_id=f"t{i}", policy=policy) for i in range(6)]
        reports = await asyncio.wait_for(asyncio.gather(*sends), 10.0)
        failed = ep.stats.failed
    assert runs, "no handler ran"
    assert not any(reports)
    for report in reports:
        assert isinstance(report.error, OutcomeUnknown), report.error
        assert not isinstance(report.error, NoRoute)
        assert "may have run" in str(report.error)
        # The hub keeps the starved receiver (stalled, its connection up): no no-route.
        assert "no route" not in str(report.error)
    assert failed["outcome-unknown"] == len(reports)
    assert len(runs) == 6  # every one ran, once (the receiver woke up and finished them)


class LongHandler:
    """A handler that takes ``seconds`` (awaiting: its loop stays free), counting runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[str] = []
        self.finished: list[str] = []

    async def __call__(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        self.started.append(msg.table_id)
        await asyncio.sleep(self.seconds)
        self.finished.append(msg.table_id)


def _lease_case(outlive: bool) -> tuple[Policy, float, dict[str, Any]]:
    """The policy, the handler's length and the receiver's options: the default policy
    and heartbeat under ``make chaos`` (20 s, or past the 30 s deadline), else a policy
    whose ack timeout is a quarter of the handler (or whose deadline it outlives)."""
    if CHAOS:
        policy = Policy()  # 1 s ack timeout, 10 attempts, 30 s deadline
        return policy, (policy.deadline + 3.0 if outlive else 20.0), {"heartbeat": 1.0}
    quick = Policy(ack_timeout=0.2, max_attempts=2, backoff_base=0.01, backoff_cap=0.05)
    if outlive:
        return quick.with_(deadline=1.0), 1.6, {}
    return quick.with_(deadline=5.0), 0.8, {}


async def test_a_long_handler_holds_its_lease_one_run_a_true_report(hub: str) -> None:
    """A handler four times its sender's ack timeout with max_attempts=2 (20 s under
    the default policy with make chaos): its receiver says IN_PROGRESS while it runs,
    so no attempt is spent: one attempt, one run, a true report."""
    policy, seconds, options = _lease_case(outlive=False)
    handler = LongHandler(seconds)
    async with (
        ThreadEndpoint(hub, handler, **options),
        Endpoint("dealer", hub, heartbeat=HEARTBEAT) as ep,
    ):
        client = table_ackbus.TableClient(ep)
        report = await asyncio.wait_for(
            client.send_start_hand(table_id="long", policy=policy), seconds + 10.0
        )
    assert report, report.error
    assert report.attempts == 1
    assert (handler.started, handler.finished) == (["long"], ["long"])
    assert ep.stats.retries == 0


async def test_a_handler_that_outlives_its_deadline_runs_once_outcome_unknown(hub: str) -> None:
    """The deadline still bounds the wait: a handler that outlives it gives one run and
    an "outcome unknown" report at the deadline, never a plain failure."""
    policy, seconds, options = _lease_case(outlive=True)
    handler = LongHandler(seconds)
    loop = asyncio.get_running_loop()
    async with (
        ThreadEndpoint(hub, handler, **options),
        Endpoint("dealer", hub, heartbeat=HEARTBEAT) as ep,
    ):
        client = table_ackbus.TableClient(ep)
        start = loop.time()
        report = await asyncio.wait_for(
            client.send_start_hand(table_id="late", policy=policy), seconds + 10.0
        )
        took = loop.time() - start
        await asyncio.sleep(seconds - took + 0.5)  # the handler ends; nothing runs again
    assert not report
    assert isinstance(report.error, OutcomeUnknown), report.error
    assert "may have run (or may still be running)" in str(report.error)
    assert report.attempts == 1
    assert policy.deadline - 0.1 < took < policy.deadline + 0.5
    assert (handler.started, handler.finished) == (["late"], ["late"])
