"""An asyncio event loop in a background thread, for the blocking API.

Plain threads call :meth:`LoopThread.run` with a coroutine; it runs on the loop
thread and the caller blocks until it finishes, or until ``timeout`` ran out, in
which case the coroutine is cancelled and :class:`ackbus.WaitTimeout` is raised.
Calling from the loop thread itself would deadlock, so it is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import ClosedError, WaitTimeout

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Owns one event loop running forever in a daemon thread until :meth:`close`."""

    def __init__(self, name: str = "ackbus-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._closed = False
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(started.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, name=name, daemon=True)
        self._thread.start()
        started.wait()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and return its result (or raise its error)."""
        if self._closed:
            coro.close()
            raise ClosedError("the blocking endpoint is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking call from the endpoint's own loop thread would deadlock")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            # Since Python 3.11 this is the builtin TimeoutError, which the coroutine's own
            # errors derive from too (ConnectTimeout, SendWindowTimeout): those are raised
            # as they are. Only our wait running out is this call's WaitTimeout.
            if fut.done():
                return fut.result()
            fut.cancel()
            raise WaitTimeout(f"blocking call did not finish within {timeout} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
