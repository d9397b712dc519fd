"""Durable mode in the simulation: the runtime's own :class:`~ackbus.endpoint._durable.Durable`
on a :class:`~ackbus.testing.simstore.SimStore`, driven through its
:class:`~ackbus.endpoint._durable.Hooks` as the asyncio endpoint drives it.

One :class:`SimDurable` belongs to one incarnation of a durable
:class:`~ackbus.testing.simactors.SimEndpoint`; a restart makes a new one on the same store
(a new ``EndpointProtocol`` and a new ``Durable``: the deduper is reloaded from the inbox,
the outbox rows are resumed). What it does, step for step as ``ackbus.endpoint`` does:

* **send**: ``Durable.stage`` queues the outbox row; once its batch commits,
  ``Durable.committed`` and the message is tracked (``Hooks.track``) and transmitted.
* **settle**: acked and failed reports are settled with ``ackbus._pending`` and passed to
  ``Durable.acked`` / ``Durable.failed`` (lazy delete, dead letter).
* **receive**: ``Durable.run`` runs the handler in a unit of work; its inbox record
  commits, then the protocol acks. Simulated handlers finish in their first step (their
  latency is the commit's), so an event loop object that never runs serves ``start_eager``.
* **start**: ``Durable.start_blocking`` before the hub link says hello; ``Durable.resume``
  at the first WELCOME, as ``Endpoint.start`` resumes once a hub welcomed it.
"""

from __future__ import annotations

import asyncio
import atexit
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from .._dispatch import Route
from .._pending import settle_acked, settle_failed
from .._report import DeliveryReport
from .._types import Context
from ..core import Completion, Kind, Policy
from ..core.hub_protocol import KIND_EVENT
from ..endpoint._base import NO_HEADERS, HubLink
from ..endpoint._durable import Durable, Hooks
from ..errors import DeliveryError
from .simstore import SimStore
from .simwire import _identity

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from ..wire import MessageItem
    from .simactors import Planned, SimEndpoint
    from .simwire import Item

__all__ = ["DEDUPE_TTL", "SimDurable"]

DEDUPE_TTL = 600.0


class _SteppingLoop(asyncio.SelectorEventLoop):
    """An event loop object that never runs, for ``start_eager`` to step handler
    coroutines on: a simulated handler finishes in that first step. It says it runs,
    because Python 3.12's eager task start steps a coroutine only on a running loop
    (3.11's stand-in needs no more than a loop object)."""

    _stepping = False

    def is_running(self) -> bool:
        return self._stepping

    def close(self) -> None:
        self._stepping = False
        super().close()


_LOOP: _SteppingLoop | None = None


def _stepping_loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None:
        _LOOP = _SteppingLoop()
        _LOOP._stepping = True  # not before: the constructor asks whether it runs
        atexit.register(_LOOP.close)
    return _LOOP


def encode_frame(msg_type: str, recipient: str, kind: int, deadline_ns: int, key: int = 0) -> bytes:
    """What the simulation's outbox keeps of a message: enough to send it again (its
    ordering key too, as the runtime's frame does)."""
    return "\0".join((msg_type, recipient, str(kind), str(deadline_ns), str(key))).encode()


def decode_frame(frame: bytes) -> tuple[str, str, int, int, int]:
    msg_type, recipient, kind, deadline_ns, key = frame.decode().split("\0")
    return msg_type, recipient, int(kind), int(deadline_ns), int(key)


