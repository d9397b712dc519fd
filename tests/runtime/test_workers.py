"""The worker pool of plain ``def`` handlers: bounded, off the loop, reporting on it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from ackbus._workers import Workers, default_workers
from helpers import eventually

Ends = list[tuple[Any, BaseException | None, str]]


def recorder(ends: Ends) -> Any:
    def on_done(result: Any, error: BaseException | None) -> None:
        ends.append((result, error, threading.current_thread().name))

    return on_done


def named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


async def test_runs_in_its_threads_and_reports_on_the_loop_thread() -> None:
    loop = asyncio.get_running_loop()
    workers = Workers(2, "pool-a")
    assert named("pool-a") == []  # no thread before the first run
    ends: Ends = []
    ran_in: list[str] = []

    def fn(msg: int, ctx: str) -> int:
        ran_in.append(threading.current_thread().name)
        if msg < 0:
            raise ValueError(ctx)
        return msg * 2

    for i in (1, 2, -1):
        workers.start(loop, fn, i, "ctx", recorder(ends))
    await eventually(lambda: len(ends) == 3)
    await workers.close(1.0)
    me = threading.current_thread().name
    assert sorted(r for r, e, _ in ends if e is None) == [2, 4]
    (error,) = [e for _, e, _ in ends if e is not None]
    assert isinstance(error, ValueError)
    assert str(error) == "ctx"
    assert {t for _, _, t in ends} == {me}
    assert all(t.startswith("pool-a") for t in ran_in)


async def test_never_more_than_size_at_once_and_many_quick_ends_all_arrive() -> None:
    loop = asyncio.get_running_loop()
    workers = Workers(3, "pool-b")
    lock = threading.Lock()
    now = peak = 0

    def fn(msg: int, ctx: None) -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.001 if msg % 10 else 0.01)
        with lock:
            now -= 1
        return msg

    ends: Ends = []
    for i in range(300):
        workers.start(loop, fn, i, None, recorder(ends))
    assert workers.running == 300
    await eventually(lambda: len(ends) == 300)
    assert sorted(r for r, _, _ in ends) == list(range(300))
    assert peak == 3
    assert workers.running == 0
    await workers.close(1.0)


async def test_a_plain_function_returning_a_coroutine_ends_in_a_type_error() -> None:
    async def later() -> None:
        return None

    ends: Ends = []
    workers = Workers(1, "pool-c")
    workers.start(asyncio.get_running_loop(), lambda m, c: later(), None, None, recorder(ends))
    await eventually(lambda: bool(ends))
    await workers.close(1.0)
    assert isinstance(ends[0][1], TypeError)
    assert "returned a coroutine" in str(ends[0][1])


async def test_close_cancels_queued_runs_waits_for_running_ones_and_drops_late_ends() -> None:
    loop = asyncio.get_running_loop()
    workers = Workers(1, "pool-d")
    release = threading.Event()
    started = threading.Event()

    def blocking(msg: str, ctx: None) -> str:
        started.set()
        release.wait(5)
        return msg

    quick: Ends = []
    workers.start(loop, lambda m, c: m, "quick", None, recorder(quick))
    await eventually(lambda: bool(quick))
    first: Ends = []
    queued: Ends = []
    workers.start(loop, blocking, "first", None, recorder(first))
    workers.start(loop, blocking, "queued", None, recorder(queued))
    await asyncio.to_thread(started.wait, 5)
    t0 = time.monotonic()
    await workers.close(0.1)
    assert 0.08 < time.monotonic() - t0 < 1.0
    assert len(queued) == 1
    assert isinstance(queued[0][1], asyncio.CancelledError)  # never ran
    assert first == []  # still running: not reported
    release.set()
    await asyncio.sleep(0.05)
    assert first == []  # ended after close: dropped
    with pytest.raises(RuntimeError, match="closed"):
        workers.start(loop, blocking, "late", None, recorder(first))


async def test_close_reports_a_run_that_ends_within_the_timeout() -> None:
    workers = Workers(1, "pool-e")
    ends: Ends = []
    loop = asyncio.get_running_loop()
    workers.start(loop, lambda m, c: time.sleep(0.05), 1, None, recorder(ends))
    await asyncio.sleep(0.01)
    await workers.close(2.0)
    assert [(r, e) for r, e, _ in ends] == [(None, None)]


def test_size_is_at_least_one_and_defaults_like_thread_pool_executor() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Workers(0, "x")
    assert 5 <= default_workers() <= 32
