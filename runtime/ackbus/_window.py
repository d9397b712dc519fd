"""Sends waiting for room in a destination's in-flight window: one line per destination.

Each settled message wakes the first waiter of its destination's line, and only that
one, which then sends without checking again (waking every waiter on every ack would
make concurrent senders spin: each ack would wake all, one would go ahead, the rest
would sleep again with a new future and timer).

A line is ordered by priority with aging (:mod:`ackbus.core.priority`, the rule every
queue shares): a waiter of priority ``p`` queues as if it had come ``p * PRIORITY_STEP``
seconds earlier than it did, so a steady stream of high priorities cannot starve the
rest. Among equal priorities the line is first come, first served. Should
another send take the slot first, the tracker queues the extra message: it never exceeds
the window in flight, and never drops. A waiter woken and then cancelled passes its turn
on; cancelled and timed-out waiters are skipped when a turn is handed out rather than
removed when they leave (no O(n) removal from the middle of the line).

Each waiter has a deadline, but a line has one timer, armed for its earliest deadline
and re-armed when it fires, instead of one per waiter: a loop timer per waiting send
would cost a ``TimerHandle``, a push into the loop's heap (compared in Python) and the
cancelled handle's removal, paid by most sends of a service that sends from more tasks
at once than its window holds.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

from .core.priority import PRIORITY_STEP, aging_key

__all__ = ["PRIORITY_STEP", "WindowLines"]

_EARLY = 0.001
"""A waiter whose deadline is this close when its line's timer fires times out then."""


_Waiter = tuple[float, int, asyncio.Future[None], float]
"""``(virtual arrival, arrival number, future, deadline)``: a heap orders them by the
first two (the number breaks ties first come first served, and futures never compare)."""


class _Line:
    __slots__ = ("timer", "timer_at", "waiters")

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []
        """A heap, the next waiter first."""
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0


class WindowLines:
    """The lines of one endpoint. ``timeout_error(destination)`` is what a waiter whose
    deadline passed gets."""

    def __init__(self, timeout_error: Callable[[str], BaseException]) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout_error = timeout_error
        self.lines: dict[str, _Line] = {}
        """Destinations someone waits for (``destination in lines``: a send must wait
        behind them)."""
        self._arrivals = 0
        self._keys: dict[int, list[float]] = {}
        """Ordering key → [the latest virtual arrival of a waiter of the key, how many
        of its sends are in line]: a keyed waiter never queues ahead of an earlier one
        of its key, whatever their priorities (priority never reorders a key)."""

    def __bool__(self) -> bool:
        return bool(self.lines)

    def enter(
        self,
        destination: str,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
        *,
        priority: int = 0,
        place: tuple[float, int] | None = None,
        key: int = 0,
    ) -> tuple[asyncio.Future[None], tuple[float, int]]:
        """Join ``destination``'s line: a future of ``loop``'s that completes when it is
        this waiter's turn (or fails at ``deadline``, loop time), and the waiter's place
        in line. A waiter whose turn came but found the slot taken enters again with the
        ``place`` it had, so it keeps it. Await the future, and call :meth:`leave` if the
        await raised. A send with an ordering ``key`` queues behind the sends of its
        key already in line; it calls :meth:`key_left` once it is out of line for good."""
        self._loop = loop
        line = self.lines.get(destination)
        if line is None:
            line = self.lines[destination] = _Line()
        fut: asyncio.Future[None] = loop.create_future()
        if place is None:
            self._arrivals += 1
            place = (aging_key(loop.time(), priority), self._arrivals)
            if key:
                known = self._keys.get(key)
                if known is None:
                    self._keys[key] = [place[0], 1]
                else:
                    if known[0] > place[0]:  # behind the earlier ones of its key
                        place = (known[0], place[1])
                    known[0] = place[0]
                    known[1] += 1
        heapq.heappush(line.waiters, (place[0], place[1], fut, deadline))
        if line.timer is None or deadline < line.timer_at:
            self._arm(destination, line, deadline)
        return fut, place

    def key_left(self, key: int) -> None:
        """A send with ordering ``key`` is out of line for good (its turn came, or it
        failed)."""
        known = self._keys.get(key)
        if known is not None:
            known[1] -= 1
            if known[1] <= 0:
                del self._keys[key]

    def leave(self, destination: str, fut: asyncio.Future[None]) -> None:
        """The await of ``fut`` raised (cancelled, or timed out): a waiter whose turn
        had come passes it on; any other leaves the line."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self.admit(destination)
        else:
            self._prune(destination)

    def admit(self, destination: str) -> None:
        """A slot of ``destination`` is free: wake its first live waiter."""
        line = self.lines.get(destination)
        if line is None:
            return
        waiters = line.waiters
        while waiters:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)
                break
        self._prune(destination)

    def fail(self, error: BaseException) -> None:
        """Fail every waiter (the endpoint closes)."""
        lines, self.lines = self.lines, {}
        for line in lines.values():
            if line.timer is not None:
                line.timer.cancel()
            for _, _, fut, _ in line.waiters:
                if not fut.done():
                    fut.set_exception(error)

    def _prune(self, destination: str) -> None:
        """Drop finished waiters from the head of the line, and the line once empty, so
        that a line of none but timed-out waiters never makes a new send wait."""
        line = self.lines.get(destination)
        if line is None:
            return
        waiters = line.waiters
        while waiters and waiters[0][2].done():
            heapq.heappop(waiters)
        if not waiters:
            if line.timer is not None:
                line.timer.cancel()
            del self.lines[destination]

    def _arm(self, destination: str, line: _Line, when: float) -> None:
        assert self._loop is not None
        if line.timer is not None:
            line.timer.cancel()
        line.timer_at = when
        line.timer = self._loop.call_at(when, self._expire, destination, line)

    def _expire(self, destination: str, line: _Line) -> None:
        """The line's timer fired: fail the waiters whose deadline passed, and arm the
        timer for the earliest deadline left (a scan of the line: a timer fires once
        per deadline that passes, not per send)."""
        line.timer = None
        assert self._loop is not None
        now = self._loop.time() + _EARLY
        earliest: float | None = None
        for _, _, fut, deadline in line.waiters:
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(self._timeout_error(destination))
            elif earliest is None or deadline < earliest:
                earliest = deadline
        self._prune(destination)
        if earliest is not None and self.lines.get(destination) is line:
            self._arm(destination, line, earliest)
