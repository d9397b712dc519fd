"""The inbound deduper: a message id is handled at most once per receiving instance.

For each incoming envelope the receiver asks :meth:`InboundDeduper.begin`:

========  ==============================================================================
NEW       first sight: run the handler, then call :meth:`~InboundDeduper.finish` (or
          :meth:`~InboundDeduper.abandon` if it crashed locally without an outcome)
RUNNING   the handler is still running for an earlier copy: do nothing now, the ack goes
          out when it finishes
DONE      already handled: re-ack from :meth:`~InboundDeduper.record` without running
          the handler (OK is re-acked as DUPLICATE with the cached response)
========  ==============================================================================

Only final outcomes are remembered: OK, EXPIRED and a *permanent* rejection. A transient
rejection or a retry-later is forgotten at once, because the sender's retry is meant to run
the handler again.

Bounds, and what they guarantee: a finished entry is kept for ``ttl`` seconds after it
finished, and at most ``capacity`` entries are kept in all (the oldest finished ones are
evicted first; a running entry is never evicted, and running entries are bounded by the
receiver's credit). A duplicate is caught as long as its entry lives, i.e. if it arrives
within ``ttl`` of the first outcome and fewer than ``capacity`` newer messages finished in
between. The sender's deadline (30 s by default) is far inside the default ttl (600 s), so
its retries are always caught unless more than ``capacity`` messages finish meanwhile.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ._common import Outcome, RemoteError

__all__ = ["DedupeRecord", "InboundDeduper", "Verdict"]


class Verdict(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DONE = "done"


_FINAL = frozenset({Outcome.OK, Outcome.EXPIRED, Outcome.REJECTED})

_Entry = tuple[bytes, int, float, bytes, "RemoteError | None"]
"""A finished message as the deduper keeps it: ``(msg_id, outcome value, finished_at,
response, error)``. A plain tuple of bytes, ints and floats (the Outcome's value, not
the enum member) because up to ``capacity`` (100,000) of them live at once: Python's
cyclic garbage collector stops tracking such a tuple, while it scans every object with
slots (or a tuple subclass, or a tuple holding an enum member) at each full collection,
which would make those collections long on a busy receiver (docs/performance.md)."""
_ID: Final = 0
_AT: Final = 2
_OK: Final = int(Outcome.OK)


def _record(e: _Entry) -> DedupeRecord:
    return DedupeRecord(e[0], Outcome(e[1]), e[2], e[3], e[4])


@dataclass(frozen=True, slots=True)
class DedupeRecord:
    """The remembered outcome of one handled message (what :meth:`record` and
    :meth:`export` return). Built on request from the deduper's compact entry."""

    msg_id: bytes
    outcome: Outcome
    finished_at: float
    response: bytes = b""
    error: RemoteError | None = None


class InboundDeduper:
    """Seen message ids with their outcomes, bounded by ``capacity`` and ``ttl``."""

    def __init__(self, *, capacity: int = 100_000, ttl: float = 600.0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        self.capacity = capacity
        self.ttl = ttl
        self._running: dict[bytes, float] = {}
        self._done: dict[bytes, _Entry] = {}
        # Finished records in finish order; `now` never decreases, so the oldest is first.
        # A record evicted or replaced stays here until it reaches the front (skipped then).
        self._order: deque[_Entry] = deque()

    def begin(self, msg_id: bytes, now: float) -> Verdict:
        """An envelope with ``msg_id`` arrived: may its handler run?"""
        if msg_id in self._done:
            return Verdict.DONE
        if msg_id in self._running:
            return Verdict.RUNNING
        self._running[msg_id] = now
        if len(self._running) + len(self._done) > self.capacity:
            self._evict_oldest(now)
        return Verdict.NEW

    def finish(
        self,
        msg_id: bytes,
        outcome: Outcome,
        now: float,
        *,
        response: bytes = b"",
        error: RemoteError | None = None,
    ) -> None:
        """The handler for ``msg_id`` ended with ``outcome``: remember it if it is final."""
        self._running.pop(msg_id, None)
        if outcome not in _FINAL or (
            outcome == Outcome.REJECTED and not (error is not None and error.permanent)
        ):
            self._done.pop(msg_id, None)
            return
        self._store((msg_id, int(outcome), now, response, error))
        if len(self._running) + len(self._done) > self.capacity:
            self._evict_oldest(now)

    def finish_ok(self, msg_ids: Iterable[bytes], now: float) -> None:
        """:meth:`finish` with outcome OK and no response, for several ids at once:
        what a receiver does for every handler that returned during one received batch
        (one call per batch rather than per id: it is on a pipelined receiver's hot
        path)."""
        running = self._running
        done = self._done
        order = self._order
        for mid in msg_ids:
            running.pop(mid, None)
            entry = (mid, _OK, now, b"", None)
            done[mid] = entry
            order.append(entry)
        self._compact_order()
        self._trim(now)

    def abandon(self, msg_id: bytes) -> None:
        """The handler died without an outcome (e.g. cancelled): forget it so a retry runs."""
        self._running.pop(msg_id, None)

    def record(self, msg_id: bytes) -> DedupeRecord | None:
        """The cached outcome of a finished message (for a DONE verdict)."""
        entry = self._done.get(msg_id)
        return _record(entry) if entry is not None else None

    def tick(self, now: float) -> int:
        """Evict finished entries older than ``ttl``; returns how many."""
        order = self._order
        done = self._done
        limit = now - self.ttl
        evicted = 0
        while order and order[0][_AT] <= limit:
            entry = order.popleft()
            if done.get(entry[_ID]) is entry:
                del done[entry[_ID]]
                evicted += 1
        return evicted

    def next_deadline(self) -> float | None:
        """When the oldest finished entry expires (an upper bound: it may be gone)."""
        return self._order[0][_AT] + self.ttl if self._order else None

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def running_count(self) -> int:
        return len(self._running)

    def export(self) -> list[DedupeRecord]:
        """Finished records, oldest first (running ones have no outcome to keep)."""
        done = self._done
        return [_record(e) for e in self._order if done.get(e[_ID]) is e]

    def load(self, records: Iterable[DedupeRecord], now: float) -> None:
        """Restore exported records (e.g. from a durable store), dropping expired ones."""
        for record in sorted(records, key=lambda r: r.finished_at):
            if record.finished_at > now - self.ttl:
                self._store(
                    (
                        record.msg_id,
                        int(record.outcome),
                        record.finished_at,
                        record.response,
                        record.error,
                    )
                )
        self._trim(now)

    def _store(self, entry: _Entry) -> None:
        self._done[entry[_ID]] = entry
        self._order.append(entry)
        self._compact_order()

    def _compact_order(self) -> None:
        # Replaced records linger in the deque until they reach the front; compact when
        # they would let it grow past twice its useful size.
        if len(self._order) > 2 * self.capacity:
            done = self._done
            self._order = deque(e for e in self._order if done.get(e[_ID]) is e)

    def _trim(self, now: float) -> None:
        """Evict the oldest finished entries while over capacity."""
        while len(self._running) + len(self._done) > self.capacity and self._evict_oldest(now):
            pass

    def _evict_oldest(self, now: float) -> bool:
        """Drop the oldest finished entry (running ones are never evicted)."""
        order = self._order
        done = self._done
        while order:
            entry = order.popleft()
            if done.get(entry[_ID]) is entry:
                del done[entry[_ID]]
                return True
        return False
