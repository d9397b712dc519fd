"""One rescheduling timer per state-machine driver.

The core machines say when they next need a ``tick`` (``next_deadline()``); the
endpoint and the hub keep a single ``loop.call_at`` handle armed for the earliest of
those instants instead of one timer per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Timer"]


class Timer:
    """Calls ``fire()`` at the earliest instant asked for with :meth:`at`."""

    __slots__ = ("_fire", "_handle", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._when = float("inf")

    def at(self, when: float | None) -> None:
        """Make sure ``fire`` runs no later than ``when`` (loop time); None is a no-op."""
        if when is None or when >= self._when:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self._when = float("inf")
        self._fire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._when = float("inf")
