"""A seeded fake network and virtual clock for driving the core state machines.

Nodes exchange plain Python objects through :class:`SimNetwork`, which can drop, duplicate,
delay (and so reorder) each one, cut links for a while (partitions), and take nodes down
and up again. Everything random comes from one ``random.Random``, and the loop is
single-threaded, so a run is a pure function of its seed: a failure is reproduced by its
seed, not by luck.

The clock is virtual: :meth:`SimNetwork.run` jumps from one due event (a delivery, a
scheduled call, a node's timer from its ``next_deadline()``) to the next.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["FaultModel", "SimNetwork", "SimNode"]


class SimNode(Protocol):
    """What the network needs of a node."""

    addr: str
    up: bool
    incarnation: int
    """Bumped on every restart: a message sent to an earlier incarnation is lost."""

    def on_message(self, src: str, msg: object, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def tick(self, now: float) -> None: ...


@dataclass(slots=True)
class FaultModel:
    """How the network misbehaves. Probabilities are per message."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.001
    """Minimum one-way delay, seconds."""
    jitter: float = 0.0
    """Mean of an extra exponential delay: reorders messages when > 0."""
    partitions: list[tuple[float, float, frozenset[str]]] = field(default_factory=list)
    """``(start, end, {a, b})``: the link between ``a`` and ``b`` is cut within the window."""


class SimNetwork:
    """The virtual clock, the event queue and the faulty links between nodes."""

    def __init__(self, rng: random.Random, faults: FaultModel | None = None) -> None:
        self.rng = rng
        self.faults = faults or FaultModel()
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self._queue: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self.sent = self.dropped = self.duplicated = self.delivered = 0
        self.trace: Callable[[str], None] | None = None

    def add(self, node: SimNode) -> None:
        self.nodes[node.addr] = node

    def call_at(self, when: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` at virtual time ``when``."""
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn))

    def cut(self, a: str, b: str, now: float) -> bool:
        pair = frozenset((a, b))
        return any(start <= now < end and p == pair for start, end, p in self.faults.partitions)

    def send(self, src: str, dst: str, msg: object) -> None:
        """Put ``msg`` on the wire from ``src`` to ``dst``; it may never arrive."""
        self.sent += 1
        faults = self.faults
        rng = self.rng
        now = self.now
        if (faults.loss and rng.random() < faults.loss) or (
            faults.partitions and self.cut(src, dst, now)
        ):
            self.dropped += 1
            self._log(f"drop {src}->{dst} {msg}")
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            self.duplicated += 1
        target = self.nodes[dst]
        incarnation = target.incarnation
        for _ in range(copies):
            delay = faults.delay
            if faults.jitter:
                delay += rng.expovariate(1.0 / faults.jitter)

            def deliver(at: float, msg: object = msg) -> None:
                if not target.up or target.incarnation != incarnation:
                    self.dropped += 1
                    self._log(f"lost {src}->{dst} (down) {msg}")
                    return
                self.delivered += 1
                self._log(f"recv {src}->{dst} {msg}")
                target.on_message(src, msg, at)

            self.call_at(now + delay, deliver)

    def run(
        self, done: Callable[[], bool], *, max_time: float, max_steps: int = 10_000_000
    ) -> bool:
        """Advance the clock until ``done()`` or ``max_time``; True if ``done()``."""
        queue = self._queue
        nodes = list(self.nodes.values())
        steps = 0
        while not done():
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"simulation made no progress after {max_steps} steps")
            when = queue[0][0] if queue else math.inf
            due: SimNode | None = None
            for node in nodes:
                if node.up:
                    t = node.next_deadline()
                    if t is not None and t < when:
                        when, due = t, node
            if when > max_time:
                return False
            self.now = max(self.now, when)
            if due is not None:
                due.tick(self.now)
            else:
                _, _, fn = heapq.heappop(queue)
                fn(self.now)
        return True

    def drain(self, *, max_time: float) -> None:
        """Run queued deliveries and calls (not node timers) until none is left."""
        queue = self._queue
        while queue and queue[0][0] <= max_time:
            when, _, fn = heapq.heappop(queue)
            self.now = max(self.now, when)
            fn(self.now)

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now:10.4f} {text}")
