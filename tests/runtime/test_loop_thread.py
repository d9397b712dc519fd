"""LoopThread: blocking calls into a background loop, with timeouts and a clean close."""

import asyncio
import threading

import pytest
from ackbus import ClosedError, WaitTimeout
from ackbus._loop_thread import LoopThread


async def answer() -> str:
    await asyncio.sleep(0)
    return threading.current_thread().name


async def never() -> None:
    await asyncio.sleep(3600)


async def boom() -> None:
    raise ValueError("from the loop")


def test_runs_on_the_loop_thread_and_returns() -> None:
    lt = LoopThread(name="lt-test")
    try:
        assert lt.run(answer(), timeout=2) == "lt-test"
    finally:
        lt.close()


def test_timeout_cancels_and_raises_wait_timeout() -> None:
    lt = LoopThread()
    try:
        with pytest.raises(WaitTimeout):
            lt.run(never(), timeout=0.05)
    finally:
        lt.close()


def test_errors_propagate() -> None:
    lt = LoopThread()
    try:
        with pytest.raises(ValueError, match="from the loop"):
            lt.run(boom(), timeout=2)
    finally:
        lt.close()


def test_close_is_idempotent_and_refuses_later_calls() -> None:
    lt = LoopThread()
    lt.close()
    lt.close()
    assert not lt._thread.is_alive()
    coro = answer()
    with pytest.raises(ClosedError):
        lt.run(coro, timeout=1)


def test_close_cancels_pending_work() -> None:
    lt = LoopThread()
    fut = asyncio.run_coroutine_threadsafe(never(), lt.loop)
    lt.close()
    assert fut.cancelled()
    assert not lt._thread.is_alive()
