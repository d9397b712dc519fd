"""run_eager: a handler started eagerly behaves exactly as if it ran in a task of its own.

Handlers that never suspend finish without a task; others resume correctly. Either
way the handler has a current task (asyncio.timeout, TaskGroup, current_task() work
from its first line) and a contextvars context of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from ackbus._eager import run_eager

T = TypeVar("T")


class Outcomes:
    """An on_done that records what it was given, and lets a test wait for it."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, BaseException | None]] = []
        self._arrived = asyncio.Event()

    def __call__(self, result: object, error: BaseException | None) -> None:
        self.seen.append((result, error))
        self._arrived.set()

    async def one(self) -> tuple[object, BaseException | None]:
        async with asyncio.timeout(2):
            await self._arrived.wait()
        [outcome] = self.seen
        return outcome


def start(coro: Coroutine[Any, Any, T], outcomes: Outcomes) -> asyncio.Task[T] | None:
    return run_eager(coro, outcomes, asyncio.get_running_loop())


async def doubled(x: int) -> int:
    return x * 2


async def slow_tripled(x: int) -> int:
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    return x * 3


async def fails_at_once() -> None:
    raise ValueError("at once")


async def fails_later() -> None:
    await asyncio.sleep(0)
    raise KeyError("later")


async def sleep_noting_cancel(log: list[object], note: str) -> None:
    """Sleeps long; a CancelledError is noted in ``log`` and let through."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        log.append(note)
        raise


# -- the basic contract -----------------------------------------------------------------


async def test_synchronous_handler_needs_no_task() -> None:
    outcomes = Outcomes()
    before = asyncio.all_tasks()
    assert start(doubled(21), outcomes) is None
    assert outcomes.seen == [(42, None)]
    assert asyncio.all_tasks() == before


async def test_suspending_handler_resumes_in_a_task() -> None:
    outcomes = Outcomes()
    task = start(slow_tripled(5), outcomes)
    assert task is not None
    assert outcomes.seen == []
    async with asyncio.timeout(2):
        assert await task == 15
    assert await outcomes.one() == (15, None)


@pytest.mark.parametrize("factory", [fails_at_once, fails_later])
async def test_errors_reach_on_done_never_the_caller(
    factory: Any,
) -> None:
    outcomes = Outcomes()
    start(factory(), outcomes)
    result, error = await outcomes.one()
    assert result is None
    assert isinstance(error, (ValueError, KeyError))


async def test_cancelling_the_task_cancels_the_handler() -> None:
    log: list[object] = []
    outcomes = Outcomes()
    task = start(sleep_noting_cancel(log, "saw cancel"), outcomes)
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    _, error = await outcomes.one()
    assert log == ["saw cancel"]
    assert isinstance(error, asyncio.CancelledError)
    assert task.cancelled()


async def test_cancel_before_the_task_first_ran_reaches_the_handler_where_it_waits() -> None:
    """Cancelled at once, before the continuation ever ran: the handler still sees the
    CancelledError at its await (its finally runs), and the future it waited on is
    cancelled, as a task would cancel it."""
    log: list[str] = []
    waited_on: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        try:
            await waited_on
        finally:
            log.append("cleaned up")

    outcomes = Outcomes()
    task = start(waits(), outcomes)
    assert task is not None
    task.cancel("closing")
    _, error = await outcomes.one()
    assert log == ["cleaned up"]
    assert isinstance(error, asyncio.CancelledError)
    assert waited_on.cancelled()


# -- asyncio.timeout and TaskGroup from the handler's first line --------------------------


async def test_timeout_that_expires_while_suspended_raises_in_the_handler() -> None:
    async def handler() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0  # the timeout took back its cancel
            await asyncio.sleep(0)  # and the handler goes on normally
            return "gave up in time"
        return "unreachable"

    outcomes = Outcomes()
    assert start(handler(), outcomes) is not None
    assert await outcomes.one() == ("gave up in time", None)


async def test_timeout_that_expires_unhandled_reaches_on_done_as_timeout_error() -> None:
    async def handler() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    outcomes = Outcomes()
    start(handler(), outcomes)
    _, error = await outcomes.one()
    assert isinstance(error, TimeoutError)


async def test_timeout_that_does_not_expire() -> None:
    async def suspends() -> str:
        async with asyncio.timeout(2) as cm:
            await asyncio.sleep(0.001)
        assert not cm.expired()
        return "done"

    async def never_suspends() -> str:
        async with asyncio.timeout(2):  # noqa: ASYNC100 (the point: a timeout needs a task)
            return "done at once"

    outcomes = Outcomes()
    assert start(suspends(), outcomes) is not None
    assert await outcomes.one() == ("done", None)
    outcomes = Outcomes()
    assert start(never_suspends(), outcomes) is None
    assert outcomes.seen == [("done at once", None)]


async def test_task_group_in_a_handler() -> None:
    async def child(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    async def handler() -> int:
        async with asyncio.TaskGroup() as group:
            a = group.create_task(child(1))
            b = group.create_task(child(2))
        return a.result() + b.result()

    outcomes = Outcomes()
    start(handler(), outcomes)
    assert await outcomes.one() == (3, None)


async def test_task_group_cancels_the_handler_when_a_child_fails() -> None:
    """The group cancels its parent (the handler) through the task it captured in the
    first step, and uncancels it on exit."""

    async def crashes() -> None:
        await asyncio.sleep(0.001)
        raise KeyError("child")

    async def handler() -> str:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(crashes())
                await asyncio.sleep(10)  # cancelled by the group
        except* KeyError:
            pass
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        return "recovered"

    outcomes = Outcomes()
    start(handler(), outcomes)
    assert await outcomes.one() == ("recovered", None)


# -- current_task() -------------------------------------------------------------------------


async def test_current_task_in_the_first_step_acts_on_the_handler_task() -> None:
    seen: dict[str, Any] = {}
    resumed = asyncio.Event()

    async def handler() -> None:
        first = asyncio.current_task()
        assert first is not None
        seen["first"] = first
        seen["first_done"] = first.done()
        seen["first_name"] = first.get_name()
        await asyncio.sleep(0)
        seen["later"] = asyncio.current_task()
        resumed.set()
        await asyncio.sleep(10)

    outcomes = Outcomes()
    coro = handler()
    task = start(coro, outcomes)
    assert task is not None
    async with asyncio.timeout(2):
        await resumed.wait()
    first = seen["first"]
    assert seen["later"] is task
    assert seen["first_done"] is False
    assert seen["first_name"] == first.get_name() == task.get_name()
    assert first.get_coro() is coro
    assert first.get_loop() is asyncio.get_running_loop()
    assert first.cancelling() == 0
    assert first.cancel("stop") is True
    assert task.cancelling() == first.cancelling() == 1
    _, error = await outcomes.one()
    assert isinstance(error, asyncio.CancelledError)
    assert first.done()
    assert first.cancelled()
    assert task.cancelled()


async def test_cancel_requested_in_the_first_step_is_delivered_at_the_first_await() -> None:
    log: list[object] = []

    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        assert task.cancelling() == 1
        log.append("still running")
        await sleep_noting_cancel(log, "cancelled at the await")

    outcomes = Outcomes()
    start(cancels_itself(), outcomes)
    _, error = await outcomes.one()
    assert isinstance(error, asyncio.CancelledError)
    assert log == ["still running", "cancelled at the await"]


async def test_a_handler_that_cancels_itself_and_returns_at_once_ends_cancelled() -> None:
    async def handler() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return "ignored"

    outcomes = Outcomes()
    assert start(handler(), outcomes) is None
    [(result, error)] = outcomes.seen
    assert result is None
    assert isinstance(error, asyncio.CancelledError)


async def test_done_callbacks_added_in_the_first_step_run() -> None:
    got: list[tuple[bool, object]] = []
    called = asyncio.Event()

    def record(task: asyncio.Task[Any]) -> None:
        got.append((task.done(), task.result()))
        called.set()

    async def at_once() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.add_done_callback(record)
        return "sync"

    async def later() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.add_done_callback(record)
        await asyncio.sleep(0)
        return "async"

    for handler in (at_once, later):
        called.clear()
        outcomes = Outcomes()
        start(handler(), outcomes)
        await outcomes.one()
        async with asyncio.timeout(2):
            await called.wait()
    assert got == [(True, "sync"), (True, "async")]


async def test_task_repr_names_the_handler() -> None:
    async def a_distinct_handler_name() -> None:
        await asyncio.sleep(10)

    task = start(a_distinct_handler_name(), Outcomes())
    assert task is not None
    assert "a_distinct_handler_name" in repr(task)
    assert task.get_stack()  # the handler's frame, suspended in sleep
    task.cancel()
    async with asyncio.timeout(2):
        await asyncio.gather(task, return_exceptions=True)


# -- called from inside a task ----------------------------------------------------------------


async def test_run_from_inside_a_task_the_handler_does_not_see_that_task() -> None:
    caller = asyncio.current_task()
    seen: list[object] = []

    async def handler() -> None:
        seen.append(asyncio.current_task())
        async with asyncio.timeout(0.01):  # must cancel the handler, not the caller
            await sleep_noting_cancel(seen, "cancelled")

    outcomes = Outcomes()
    start(handler(), outcomes)
    assert asyncio.current_task() is caller  # restored once the first step is over
    assert seen[0] is not None
    assert seen[0] is not caller
    _, error = await outcomes.one()
    assert isinstance(error, TimeoutError)
    assert seen[1] == "cancelled"
    assert caller is not None
    assert caller.cancelling() == 0


async def test_a_handler_may_start_another_handler_eagerly() -> None:
    loop = asyncio.get_running_loop()
    seen: list[object] = []

    async def inner() -> str:
        seen.append(asyncio.current_task())
        return "inner"

    async def outer() -> str:
        me = asyncio.current_task()
        inner_outcomes = Outcomes()
        run_eager(inner(), inner_outcomes, loop)
        assert inner_outcomes.seen == [("inner", None)]
        assert asyncio.current_task() is me
        seen.append(me)
        return "outer"

    outcomes = Outcomes()
    start(outer(), outcomes)
    assert outcomes.seen == [("outer", None)]
    assert seen[0] is not seen[1]
    assert None not in seen


# -- contextvars ------------------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def test_context_vars_set_by_a_handler_stay_in_that_handler() -> None:
    both_started = asyncio.Event()
    observed: dict[str, tuple[str, str]] = {}

    async def handler(name: str) -> None:
        at_start = request_id.get()
        request_id.set(name)
        await both_started.wait()
        observed[name] = (at_start, request_id.get())

    a, b = Outcomes(), Outcomes()
    start(handler("a"), a)
    start(handler("b"), b)
    assert request_id.get() == "unset"  # nothing leaked into the caller
    both_started.set()
    await a.one()
    await b.one()
    assert observed == {"a": ("unset", "a"), "b": ("unset", "b")}


async def test_a_synchronous_handler_does_not_leak_context_vars() -> None:
    async def sets(name: str) -> str:
        before = request_id.get()
        request_id.set(name)
        return before

    first, second = Outcomes(), Outcomes()
    start(sets("x"), first)
    start(sets("y"), second)
    assert first.seen == [("unset", None)]
    assert second.seen == [("unset", None)]  # not "x"
    assert request_id.get() == "unset"


async def test_a_handler_sees_the_context_it_was_started_in() -> None:
    token = request_id.set("from caller")
    try:
        outcomes = Outcomes()
        start(slow_reader(), outcomes)
    finally:
        request_id.reset(token)
    assert await outcomes.one() == (("from caller", "from caller"), None)


async def slow_reader() -> tuple[str, str]:
    before = request_id.get()
    await asyncio.sleep(0.001)
    return before, request_id.get()
