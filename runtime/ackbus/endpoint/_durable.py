"""How an endpoint uses its store: the send, settle and receive paths in durable mode.

An :class:`~ackbus.endpoint.Endpoint` made with ``store=...`` holds one :class:`Durable`
and calls it at four points; without a store it holds ``None`` and pays one ``is None``
test per message. Durable mode talks back to its endpoint through :class:`Hooks` only:
the endpoint's protocol, and the few endpoint operations it needs (track a message,
answer a handled one, arm the timer).

* **send**: the outbox row commits (group commit, fsync) before ``send`` returns; then
  the message is tracked and transmitted as in memory mode. Inside a handler (the
  :data:`CURRENT` context variable names the handler's :class:`Transaction`), the row
  joins the handler's unit of work instead and the message is transmitted only after
  that unit committed; ``send`` returns a pending report at once (waiting for its ack
  there would wait for the handler's own commit).
* **settle**: an acked message's row is deleted, a failed one moves to the dead
  letters; both lazily (no fsync: a lost delete only causes a re-send that the receiver
  dedupes). A message cancelled by ``close()`` stays in the outbox for the next start.
* **receive**: a handler that ends with a final outcome (OK, or a permanent
  rejection) has its inbox record, writes and sends committed before the ack goes out.
  A transient failure commits nothing: the sender retries and the handler runs again.
* **start**: recent inbox records go back into the deduper (a restarted receiver still
  recognises duplicates) and pending outbox rows are tracked again (same ids, the
  remaining deadline, a fresh attempt budget).
* **transaction**: ``ep.transaction()``, the user's own writes and sends committed as
  one, then the sends transmitted (:class:`UserTransaction`).

The handler's ``ctx.tx`` and the user's transaction are what the store makes of a unit
(:meth:`Store.transaction`): the unit itself where statements are recorded (SQLite),
or a live transaction (PostgreSQL), which commits on its own connection instead of in
the group commit, but only when the code used it: a handler that never touches
``ctx.tx`` commits its inbox record in the group commit either way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._eager import report_when_done, start_eager
from .._log import message_fields
from .._types import Context, DeliveryReport, DeliveryStatus, Identity, Policy
from ..core import Completion, DedupeRecord, Outcome, Reason, RemoteError
from ..core._values import shortened
from ..core.endpoint_protocol import EndpointProtocol
from ..errors import Cancelled, ClosedError, Reject, RetryLater, StoreError
from ..store import InboxRecord, OutboxRow, Store, open_store
from ..store._rows import policy_from_json, policy_json
from ..store._tx import CURRENT, BlockingTx, Tx
from ..store._unit import Deferred, Transaction
from ..store._writer import Batch
from ..wire import FLAG_REQUEST, MessageItem

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from .._dispatch import Route
    from .._types import AsyncBus
    from ._base import HubLink

__all__ = ["CURRENT", "Durable", "Hooks", "UserTransaction"]

log = logging.getLogger("ackbus.store")

_Handled = tuple[
    Transaction, "HubLink", MessageItem, "Route", "Message | None", BaseException | None
]
"""A handled message waiting for its inbox commit: what answering it needs."""


RunInThread = Callable[
    [Callable[[Any, Any], Any], Any, Context, Callable[[Any, BaseException | None], None]], None
]


def _no_worker_pool(
    fn: Callable[[Any, Any], Any],
    msg: Any,
    ctx: Context,
    on_done: Callable[[Any, BaseException | None], None],
) -> None:
    raise TypeError(f"{fn!r} is a plain def handler, and this driver has no worker pool")


@dataclass(frozen=True, slots=True)
class Hooks:
    """What durable mode may do with its endpoint: the whole interface between them."""

    identity: Identity
    protocol: EndpointProtocol
    """The endpoint's protocol: its deduper (reloaded at start), acks, re-acks."""
    closed: Callable[[], bool]
    now: Callable[[], float]
    """The endpoint's clock (the loop's)."""
    is_pending: Callable[[bytes], bool]
    """Whether a message id is being sent already."""
    track: Callable[[DeliveryReport, bytes, str, int, Policy, float], None]
    """Track and transmit a message whose frame is committed: (report, frame,
    destination, kind, policy, now)."""
    answer: Callable[[HubLink, MessageItem, Route, Message | None, BaseException | None], None]
    """Answer a handled message as memory mode does: (hub, item, route, result, error)."""
    arm_timer: Callable[[], None]
    run_in_thread: RunInThread = _no_worker_pool
    """Run a plain ``def`` handler in the endpoint's worker pool: (fn, msg, ctx, on_done),
    ``on_done(result, error)`` called on the loop once it returned. (A driver without
    one, such as the simulation's, runs ``async def`` handlers only.)"""
    bus: AsyncBus | None = None
    """What a transaction's sends go through (the endpoint): ``tx.send`` calls its
    ``send`` with the transaction's unit current."""


