"""Run a handler coroutine eagerly, without a task when it never suspends.

Most handlers finish without awaiting anything that suspends. Creating an
``asyncio.Task`` for each costs more than the handler itself (about 6 µs against
0.4 µs here), so :func:`run_eager` steps the coroutine once by hand: if it
finishes, the result is delivered at once; if it suspends, the rest of it runs in
a task that resumes it exactly where it stopped. This is what Python 3.12's eager
task factory does, done here for one call site on 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["run_eager"]

T = TypeVar("T")

Done = Callable[[T | None, BaseException | None], None]


def run_eager(
    coro: Coroutine[Any, Any, T], on_done: Done[T], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[T] | None:
    """Start ``coro``; call ``on_done(result, None)`` or ``on_done(None, error)`` when it ends.

    Returns ``None`` when it finished synchronously, else the task that runs the rest
    (cancel it to cancel the handler; ``on_done`` then receives the CancelledError).
    """
    try:
        first = coro.send(None)
    except StopIteration as stop:
        on_done(stop.value, None)
        return None
    except BaseException as exc:  # the handler's own error, reported, never raised here
        on_done(None, exc)
        return None
    task = loop.create_task(_finish(_Resume(coro, first)))

    def report(t: asyncio.Task[T]) -> None:
        if t.cancelled():
            on_done(None, asyncio.CancelledError())
            return
        exc = t.exception()
        on_done(None, exc) if exc is not None else on_done(t.result(), None)

    task.add_done_callback(report)
    return task


async def _finish(resume: _Resume[T]) -> T:
    return await resume


class _Resume(Generic[T]):
    """Awaitable that continues a coroutine already stepped once (PEP 380 by hand)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        value = self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
