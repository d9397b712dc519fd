"""A watchdog for an endpoint's event loop: it says when the loop stops running, and what
held it.

Everything an endpoint does besides running handlers (heartbeats, acks, retries, lease
notices) happens on its event loop. An ``async def`` handler that blocks (``time.sleep``,
a sync driver, CPU work) holds that loop; asyncio runs every ready callback before its
timers, so a batch of such handlers can hold it for seconds. This module notices it and
says so in the log, once per stall, naming the handler.

How, at no cost per message:

* on the loop, a beat: a timer every ``threshold / 4`` seconds that stores the time. When
  a beat finds the previous one more than ``threshold`` ago, the loop was held that long:
  the stall is counted (``on_stall``) and reported;
* in a daemon thread, the watchdog: it wakes when the beat should have come and, while the
  beat is overdue, samples the loop thread's Python stack (``sys._current_frames()``) and
  looks for a frame of a registered handler (by its code object), so the report names the
  handler and the line it was on, not only how long it took.

Reports are rate limited: the first stall is logged when it ends; later ones within
``log_every`` seconds are counted and summed up in the next line. A stall that goes on for
``still_after`` seconds is logged once while it lasts (a deadlocked loop would otherwise
never be reported). This module imports nothing from ackbus.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any

__all__ = ["ADVICE", "LoopWatchdog", "code_of"]

log = logging.getLogger("ackbus.endpoint")

ADVICE = (
    "an async def handler that blocks holds the event loop, and with it heartbeats, acks "
    "and retries: make it a plain def handler (it then runs in a worker thread), or await "
    "the blocking call in an executor (await asyncio.to_thread(...))"
)


def code_of(fn: Any) -> CodeType | None:
    """The code object a handler function runs: a function's, a bound method's, a
    partial's target's, or an object's ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        call = inspect.getattr_static(type(fn), "__call__", None)
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _where(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class _Summary:
    """Stalls counted, not logged yet (rate limit)."""

    __slots__ = ("count", "longest", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.longest = 0.0

    def add(self, length: float) -> None:
        self.count += 1
        self.total += length
        self.longest = max(self.longest, length)


class LoopWatchdog:
    """Watches one event loop from a daemon thread (module docstring).

    ``name`` says whose loop it is in the log; ``on_stall(seconds)`` is called on the loop
    for every stall longer than ``threshold``. Assign :attr:`handlers` (code object →
    handler name) whenever the handlers change.
    """

    def __init__(
        self,
        name: str,
        threshold: float,
        on_stall: Callable[[float], None],
        *,
        log_every: float = 10.0,
        still_after: float = 10.0,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"the stall threshold must be > 0, got {threshold}")
        self.name = name
        self.threshold = threshold
        self.period = threshold / 4
        self.log_every = log_every
        self.still_after = max(still_after, threshold)
        self.handlers: dict[CodeType, str] = {}
        """Code object of each registered handler → its name (as the endpoint says)."""
        self._on_stall = on_stall
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tid = 0
        self._beat_at = 0.0
        """When the loop last ran its beat (time.monotonic); written on the loop only."""
        self._sample: tuple[float, Counter[str]] = (0.0, Counter())
        """(the beat a stall started after, where the loop was at each sample): written
        by the watchdog thread, read by the loop when the stall ends."""
        self._still_logged = 0.0
        self._logged_at = -float("inf")
        self._quiet = _Summary()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching ``loop``; call on the loop's own thread."""
        if self._thread is not None:
            return
        self._loop = loop
        self._tid = threading.get_ident()
        self._beat_at = time.monotonic()
        self._handle = loop.call_later(self.period, self._beat)
        self._thread = threading.Thread(
            target=self._watch, name=f"ackbus-watchdog-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the beat and the thread (joined up to ``timeout`` s). Idempotent."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._report_quiet(time.monotonic())

    # ------------------------------------------------------------------ on the loop

    def _beat(self) -> None:
        now = time.monotonic()
        previous = self._beat_at
        gap = now - previous
        self._beat_at = now
        if self._loop is not None and not self._stop.is_set():
            self._handle = self._loop.call_later(self.period, self._beat)
        if gap > self.threshold:
            started, seen = self._sample
            self._on_stall(gap)
            self._stalled(gap, seen if started == previous else Counter(), now)

    def _stalled(self, length: float, seen: Counter[str], now: float) -> None:
        """A stall of ``length`` seconds ended at ``now``: log it, or count it for the
        next line when one was logged less than ``log_every`` seconds ago."""
        if now - self._logged_at < self.log_every:
            self._quiet.add(length)
            return
        where = seen.most_common(1)[0][0] if seen else "where it was not sampled"
        log.warning(
            "%s: the event loop did not run for %.2f s, held by %s; %s%s",
            self.name,
            length,
            where,
            ADVICE,
            self._quiet_text(),
        )
        self._logged_at = now

    def _quiet_text(self) -> str:
        quiet = self._quiet
        if not quiet.count:
            return ""
        text = (
            f" (and {quiet.count} more stall(s) since the last such line, "
            f"{quiet.total:.1f} s in all, the longest {quiet.longest:.2f} s)"
        )
        self._quiet = _Summary()
        return text

    def _report_quiet(self, now: float) -> None:
        """Stalls counted but not logged: one summary line (at stop)."""
        if self._quiet.count:
            log.warning("%s: event loop stalls%s", self.name, self._quiet_text())
            self._logged_at = now

    # ------------------------------------------------------------------ in the thread

    def _watch(self) -> None:
        stop = self._stop
        threshold = self.threshold
        wait = threshold
        while not stop.wait(wait):
            beat = self._beat_at
            now = time.monotonic()
            overdue = now - beat
            if overdue <= threshold:
                wait = beat + threshold - now + self.period / 2
                continue
            started, seen = self._sample
            if started != beat:
                seen = Counter()
                self._sample = (beat, seen)
            seen[self._sample_loop()] += 1
            if overdue >= self.still_after and self._still_logged != beat:
                self._still_logged = beat
                log.warning(
                    "%s: the event loop has not run for %.1f s and is still held, by %s; %s",
                    self.name,
                    overdue,
                    seen.most_common(1)[0][0],
                    ADVICE,
                )
            wait = self.period

    def _sample_loop(self) -> str:
        """Where the loop thread is now: the handler whose frame is on its stack, and
        the line it is on (and the innermost function, if another), else the innermost
        frame."""
        frame = sys._current_frames().get(self._tid)
        if frame is None:
            return "nothing (the loop thread is gone)"
        return describe(frame, self.handlers)


def describe(frame: FrameType, handlers: dict[CodeType, str]) -> str:
    """``frame``'s stack in words: the handler it is in (outermost match wins the name,
    its line the place), or the innermost function when no handler is on it."""
    inner = frame
    f: FrameType | None = frame
    while f is not None:
        name = handlers.get(f.f_code)
        if name is not None:
            text = f"handler {name} at {_where(f)}"
            if f is not inner:
                text += f" (in {inner.f_code.co_qualname} at {_where(inner)})"
            return text
        f = f.f_back
    return f"{inner.f_code.co_qualname} at {_where(inner)}, not in a handler"


def handler_codes(routes: Iterable[tuple[Any, str]]) -> dict[CodeType, str]:
    """Code object → name for ``(function, name)`` pairs (functions without one are
    left out)."""
    out: dict[CodeType, str] = {}
    for fn, name in routes:
        code = code_of(fn)
        if code is not None:
            out[code] = name
    return out
