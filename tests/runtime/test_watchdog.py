"""The event loop watchdog (ackbus._watchdog): a stall is logged once, naming the
handler that held the loop and the line it was on; stalls are counted and rate limited;
the thread stops with the watchdog or the endpoint."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import helpers
import pytest
from ackbus import Context, Endpoint
from ackbus._watchdog import ADVICE, LoopWatchdog, code_of, describe, handler_codes
from ackbus.wire_pb2 import Bye


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ackbus-watchdog")]


async def blocking_handler(msg: object, ctx: object) -> None:
    time.sleep(0.3)  # noqa: ASYNC251 - the mistake the watchdog names


async def test_a_stall_is_logged_once_with_its_length_the_handler_and_its_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    # log_every=0: every stall is logged (a loaded machine may add stalls of its own).
    dog = LoopWatchdog("table/t1", 0.1, stalls.append, log_every=0.0)
    dog.handlers = handler_codes([(blocking_handler, "blocking_handler")])
    caplog.set_level(logging.WARNING, "ackbus.endpoint")
    dog.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.2)
        await blocking_handler(None, None)
        await asyncio.sleep(0.1)  # the next beat sees the gap
    finally:
        dog.stop()
    assert any(0.3 <= s < 5.0 for s in stalls), stalls
    line = blocking_handler.__code__.co_firstlineno + 1
    held = [r.getMessage() for r in caplog.records if "handler blocking_handler" in r.getMessage()]
    assert len(held) == 1, held  # one line for the stall
    text = held[0]
    assert text.startswith("table/t1: the event loop did not run for ")
    assert f"held by handler blocking_handler at {__file__}:{line}" in text
    assert ADVICE in text
    assert not dog.running


async def test_stalls_within_the_rate_limit_are_summed_up_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    dog = LoopWatchdog("x/1", 0.05, stalls.append, log_every=60.0)
    caplog.set_level(logging.WARNING, "ackbus.endpoint")
    dog.start(asyncio.get_running_loop())
    try:
        for _ in range(3):
            time.sleep(0.15)  # noqa: ASYNC251
            await asyncio.sleep(0.05)
    finally:
        dog.stop()
    assert len(stalls) >= 3  # (a loaded machine may add stalls of its own)
    lines = [r.getMessage() for r in caplog.records if "x/1" in r.getMessage()]
    assert len(lines) == 2, lines  # the first stall, then the summary at stop
    assert "did not run for" in lines[0]
    assert f"{len(stalls) - 1} more stall(s)" in lines[1]


async def test_a_long_stall_is_reported_while_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    dog = LoopWatchdog("x/2", 0.05, lambda s: None, still_after=0.2)
    dog.handlers = handler_codes([(blocking_handler, "blocking_handler")])
    caplog.set_level(logging.WARNING, "ackbus.endpoint")
    dog.start(asyncio.get_running_loop())
    try:
        await blocking_handler(None, None)
        await asyncio.sleep(0.05)
    finally:
        dog.stop()
    lines = [r.getMessage() for r in caplog.records if "x/2" in r.getMessage()]
    assert any("still held, by handler blocking_handler" in line for line in lines), lines
    assert any("did not run for" in line for line in lines), lines


def test_describe_names_the_handler_and_the_innermost_function() -> None:
    def inner() -> object:
        return sys._getframe()

    async def handler(msg: object, ctx: object) -> object:
        return inner()

    class Obj:
        async def __call__(self, msg: object, ctx: object) -> None: ...

    coro = handler(None, None)
    try:
        coro.send(None)
    except StopIteration as stop:
        frame = stop.value
    text = describe(frame, handler_codes([(handler, "Table.on_start_hand")]))
    assert text.startswith(f"handler Table.on_start_hand at {__file__}:")
    assert (
        "(in test_describe_names_the_handler_and_the_innermost_function.<locals>.inner at" in text
    )
    assert describe(frame, {}).endswith("not in a handler")
    assert code_of(Obj()) is Obj.__call__.__code__
    assert code_of(Obj().__call__) is Obj.__call__.__code__


async def test_an_endpoint_names_its_blocking_handler_counts_the_stall_and_stops_its_thread(
    memory_hub: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    before = watchdogs()
    caplog.set_level(logging.WARNING, "ackbus.endpoint")

    async def on_bye(msg: Bye, ctx: Context) -> None:
        time.sleep(0.3)  # noqa: ASYNC251

    bus = memory_hub
    kw = {"backend": bus.backend, "heartbeat": helpers.HEARTBEAT, "policy": helpers.FAST}
    async with (
        Endpoint("table", bus.address, stall_threshold=0.1, **kw) as table,
        Endpoint("dealer", bus.address, stall_threshold=None, **kw) as dealer,
    ):
        table.register_handler(Bye, on_bye)
        assert table._watchdog is not None
        table._watchdog.log_every = 0.0  # every stall logged (load may add its own)
        await asyncio.sleep(0.05)  # the hello reaches the hub
        assert len(watchdogs()) == len(before) + 1  # the table's; the dealer has none
        report = await dealer.send(Bye(reason="x"))
        await helpers.eventually(lambda: table.stats.loop_stalls >= 1)
    assert report, report.error
    assert table.stats.loop_stalled_s >= 0.3
    assert watchdogs() == before
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "held by handler test_an_endpoint_names_its_blocking_handler" in text
    assert "on_bye at" in text
