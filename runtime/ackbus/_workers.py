"""Plain ``def`` handlers on a bounded pool of worker threads, off the event loop.

A handler that blocks (a sync database driver, CPU work, ``time.sleep``) must not block
the loop that keeps an endpoint's heartbeats, acks and retries going. An endpoint runs
its plain ``def`` handlers here: at most ``size`` at once, each in a thread of the pool,
in a copy of the loop's ``contextvars`` context taken when it was started (a ``ContextVar``
a handler sets stays in its own run). Messages beyond ``size`` wait in the pool's queue.

How a run ended, ``(result, None)`` or ``(None, error)``, goes back to the loop thread:
the threads collect ends in a list under a lock and wake the loop once per collection
(``call_soon_threadsafe``), so a burst of short handlers costs one wake-up, not one each.
Every ``on_done`` is called on the loop thread, never in a worker.

A thread cannot be cancelled. :meth:`Workers.close` cancels the runs still queued (their
``on_done`` gets a ``CancelledError`` at once), waits up to its timeout for the ones
running, and leaves those still running to finish in their threads; their ends are
dropped once the loop is gone. The pool's threads are not daemons: Python's own exit
waits for them, as for any ``ThreadPoolExecutor``.

The pool is created at the first sync run: an endpoint whose handlers are all
``async def`` never starts a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["Workers", "default_workers"]

Done = Callable[[Any, BaseException | None], None]
"""Called on the loop thread with how a run ended: ``(result, None)`` or ``(None, error)``."""


def default_workers() -> int:
    """``min(32, CPUs + 4)``: the size ``ThreadPoolExecutor`` picks for I/O-bound work."""
    return min(32, (os.cpu_count() or 1) + 4)


class _Run:
    """One handler run: whom to tell, and its future in the pool (to cancel it queued)."""

    __slots__ = ("future", "on_done")

    def __init__(self, on_done: Done) -> None:
        self.on_done = on_done
        self.future: Future[None] | None = None


class Workers:
    """One endpoint's pool of threads for its plain ``def`` handlers."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"workers must be >= 1, got {size}")
        self.size = size
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runs: set[_Run] = set()
        """Started and not yet reported: queued in the pool, running, or ended and
        waiting for the loop to take the end."""
        self._lock = threading.Lock()
        self._ended: list[tuple[_Run, Any, BaseException | None]] = []
        self._waking = False
        """A wake-up of the loop is scheduled and has not taken the ends yet."""
        self._closed = False

    @property
    def running(self) -> int:
        """Runs started and not yet reported (queued in the pool or running)."""
        return len(self._runs)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[Any, Any], Any],
        msg: Any,
        ctx: Any,
        on_done: Done,
    ) -> None:
        """Run ``fn(msg, ctx)`` in a worker thread; ``on_done`` on ``loop`` once it ended.
        Called on the loop thread."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        pool = self._pool
        if pool is None:
            self._loop = loop
            pool = self._pool = ThreadPoolExecutor(self.size, thread_name_prefix=self._name)
        run = _Run(on_done)
        self._runs.add(run)
        run.future = pool.submit(self._run, run, contextvars.copy_context(), fn, msg, ctx)

    def _run(
        self, run: _Run, context: contextvars.Context, fn: Callable[..., Any], msg: Any, ctx: Any
    ) -> None:
        """In a worker thread: the handler, then its end handed to the loop."""
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(fn, msg, ctx)
        except BaseException as exc:  # the handler's own error, reported on the loop
            error = exc
        if asyncio.iscoroutine(result):  # e.g. a lambda that calls an async function
            result.close()
            name = getattr(fn, "__qualname__", repr(fn))
            result, error = (
                None,
                TypeError(
                    f"{name} is a plain function that returned a coroutine; declare the "
                    "handler `async def` to have it awaited"
                ),
            )
        with self._lock:
            self._ended.append((run, result, error))
            if self._waking:
                return
            self._waking = True
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            loop.call_soon_threadsafe(self._take_ends)

    def _take_ends(self) -> None:
        """On the loop: report every end collected since the last wake-up."""
        with self._lock:
            ended, self._ended = self._ended, []
            self._waking = False
        for run, result, error in ended:
            if run in self._runs:
                self._runs.discard(run)
                run.on_done(result, error)

    async def close(self, timeout: float) -> None:
        """Cancel the runs still queued (reported as cancelled), wait up to ``timeout``
        seconds for the running ones to end (reported as they end), then let the pool go;
        a run still going on after that finishes in its thread, unreported."""
        self._closed = True
        pool = self._pool
        if pool is None:
            return
        running = []
        for run in list(self._runs):
            assert run.future is not None
            if run.future.cancel():
                self._runs.discard(run)
                run.on_done(None, asyncio.CancelledError())
            else:
                running.append(asyncio.wrap_future(run.future))
        if running:
            await asyncio.wait(running, timeout=timeout)
        self._take_ends()
        self._runs.clear()
        pool.shutdown(wait=False, cancel_futures=True)