_BUSY_RETRY = 1.0
"""Seconds a sender waits before retrying a message whose commit met another transaction
holding its records (a sibling instance committing it, or frozen while doing so)."""

_CLAIM_EVERY = 1.0
"""Seconds between checks that a shared store's claim still holds (its connection
alive; taken again after a database restart)."""

_PRUNE_EVERY = 60.0
"""Longest pause between inbox prunes, seconds (a quarter of the dedupe TTL if shorter)."""


class Durable:
    """One endpoint's durable state: its store, and the glue on each path."""

    def __init__(
        self,
        spec: str | Store,
        service: str,
        instance: str | None,
        ttl: float,
        *,
        wall: Callable[[], float] = time.time,
    ):
        self.store = open_store(spec)
        self._wall = wall
        """Unix time: what the store's times (deadlines, inbox records) are in."""
        self.instance = self.store.claim(service, instance)
        self.ttl = ttl
        self.resumed: list[DeliveryReport] = []
        self._leftover: list[OutboxRow] = []
        self._early: list[tuple[DeliveryReport, bytes, str, int, Policy]] | None = []
        """Messages of this run committed before :meth:`resume` (a send racing the
        start, a handler's send): tracked after the rows of the previous run, so that
        no new message of an ordering key overtakes an older one; ``None`` once resumed."""
        self._hooks: Hooks | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._policies: dict[Policy, str] = {}
        self._last_policy: Policy | None = None
        self._last_json = ""
        # Handled messages waiting for the open batch's commit, acked together when it
        # lands: one callback per batch instead of a closure per message.
        self._handled_batch: Batch | None = None
        self._handled: list[_Handled] = []
        kept = self.store.dead_letters_ttl
        self._prune_every = min(_PRUNE_EVERY, ttl / 4, kept / 4 if kept else _PRUNE_EVERY)
        self._next_prune = 0.0
        self._adopter: asyncio.Future[None] | None = None
        self._live: set[asyncio.Task[None]] = set()
        """Live transactions committing or rolling back (PostgreSQL's ``ctx.tx``)."""

    def _host(self) -> Hooks:
        hooks = self._hooks
        assert hooks is not None, "Durable.start() runs first"
        return hooks

    # -- start and close ----------------------------------------------------------------

    async def start(self, hooks: Hooks, loop: asyncio.AbstractEventLoop) -> None:
        """Before the endpoint connects: reload the deduper and start the writer. The
        reads run on a worker thread (a long inbox takes a moment to read)."""
        since = self._wall() - self.ttl
        read = functools.partial(self._read, since, hooks.protocol.deduper.capacity)
        self._load(hooks, loop, since, *await asyncio.to_thread(read))

    def start_blocking(self, hooks: Hooks, loop: asyncio.AbstractEventLoop) -> None:
        """:meth:`start` with the reads on the calling thread, for a store in memory
        (the simulation's): no worker thread, and ``loop`` need not run, as long as the
        handlers finish in their first step (:meth:`run` then makes no task)."""
        since = self._wall() - self.ttl
        self._load(hooks, loop, since, *self._read(since, hooks.protocol.deduper.capacity))

    def _read(self, since: float, limit: int) -> tuple[list[InboxRecord], list[OutboxRow]]:
        return self.store.inbox_since(since, limit=limit), self.store.pending_outbox()

    def _load(
        self,
        hooks: Hooks,
        loop: asyncio.AbstractEventLoop,
        since: float,
        records: list[InboxRecord],
        leftover: list[OutboxRow],
    ) -> None:
        """The rest of :meth:`start`, once the store was read."""
        self._hooks = hooks
        self._loop = loop
        self._leftover = leftover
        store = self.store
        # The connection is the writer's from here on.
        store.start(loop)
        self._prune(self._wall())
        now = hooks.now()
        offset = self._wall() - now
        hooks.protocol.deduper.load((_dedupe_record(r, offset) for r in records), now)

    def resume(self) -> None:
        """After the endpoint connected: track what a previous run left in the outbox,
        and, with a store shared by the service's instances, start looking for the
        outbox rows of instances that are gone for good (:meth:`_adopt`)."""
        hooks = self._host()
        leftover, self._leftover = self._leftover, []
        self._track_rows(leftover)
        early, self._early = self._early or [], None
        for report, frame, destination, kind, pol in early:
            hooks.track(report, frame, destination, kind, pol, hooks.now())
        if self.resumed:
            log.info(
                "%s: resumed %d messages from %s",
                hooks.identity,
                len(self.resumed),
                self.store.location,
            )
        every = self.store.takeover_every
        if every is not None and self._adopter is None:
            self._adopter = asyncio.ensure_future(self._adopt(every), loop=self._loop)

    def track(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        pol: Policy,
        now: float,
    ) -> None:
        """Hand a committed message of this run to the endpoint's tracker; before
        :meth:`resume`, after the previous run's rows (ordering keys keep their order)."""
        if self._early is not None:
            self._early.append((report, frame, destination, kind, pol))
            return
        self._host().track(report, frame, destination, kind, pol, now)

    def _track_rows(self, rows: list[OutboxRow]) -> None:
        """Send outbox rows of an earlier run (or of a gone sibling) as resumed
        messages: same ids, what is left of their deadlines, a fresh attempt budget."""
        hooks = self._host()
        wall = self._wall()
        for row in rows:
            if hooks.is_pending(row.msg_id):
                continue
            where = f"{self.store.location}: outbox message {row.msg_id.hex()}"
            # What is left of its deadlines (the event's and each subscriber's).
            pol = shortened(policy_from_json(row.policy, where), wall - row.created_at)
            report = DeliveryReport(row.msg_id, row.msg_type)
            self.resumed.append(report)
            hooks.track(report, row.frame, row.destination, row.kind, pol, hooks.now())

    async def _adopt(self, every: float) -> None:
        """A running instance's look, every ``every`` seconds, for siblings gone for
        good: their pending outbox rows become this instance's and are sent. And every
        second (or ``every``, if shorter), that its claim still holds: a database
        restart ends the session that held it, and it is taken again once the server
        answers (:meth:`Store.keep_claim`)."""
        hooks = self._host()
        tick = min(every, _CLAIM_EVERY)
        loop = asyncio.get_running_loop()
        next_look = loop.time() + every
        lost = False
        while not hooks.closed():
            await asyncio.sleep(tick)
            try:
                await asyncio.to_thread(self.store.keep_claim)
                lost = False
            except Exception as exc:  # the database away: the next tick tries again
                if not lost:  # one line per outage, not one a second
                    log.warning("%s: the store's claim is lost: %s", hooks.identity, exc)
                lost = True
                continue
            if loop.time() < next_look:
                continue
            next_look = loop.time() + every
            try:
                rows = await asyncio.to_thread(self.store.take_over)
            except Exception as exc:  # the database away: the next look tries again
                log.warning("%s: looking for gone siblings' outbox failed: %s", hooks.identity, exc)
                continue
            if rows and not hooks.closed():
                self._track_rows(rows)

    async def close(self, timeout: float = 5.0) -> None:
        if self._adopter is not None:
            self._adopter.cancel()
            await asyncio.wait([self._adopter], timeout=timeout)
        if self._live:  # their connections go back to the pool before it closes
            await asyncio.wait(self._live, timeout=timeout)
        await self.store.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro, loop=self._loop)
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    # -- send -----------------------------------------------------------------------------

    def stage(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        request: bool,
        pol: Policy,
        now_ns: int,
    ) -> Batch | None:
        """Queue the message's outbox row: the batch to wait for before it is tracked
        (see :meth:`committed`), or ``None`` when it joined the running handler's unit
        of work and is tracked after that commits. (The send awaits the batch itself:
        a coroutine here per message was one more object per waiting send for the
        garbage collector to walk, and one more frame to resume.)"""
        row = self._row(report, frame, destination, kind, request, pol, now_ns / 1e9)
        unit = CURRENT.get()
        if unit is not None and unit.owner is self._hooks and unit.open and not request:
            unit.add_send(Deferred(row, report, destination, kind, pol))
            return None
        return self.store.put_outbox(row)

    def stage_group(
        self,
        reports: list[DeliveryReport],
        frames: list[bytes],
        resolved: list[tuple[str, bytes, bool, Policy, int, str | None, str]],
        kind: int,
        now_ns: int,
    ) -> Batch | None:
        """:meth:`stage` for ``send_many``'s group (``resolved``: each message's
        ``_resolve``, its policy at 3, its destination at 6): all its outbox rows in
        one operation of one batch, or all in the running handler's unit."""
        created = now_ns / 1e9
        rows = [
            self._row(report, frame, r[6], kind, False, r[3], created)
            for report, frame, r in zip(reports, frames, resolved, strict=True)
        ]
        unit = CURRENT.get()
        if unit is not None and unit.owner is self._hooks and unit.open:
            for report, row, r in zip(reports, rows, resolved, strict=True):
                unit.add_send(Deferred(row, report, r[6], kind, r[3]))
            return None
        return self.store.put_outboxes(rows)

    def _row(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        request: bool,
        pol: Policy,
        created: float,
    ) -> OutboxRow:
        if pol is self._last_policy:  # nearly always: one Policy object per message type
            text = self._last_json
        else:
            text = self._last_json = self._policy_json(pol)
            self._last_policy = pol
        # tuple.__new__: a NamedTuple's own __new__ is a Python function, and this
        # runs once per durable message.
        return tuple.__new__(
            OutboxRow,
            (
                report.message_id,
                report.message_type,
                destination,
                kind,
                request,
                text,
                created,
                created + pol.life,
                frame,
            ),
        )

    def committed(self, batch: Batch, report: DeliveryReport) -> None:
        """The send's batch is done: raise if it failed, or if the endpoint closed
        meanwhile (the row stays in the outbox, sent at the next start)."""
        batch.check()
        hooks = self._host()
        if hooks.closed():
            raise ClosedError(
                f"{hooks.identity}: endpoint closed while message "
                f"{report.message_id.hex()} committed; it stays in the outbox and is sent "
                "at the next start"
            )

    def cancelled(
        self,
        batch: Batch,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        pol: Policy,
    ) -> None:
        """The send was cancelled while its row committed. The row commits anyway:
        deliver it in this run rather than leave it for the next start. A cancelled
        send may still be delivered (docs/durable.md)."""
        hooks = self._host()

        def track(error: BaseException | None) -> None:
            if error is None and not hooks.closed():
                self.track(report, frame, destination, kind, pol, hooks.now())

        batch.on_commit(track)

    def _policy_json(self, pol: Policy) -> str:
        text = self._policies.get(pol)
        if text is None:
            if len(self._policies) > 256:
                self._policies.clear()
            text = self._policies[pol] = policy_json(pol)
        return text

    # -- settle -----------------------------------------------------------------------------

    def acked(self, msg_ids: list[bytes]) -> None:
        """Messages acked: their outbox rows go (lazy), an ack group's worth at once."""
        self.store.forget_outboxes(msg_ids)

    def failed(self, c: Completion, report: DeliveryReport) -> None:
        """A message failed: to the dead letters, unless cancelled (it stays in the
        outbox, sent again at the next start)."""
        if c.reason is not Reason.CANCELLED:
            self.store.dead_letter(
                c.msg_id, (c.reason or Reason.TIMEOUT).value, c.attempts, str(report.error or "")
            )
            wall = self._wall()
            if wall >= self._next_prune:
                self._prune(wall)

    # -- receive ----------------------------------------------------------------------------

    def run(
        self, hub: HubLink, item: MessageItem, route: Route, msg: Any, ctx: Context
    ) -> asyncio.Task[Any] | None:
        """Run the handler inside a unit of work (``ctx.tx``, and :data:`CURRENT` for sends).

        A plain ``def`` handler runs in the endpoint's worker pool and uses ``ctx.tx`` from
        its thread: the unit only records its writes there (list appends, each made
        before the handler returned), and is read and closed on the loop after the
        handler returned, so the thread and the loop never touch its writes at once. The
        thread runs in a copy of this context (:data:`CURRENT` set), so a send it hands
        to the loop while it runs (``asyncio.run_coroutine_threadsafe(ep.send(...),
        loop)``) joins the unit as an async handler's send does."""
        loop = self._loop
        hooks = self._hooks
        assert loop is not None
        assert hooks is not None
        unit = Transaction(hooks, hooks.bus)
        tx = self.store.transaction(unit)
        # The endpoint built this context for this run alone.
        ctx.tx = BlockingTx(tx, loop) if route.plain else tx  # type: ignore[assignment]
        token = CURRENT.set(unit)
        try:
            if route.sync:
                done = functools.partial(self._done, tx, hub, item, route)
                self._host().run_in_thread(route.fn, msg, ctx, done)
                return None
            started = start_eager(route.fn(msg, ctx), loop)
        finally:
            CURRENT.reset(token)
        if isinstance(started, tuple):  # the handler returned (or raised) at once
            self._done(tx, hub, item, route, *started)
            return None
        report_when_done(started, functools.partial(self._done, tx, hub, item, route))
        return started

    def _done(
        self,
        tx: Tx,
        hub: HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
    ) -> None:
        hooks = self._host()
        unit = tx.unit
        request = bool(item.flags & FLAG_REQUEST)
        ok = exc is None and not (request and result is None)
        permanent = isinstance(exc, Reject) and exc.permanent
        live = tx.live
        if exc is not None:  # the store's fault (a lost connection): retried
            exc = tx.retry_for(exc) or exc
        if hooks.closed() or not (ok or permanent):
            # Transient failure, retry-later, cancellation: nothing to keep, the sender
            # retries. The endpoint answers exactly as in memory mode.
            if live:
                self._spawn(tx.abort())
            self._drop(unit, "its handler failed")
            hooks.answer(hub, item, route, result, exc)
            return
        wall = self._wall()
        if ok:
            body = result.SerializeToString() if request and result is not None else b""
            record = tuple.__new__(InboxRecord, (item.id, Outcome.OK, wall, body, "", "", False))
        else:
            record = InboxRecord(
                item.id, Outcome.REJECTED, wall, b"", type(exc).__name__, str(exc), True
            )
            self._drop(unit, "its handler rejected the message")
            if live:  # its writes go; the rejection commits in the group commit
                self._spawn(tx.abort())
                live = False
        unit.close(record)
        if live:  # PostgreSQL's ctx.tx was used: it commits on its own connection
            self._spawn(self._commit_live(tx, hub, item, route, result, exc))
            if wall >= self._next_prune:
                self._prune(wall)
            return
        batch = self.store.put_inbox(record) if unit.simple else self.store.put_unit(unit)
        entry = (unit, hub, item, route, result, exc)
        if batch is self._handled_batch:
            self._handled.append(entry)
        else:  # the first handled message of this batch (on_commit may run at once)
            self._handled_batch = batch
            self._handled = handled = [entry]
            batch.on_commit(functools.partial(self._batch_committed, handled))
        if wall >= self._next_prune:
            self._prune(wall)

    async def _commit_live(
        self,
        tx: Tx,
        hub: HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
    ) -> None:
        """Commit a handler's live transaction with its inbox record, then answer."""
        error: BaseException | None = None
        try:
            await tx.commit(tx.unit.record)
        except Exception as e:  # the connection failed: unknown whether it committed
            error = e
        self._committed(tx.unit, hub, item, route, result, exc, error)

    def _prune(self, wall: float) -> None:
        """Inbox records older than the dedupe TTL, and dead letters older than the
        store's ``dead_letters_ttl`` (if it has one), go; lazily. At start, then at most
        every ``_prune_every`` seconds while messages are handled or fail."""
        self._next_prune = wall + self._prune_every
        store = self.store
        store.prune_inbox(wall - self.ttl)
        if store.dead_letters_ttl is not None:
            store.prune_dead_letters(wall - store.dead_letters_ttl)

    def _batch_committed(self, handled: list[_Handled], error: BaseException | None) -> None:
        """A batch holding handled messages committed (or failed): answer each in order."""
        if handled is self._handled:
            self._handled_batch = None
            self._handled = []
        hooks = self._host()
        closed = hooks.closed()
        # Plain OKs (most messages) are finished and acked together per hub, as memory
        # mode acks a received batch: one deduper call, one ack run and one timer check
        # for the batch.
        oks: dict[HubLink, tuple[list[bytes], list[bytes]]] = {}
        for unit, hub, item, route, result, exc in handled:
            try:
                if error is None and unit.plain and not closed:
                    if exc is None and not item.flags & FLAG_REQUEST:
                        ids, peers = oks.get(hub) or oks.setdefault(hub, ([], []))
                        ids.append(item.id)
                        peers.append(item.peer)
                    else:
                        hooks.answer(hub, item, route, result, exc)  # as in memory mode
                else:
                    self._committed(unit, hub, item, route, result, exc, error)
            except Exception:  # one broken answer must not starve the rest
                log.exception(
                    "%s: answering %s failed",
                    hooks.identity,
                    item.id.hex(),
                    extra=message_fields(item.id, item.type, hooks.identity.service, item.attempt),
                )
        if oks:
            now = hooks.now()
            protocol = hooks.protocol
            for hub, (ids, peers) in oks.items():
                protocol.stats.handled += len(ids)
                try:
                    protocol.ack_ok(hub.index, ids, peers, now)
                except Exception:  # pragma: no cover - a bug; the senders retry
                    log.exception("%s: acking %d messages failed", hooks.identity, len(ids))
            hooks.arm_timer()

    def _committed(
        self,
        unit: Transaction,
        hub: HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
        error: BaseException | None,
    ) -> None:
        hooks = self._host()
        protocol = hooks.protocol
        if error is not None:
            # Nothing was committed: no ack, so the sender retries and the handler runs again.
            protocol.abandon(item.id)
            self._drop(unit, f"the store failed: {error}")
            log.error(
                "%s: %s %s not acked, the store failed: %s",
                hooks.identity,
                item.type,
                item.id.hex(),
                error,
                extra=message_fields(item.id, item.type, hooks.identity.service, item.attempt),
            )
            return
        if unit.duplicate is not None:
            # Handled before, beyond the deduper's memory: answer with the stored outcome.
            record = unit.duplicate
            now = hooks.now()
            protocol.abandon(item.id)
            protocol.deduper.load([_dedupe_record(record, self._wall() - now)], now)
            protocol.stats.duplicates += 1
            self._drop(unit, "the message was a duplicate")
            if not hooks.closed():
                protocol.reack(hub.index, item)
            return
        if unit.busy is not None:
            # Another instance holds this message's inbox record (or the handler's rows)
            # uncommitted: the database decides who runs it; ask for a retry.
            self._drop(unit, "another transaction held its records")
            busy = RetryLater(_BUSY_RETRY, f"the store was busy with this message: {unit.busy}")
            hooks.answer(hub, item, route, None, busy)
            return
        if unit.failed is not None:
            self._drop(unit, "its transaction failed")
            failure = unit.failed
            if not isinstance(failure, StoreError):
                failure = StoreError(f"a statement of the handler's ctx.tx failed: {failure}")
            hooks.answer(hub, item, route, None, failure)
            return
        hooks.answer(hub, item, route, result, exc)
        self._transmit(unit)

    def _transmit(self, unit: Transaction) -> None:
        """A unit committed: transmit its sends (if the endpoint closed meanwhile, they
        go out at the next start, from the outbox)."""
        hooks = self._host()
        if hooks.closed() or not unit.sends:
            return
        now = hooks.now()
        for d in unit.sends:
            self.track(d.report, d.frame, d.destination, d.kind, d.policy, now)

    # -- the user's transaction ---------------------------------------------------------

    def transaction(self) -> UserTransaction:
        """``ep.transaction()``: see :class:`UserTransaction`."""
        return UserTransaction(self)

    @staticmethod
    def _drop(unit: Transaction, why: str) -> None:
        """Fail the reports of the unit's sends: they were never committed."""
        for d in unit.sends:
            d.report._settle(
                DeliveryStatus.FAILED,
                attempts=0,
                first_sent_at=None,
                error=Cancelled(
                    f"not sent: {why}",
                    message_id=d.report.message_id,
                    message_type=d.report.message_type,
                ),
            )
        unit.close(None)


