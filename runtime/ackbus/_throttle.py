"""One log line per key per minute: what a flood of refusals is allowed to write.

A hub facing a hostile or merely broken peer (a health checker, a wrong-version client in
a reconnect loop, an unenrolled key) refuses it as often as it comes back; logging each
refusal would let that peer fill the disk. :class:`Throttle` says, per key (a refusal
code, a CURVE key), whether a line may be written now, and how many were held back since
the last one, so the next line can say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["MORE_KEYS", "Throttle", "held_back"]

MORE_KEYS = "(more keys)"
"""The key that stands for every key beyond the throttle's capacity."""


def held_back(held: int, what: str) -> str:
    """What a line lets through says of the lines held back since the last one."""
    return f" ({held} more {what} in the last minute)" if held else ""


class Throttle:
    """At most one line per key per ``every`` seconds. Remembers at most ``keys`` keys
    (forgetting those whose minute is over first); beyond that, a flood of distinct keys
    shares the key :data:`MORE_KEYS`."""

    def __init__(
        self, every: float = 60.0, keys: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self.capacity = keys
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}
        """Key: when its last line was written, lines held back since."""

    def allow(self, key: str) -> tuple[str, int] | None:
        """Count one event of ``key``. ``None``: hold its line back. Otherwise the key to
        write it under (``key``, or :data:`MORE_KEYS` when too many keys are live) and
        how many lines of that key were held back since its last one."""
        now = self._clock()
        last = self._last
        if key not in last and len(last) >= self.capacity:
            self._last = last = {k: v for k, v in last.items() if now - v[0] < self.every}
            if len(last) >= self.capacity:
                key = MORE_KEYS
        at, held = last.get(key, (-self.every - 1.0, 0))
        if now - at < self.every:
            last[key] = (at, held + 1)
            return None
        last[key] = (now, 0)
        return key, held
