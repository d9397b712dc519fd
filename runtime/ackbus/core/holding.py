"""The hub's hold queues: messages waiting for an instance with room.

When every instance that may take a message is at its ``max_concurrency`` (the routing
table answers :data:`~ackbus.core.routing.FULL`), the hub holds it here instead of
sending it anyway, and dispatches it when an answer frees a slot. Two kinds of queue:

* per (type, service), for messages no instance has had yet (first attempts, and an
  event's share for one subscribing service): whichever instance of the service frees
  a slot first takes the best of them;
* per instance, for retries that must go back to the instance that had the message
  before (sticky routing): only that instance takes them. When it leaves, its held
  messages move to their (type, service) queues.

Each queue is ordered by priority with aging (:mod:`ackbus.core.priority`); a message
is held once however often its sender retries it (a retry replaces the held copy,
keeping its place). The queues of one service hold at most ``capacity`` messages.
Generic over the driver's item type; nothing here reads a clock or sends anything.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from .priority import aging_key

__all__ = ["Held", "HoldQueues"]

T = TypeVar("T")

HeldKey = bytes | tuple[bytes, str]
"""A held message's key: its id (a command), or (id, service) (an event's share)."""


class Held(Generic[T]):
    """One held message: the latest copy of its item and whom to answer."""

    __slots__ = ("item", "key", "msg_id", "msg_type", "origin", "pinned", "place", "service")

    def __init__(
        self,
        key: HeldKey,
        msg_id: bytes,
        item: T,
        origin: bytes,
        msg_type: str,
        service: str,
        pinned: bytes | None,
    ) -> None:
        self.key = key
        self.msg_id = msg_id
        self.item = item
        self.origin = origin
        self.msg_type = msg_type
        self.service = service
        self.pinned = pinned
        """The instance key a sticky retry waits for, or ``None``."""
        self.place = (0.0, 0)
        """Its place in line: (virtual arrival, arrival number)."""


_Entry = tuple[float, int, Held[T]]
"""``(virtual arrival, arrival number, held)``: the heap order."""


class HoldQueues(Generic[T]):
    """Every queue of one hub (module docstring)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._held: dict[HeldKey, Held[T]] = {}
        self._queues: dict[tuple[str, str], list[_Entry[T]]] = {}
        """(type, service) → heap of messages any instance of the service may take."""
        self._pinned: dict[bytes, list[_Entry[T]]] = {}
        """Instance key → heap of retries only it may take."""
        self._per_service: Counter[str] = Counter()
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[Held[T]]:
        return iter(list(self._held.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def get(self, key: HeldKey) -> Held[T] | None:
        return self._held.get(key)

    def hold(self, held: Held[T], priority: int, now: float) -> bool:
        """Hold a message; False when its service's queues are full (or, for a message
        held already, True: its item and origin are replaced and it keeps its place)."""
        known = self._held.get(held.key)
        if known is not None:
            known.item, known.origin = held.item, held.origin
            return True
        service = held.service
        if self._per_service[service] >= self.capacity:
            return False
        self._held[held.key] = held
        self._per_service[service] += 1
        self._arrivals += 1
        self._push(held, (aging_key(now, priority), self._arrivals))
        return True

    def _push(self, held: Held[T], place: tuple[float, int]) -> None:
        held.place = place
        if held.pinned is not None:
            heap = self._pinned.setdefault(held.pinned, [])
        else:
            heap = self._queues.setdefault((held.msg_type, held.service), [])
        heapq.heappush(heap, (place[0], place[1], held))

    def take(self, instance: bytes, service: str, types: Iterable[str]) -> Held[T] | None:
        """The best message the instance ``instance`` (of ``service``, handling
        ``types``) may take now, removed from its queue; ``None`` when there is none."""
        best: list[_Entry[T]] | None = None
        pinned = self._pinned.get(instance)
        if pinned:
            best = pinned
        for msg_type in types:
            heap = self._queues.get((msg_type, service))
            if heap and (best is None or heap[0][:2] < best[0][:2]):
                best = heap
        if best is None:
            return None
        held = heapq.heappop(best)[2]
        if not best:
            if held.pinned is not None:
                del self._pinned[held.pinned]
            else:
                del self._queues[(held.msg_type, held.service)]
        self._forget(held)
        return held

    def pin(self, held: Held[T], instance: bytes) -> None:
        """Hold ``held`` (just taken) again, for ``instance`` only, in its old place:
        its sticky instance is registered again."""
        held.pinned = instance
        self._held[held.key] = held
        self._per_service[held.service] += 1
        self._push(held, held.place)

    def unpin(self, instance: bytes) -> None:
        """``instance`` left: the retries that waited for it may go to any instance of
        their service now (they keep their places)."""
        for place, arrival, held in self._pinned.pop(instance, ()):
            held.pinned = None
            self._push(held, (place, arrival))

    def drop(self, msg_type: str, service: str) -> list[Held[T]]:
        """Every message waiting for (``msg_type``, ``service``), removed: no instance
        takes them any more (the caller answers their senders)."""
        heap = self._queues.pop((msg_type, service), [])
        for _, _, held in heap:
            self._forget(held)
        return [held for _, _, held in heap]

    def waiting_types(self) -> list[tuple[str, str]]:
        """The (type, service) queues that hold something."""
        return list(self._queues)

    def _forget(self, held: Held[T]) -> None:
        del self._held[held.key]
        n = self._per_service[held.service] - 1
        if n:
            self._per_service[held.service] = n
        else:
            del self._per_service[held.service]
