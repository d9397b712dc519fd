"""The endpoint protocol: everything an endpoint decides, with no I/O.

In the manner of h11's ``Connection``, :class:`EndpointProtocol` owns an endpoint's
protocol state (the outbound tracker, the inbound deduper, each hub's liveness and
welcome, the acks a received batch collects, the notes that explain a failure) and
takes decoded events and ``now`` in. What it decides to do goes out through the
:class:`EndpointIO` it was given, one method per kind of action: transmit a message,
ack, say hello, send a heartbeat, settle reports. A driver implements that interface:
the asyncio endpoint encodes each action with ``ackbus.wire`` and puts it on a socket;
the simulation (``ackbus.testing.simulate``) puts it on a simulated network; the
legacy reliable socket drives it too. So every decision is written once, here, and the
simulation runs the very code the runtime runs.

The actions are calls on an interface rather than a list of action objects returned:
a pipelined endpoint takes tens of thousands of these decisions a second, and an
object per action per message would be the protocol's largest cost
(docs/decisions.md).

What stays with the driver: payloads and their decoding, handler functions and their
tasks, the frames of pending messages, reports and their futures, the send window's
waiting line, the clock and the timer (armed at :meth:`EndpointProtocol.next_deadline`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence

from ..errors import (
    Reject,
    RetryLater,
)
from ._admission import Running, WaitingLine
from ._common import Outcome, RemoteError
from ._values import Identity, Policy
from .dedupe import InboundDeduper, Verdict
from .endpoint_io import (
    FLAG_REQUEST,
    NOT_REGISTERED,
    UNAUTHORIZED,
    AckReply,
    EndpointIO,
    EndpointStats,
    InboundItem,
    delivery_error,
)
from .liveness import Liveness, PeerDead, SendHeartbeat
from .tracker import Admit, Completion, OutboundTracker, Reason, Transmit

__all__ = [
    "AckReply",
    "EndpointIO",
    "EndpointProtocol",
    "EndpointStats",
    "InboundItem",
    "delivery_error",
]


class _Hub:
    __slots__ = ("grace_until", "hello_at", "identity", "index", "lost", "name", "welcomed")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name or f"hub {index}"
        self.welcomed = False
        self.identity: Identity | None = None
        """The hub's own, from its WELCOME."""
        self.hello_at: float | None = None
        """When to say hello again if no WELCOME came (None: not waiting for one)."""
        self.lost = "never answered HELLO"
        """Why it is not welcomed now, for a failure's report (see :meth:`_unanswered`)."""
        self.grace_until = 0.0
        """Until when it defers what it is sent (its grace period after a start or a
        rejoin, learnt from its deferring RETRY_LATER): with several hubs, another one
        takes the traffic meanwhile."""

    def unwelcome(self, why: str) -> None:
        self.welcomed = False
        self.lost = why


_UNANSWERED = (Reason.TIMEOUT, Reason.OUTCOME_UNKNOWN)
"""Failures a silent hub explains (see :meth:`EndpointProtocol._unanswered`)."""


