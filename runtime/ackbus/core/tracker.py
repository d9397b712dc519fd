"""The outbound tracker: every message a sender has not yet seen settled.

Sans-IO: the tracker never reads a clock, sleeps or touches a socket. The I/O layer tells it
what happened (:meth:`OutboundTracker.submit`, :meth:`~OutboundTracker.ack`,
:meth:`~OutboundTracker.routed`, :meth:`~OutboundTracker.cancel`) and what time it is
(``now``, monotonic seconds, on every call), and it answers with what to do: transmit attempt
*n* of a message, or report it settled with a :class:`Completion`. Between events the I/O
layer sleeps until :meth:`~OutboundTracker.next_deadline` and then calls
:meth:`~OutboundTracker.tick`.

Life of one message (docs/core.md draws the full table)::

    submit ──► QUEUED ──(window room)──► READY ──tick──► IN_FLIGHT ◄──tick──┐
       └──────────────(window room)────────────────────► IN_FLIGHT         │
                                       ack timeout: IN_FLIGHT ──► BACKOFF ──┘
           negative ack (retry-later, no-route, transient rejection) ──► BACKOFF
           OK / DUPLICATE ack ──► done (acked);  attempts or deadline spent ──► done (failed)

Timing, precisely: attempt *n* is sent at ``t_n``; if no ack arrives by ``t_n +
ack_timeout`` the attempt has timed out, and attempt *n+1* is sent at ``t_n + ack_timeout +
backoff(n)`` where ``backoff(n) = min(cap, base * 2**(n-1)) * U(1 - jitter, 1 + jitter)``
(``U`` from the seeded ``rng``). A negative ack received at ``t`` schedules the next attempt
at ``t + retry_after`` (retry-later with a hint) or ``t + backoff(n)``. No timer ever runs past
the message's deadline (``policy.deadline`` after submit): a message still unsettled then
fails; and no retry is sent whose ack timeout would end after the deadline (it could only
end "outcome unknown"). After the last allowed attempt's ack timeout the message fails at
once.

Cost: submit and a positive ack are O(1) dict operations plus one heap push (timers are
deleted lazily: a superseded heap entry is skipped when it surfaces, and the heap is
compacted when dead entries outnumber live ones), and allocate one small object each.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import TYPE_CHECKING

from . import _pending
from ._common import Outcome, RemoteError
from ._pending import Pending as _Pending
from ._values import Identity, Policy
from .settled import Admit, Completion, MsgState, Reason, Status, TrackerAction, Transmit

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "Admit",
    "Completion",
    "MsgState",
    "OutboundTracker",
    "Reason",
    "Status",
    "TrackerAction",
    "Transmit",
    "backoff_delay",
]


_HIDING = frozenset((Reason.TIMEOUT, Reason.NO_ROUTE, Reason.EXPIRED))
"""Failure reasons that would hide a run: after an attempt that may have reached a
receiver they become ``outcome-unknown``."""


def backoff_delay(policy: Policy, attempt: int, rng: random.Random) -> float:
    """The pause after attempt ``attempt`` (1-based) before the next one.

    ``min(cap, base * 2**(attempt-1))`` scaled by a factor drawn uniformly from
    ``[1 - jitter, 1 + jitter]``, so the result always lies within
    ``[(1-jitter) * nominal, (1+jitter) * nominal]``.
    """
    nominal = min(policy.backoff_cap, policy.backoff_base * 2.0 ** min(attempt - 1, 64))
    jitter = policy.jitter
    if jitter == 0.0:
        return nominal
    return nominal * (1.0 - jitter + 2.0 * jitter * rng.random())


class OutboundTracker:
    """Pending outbound messages, their timers and per-destination windows.

    ``window`` bounds how many messages may be in flight (sent, not settled) per
    destination; more are queued, in order, never dropped. ``rng`` draws the backoff jitter;
    pass a seeded one for reproducible runs.
    """

    def __init__(self, *, window: int = 1000, rng: random.Random | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._rng = rng if rng is not None else random.Random()
        self._pending: dict[bytes, _Pending] = {}
        self._heap: list[tuple[float, int, _Pending]] = []
        self._fifo: deque[tuple[float, int, _Pending]] = deque()
        """Ack timeouts armed in time order, which is nearly all timers (see :meth:`_arm`)."""
        self._deadlines: deque[tuple[float, int, _Pending]] = deque()
        """Deadlines of queued messages armed in time order (see :meth:`_arm`)."""
        self._token = 0
        self._in_flight: dict[str, int] = {}
        self._queues: dict[str, deque[_Pending]] = {}
        self._ready: deque[_Pending] = deque()
        self._ready_at = 0.0
        self.verify = False
        """Take an ack only from an instance of the service a message was addressed to
        (:meth:`addressed`); the endpoint protocol turns it on. Off, any receiver's ack
        counts (the tracker's own tests)."""
        self.routes: dict[str, str] = {}
        """Command type → the service a hub named as handling it (:meth:`routed`)."""
        self.hubs: set[Identity] = set()
        """The hubs' own identities (their WELCOME): their answers (no route, retry
        later) are taken for any message."""
        self.foreign = 0
        """Acks refused because their receiver is not a service the message was
        addressed to (forged, or from a service that no longer handles the type)."""
        self._keys: dict[int, deque[_Pending]] = {}
        """Ordering key → the messages of the key waiting behind the one that holds it
        (present while a message of the key is pending: it holds the key)."""

    # -- events in -------------------------------------------------------------------------

    def submit(
        self,
        msg_id: bytes,
        msg_type: str,
        destination: str,
        policy: Policy,
        now: float,
        expect: int | None = 1,
        key: int = 0,
    ) -> Admit:
        """Track a new message. :attr:`Admit.SEND`: transmit attempt 1 now.

        ``expect`` is how many distinct receiver services must ack it (1 for a command);
        ``None`` means "every service named by :meth:`routed`" (an event).
        ``key`` (its ordering key's hash; 0: none): while a message of the same key is
        pending, this one waits (:attr:`MsgState.KEYED`, returning :attr:`Admit.QUEUED`)
        and goes out once every message of the key submitted before it settled, acked
        or failed: one message of a key in flight at a time, in submit order.
        Raises ``ValueError`` if ``msg_id`` is already pending (a caller bug).
        """
        pending = self._pending
        if msg_id in pending:
            raise ValueError(f"message {msg_id.hex()} is already pending")
        deadline = now + policy.life
        p = _Pending(msg_id, msg_type, destination, policy, deadline, expect)
        pending[msg_id] = p
        if policy.subscribers:
            _pending.fan_out(p, now)
        if key:
            p.key = key
            line = self._keys.get(key)
            if line is not None:  # an earlier message holds the key: wait behind it
                p.state = MsgState.KEYED
                line.append(p)
                self._arm(p, deadline)
                return Admit.QUEUED
            self._keys[key] = deque()
        n = self._in_flight.get(destination, 0)
        if n < self._window and destination not in self._queues:
            self._in_flight[destination] = n + 1
            p.state = MsgState.IN_FLIGHT
            p.attempts = 1
            p.first_sent_at = now
            when = now + policy.ack_timeout
            if when > deadline:
                when = deadline
            fifo = self._fifo
            if fifo and when < fifo[-1][0]:
                self._arm(p, when)
            else:  # _arm's usual case, inline (once per message): the back of the FIFO
                token = self._token = self._token + 1
                p.timer = token
                p.when = when
                fifo.append((when, token, p))
                if len(fifo) + len(self._heap) + len(self._deadlines) > 2 * len(pending) + 64:
                    self._compact()  # _maybe_compact's test, inline
            return Admit.SEND
        queue = self._queues.get(destination)
        if queue is None:
            queue = self._queues[destination] = deque()
        queue.append(p)
        self._arm(p, p.deadline)
        return Admit.QUEUED

    def ack(
        self,
        msg_id: bytes,
        *,
        outcome: Outcome | int,
        now: float,
        receiver: Identity | None = None,
        error: RemoteError | None = None,
        retry_after: float = 0.0,
        response: bytes | None = None,
        attempt: int = 0,
        deferred: bool = False,
    ) -> Completion | None:
        """An ack (or the hub's no-route answer) arrived. Returns the completion if it
        settled the message, else ``None`` (not settled yet, or unknown / late: an ack for
        a message already settled is ignored).

        OK / DUPLICATE complete it (for a multi-receiver message, once every expected
        service acked). REJECTED fails it, unless ``policy.retry_rejected`` and the error
        is not permanent: then it is retried. RETRY_LATER retries after ``retry_after``
        seconds (or the backoff when 0). NO_ROUTE retries within the deadline, because a
        service may be restarting; if it never appears the reason is "no-route". EXPIRED
        fails it. IN_PROGRESS (a receiver runs its handler) re-arms a command's ack
        timeout and frees the attempts sent so far from ``max_attempts``; HELD (the hub
        queues it for an instance with room) does the same, waiting the longer of the
        ack timeout and ``retry_after``, and says nothing about a handler having run.
        ``deferred`` (a hub's RETRY_LATER that routed nothing) does not spend the attempt.

        ``attempt`` is the attempt a NO_ROUTE, RETRY_LATER or EXPIRED answers (0: not
        said, taken as the current one): an answer to an earlier attempt than the one
        in flight only records that that attempt was not taken. A failure after an
        attempt that may have reached a receiver (timed out unanswered, or in flight
        when the message failed) or after a handler started is "outcome-unknown"
        instead of "timeout", "no-route" or "expired".
        """
        p = self._pending.get(msg_id)
        if p is None or p.attempts == 0:
            return None
        if self.verify and receiver is not None and not self.addressed(p, receiver):
            self.foreign += 1
            return None
        if outcome == Outcome.OK or outcome == Outcome.DUPLICATE:
            if p.expect == 1:
                return self._complete(
                    p,
                    Status.ACKED,
                    None,
                    now,
                    acked_at=now,
                    acked_by=(receiver,) if receiver is not None else (),
                    response=response,
                )
            if response is not None:
                p.response = response
            if receiver is not None:
                if p.acked_services is None:
                    p.acked_services = set()
                    p.acked_by = []
                if receiver.service not in p.acked_services:
                    p.acked_services.add(receiver.service)
                    assert p.acked_by is not None
                    p.acked_by.append(receiver)
            return self._check_group(p, now)
        if outcome == Outcome.IN_PROGRESS:
            p.unknown |= 1  # a handler started
            self._in_progress(p, now, 0.0)
            return None
        if outcome == Outcome.HELD:
            self._in_progress(p, now, retry_after)
            return None
        if outcome == Outcome.REJECTED:
            if p.policy.retry_rejected and not (error is not None and error.permanent):
                p.unknown |= 1  # the handler ran (and raised)
                p.last_reason = Reason.REJECTED
                p.last_error = error
                return self._negative(p, now, 0.0)
            return self._complete(p, Status.FAILED, Reason.REJECTED, now, error=error)
        if attempt and attempt != p.attempts:
            # An answer to an earlier attempt: that one was not taken; the current
            # attempt is still out (its own answer or timeout decides).
            p.unknown &= ~(1 << attempt)
            if outcome != Outcome.EXPIRED:
                return None
        if outcome == Outcome.RETRY_LATER:
            if deferred and p.free < p.attempts:
                p.free += 1  # the hub routed nothing: this attempt is not spent
            return self._negative(p, now, retry_after)
        if outcome == Outcome.NO_ROUTE:
            p.last_reason = Reason.NO_ROUTE
            return self._negative(p, now, 0.0)
        if outcome == Outcome.EXPIRED:
            return self._complete(p, Status.FAILED, Reason.EXPIRED, now, error=error)
        return None

    def _in_progress(self, p: _Pending, now: float, wait: float) -> None:
        """A receiver says it runs ``p``'s handler, or the hub that it holds ``p``
        for an instance with room: the lease. The attempts sent so far no longer count
        against ``max_attempts`` (a receiver that dies mid-handler then still gets the
        policy's full retries), and a command waits another ack timeout (or ``wait``,
        if longer) before its next attempt (the deadline still bounds it). An event's
        retries keep their schedule: other subscribers may still miss it."""
        p.free = p.attempts
        if p.expect == 1 and (p.state is MsgState.IN_FLIGHT or p.state is MsgState.BACKOFF):
            p.state = MsgState.IN_FLIGHT
            self._arm(p, min(now + max(p.policy.ack_timeout, wait), p.deadline))

    def ack_ok(
        self, msg_ids: Iterable[bytes], now: float, receiver: Identity | None
    ) -> list[Completion]:
        """Plain OK acks for ``msg_ids`` from one receiver (what a compact ACK group
        carries): the completions they settled, in order. The same as calling
        :meth:`ack` with ``Outcome.OK`` for each, in one call: a pipelined sender
        settles tens of thousands of messages a second this way."""
        out: list[Completion] = []
        pending = self._pending
        in_flight = self._in_flight
        queues = self._queues
        acked_by = (receiver,) if receiver is not None else ()
        check = self.verify and receiver is not None
        ok_for: dict[str, bool] = {}  # destination -> whether receiver may ack it
        for mid in msg_ids:
            p = pending.get(mid)
            if p is None or p.attempts == 0:
                continue
            if check:
                assert receiver is not None
                if p.expect == 1:  # a command: whom it may come from depends on this alone
                    allowed = ok_for.get(p.destination)
                    if allowed is None:
                        allowed = ok_for[p.destination] = self.addressed(p, receiver)
                else:
                    allowed = self.addressed(p, receiver)
                if not allowed:
                    self.foreign += 1
                    continue
            if p.expect != 1:  # an event: several services must ack
                c = self.ack(mid, outcome=Outcome.OK, now=now, receiver=receiver)
                if c is not None:
                    out.append(c)
                continue
            # _complete(p, ACKED, ...) inlined, as this runs once per acked message:
            # the message holds a window slot (it was sent: attempts > 0).
            del pending[mid]
            p.done = True
            p.timer = 0
            destination = p.destination
            if destination in queues:
                self._free_slot(destination, now)
            else:
                n = in_flight[destination] - 1
                if n:
                    in_flight[destination] = n
                else:
                    del in_flight[destination]
            if p.key:
                self._next_of_key(p.key, now)
            out.append(
                Completion(
                    mid,
                    p.msg_type,
                    destination,
                    Status.ACKED,
                    None,
                    p.attempts,
                    p.first_sent_at,
                    now,
                    now,
                    acked_by,
                )
            )
        return out

    def routed(
        self,
        msg_id: bytes,
        services: Iterable[str],
        now: float,
        implements: Sequence[Sequence[str]] = (),
    ) -> Completion | None:
        """The hub says which services it routed a multi-receiver message (an event) to,
        and (``implements``, one entry per service) which schema services each runs.

        An event whose policy declares ``subscribers`` completes once, for each declared
        subscriber, a service running it acked, whatever the notices name: a subscriber
        that was not routed to (down, late, a hub that just restarted) is waited for and
        the event re-sent until its deadline. Services routed to that run no declared
        subscriber (run-time subscribers) must ack too, as for an event without declared
        subscribers: there the latest notice replaces earlier ones (a retry may reach a
        different set, e.g. after a subscriber left), the message completes once every
        named service acked, and an empty set completes it at once as delivered to nobody
        (publishing an event no one subscribes to is not an error; ``acked_by`` is empty).
        """
        p = self._pending.get(msg_id)
        if p is None or p.attempts == 0:
            return None
        services = tuple(services)
        if p.expect == 1:
            # A command routed by its type: the hub names the service that handles
            # the type, the one service whose instances may ack such commands.
            if len(services) == 1:
                self.routes[p.msg_type] = services[0]
            return None
        p.services = frozenset(services)
        if p.policy.subscribers:
            covers = p.covers
            if covers is None:
                covers = p.covers = {}
            for i, service in enumerate(services):
                runs = frozenset(implements[i]) if i < len(implements) else frozenset()
                covers[service] = covers.get(service, frozenset()) | runs
        return self._check_group(p, now)

    def unsent(self, msg_id: bytes) -> None:
        """The attempt just issued for ``msg_id`` could not leave: no hub takes this
        endpoint's messages now (every link down or not welcomed). It is taken back, as
        if never issued (its number is issued again, so a first attempt stays a first
        attempt, which a restarted hub may route at once), and the message waits, up to
        its deadline, for :meth:`resume`."""
        p = self._pending.get(msg_id)
        if p is None or p.state is not MsgState.IN_FLIGHT:
            return
        p.attempts -= 1
        p.state = MsgState.BACKOFF
        self._arm(p, p.deadline)

    def resume(self, msg_id: bytes, now: float) -> Transmit | None:
        """A hub takes messages again: the attempt :meth:`unsent` took back, issued now
        (``None``: the message settled meanwhile, or its deadline is too near for an
        attempt to be answered in time)."""
        p = self._pending.get(msg_id)
        if p is None or p.state is not MsgState.BACKOFF:
            return None
        if now + p.policy.ack_timeout > p.deadline:
            return None  # as a retry that its deadline would cut short (see _fire)
        p.attempts += 1
        p.state = MsgState.IN_FLIGHT
        self._arm(p, now + p.policy.ack_timeout)
        return Transmit(p.msg_id, p.attempts, p.destination)

    def cancel(self, msg_id: bytes, now: float) -> Completion | None:
        """Give up on a message: it fails with reason "cancelled". ``None`` if unknown."""
        p = self._pending.get(msg_id)
        if p is None:
            return None
        if p.state is MsgState.IN_FLIGHT:
            p.unknown |= 1 << p.attempts
        return self._complete(p, Status.FAILED, Reason.CANCELLED, now)

    def tick(self, now: float) -> list[TrackerAction]:
        """Fire every timer due at ``now``: retransmits, failures, and the first transmit
        of queued messages that got window room since the last tick."""
        out: list[TrackerAction] = []
        while (entry := self._pop_due(now)) is not None:
            _, token, p = entry
            if p.timer == token:
                p.timer = 0
                self._fire(p, now, out)
        ready = self._ready
        fifo = self._fifo
        while ready:
            p = ready.popleft()
            if p.done:
                continue
            p.state = MsgState.IN_FLIGHT
            p.attempts = 1
            p.first_sent_at = now
            when = now + p.policy.ack_timeout
            if when < p.deadline and (not fifo or when >= fifo[-1][0]):
                # _arm's usual case, inline (once per queued message): the back of the FIFO
                token = self._token = self._token + 1
                p.timer = token
                p.when = when
                fifo.append((when, token, p))
            else:
                self._arm(p, min(when, p.deadline))
            out.append(Transmit(p.msg_id, 1, p.destination))
        self._maybe_compact()
        return out

    def addressed(self, p: _Pending, receiver: Identity) -> bool:
        """Whether ``receiver`` may answer message ``p``: a hub; for a command, an
        instance of the service it was sent to (``to=``), or of the one the hub named
        as handling its type; for an event, of a service the hub routed it to.

        The hub stamps every ack with the identity registered on the connection it
        came from, so a peer registered as another service cannot complete a send,
        whatever message ids it saw (docs/security.md)."""
        if receiver in self.hubs:
            return True
        service = receiver.service
        if p.expect == 1:
            destination = p.destination
            if destination != p.msg_type:  # sent to a service, or to one instance of it
                return service == destination.partition("/")[0]
            return service == self.routes.get(p.msg_type)
        if p.services is not None and service in p.services:
            return True
        return p.covers is not None and service in p.covers

    # -- queries ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work; ``None`` when nothing is pending.

        May lie in the past (e.g. a queued message got window room): then tick at once.
        """
        if self._ready:
            return self._ready_at
        heap = self._heap
        while heap and heap[0][2].timer != heap[0][1]:
            heapq.heappop(heap)
        first = heap[0][0] if heap else None
        for fifo in (self._fifo, self._deadlines):
            while fifo and fifo[0][2].timer != fifo[0][1]:
                fifo.popleft()
            if fifo and (first is None or fifo[0][0] < first):
                first = fifo[0][0]
        return first

    def pending_count(self) -> int:
        """Messages not yet settled, queued ones included."""
        return len(self._pending)

    def in_flight(self, destination: str) -> int:
        """Messages holding a window slot of ``destination``."""
        return self._in_flight.get(destination, 0)

    def queued(self, destination: str) -> int:
        """Messages waiting for a window slot of ``destination`` (not those waiting for
        their ordering key)."""
        queue = self._queues.get(destination)
        return len(queue) if queue is not None else 0

    def state(self, msg_id: bytes) -> MsgState | None:
        """Where a message is; ``None`` once settled (or never known)."""
        p = self._pending.get(msg_id)
        return p.state if p is not None else None

    def attempts(self, msg_id: bytes) -> int:
        """Transmits so far of a pending message (0 if unknown or still queued)."""
        p = self._pending.get(msg_id)
        return p.attempts if p is not None else 0

    def timer_count(self) -> int:
        """Timer entries, dead ones included (for leak checks in tests)."""
        return len(self._heap) + len(self._fifo) + len(self._deadlines)

    def backoff(self, policy: Policy, attempt: int) -> float:
        """The jittered pause after ``attempt`` (see :func:`backoff_delay`)."""
        return backoff_delay(policy, attempt, self._rng)

    # -- internals -------------------------------------------------------------------------

    def _arm(self, p: _Pending, when: float) -> None:
        """Set ``p``'s one live timer; an earlier entry of ``p`` is dead from now on and
        is dropped when it reaches the front.

        A message's first timer is its ack timeout, ``now + ack_timeout``: with one
        policy, and the clock only moving forward, each is at or after the one armed
        before it. Those go to the back of a FIFO, O(1) in and out, where a heap costs
        O(log n) to pop each dead entry of an acked message (a pipelined sender arms
        and drops one per message, at tens of thousands a second). A queued message's
        timer is its deadline, ``now + deadline``: in order among themselves too, but
        far behind the ack timeouts, so they have a FIFO of their own (in one FIFO, a
        queued message's deadline sent every ack timeout armed after it to the heap,
        until that deadline: a durable sender whose commits outrun its window queues
        thousands). An instant before its FIFO's last (a shorter timeout, a backoff)
        goes to the heap. The due entries of all three are taken in (instant, arming
        order), as from one heap.
        """
        self._token += 1
        p.timer = self._token
        p.when = when
        fifo = self._deadlines if when == p.deadline else self._fifo
        if not fifo or when >= fifo[-1][0]:
            fifo.append((when, self._token, p))
        else:
            heapq.heappush(self._heap, (when, self._token, p))
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Drop the dead timer entries once they outnumber the live ones (``submit``
        makes the same test inline for its usual case)."""
        if self.timer_count() > 2 * len(self._pending) + 64:
            self._compact()

    def _compact(self) -> None:
        live = sorted((p.when, p.timer, p) for p in self._pending.values() if p.timer)
        # Sorted, so each FIFO gets its entries in order, as a FIFO must.
        self._fifo = deque(e for e in live if e[0] != e[2].deadline)
        self._deadlines = deque(e for e in live if e[0] == e[2].deadline)
        self._heap = []

    def _pop_due(self, now: float) -> tuple[float, int, _Pending] | None:
        """The earliest timer entry due at ``now`` (live or dead), removed; else None."""
        heap, fifo, deadlines = self._heap, self._fifo, self._deadlines
        if deadlines and deadlines[0][0] <= now and (not fifo or deadlines[0][:2] < fifo[0][:2]):
            fifo = deadlines  # the earlier of the two FIFOs' heads
        if fifo and fifo[0][0] <= now:
            if not heap or fifo[0][:2] < heap[0][:2]:
                return fifo.popleft()
            return heapq.heappop(heap)
        if heap and heap[0][0] <= now:
            return heapq.heappop(heap)
        return None

    def _fire(self, p: _Pending, now: float, out: list[TrackerAction]) -> None:
        state = p.state
        if state is MsgState.IN_FLIGHT:
            # This attempt's ack timeout (or the deadline) ran out, unanswered: it may
            # have reached a receiver.
            p.unknown |= 1 << p.attempts
        if now >= p.deadline:
            out.append(self._fail_exhausted(p, now))
            return
        if state is MsgState.IN_FLIGHT:
            if p.fan is not None:
                c = self._check_group(p, now, timed_out=True)
                if c is not None:
                    out.append(c)
                    return
            elif p.attempts - p.free >= p.policy.max_attempts:
                out.append(self._fail_exhausted(p, now))
                return
            p.state = MsgState.BACKOFF
            delay = backoff_delay(p.policy, p.attempts, self._rng)
            self._arm(p, min(now + delay, p.deadline))
        elif state is MsgState.BACKOFF:
            if now + p.policy.ack_timeout > p.deadline:
                # A retry the deadline would cut short before its ack timeout could only
                # end "outcome unknown" (in flight, unanswered): none is sent; late
                # answers to earlier attempts are still heard until the deadline.
                self._arm(p, p.deadline)
                return
            p.attempts += 1
            p.state = MsgState.IN_FLIGHT
            self._arm(p, now + p.policy.ack_timeout)
            out.append(Transmit(p.msg_id, p.attempts, p.destination))
        else:  # pragma: no cover - queued timers sit at the deadline, handled above
            raise AssertionError(f"timer fired for a {state.value} message before its deadline")

    def _negative(self, p: _Pending, now: float, delay: float) -> Completion | None:
        """A receiver or the hub answered but did not take the message: retry later.
        (An event with declared subscribers is bounded by their deadlines here: whose
        attempts an answer from the hub spends is not known.)"""
        if p.attempts - p.free >= p.policy.max_attempts and p.fan is None:
            return self._fail_exhausted(p, now)
        if delay <= 0.0:
            delay = backoff_delay(p.policy, p.attempts, self._rng)
        p.state = MsgState.BACKOFF
        self._arm(p, min(now + delay, p.deadline))
        return None

    def _fail_exhausted(self, p: _Pending, now: float) -> Completion:
        acked_by = tuple(p.acked_by) if p.acked_by else ()  # an event: who did ack
        return self._complete(
            p, Status.FAILED, p.last_reason or Reason.TIMEOUT, now, None, acked_by, p.last_error
        )

    def _check_group(self, p: _Pending, now: float, timed_out: bool = False) -> Completion | None:
        """A multi-receiver message after an ack, a notice or (``timed_out``) an
        attempt's ack timeout: settle it if it is done (:func:`_pending.settle` for an
        event with declared subscribers, whose deadline it may bring forward)."""
        done = _pending.settle(p, now, timed_out) if p.fan is not None else _pending.grouped(p)
        if done is True:
            return self._complete(
                p,
                Status.ACKED,
                None,
                now,
                acked_at=now,
                acked_by=tuple(p.acked_by or ()),
                response=p.response,
            )
        if done is False:
            if p.state is MsgState.IN_FLIGHT:  # it may have reached a missing subscriber
                p.unknown |= 1 << p.attempts
            return self._fail_exhausted(p, now)
        if done is not None and done < p.deadline:  # forward, never back
            p.deadline = done
            if p.timer and p.when > done:
                self._arm(p, done)
        return None

    def _complete(
        self,
        p: _Pending,
        status: Status,
        reason: Reason | None,
        now: float,
        acked_at: float | None = None,
        acked_by: tuple[Identity, ...] = (),
        error: RemoteError | None = None,
        response: bytes | None = None,
    ) -> Completion:
        del self._pending[p.msg_id]
        p.done = True
        p.timer = 0
        last = None
        if p.unknown and reason in _HIDING:
            last, reason = reason, Reason.OUTCOME_UNKNOWN
        missing: tuple[str, ...] = ()
        if status is Status.FAILED and p.policy.subscribers:
            missing = _pending.missing(p)
        if p.state is MsgState.KEYED:  # behind another of its key: only leaves the line
            self._keys[p.key].remove(p)
        else:
            if p.state is MsgState.QUEUED:
                queue = self._queues[p.destination]
                queue.remove(p)
                if not queue:
                    del self._queues[p.destination]
            else:
                self._free_slot(p.destination, now)
            if p.key:
                self._next_of_key(p.key, now)
        return Completion(
            p.msg_id,
            p.msg_type,
            p.destination,
            status,
            reason,
            p.attempts,
            p.first_sent_at,
            now,
            acked_at,
            acked_by,
            error,
            response,
            missing,
            last,
            _pending.reasons(p, missing, now) if missing else (),
        )

    def _next_of_key(self, key: int, now: float) -> None:
        """The message that held ``key`` settled: the next of the key (in submit order)
        takes a window slot (``READY``: the next tick transmits it) or, with the window
        full, queues for one; with none left the key is free."""
        line = self._keys[key]
        if not line:
            del self._keys[key]
            return
        nxt = line.popleft()
        destination = nxt.destination
        n = self._in_flight.get(destination, 0)
        if n < self._window and destination not in self._queues:
            self._in_flight[destination] = n + 1
            nxt.state = MsgState.READY
            if not self._ready:
                self._ready_at = now
            self._ready.append(nxt)
        else:
            nxt.state = MsgState.QUEUED
            queue = self._queues.get(destination)
            if queue is None:
                queue = self._queues[destination] = deque()
            queue.append(nxt)

    def keys_held(self) -> int:
        """Ordering keys with a message pending (for leak checks in tests)."""
        return len(self._keys)

    def _free_slot(self, destination: str, now: float) -> None:
        queue = self._queues.get(destination)
        if queue is None:
            n = self._in_flight[destination] - 1
            if n:
                self._in_flight[destination] = n
            else:
                del self._in_flight[destination]
            return
        # Hand the slot straight to the oldest queued message.
        nxt = queue.popleft()
        if not queue:
            del self._queues[destination]
        nxt.state = MsgState.READY
        if not self._ready:
            self._ready_at = now
        self._ready.append(nxt)