class SimDurable:
    """The durable glue of one :class:`SimEndpoint` incarnation (see the module docstring)."""

    def __init__(self, ep: SimEndpoint, store: SimStore, flush: Callable[[], None]) -> None:
        self.ep = ep
        self.flush = flush
        """Put what the protocol transmitted on the network (after a commit's tracks)."""
        self.proto = ep.proto
        self.store = store
        self.pending: dict[bytes, DeliveryReport] = {}
        """Reports of messages sent and not settled, carrying their frames."""
        self.hub = HubLink(0)
        self.resume_due = True
        net = ep.net
        self.durable = Durable(
            store, ep.identity.service, ep.identity.instance, DEDUPE_TTL, wall=lambda: net.now
        )
        hooks = Hooks(
            ep.identity,
            self.proto,
            self.closed,
            lambda: net.now,
            self.pending.__contains__,
            self.track,
            self.answer,
            lambda: None,  # the simulated network asks every node for its next deadline
        )
        self.durable.start_blocking(hooks, _stepping_loop())

    def closed(self) -> bool:
        """This incarnation is gone (the node crashed, or restarted since)."""
        return not self.ep.up or self.ep.proto is not self.proto

    def welcomed(self) -> None:
        """A hub welcomed us: resume what a previous incarnation left in the outbox."""
        if self.resume_due:
            self.resume_due = False
            self.durable.resume()
            self.ep.resumed += len(self.durable.resumed)

    # -- sending ---------------------------------------------------------------------------

    def send(self, plan: Planned, now: float) -> None:
        """``Endpoint.send`` in durable mode: stage the row, track it once committed."""
        kind = KIND_EVENT if plan.event else 1
        now_ns = int(now * 1e9)
        deadline_ns = now_ns + int(plan.policy.life * 1e9)
        frame = encode_frame(plan.msg_type, plan.recipient or "", kind, deadline_ns, plan.key)
        destination = plan.recipient or plan.msg_type
        report = DeliveryReport(plan.msg_id, plan.msg_type)
        batch = self.durable.stage(report, frame, destination, kind, False, plan.policy, now_ns)
        assert batch is not None, "a sender's send runs in no handler's unit"

        def committed(error: BaseException | None) -> None:
            # Where the send's `await batch.waiter()` resumes.
            self.durable.committed(batch, report)
            self.durable.track(report, frame, destination, kind, plan.policy, self.ep.net.now)
            self.flush()

        batch.on_commit(committed)

    def track(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        pol: Policy,
        now: float,
    ) -> None:
        """``Hooks.track``: hand a committed message to the protocol."""
        mid = report.message_id
        report._frame = frame
        self.pending[mid] = report
        key = decode_frame(frame)[4]
        self.proto.submit(mid, report.message_type, destination, pol, now, kind == KIND_EVENT, key)

    def frame(self, msg_id: bytes) -> tuple[str, str, int, int, int]:
        """What the pending message's frame says: type, recipient, kind, deadline, key."""
        return decode_frame(self.pending[msg_id]._frame)

    def acked(self, completions: Sequence[Completion]) -> None:
        ids = settle_acked(self.pending, completions, 0.0)
        if ids:
            self.durable.acked(ids)

    def failed(self, completion: Completion, error: DeliveryError) -> None:
        report = settle_failed(self.pending, completion, error, 0.0)
        if report is not None:
            self.durable.failed(completion, report)

    # -- receiving -------------------------------------------------------------------------

    def run(self, item: Item, now: float, exc: BaseException | None) -> None:
        """Run the handler of an accepted message in its unit of work; it returns at
        once (``exc`` None) or raises ``exc``."""

        def handler(msg: Any, ctx: Context) -> Coroutine[Any, Any, Message | None]:
            return _outcome(exc)

        route = Route(item.type, None, handler, Kind.COMMAND, None, "simulated handler")
        sender = _identity(item.peer)
        ctx = Context(item.id, item.type, sender, item.attempt, now, now, now, NO_HEADERS)
        # Durable reads only id, type, flags and peer of the item, which a sim Item has.
        task = self.durable.run(self.hub, cast("MessageItem", item), route, None, ctx)
        assert task is None, "a simulated handler finishes in its first step"

    def answer(
        self,
        hub: HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
    ) -> None:
        """``Hooks.answer``: a handled message answered as memory mode answers it."""
        proto = self.proto
        if self.closed() or isinstance(exc, asyncio.CancelledError):
            proto.abandon(item.id)
            return
        proto.handled(hub.index, item, self.ep.net.now, exc)


async def _outcome(exc: BaseException | None) -> Message | None:
    if exc is not None:
        raise exc
    return None
