"""Run a handler coroutine eagerly, without a task when it never suspends.

Most handlers finish without awaiting anything that suspends. Creating an
``asyncio.Task`` for each costs far more than the handler itself, so
:func:`run_eager` steps the coroutine once by hand: if it finishes, the result is
delivered at once; if it suspends, the rest of it runs in a task that resumes it exactly
where it stopped.

Stepping a coroutine outside any task must not change what the handler sees, so:

* **Its own task.** During the first step ``asyncio.current_task()`` returns a
  stand-in (:class:`_StandIn`), so ``asyncio.timeout``, ``TaskGroup`` and anything
  else that captures the current task work from a handler's first line. When the
  handler suspends, the stand-in is bound to the task that runs the rest and
  forwards every call to it: a timeout that expires later cancels that task. A
  task that was current when ``run_eager`` was called steps aside meanwhile.
* **Its own context.** Each run gets a copy of the caller's ``contextvars``
  context, used for the first step and for the task, so a ``ContextVar`` a handler
  sets never leaks into the caller or into later handlers.

On Python 3.12 and later the standard library's eager task start does all of this
(``asyncio.Task(..., eager_start=True)``) and is used instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import sys
from collections.abc import Callable, Coroutine, Generator
from contextvars import copy_context
from typing import Any, TypeVar

__all__ = ["report_when_done", "run_eager", "start_eager"]

T = TypeVar("T")

Done = Callable[[T | None, BaseException | None], None]
Ended = tuple[T | None, BaseException | None]
"""How a coroutine ended: ``(result, None)``, or ``(None, error)``."""


def _ended(task: asyncio.Task[T]) -> Ended[T]:
    """A finished task's outcome (a CancelledError if it was cancelled)."""
    try:
        return task.result(), None
    except BaseException as exc:  # the handler's own error, reported, never raised here
        return None, exc


def _report(on_done: Done[T], task: asyncio.Task[T]) -> None:
    on_done(*_ended(task))


def report_when_done(task: asyncio.Task[T], on_done: Done[T]) -> None:
    """Call ``on_done(result, None)`` or ``on_done(None, error)`` once ``task`` ends."""
    task.add_done_callback(functools.partial(_report, on_done))


