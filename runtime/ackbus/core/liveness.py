"""Peer liveness: heartbeats both ways, and death after missed intervals.

Each side proposes a heartbeat interval in its hello; both use :func:`negotiate`, the larger
of the two, so two sides configured differently still agree (and the slower side is never
declared dead for being slow on purpose). A side sends a heartbeat to a peer when it sent it
nothing else for one interval (any traffic counts, so a busy link carries no heartbeats), and
declares the peer dead when it heard nothing from it for ``misses`` intervals.

Our own silence is not the peer's. When a death check runs late by more than half an
interval, this side's loop was not running (a handler blocked it, the process was
stopped): what the peer sent meanwhile may be waiting, unread, in the socket. Such a
check is put off by one interval instead of declaring the peer dead, as long as something
was heard from the peer since the previous put-off, so a dead peer is still declared dead
one interval later at most, and a live one whose input is read between stalls never is.

Hot path: :meth:`Liveness.seen` and :meth:`Liveness.sent` are called for every message and
only store a timestamp; the timers are re-armed lazily when they fire.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Liveness", "LivenessAction", "PeerDead", "SendHeartbeat", "negotiate"]

K = TypeVar("K", bound=Hashable)


def negotiate(local_ms: int, remote_ms: int) -> int:
    """The heartbeat interval both sides use: the larger proposal (0 means "no proposal").

    Symmetric, so each side computes the same value from the two hellos.
    """
    if local_ms < 0 or remote_ms < 0:
        raise ValueError(f"heartbeat intervals must be >= 0, got {local_ms}, {remote_ms}")
    return max(local_ms, remote_ms)


@dataclass(frozen=True, slots=True)
class SendHeartbeat(Generic[K]):
    """Send a heartbeat to ``peer`` now."""

    peer: K


@dataclass(frozen=True, slots=True)
class PeerDead(Generic[K]):
    """Nothing was heard from ``peer`` for ``silence`` seconds; it has been forgotten
    (``interval``: its heartbeat interval, to :meth:`Liveness.add` it again)."""

    peer: K
    silence: float
    interval: float = field(default=0.0, compare=False)


LivenessAction = SendHeartbeat[K] | PeerDead[K]

_SEND, _CHECK = 0, 1


class _Peer:
    __slots__ = ("answering", "interval", "last_seen", "last_sent", "misses", "put_off")

    def __init__(self, interval: float, misses: int, now: float) -> None:
        self.interval = interval
        self.misses = misses
        self.last_seen = now
        self.last_sent = now
        self.put_off: float | None = None
        """``last_seen`` when a late death check was last put off (None: not put off)."""
        self.answering = False
        """The last heartbeat we sent answered the peer's (:meth:`Liveness.answer`)."""


class Liveness(Generic[K]):
    """Heartbeat and death timers for a set of peers keyed by ``K`` (e.g. routing ids)."""

    def __init__(self, *, interval: float = 1.0, misses: int = 3) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        if misses < 1:
            raise ValueError(f"misses must be >= 1, got {misses}")
        self.interval = interval
        self.misses = misses
        self._peers: dict[K, _Peer] = {}
        self._heap: list[tuple[float, int, int, K, _Peer]] = []
        self._seq = 0

    def add(self, peer: K, now: float, *, interval: float | None = None) -> None:
        """Start watching ``peer`` (again) with its negotiated ``interval`` in seconds."""
        state = _Peer(interval or self.interval, self.misses, now)
        self._peers[peer] = state
        self._push(now + state.interval, _SEND, peer, state)
        self._push(now + state.interval * state.misses, _CHECK, peer, state)

    def remove(self, peer: K) -> None:
        """Stop watching ``peer`` (it said bye, or the link closed)."""
        self._peers.pop(peer, None)

    def seen(self, peer: K, now: float) -> None:
        """Any traffic arrived from ``peer``."""
        state = self._peers.get(peer)
        if state is not None:
            state.last_seen = now

    def sent(self, peer: K, now: float) -> None:
        """We sent ``peer`` something; no heartbeat is due for one interval."""
        state = self._peers.get(peer)
        if state is not None:
            state.last_sent = now

    def answer(self, peer: K, now: float) -> bool:
        """A heartbeat from ``peer`` arrived: whether to send ours now, in answer.

        A hub with a thousand peers sends its heartbeats in a few wake-ups per interval;
        peers that answer at once send theirs back in the same few, where each one's own
        timer would wake the hub at a moment of its own. An answer is this interval's
        heartbeat: our own timer then waits half an interval more, so the peer's next
        heartbeat, not our timer, is what sends the next one, and only a peer that stopped
        sending (to be declared dead) hears from our timer again. At most one answer per
        half interval, so two sides that both answer cannot play ping-pong.
        """
        state = self._peers.get(peer)
        if state is None or now - state.last_sent < 0.5 * state.interval:
            return False
        state.last_sent = now
        state.answering = True
        return True

    def is_alive(self, peer: K) -> bool:
        return peer in self._peers

    def interval_of(self, peer: K) -> float:
        """``peer``'s negotiated interval (the default for a peer not watched)."""
        state = self._peers.get(peer)
        return state.interval if state is not None else self.interval

    def quiet(self, peer: K, now: float) -> bool:
        """Whether ``peer`` has been quiet for more than half its interval: alive as
        far as anyone knows, but a peer heard more recently is the better bet (a busy
        peer is heard all the time; an idle one at least every interval)."""
        state = self._peers.get(peer)
        return state is None or now - state.last_seen > 0.5 * state.interval

    def suspect(self, peer: K, now: float) -> bool:
        """Whether ``peer`` has been quiet for more than one and a half of its intervals
        (it heartbeats every interval): not yet dead, but not to be relied on while
        another peer is fine. A peer not watched is suspect."""
        state = self._peers.get(peer)
        return state is None or now - state.last_seen > 1.5 * state.interval

    def peers(self) -> list[K]:
        return list(self._peers)

    def tick(self, now: float) -> list[SendHeartbeat[K] | PeerDead[K]]:
        """Heartbeats due and peers found dead at ``now``. A dead peer is removed."""
        out: list[SendHeartbeat[K] | PeerDead[K]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, peer, state = heapq.heappop(heap)
            if self._peers.get(peer) is not state:
                continue  # removed, or re-added with fresh timers
            if kind == _SEND:
                due = state.last_sent + state.interval * (1.5 if state.answering else 1.0)
                if due <= now:
                    out.append(SendHeartbeat(peer))
                    state.last_sent = now
                    state.answering = False
                    due = now + state.interval
                self._push(due, _SEND, peer, state)
            else:
                # Compare sums, not differences: the re-armed time must lie after `now`
                # in floating point, or this loop would never end.
                expiry = state.last_seen + state.interval * state.misses
                if expiry > now:
                    state.put_off = None
                    self._push(expiry, _CHECK, peer, state)
                elif now - when > state.interval / 2 and state.put_off != state.last_seen:
                    # Late: our own loop did not run, and the peer's input may be unread.
                    state.put_off = state.last_seen
                    self._push(now + state.interval, _CHECK, peer, state)
                else:
                    del self._peers[peer]
                    out.append(PeerDead(peer, now - state.last_seen, state.interval))
        if len(heap) > 4 * len(self._peers) + 64:
            # Entries of removed peers linger until they surface; drop them in bulk.
            self._heap = [e for e in heap if self._peers.get(e[3]) is e[4]]
            heapq.heapify(self._heap)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` may next have work (an upper bound on the sleep)."""
        return self._heap[0][0] if self._heap else None

    def _push(self, when: float, kind: int, peer: K, state: _Peer) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, peer, state))