class EndpointProtocol:
    """One endpoint's protocol state and decisions (see the module docstring).

    Sending: :meth:`submit` a new message; the tracker transmits it now or when its
    window has room, retries it on :meth:`tick`, and settles it through
    :meth:`EndpointIO.acked` or :meth:`EndpointIO.failed`.

    Receiving: wrap each received batch in :meth:`begin_batch` / :meth:`end_batch`;
    :meth:`accept` says whether to run an item's handler (else it answered already);
    report each run's end with :meth:`handled_ok` (inside its batch) or
    :meth:`handled`, or :meth:`abandon` it (cancelled: no answer, the sender retries).
    At most ``max_concurrency`` handlers run at once: a message beyond that waits here,
    by priority with aging, and starts later through :meth:`EndpointIO.start_waiting`.
    """

    def __init__(
        self,
        identity: Identity,
        io: EndpointIO,
        *,
        window: int = 1000,
        heartbeat: float = 1.0,
        misses: int = 3,
        dedupe_capacity: int = 100_000,
        dedupe_ttl: float = 600.0,
        seed: int | None = None,
        wall_offset: float = 0.0,
        hello_retry: float = 1.0,
        progress: float | None = None,
        max_concurrency: int = 1000,
    ) -> None:
        self.identity = identity
        self.io = io
        self.window = window
        self.tracker = OutboundTracker(window=window, rng=random.Random(seed))
        self.tracker.verify = True  # acks only from the services addressed
        self.deduper = InboundDeduper(capacity=dedupe_capacity, ttl=dedupe_ttl)
        self.liveness: Liveness[int] = Liveness(interval=heartbeat, misses=misses)
        self.stats = EndpointStats()
        self.wall_offset = wall_offset
        """Unix time minus the driver's clock: the wall time of ``now``."""
        self.commands: tuple[str, ...] = ()
        """Command types the handlers take (what HELLO says)."""
        self.events: tuple[str, ...] = ()
        self.implements: tuple[str, ...] = ()
        """Schema services the handlers run (what HELLO says; declared event
        subscriptions are matched against them)."""
        self.methods: tuple[str, ...] = ()
        """The rpcs whose handlers run here ("poker.Table/StartHand"), for the HELLO."""
        self._types: frozenset[str] = frozenset()
        self.hello_retry = hello_retry
        """Seconds to wait for a WELCOME before saying HELLO again."""
        self.progress = heartbeat / 4 if progress is None else progress
        """Seconds between IN_PROGRESS notices for a running handler (a quarter of the
        heartbeat unless given): a handler running longer tells its sender so, every
        ``progress`` seconds, so that a sender whose ack timeout is longer neither
        retries nor spends attempts on it (docs/decisions.md)."""
        self._running: dict[bytes, Running] = {}
        """Messages whose handlers run (or wait to), in arrival order."""
        self.max_concurrency = max_concurrency
        """The most handlers running at once (the hub's limit too, from HELLO; after a
        hub restart the hub's counts start at zero, so the receiver keeps it itself)."""
        self._waiting: WaitingLine[InboundItem] = WaitingLine()
        """Accepted messages waiting for a slot (each in ``_running`` too: its lease)."""
        self._keys: dict[int, deque[tuple[int, InboundItem]]] = {}
        """Ordering key → the messages of the key parked behind the one that runs (or
        waits for a slot), in arrival order: one at a time per key. Present while a
        message of the key is running or waiting; each parked one is in ``_running``
        too (its lease) but takes no slot."""
        self._parked = 0
        """Messages parked behind their key (in ``_running``, not in a slot)."""
        self._progress_at: float | None = None
        """When the next IN_PROGRESS sweep is due (None: at the oldest start + progress)."""
        self.closed = False
        self.draining = False
        """Set by :meth:`drain`: registered with no handlers, new messages turned away."""
        self.receiving = False
        """True between :meth:`begin_batch` and :meth:`end_batch`."""
        self._hubs: list[_Hub] = []
        self._next_hub = 0
        self._via: dict[bytes, int] = {}
        """With several hubs: the hub each pending message last went through. A retry
        goes through the same hub while it is not suspect, so that hub's sticky entry
        sends it to the instance that had it (another hub may know other instances)."""
        self._unsent: dict[bytes, None] = {}
        """Messages whose attempt found no hub to take it (see :meth:`_transmit`), in
        order: they go when a hub welcomes this endpoint, or fail at their deadline."""
        self._notes: dict[bytes, str] = {}
        """Why the hub found no route, by message id, for a failure's report."""
        self._batch_hub = 0
        self._batch_now = 0.0
        self._batch_ok: list[bytes] = []
        self._batch_peers: list[bytes] = []
        """Ids (and their peer tokens) of the batch's messages whose handlers returned
        during it: finished in the deduper and acked together at its end."""

    # ------------------------------------------------------------------ hubs

    def add_hub(self, name: str = "") -> int:
        """A new hub link (``name``: its address, for reports); returns its index. Say
        hello on it with :meth:`connected`."""
        index = len(self._hubs)
        self._hubs.append(_Hub(index, name))
        return index

    @property
    def hubs(self) -> int:
        return len(self._hubs)

    def welcomed(self, hub: int) -> bool:
        return self._hubs[hub].welcomed

    def set_types(
        self,
        commands: Sequence[str],
        events: Sequence[str],
        now: float,
        implements: Sequence[str] = (),
        methods: Sequence[str] = (),
    ) -> None:
        """The types the handlers take (and the schema services and rpcs they run)
        changed: register again with every hub."""
        self.commands = tuple(commands)
        self.events = tuple(events)
        self.implements = tuple(implements)
        self.methods = tuple(methods)
        self._types = frozenset(self.commands) | frozenset(self.events)
        if self.draining:  # handlers registered while draining are not announced
            self.commands = self.events = self.implements = self.methods = ()
        for hub in self._hubs:
            self._hello(hub, now)

    def drain(self, now: float) -> None:
        """Stop taking new messages (a graceful shutdown): say HELLO again to every hub
        with no handlers, so that it routes nothing more here, and answer a new message
        that still arrives (sent before the hub heard that) ``NO_ROUTE``, so that its
        sender routes it again, elsewhere. Messages whose handlers run or wait here go
        on and are acked; a copy of one of them is answered as before (in progress,
        or its outcome). Then :meth:`hello_again` and :meth:`answered` tell when the
        hubs have read everything sent before (the acks), and the driver closes."""
        self.draining = True
        self.commands = self.events = self.implements = self.methods = ()
        self.hello_again(now)

    def hello_again(self, now: float) -> None:
        """Say HELLO to every hub again; its WELCOME (:meth:`answered`) means the hub
        read everything this endpoint sent before it (one connection keeps order)."""
        for hub in self._hubs:
            self._hello(hub, now)

    def answered(self, hub: int) -> bool:
        """Whether ``hub`` answered this endpoint's last HELLO."""
        return self._hubs[hub].hello_at is None

    def connected(self, hub: int, now: float, up: bool = True) -> None:
        """The link to ``hub`` came up (say hello) or went down."""
        if up:
            self._hello(self._hubs[hub], now)
        else:
            self._hubs[hub].unwelcome("its connection dropped")

    def _hello(self, hub: _Hub, now: float) -> None:
        """Say HELLO, and again every :attr:`hello_retry` seconds until a WELCOME: a
        HELLO lost on the way (a hub restarting, a link cut) must not leave the
        endpoint unregistered for good."""
        hub.hello_at = now + self.hello_retry
        self.io.send_hello(hub.index)

    def on_welcome(
        self, hub: int, heartbeat_ms: int, now: float, identity: Identity | None = None
    ) -> None:
        """``hub`` welcomed us; ``identity``: its own (its answers are taken for any
        message: no route, retry later)."""
        state = self._hubs[hub]
        if identity is not None and identity != state.identity:
            state.identity = identity  # a restarted hub has a new one: the old goes
            self.tracker.hubs = {h.identity for h in self._hubs if h.identity is not None}
        state.welcomed = True
        state.hello_at = None
        self.liveness.add(hub, now, interval=max(heartbeat_ms, 1) / 1000)
        if self._unsent:
            self._resend(now)

    def on_bye(self, hub: int) -> None:
        self._hubs[hub].unwelcome("it said BYE (closing)")

    def on_refusal(self, hub: int, code: str, message_id: bytes, text: str, now: float) -> None:
        """The hub refused something we sent."""
        if code == NOT_REGISTERED:
            # The hub does not know us (it restarted): register again; the refused
            # messages are retried by their timers.
            self._hubs[hub].unwelcome("it restarted and has not welcomed this endpoint again")
            self._hello(self._hubs[hub], now)
            return
        if message_id and self.tracker.state(message_id) is not None:
            kind = "Unauthorized" if code == UNAUTHORIZED else "RemoteProtocolError"
            error = RemoteError(kind, text, permanent=True)
            c = self.tracker.ack(message_id, outcome=Outcome.REJECTED, now=now, error=error)
            if c is not None:
                self._settle(c)

    def _pick(self, now: float, avoid: int = -1) -> int:
        """The hub for a first transmit: round robin over the welcomed ones that are
        neither suspect (quiet for more than 1.5 heartbeats) nor in a grace period;
        else over the welcomed ones in a grace period, else over the welcomed ones.
        ``avoid`` (a retry leaving it) counts as suspect."""
        hubs = self._hubs
        n = len(hubs)
        if n == 1:
            return 0
        fallback = -1
        fallback_rank = 3
        suspect = self.liveness.suspect
        for _ in range(n):
            self._next_hub = (self._next_hub + 1) % n
            hub = hubs[self._next_hub]
            if hub.welcomed:
                if self._next_hub == avoid or suspect(self._next_hub, now):
                    rank = 2
                elif hub.grace_until > now:
                    rank = 1
                else:
                    return self._next_hub
                if rank < fallback_rank:
                    fallback, fallback_rank = self._next_hub, rank
        return max(fallback, 0)

    def _clear(self, now: float, but: int, heard: bool = False) -> bool:
        """Whether a hub other than ``but`` is welcomed, not suspect and not in a grace
        period (``heard``: and not quiet either)."""
        lv = self.liveness
        return any(
            h.welcomed
            and h.index != but
            and h.grace_until <= now
            and not (lv.quiet if heard else lv.suspect)(h.index, now)
            for h in self._hubs
        )

    def _keeps(self, hub: int, now: float) -> bool:
        """Whether a retry goes through ``hub`` again, where its previous attempt went:
        while that hub is welcomed and not suspect, unless it is in a grace period or
        quiet since (more than half an interval: a hub cut off a moment ago, not yet
        suspect) and another hub is clear (and, for a quiet one, heard within half an
        interval)."""
        state = self._hubs[hub]
        lv = self.liveness
        if not state.welcomed or lv.suspect(hub, now):
            return False
        quiet = lv.quiet(hub, now)
        if not quiet and state.grace_until <= now:
            return True
        return not self._clear(now, hub, heard=quiet)

    def _pick_for(self, msg_id: bytes, attempt: int, now: float) -> int:
        """The hub for a transmit of ``msg_id``: a retry goes where the last attempt
        went while :meth:`_keeps` says so, else elsewhere if it can (docs/protocol.md,
        Several hubs)."""
        if len(self._hubs) == 1:
            return 0
        avoid = -1
        if attempt > 1:
            last = self._via.get(msg_id)
            if last is not None:
                if self._keeps(last, now):
                    return last
                avoid = last
        hub = self._via[msg_id] = self._pick(now, avoid)
        return hub

    # ------------------------------------------------------------------ sending

    def submit(
        self,
        msg_id: bytes,
        msg_type: str,
        destination: str,
        policy: Policy,
        now: float,
        event: bool = False,
        key: int = 0,
    ) -> bool:
        """Track a new message, and transmit it if its window has room (True). ``key``:
        its ordering key's hash (0: none); it waits while another of its key is pending."""
        self.stats.sent += 1
        admit = self.tracker.submit(  # positional: once per message
            msg_id, msg_type, destination, policy, now, None if event else 1, key
        )
        if admit is Admit.SEND:
            self._transmit(msg_id, 1, now)
            return True
        return False

    def _transmit(self, msg_id: bytes, attempt: int, now: float) -> None:
        """Send attempt ``attempt`` through a hub that welcomed this endpoint; with
        none (every link down, or each hub yet to answer a HELLO), the attempt is taken
        back and waits for the next WELCOME (:meth:`_resend`): sent into a link that is
        down it would reach a restarted hub before the HELLO, be refused, and spend an
        attempt for nothing."""
        hub = self._pick_for(msg_id, attempt, now)
        if not self._hubs[hub].welcomed:  # the picks fall back on one only when none is
            self.tracker.unsent(msg_id)
            self._unsent[msg_id] = None
            return
        self.stats.transmits += 1
        if attempt > 1:
            self.stats.retries += 1
        self.io.transmit(hub, msg_id, attempt, now)

    def _resend(self, now: float) -> None:
        """A hub welcomed this endpoint: the attempts taken back go now, in order."""
        unsent, self._unsent = self._unsent, {}
        for msg_id in unsent:
            action = self.tracker.resume(msg_id, now)
            if action is not None:
                self._transmit(msg_id, action.attempt, now)

    def in_flight(self, destination: str) -> int:
        return self.tracker.in_flight(destination)

    def cancel(self, msg_id: bytes, now: float, why: str) -> None:
        """Give up on a pending message (the endpoint closed, a caller bug)."""
        c = self.tracker.cancel(msg_id, now)
        if c is not None:
            self._settle(c, why)

    def close(self, pending: Iterable[bytes], now: float) -> None:
        """Fail every pending message (``pending``: their ids) as cancelled; from now
        on handlers' ends are abandoned rather than acked."""
        self.closed = True
        for msg_id in list(pending):
            self.cancel(msg_id, now, "the endpoint was closed")
        parked = [item for line in self._keys.values() for _, item in line]
        self._keys.clear()
        self._parked = 0
        for item in self._waiting.drain() + parked:  # never started: the senders retry
            self._running.pop(item.id, None)
            self.deduper.abandon(item.id)

    # ------------------------------------------------------------------ acks in

    def on_acks(
        self,
        receiver: Identity,
        ok_ids: Sequence[bytes],
        full: Iterable[AckReply],
        now: float,
    ) -> None:
        """One ACK group from ``receiver``: plain OKs and full acks."""
        if ok_ids:
            settled = self.tracker.ack_ok(ok_ids, now, receiver)
            if settled:
                self.stats.acked += len(settled)
                if self._notes:
                    self._forget_notes(settled)
                if self._via:
                    via = self._via
                    for c in settled:
                        via.pop(c.msg_id, None)
                self.io.acked(settled)
        for ack in full:
            self.on_ack(ack, now)

    def on_ack(self, ack: AckReply, now: float) -> None:
        mid = ack.msg_id
        error = ack.error
        if ack.outcome == Outcome.NO_ROUTE and error is not None and self.tracker.state(mid):
            self._notes[mid] = error.message
        retry_after = ack.retry_after
        if ack.deferred and len(self._hubs) > 1:
            retry_after = self._deferred(ack, now)
        c = self.tracker.ack(
            mid,
            outcome=ack.outcome,
            now=now,
            receiver=ack.receiver,
            error=ack.error,
            retry_after=retry_after,
            response=ack.response if ack.response_type or ack.response else None,
            attempt=ack.attempt,
            deferred=ack.deferred,
        )
        if c is not None:
            self._settle(c)

    def _deferred(self, ack: AckReply, now: float) -> float:
        """A hub deferred ``ack.msg_id`` (its grace period, after a start or a rejoin):
        it is sent no more messages while that lasts, if another hub is clear; the
        message then goes through that one after a backoff (the retry's hub chooses the
        instance by the same rendezvous hash), else waits out the grace as told."""
        for hub in self._hubs:
            if hub.identity == ack.receiver:
                hub.grace_until = max(hub.grace_until, now + ack.retry_after)
                if self._clear(now, hub.index):
                    self._via.pop(ack.msg_id, None)
                    return 0.0  # the tracker's backoff
                break
        return ack.retry_after

    def on_routed(
        self,
        msg_id: bytes,
        services: Sequence[str],
        now: float,
        implements: Sequence[Sequence[str]] = (),
    ) -> None:
        """The hub routed event ``msg_id`` to ``services`` (``implements``: the schema
        services each runs)."""
        c = self.tracker.routed(msg_id, services, now, implements)
        if c is not None:
            self._settle(c)

    def _settle(self, c: Completion, why: str = "") -> None:
        if self._via:
            self._via.pop(c.msg_id, None)
        if self._unsent:
            self._unsent.pop(c.msg_id, None)
        if c:
            self.stats.acked += 1
            if self._notes:
                self._notes.pop(c.msg_id, None)
            self.io.acked((c,))
            return
        note = self._notes.pop(c.msg_id, "")
        self.stats.failed[(c.reason or Reason.TIMEOUT).value] += 1
        if not why and (c.reason or Reason.TIMEOUT) in _UNANSWERED:
            why = self._unanswered()
        self.io.failed(c, delivery_error(c, note, why))

    def _unanswered(self) -> str:
        """For a message that timed out: that no hub answers this endpoint now, when so
        (the likeliest cause: the hub died or is unreachable), else nothing."""
        hubs = self._hubs
        if not hubs or any(h.welcomed for h in hubs):
            return ""
        which = "; ".join(f"{h.name} {h.lost}" for h in hubs)
        return f"no hub answers this endpoint ({which}): is the hub running?"

    def _forget_notes(self, completions: Iterable[Completion]) -> None:
        for c in completions:
            self._notes.pop(c.msg_id, None)

    # ------------------------------------------------------------------ receiving

    def on_heartbeat(self, hub: int, now: float) -> None:
        """A heartbeat from ``hub``: answered at once, in place of our own timer's
        (:meth:`Liveness.answer`), so a hub's heartbeats and their answers share its
        wake-ups."""
        if self.liveness.answer(hub, now):
            self.io.send_heartbeat(hub)

    def begin_batch(self, hub: int, now: float) -> None:
        """A batch of input from ``hub`` arrives at ``now``."""
        self.liveness.seen(hub, now)
        self.receiving = True
        self._batch_hub = hub
        self._batch_now = now

    def end_batch(self) -> None:
        """The batch is handled: ack the messages whose handlers returned OK in it."""
        self.receiving = False
        if self._batch_ok:
            ids, peers = self._batch_ok, self._batch_peers
            self._batch_ok, self._batch_peers = [], []
            self.ack_ok(self._batch_hub, ids, peers, self._batch_now)
        if self._waiting:
            self._admit(self._batch_now)

    def accept(self, hub: int, item: InboundItem, now: float) -> bool:
        """A received message: True if its handler is to run now (the driver then
        reports its end); False if the protocol answered it already (no handler,
        expired, a duplicate) or its first run's answer will serve (still running)."""
        self.stats.received += 1
        if item.type not in self._types:
            # The hub's view of us is stale (e.g. we re-registered): let it route again.
            error = RemoteError("NoHandler", f"{self.identity} has no handler for {item.type}")
            ack = AckReply(item.id, Outcome.NO_ROUTE, self.identity, error, attempt=item.attempt)
            self.io.send_ack(hub, ack, item.peer)
            return False
        if item.deadline_ns and (now + self.wall_offset) * 1e9 > item.deadline_ns:
            ack = AckReply(item.id, Outcome.EXPIRED, self.identity, attempt=item.attempt)
            self.io.send_ack(hub, ack, item.peer)
            return False
        verdict = self.deduper.begin(item.id, now)
        if verdict is not Verdict.NEW:
            self.stats.duplicates += 1
            if verdict is Verdict.DONE:
                self.reack(hub, item)
                return False
            # RUNNING: the ack follows when the first run ends; a retry from an earlier
            # batch hears now that its handler runs (its sender spends no attempt on it).
            run = self._running.get(item.id)
            if run is not None and run.started < now:
                run.hub, run.peer = hub, item.peer
                self._in_progress(hub, item.id, item.peer)
            return False
        if self.draining:  # sent before the hub heard we drain: to be routed elsewhere
            self.deduper.abandon(item.id)
            error = RemoteError("Draining", f"{self.identity} is shutting down")
            ack = AckReply(item.id, Outcome.NO_ROUTE, self.identity, error, attempt=item.attempt)
            self.io.send_ack(hub, ack, item.peer)
            return False
        running = self._running
        key = item.key
        running[item.id] = Running(hub, item.peer, now, key)
        if key:
            line = self._keys.get(key)
            if line is not None:  # another of its key runs or waits: park behind it
                line.append((hub, item))
                self._parked += 1
                self.stats.waited += 1
                return False
            self._keys[key] = deque()
        if self._waiting or len(running) - self._parked > self.max_concurrency:
            # No slot (or others wait already): wait, by priority; the lease covers it.
            self._waiting.push(hub, item, item.priority, now)
            self.stats.waited += 1
            return False
        return True

    def _admit(self, now: float) -> None:
        """Start waiting messages, best first, while slots are free, each as a batch of
        its own (never inside a batch: its end admits)."""
        waiting = self._waiting
        running = self._running
        while (
            waiting
            and not self.closed
            and len(running) - len(waiting) - self._parked < self.max_concurrency
        ):
            hub, item = waiting.pop_next()
            self.receiving = True
            self._batch_hub = hub
            self._batch_now = now
            try:
                self.io.start_waiting(hub, item, now)
            finally:
                self.receiving = False
                if self._batch_ok:
                    ids, peers = self._batch_ok, self._batch_peers
                    self._batch_ok, self._batch_peers = [], []
                    self.ack_ok(hub, ids, peers, now)

    def waiting_count(self) -> int:
        """Accepted messages waiting for a slot under ``max_concurrency``, or for the
        message of their ordering key before them to end."""
        return len(self._waiting) + self._parked

    def keys_held(self) -> int:
        """Ordering keys with a message running or waiting here (for leak checks)."""
        return len(self._keys)

    def _key_ended(self, key: int, now: float) -> None:
        """The message of ``key`` that ran here ended: the next one parked behind it
        (in arrival order) joins the line for a slot; with none, the key is free."""
        line = self._keys.get(key)
        if not line:
            if line is not None:
                del self._keys[key]
            return  # (None: the endpoint closed, which dropped every key)
        hub, item = line.popleft()
        self._parked -= 1
        if self.closed:
            self._running.pop(item.id, None)
            self.deduper.abandon(item.id)
            self._key_ended(key, now)
            return
        self._waiting.push(hub, item, item.priority, now)

    def _in_progress(self, hub: int, msg_id: bytes, peer: bytes) -> None:
        self.stats.in_progress += 1
        self.io.send_ack(hub, AckReply(msg_id, Outcome.IN_PROGRESS, self.identity), peer)

    def running_count(self) -> int:
        """Messages whose handlers this endpoint runs now or that wait for a slot (the
        ones its lease covers)."""
        return len(self._running)

    def unhandled(self, hub: int, item: InboundItem, why: str, permanent: bool) -> None:
        """A message of a type handled here that no handler takes (checked before
        :meth:`accept`): it names an rpc not run here (answered NO_ROUTE, so the sender
        may be routed to an instance that runs it), or it names none and several rpcs
        take its type (``permanent``: REJECTED, a retry cannot help)."""
        self.stats.received += 1
        if permanent:
            error = RemoteError("AmbiguousMethod", why, True)
            ack = AckReply(item.id, Outcome.REJECTED, self.identity, error)
        else:
            error = RemoteError("NoHandler", f"{self.identity}: {why}")
            ack = AckReply(item.id, Outcome.NO_ROUTE, self.identity, error, attempt=item.attempt)
        self.io.send_ack(hub, ack, item.peer)

    def undecodable(self, hub: int, item: InboundItem, why: str, now: float) -> None:
        """An accepted message whose envelope or body could not be decoded."""
        run = self._running.pop(item.id, None)
        if run is not None and run.key:
            self._key_ended(run.key, now)
        error = RemoteError("RemoteProtocolError", f"undecodable {item.type} message: {why}", True)
        self.deduper.finish(item.id, Outcome.REJECTED, now, error=error)
        self.stats.refused["MALFORMED"] += 1
        self.io.send_ack(hub, AckReply(item.id, Outcome.REJECTED, self.identity, error), item.peer)

    def handled_ok(self, msg_id: bytes, peer: bytes) -> None:
        """A handler of the current batch returned OK, with no response to send: acked
        with the batch at :meth:`end_batch`. Until then a copy of the message later in
        the batch is RUNNING and gets no ack of its own; the batch's ack settles it."""
        self.stats.handled += 1
        run = self._running.pop(msg_id, None)
        if run is not None and run.key:
            self._key_ended(run.key, self._batch_now)  # its next starts at end_batch
        self._batch_ok.append(msg_id)
        self._batch_peers.append(peer)

    def handled(
        self,
        hub: int,
        item: InboundItem,
        now: float,
        exc: BaseException | None = None,
        response: bytes | None = None,
        response_type: str = "",
    ) -> None:
        """A handler ended: returned (``exc`` None; ``response`` for a request) or
        raised ``exc``. A cancelled run goes to :meth:`abandon` instead."""
        mid = item.id
        run = self._running.pop(mid, None)
        if run is not None and run.key:
            self._key_ended(run.key, now)
        if self._waiting and not self.receiving:
            self._admit(now)  # its slot is free (the answer below goes out after)
        if self.closed:
            self.deduper.abandon(mid)
            return
        if exc is None:
            self.stats.handled += 1
            if response is None or not item.flags & FLAG_REQUEST:
                self.deduper.finish(mid, Outcome.OK, now)
                self.io.send_acks(hub, [mid], item.peer)
            else:
                self.deduper.finish(mid, Outcome.OK, now, response=response)
                ack = AckReply(
                    mid,
                    Outcome.OK,
                    self.identity,
                    response=response,
                    response_type=response_type,
                )
                self.io.send_ack(hub, ack, item.peer)
            return
        self.stats.handler_errors += 1
        if isinstance(exc, RetryLater):
            self.deduper.abandon(mid)
            ack = AckReply(
                mid, Outcome.RETRY_LATER, self.identity, retry_after=exc.after, attempt=item.attempt
            )
            self.io.send_ack(hub, ack, item.peer)
            return
        permanent = isinstance(exc, Reject) and exc.permanent
        error = RemoteError(type(exc).__name__, str(exc), permanent=permanent)
        self.deduper.finish(mid, Outcome.REJECTED, now, error=error)
        self.io.send_ack(hub, AckReply(mid, Outcome.REJECTED, self.identity, error), item.peer)

    def abandon(self, msg_id: bytes) -> None:
        """A run ended without an answer (cancelled, not committed): forget it, so
        the sender's retry runs the handler again. (Its slot goes to a waiting message
        at the next :meth:`tick`.)"""
        run = self._running.pop(msg_id, None)
        self.deduper.abandon(msg_id)
        if run is not None and run.key:
            self._key_ended(run.key, run.started)

    def ack_ok(self, hub: int, ids: list[bytes], peers: list[bytes], now: float) -> None:
        """Finish ``ids`` (handled, OK, no response) in the deduper and ack them through
        ``hub``, each to its sender (``peers``, in the same order): one deduper call and
        one ack run per sender."""
        running = self._running
        if running:  # durable mode acks here after its commit; batches after handled_ok
            for mid in ids:
                run = running.pop(mid, None)
                if run is not None and run.key:
                    self._key_ended(run.key, now)
        if self.closed:
            for mid in ids:
                self.deduper.abandon(mid)
            return
        self.deduper.finish_ok(ids, now)
        send = self.io.send_acks
        peer = peers[0]
        if peers.count(peer) == len(peers):  # one sender (or one hub token): one run
            send(hub, ids, peer)
            return
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or peers[i] != peer:
                send(hub, ids[start:i], peer)
                if i < len(ids):
                    start, peer = i, peers[i]

    def reack(self, hub: int, item: InboundItem) -> None:
        """Answer a duplicate of a handled message with the outcome it had."""
        record = self.deduper.record(item.id)
        if record is None:  # pragma: no cover - DONE implies a record
            return
        if record.outcome == Outcome.OK and not record.response:
            self.io.send_ack(hub, AckReply(item.id, Outcome.DUPLICATE, self.identity), item.peer)
            return
        outcome = Outcome.DUPLICATE if record.outcome == Outcome.OK else record.outcome
        ack = AckReply(
            item.id,
            outcome,
            self.identity,
            record.error,
            response=record.response,
            attempt=item.attempt,
        )
        self.io.send_ack(hub, ack, item.peer)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do."""
        best = self.tracker.next_deadline()
        for t in (self.liveness.next_deadline(), self.deduper.next_deadline()):
            if t is not None and (best is None or t < best):
                best = t
        for hub in self._hubs:
            t = hub.hello_at
            if t is not None and (best is None or t < best):
                best = t
        t = self._progress_due()
        if t is not None and (best is None or t < best):
            best = t
        return best

    def _progress_due(self) -> float | None:
        if not self._running:
            return None
        if self._progress_at is not None:
            return self._progress_at
        return next(iter(self._running.values())).started + self.progress

    def tick(self, now: float) -> None:
        """Time passed: retries, deadlines, heartbeats, silent hubs, dedupe expiry."""
        if self.closed:
            return
        io = self.io
        for action in self.tracker.tick(now):
            if isinstance(action, Transmit):
                self._transmit(action.msg_id, action.attempt, now)
            else:
                self._settle(action)
        for lv in self.liveness.tick(now):
            if isinstance(lv, SendHeartbeat):
                if self._hubs[lv.peer].welcomed:  # else it refuses it; HELLO is due
                    io.send_heartbeat(lv.peer)
            elif isinstance(lv, PeerDead):
                io.hub_silent(lv.peer, lv.silence)
                self._hubs[lv.peer].unwelcome(f"silent for {lv.silence:.1f} s")
                self._hello(self._hubs[lv.peer], now)
                self.liveness.add(lv.peer, now)
        for hub in self._hubs:
            if hub.hello_at is not None and hub.hello_at <= now:
                self._hello(hub, now)
        self.deduper.tick(now)
        if self._waiting:
            self._admit(now)
        due = self._progress_due()
        if due is None:
            self._progress_at = None
        elif due <= now:
            self._sweep_progress(now)

    def _sweep_progress(self, now: float) -> None:
        """Tell the sender of every handler running for ``progress`` seconds or more
        that it still runs (IN_PROGRESS): the lease. Runs every ``progress`` seconds
        while handlers run; a running set is bounded by the receiver's credit."""
        started_by = now - self.progress
        for mid, r in self._running.items():
            if r.started > started_by:
                break  # start order: the rest are younger
            self._in_progress(r.hub, mid, r.peer)
        self._progress_at = now + self.progress