def run_eager(
    coro: Coroutine[Any, Any, T], on_done: Done[T], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[T] | None:
    """Start ``coro``; call ``on_done(result, None)`` or ``on_done(None, error)`` when it ends.

    Returns ``None`` when it finished synchronously, else the task that runs the rest
    (cancel it to cancel the handler; ``on_done`` then receives the CancelledError).
    """
    started = start_eager(coro, loop)
    if isinstance(started, tuple):
        on_done(*started)
        return None
    report_when_done(started, on_done)
    return started


if sys.version_info >= (3, 12):

    def start_eager(
        coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
    ) -> Ended[T] | asyncio.Task[T]:
        """Step ``coro`` eagerly: how it ended if it finished in that step, else the task
        that runs the rest (the caller that needs no callback object for a handler that
        finished at once: most of them)."""
        task = asyncio.Task(coro, loop=loop, eager_start=True)
        if task.done():
            return _ended(task)
        return task

else:
    # The calls asyncio's own tasks use to become the loop's current task. They
    # accept any object, which is what lets the stand-in be current.
    _enter_task: Callable[[asyncio.AbstractEventLoop, Any], None] = asyncio.tasks._enter_task
    _leave_task: Callable[[asyncio.AbstractEventLoop, Any], None] = asyncio.tasks._leave_task

    def start_eager(
        coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
    ) -> Ended[T] | asyncio.Task[T]:
        """Step ``coro`` eagerly: how it ended if it finished in that step, else the task
        that runs the rest (the caller that needs no callback object for a handler that
        finished at once: most of them)."""
        ctx = copy_context()
        stand_in = _StandIn()  # its slots are set here: an __init__ call would cost more
        stand_in._coro, stand_in._loop, stand_in._outcome = coro, loop, None
        caller: asyncio.Task[Any] | None = None
        try:
            _enter_task(loop, stand_in)
        except RuntimeError:  # called from inside a task: it steps aside for the first step
            caller = asyncio.current_task(loop)
            _leave_task(loop, caller)
            _enter_task(loop, stand_in)
        try:
            first = ctx.run(coro.send, None)
        except StopIteration as stop:
            result, error = stop.value, None
        except BaseException as exc:  # the handler's own error, reported, never raised here
            result, error = None, exc
        else:
            task = loop.create_task(_Continuation(coro, first), name=stand_in._name, context=ctx)
            stand_in._bind(task)
            return task
        finally:
            _leave_task(loop, stand_in)
            if caller is not None:
                _enter_task(loop, caller)
        if stand_in._must_cancel or stand_in._callbacks is not None:
            result, error = stand_in._finish(result, error)
        else:
            stand_in._outcome = (result, error)  # all _finish does for an untouched stand-in
        return result, error


_DELIVERED: Any = object()  # _Continuation: the first step's yield was handed to the task

_names = itertools.count(1)


class _Continuation(Coroutine[Any, Any, T], Generator[Any, Any, T]):
    """The rest of a coroutine already stepped once, for a task to drive.

    The task's first ``send(None)`` gets back what the coroutine yielded in its eager
    first step (usually a future it waits on); after that ``send`` and ``throw`` go
    straight to the coroutine, so it costs one method call per resumption. If the
    task is cancelled before its first step, the CancelledError is thrown into the
    coroutine where it waits, after cancelling the future it waits on, as a task
    does. It is its own awaitable iterator, like a future's, so it can be awaited too.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def send(self, value: Any, /) -> Any:
        first = self._first
        if first is _DELIVERED:
            return self._coro.send(value)
        self._first = _DELIVERED
        return first

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        first = self._first
        if first is not _DELIVERED:
            self._first = _DELIVERED
            if isinstance(typ, asyncio.CancelledError) and asyncio.isfuture(first):
                first.cancel()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, T]:
        return self

    def __getattr__(self, name: str) -> Any:
        # cr_code, cr_frame, __qualname__, ...: the task's repr and get_stack() show
        # the handler, not this wrapper.
        return getattr(self._coro, name)


class _StandIn:
    """What ``asyncio.current_task()`` returns during a handler's first step.

    Until the handler suspends there is no task, but the first step may already
    ask for one (``asyncio.timeout`` keeps it to cancel it later; ``TaskGroup`` to
    cancel and uncancel it). The stand-in records what a task records meanwhile
    (cancel requests, name, done callbacks). When the handler suspends it is bound
    to the task that runs the rest: what it recorded is applied to that task and
    every later call is forwarded to it, so cancelling it cancels the handler
    wherever it is. A handler that finishes without suspending never gets a task;
    the stand-in then reports that outcome like a finished task.

    It is not the task object itself: ``current_task()`` after the first suspension
    returns the real task, and done callbacks added during the first step receive
    that task.
    """

    # Set by run_eager for every handler, hence slots.
    __slots__ = ("__dict__", "__weakref__", "_coro", "_loop", "_outcome")
    _coro: Coroutine[Any, Any, Any]
    _loop: asyncio.AbstractEventLoop
    _outcome: tuple[Any, BaseException | None] | None  # once it finished without a task

    # Used by few handlers: class defaults, set in the instance's __dict__ when used.
    _task: asyncio.Task[Any] | None = None
    _cancels = 0
    _must_cancel = False
    _cancel_msg: Any = None
    _name: str | None = None
    _callbacks: list[tuple[Callable[[Any], object], contextvars.Context | None]] | None = None

    # -- driven by run_eager ------------------------------------------------------------

    def _bind(self, task: asyncio.Task[Any]) -> None:
        """The handler suspended and ``task`` runs the rest: hand over, then forward."""
        self._task = task
        if self._must_cancel:
            for _ in range(max(self._cancels, 1)):
                task.cancel(self._cancel_msg)
            if self._cancels == 0:  # cancelled, then uncancelled: still delivered
                task.uncancel()
        for fn, context in self._callbacks or ():
            task.add_done_callback(fn, context=context)
        self._callbacks = None

    def _finish(self, result: Any, error: BaseException | None) -> tuple[Any, BaseException | None]:
        """The handler ended in its first step: settle like a finished task; the outcome."""
        if self._must_cancel and error is None:
            # Its own cancel() came in and it returned without suspending: a task
            # ends cancelled then, whatever the coroutine returned.
            result, error = None, asyncio.CancelledError(self._cancel_msg)
        self._outcome = (result, error)
        for fn, context in self._callbacks or ():
            self._loop.call_soon(fn, self, context=context)
        self._callbacks = None
        return result, error

    def _settled(self) -> tuple[Any, BaseException | None]:
        if self._outcome is None:
            raise asyncio.InvalidStateError("the handler has not finished")
        return self._outcome

    # -- the task's API -------------------------------------------------------------------

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        if self._outcome is not None:
            return False
        self._cancels += 1
        self._must_cancel = True
        self._cancel_msg = msg
        return True

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._cancels > 0:
            self._cancels -= 1
        return self._cancels

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else self._cancels

    def done(self) -> bool:
        return self._task.done() if self._task is not None else self._outcome is not None

    def cancelled(self) -> bool:
        if self._task is not None:
            return self._task.cancelled()
        return self._outcome is not None and isinstance(self._outcome[1], asyncio.CancelledError)

    def result(self) -> Any:
        if self._task is not None:
            return self._task.result()
        result, error = self._settled()
        if error is not None:
            raise error
        return result

    def exception(self) -> BaseException | None:
        if self._task is not None:
            return self._task.exception()
        _, error = self._settled()
        if isinstance(error, asyncio.CancelledError):
            raise error
        return error

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self._task is not None:
            self._task.add_done_callback(fn, context=context)
        elif self._outcome is not None:
            self._loop.call_soon(fn, self, context=context)
        elif self._callbacks is None:
            self._callbacks = [(fn, context)]
        else:
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        if self._task is not None:
            return self._task.remove_done_callback(fn)
        callbacks = self._callbacks or []
        self._callbacks = [(f, c) for f, c in callbacks if f != fn]
        return len(callbacks) - len(self._callbacks)

    def get_name(self) -> str:
        if self._task is not None:
            return self._task.get_name()
        if self._name is None:  # the task, if one comes, is created with this name
            self._name = f"ackbus-handler-{next(_names)}"
        return self._name

    def set_name(self, value: object) -> None:
        if self._task is not None:
            self._task.set_name(value)
        else:
            self._name = str(value)

    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._coro

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def __await__(self) -> Generator[Any, None, Any]:
        if self._task is not None:
            return (yield from self._task)
        return self.result()

    def __getattr__(self, name: str) -> Any:
        # Everything else a task has (get_stack, print_stack, ...) once there is one.
        if self._task is None:
            raise AttributeError(f"{name!r}: the handler has no task before its first suspension")
        return getattr(self._task, name)

    def __repr__(self) -> str:
        if self._task is not None:
            state = f"bound to {self._task!r}"
        else:
            state = "finished" if self._outcome is not None else "first step"
        return f"<handler task stand-in for {self._coro!r}, {state}>"
