"""What a receiving endpoint protocol keeps of the messages it has: each one's lease
(:class:`Running`), and the line of those waiting for a slot under ``max_concurrency``
(:class:`WaitingLine`, by priority with aging: :mod:`ackbus.core.priority`). A message
with an ordering key joins that line only once no other of its key runs or waits there
(the protocol parks it until then, in arrival order), so priority never reorders a key."""

from __future__ import annotations

import heapq
from typing import TypeVar

from .priority import aging_key

__all__ = ["Running", "WaitingLine"]

T = TypeVar("T")


class Running:
    """A message whose handler runs (or waits to): where its IN_PROGRESS notices go,
    and since when."""

    __slots__ = ("hub", "key", "peer", "started")

    def __init__(self, hub: int, peer: bytes, started: float, key: int = 0) -> None:
        self.hub = hub
        self.peer = peer
        self.started = started
        self.key = key
        """Its ordering key's hash (0: none)."""


class WaitingLine(list[tuple[float, int, int, T]]):
    """Accepted messages waiting for a slot: the earliest virtual arrival first. A list
    (a heap), so that "is anyone waiting" costs no Python call on the receive path."""

    arrivals = 0

    def push(self, hub: int, item: T, priority: int, now: float) -> None:
        self.arrivals += 1
        heapq.heappush(self, (aging_key(now, priority), self.arrivals, hub, item))

    def pop_next(self) -> tuple[int, T]:
        """The next message to start, and the hub it came through."""
        _, _, hub, item = heapq.heappop(self)
        return hub, item

    def drain(self) -> list[T]:
        """Every waiting message, removed (the endpoint closes)."""
        items = [entry[3] for entry in self]
        self.clear()
        return items