class UserTransaction:
    """``async with ep.transaction() as tx``: the user's own writes and the messages
    sent through ``tx`` commit as one when the block ends without an exception, and the
    messages are transmitted only then (from the outbox: a crash after the commit
    sends them at the next start). An exception rolls everything back (the sends'
    reports fail with ``Cancelled``, never sent) and propagates. A commit that fails
    raises :class:`StoreError` from the ``async with``."""

    __slots__ = ("_durable", "_tx")

    def __init__(self, durable: Durable) -> None:
        self._durable = durable
        self._tx: Tx | None = None

    async def __aenter__(self) -> Tx:
        if self._tx is not None:
            raise RuntimeError("a transaction object is entered once; call transaction() again")
        durable = self._durable
        hooks = durable._host()
        if hooks.closed():
            raise ClosedError(f"{hooks.identity}: endpoint closed")
        tx = durable.store.transaction(Transaction(hooks, hooks.bus))
        await tx.begin()
        self._tx = tx
        return tx

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        tx, durable = self._tx, self._durable
        assert tx is not None
        unit = tx.unit
        if exc_type is not None:
            await asyncio.shield(tx.abort())
            durable._drop(unit, f"its transaction rolled back ({exc_type.__name__})")
            return
        unit.seal()
        try:
            if tx.live:
                await tx.commit(None)
            else:
                batch = durable.store.put_unit(unit)
                try:
                    await batch.waiter()
                except asyncio.CancelledError:  # it commits anyway: send once it did
                    batch.on_commit(
                        lambda e: (
                            durable._transmit(unit) if e is None and unit.failed is None else None
                        )
                    )
                    raise
                batch.check()
        except Exception as e:
            durable._drop(unit, f"its commit failed ({e})")
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"the transaction's commit failed: {e}") from e
        problem = unit.busy or unit.failed
        if problem is not None:
            durable._drop(unit, f"its transaction was rolled back ({problem})")
            raise StoreError(f"the transaction was rolled back: {problem}") from problem
        durable._transmit(unit)


def _dedupe_record(r: InboxRecord, offset: float) -> DedupeRecord:
    """A stored record for the deduper, whose clock is the loop's (``offset`` = wall - loop)."""
    error = None
    if r.error_type or r.error_message:
        error = RemoteError(r.error_type, r.error_message, r.error_permanent)
    return DedupeRecord(r.msg_id, Outcome(r.outcome), r.finished_at - offset, r.response, error)
