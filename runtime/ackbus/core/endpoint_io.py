"""The values and the action interface of the endpoint protocol
(:mod:`ackbus.core.endpoint_protocol`): what goes in (:class:`InboundItem`,
:class:`AckReply`), what comes out (:class:`EndpointIO`, :func:`delivery_error`), and the
counters (:class:`EndpointStats`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import (
    AckTimeout,
    Cancelled,
    DeliveryError,
    Expired,
    NoRoute,
    OutcomeUnknown,
    Rejected,
    Unauthorized,
)
from ._common import Outcome, RemoteError
from ._values import Identity
from .settled import Completion, GaveUp, Reason

__all__ = [
    "FLAG_REQUEST",
    "NOT_REGISTERED",
    "UNAUTHORIZED",
    "AckReply",
    "EndpointIO",
    "EndpointStats",
    "InboundItem",
    "delivery_error",
]


FLAG_REQUEST = 1
"""The item's flag bit that marks a request (its ack carries the response); the
wire's ``FLAG_REQUEST`` has the same value (a test checks it)."""
NOT_REGISTERED = "NOT_REGISTERED"
UNAUTHORIZED = "UNAUTHORIZED"
"""The refusal code of a hub that does not know the endpoint (the wire's code)."""


class InboundItem(Protocol):
    """What the protocol reads of a received message (``ackbus.wire.MessageItem``
    has these, and the simulation's messages do too)."""

    @property
    def id(self) -> bytes: ...
    @property
    def type(self) -> str: ...
    @property
    def peer(self) -> bytes: ...
    @property
    def flags(self) -> int: ...
    @property
    def deadline_ns(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def key(self) -> int:
        """The ordering key's hash (0: none)."""
        ...


@dataclass(frozen=True, slots=True)
class AckReply:
    """A full acknowledgement, as plain values (the wire encodes and decodes it)."""

    msg_id: bytes
    outcome: Outcome
    receiver: Identity | None = None
    error: RemoteError | None = None
    retry_after: float = 0.0
    """Seconds (a RETRY_LATER ack)."""
    response: bytes = b""
    response_type: str = ""
    attempt: int = 0
    """The attempt a NO_ROUTE, RETRY_LATER or EXPIRED answer is about (0: not said)."""
    deferred: bool = False
    """A hub's RETRY_LATER that routed nothing (grace period, full hold queue): the
    attempt does not count against ``max_attempts``."""


@dataclass(slots=True)
class EndpointStats:
    """Counters since the endpoint started."""

    sent: int = 0
    """Messages accepted by send/publish/request."""
    transmits: int = 0
    """Attempts put on the wire (first sends and retries)."""
    retries: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failed messages by reason ("timeout", "rejected", "no-route", ...)."""
    received: int = 0
    handled: int = 0
    """Handler runs that returned."""
    handler_errors: int = 0
    duplicates: int = 0
    """Received duplicates answered without running the handler."""
    in_progress: int = 0
    """IN_PROGRESS notices sent for handlers still running or waiting (the lease)."""
    waited: int = 0
    """Received messages that waited for a slot under ``max_concurrency`` (the hub
    holds the rest; these came while its counts were short, e.g. after it restarted)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Bad input refused, by code."""
    loop_stalls: int = 0
    """Times the endpoint's event loop did not run for longer than its stall threshold
    (an ``async def`` handler that blocks; counted by the asyncio endpoint's watchdog)."""
    loop_stalled_s: float = 0.0
    """Seconds those stalls lasted, in all."""
    max_concurrency: int = 0
    """The endpoint's limit on handlers running at once (what HELLO tells the hub)."""


class EndpointIO(Protocol):
    """The actions an :class:`EndpointProtocol` takes, carried out by its driver.

    ``hub`` is the index of a hub link (the order the driver added them in)."""

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        """Put attempt ``attempt`` of pending message ``msg_id`` on ``hub``'s link."""

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        """Plain OK acks for ``msg_ids``, all for the sender behind token ``peer``."""

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        """A full ack (an error, a response, a duplicate's answer...)."""

    def send_hello(self, hub: int) -> None:
        """Register with ``hub`` (HELLO with :attr:`EndpointProtocol.commands`, ...)."""

    def send_heartbeat(self, hub: int) -> None: ...

    def acked(self, completions: Sequence[Completion]) -> None:
        """Messages acked: settle their reports (an ACK group's worth at once)."""

    def failed(self, completion: Completion, error: DeliveryError) -> None:
        """A message failed for good: settle its report with ``error``."""

    def hub_silent(self, hub: int, silence: float) -> None:
        """``hub`` said nothing for ``silence`` seconds (the protocol says hello again)."""

    def start_waiting(self, hub: int, item: InboundItem, now: float) -> None:
        """Run the handler of ``item``, which :meth:`EndpointProtocol.accept` kept
        waiting for a slot (as when ``accept`` returns True; report its end alike)."""


def delivery_error(c: Completion, no_route: str = "", why: str = "") -> DeliveryError:
    """The error of a failed completion's report: what a caller can act on. ``why``: a
    cancellation's cause, or what the endpoint knows of a timeout (its hubs are silent)."""
    kw: dict[str, Any] = {"message_id": c.msg_id, "message_type": c.msg_type}
    reason = c.reason
    tries = f"{c.attempts} attempt{'s' if c.attempts != 1 else ''}"
    if reason is Reason.REJECTED:
        err = c.error
        if err is not None and err.type == "Unauthorized":  # the hub's access file
            return Unauthorized(f"refused by the hub: {err.message}", rule=err.message, **kw)
        remote = f"{err.type}: {err.message}" if err is not None else "rejected"
        return Rejected(
            f"rejected by the receiver after {tries}: {remote}",
            remote_type=err.type if err else "",
            remote_message=err.message if err else "",
            permanent=err.permanent if err else False,
            **kw,
        )
    if reason is Reason.NO_ROUTE:
        detail = no_route or f"no live service handles {c.msg_type}"
        return NoRoute(f"{detail} (gave up after {tries})", **kw)
    if reason is Reason.EXPIRED:
        return Expired(f"expired before a handler ran ({tries})", **kw)
    if reason is Reason.CANCELLED:
        return Cancelled(f"cancelled: {why or 'cancelled by the caller'}", **kw)
    if reason is Reason.OUTCOME_UNKNOWN:
        whom = f" from subscriber {_subscribers(c)}" if c.missing else ""
        then = ""
        if c.last_reason is Reason.NO_ROUTE:
            then = f"; then no route: {no_route or f'no live service handles {c.msg_type}'}"
        elif c.last_reason is Reason.EXPIRED:
            then = "; then it expired"
        also = f"; {why}" if why else ""
        return OutcomeUnknown(
            f"outcome unknown: no acknowledgement{whom} after {tries}{then}; an attempt may"
            " have reached a receiver, so the handler may have run (or may still be running)"
            f"{also}",
            **kw,
        )
    also = f": {why}" if why else ""
    if c.missing:
        who = _subscribers(c)
        return AckTimeout(f"no acknowledgement from subscriber {who} after {tries}{also}", **kw)
    if not c.attempts:  # every attempt was taken back: no hub took messages (see unsent)
        return AckTimeout(f"not sent before its deadline{also}", **kw)
    return AckTimeout(f"no acknowledgement after {tries}{also}", **kw)


def _subscribers(c: Completion) -> str:
    """The missing subscribers of a failed event, each with what ran out: ``poker.Lobby
    (its attempts ran out), poker.Audit (its deadline passed)``."""
    out = []
    for i, name in enumerate(c.missing):
        why = c.missing_why[i] if i < len(c.missing_why) else None
        if why is GaveUp.ATTEMPTS:
            name += " (its attempts ran out)"
        elif why is GaveUp.DEADLINE:
            name += " (its deadline passed)"
        out.append(name)
    return ", ".join(out)
