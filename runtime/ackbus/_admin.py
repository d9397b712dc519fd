"""A hub's answers to its operators: ``ackbus status`` and ``ackbus tail`` (docs/operations.md).

An operator's client sends ADMIN (an ``ackbus.AdminRequest``) on a connection of its own,
without HELLO; the hub answers ADMIN_REPLY (``ackbus.AdminReply``) with ``send_once``,
keeping no outbox for it. With keys, only a key the access file marks ``admin = true``
may ask (an enrolled key may, when there is no access file); others get a REFUSAL
(UNAUTHORIZED). Without keys a hub listens on this host only, and anyone there may ask.

**Status** is the hub's view as one JSON object (:meth:`Admin.status`): services and
their instances (software, protocol version, key, in flight, acks a second), totals
and rates, and the latest refusals. The status page (``_status_page``) serves the same.

**Tail** costs nothing while nobody tails: the hub's protocol talks to the hub itself.
A TAIL request puts a :class:`Tap` between them (``HubProtocol.io``), which notes where
each message went and its outcome, and hands the hub back when the last tail's lease
runs out. Records are sent once per batch the hub handled, a reply per tail, dropped
(and counted) when a tail does not keep up.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import envelope_pb2, wire_pb2
from ._version import __version__
from .core import Instance
from .core.hub_protocol import HubIO, HubProtocol, HubStats
from .errors import RemoteProtocolError
from .wire import (
    UNAUTHORIZED,
    MessageItem,
    PackedRun,
    decode_identity,
    encode_admin_reply,
)

if TYPE_CHECKING:
    from ._access import Access

__all__ = ["Admin", "Tailer", "Tap"]

STATUS_FORMAT = 1
"""``status["format"]``: raised when a field changes meaning (new fields do not)."""
RECENT_REFUSALS = 20
"""The latest refusals the status shows (peer, code, reason)."""
SAMPLE_EVERY = 1.0
"""Seconds between the samples of the hub's counters that rates are computed from."""
RATE_WINDOW = 10.0
"""Rates are averaged over about this many seconds."""
DEFAULT_LEASE = 5.0
"""A tail stops this long after its last request (``AdminRequest.lease_ms``: 0)."""
MAX_PENDING = 50_000
"""Messages the tap remembers, waiting for their ack, while anyone tails."""
MAX_REPLY = 512
"""Traffic records per ADMIN_REPLY."""
MAX_QUEUED = 20_000
"""Records held between two flushes; beyond, they are counted as dropped."""

Send = Callable[[bytes, list[bytes]], bool]
"""``Listener.send_once``: a multipart to a peer now, False when it could not go."""


@dataclass(slots=True)
class Tailer:
    """One ``ackbus tail``: its filters and how long it lasts."""

    types: tuple[str, ...]
    services: frozenset[str]
    expires: float
    dropped: int = 0

    def wants(self, rec: wire_pb2.Traffic) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(rec.type, p) for p in self.types):
            return False
        if self.services:
            sender = rec.sender.split("/", 1)[0]
            receiver = rec.receiver.split("/", 1)[0]
            return sender in self.services or receiver in self.services
        return True


@dataclass(slots=True)
class _Peer:
    agent: str
    protocol: int
    acked: int = 0


@dataclass(slots=True)
class _Sample:
    at: float
    totals: dict[str, int]
    acked: dict[bytes, int] = field(default_factory=dict)


class Admin:
    """What a hub keeps for its operators, and its answers to them."""

    def __init__(
        self,
        hub: Any,
        proto: HubProtocol[MessageItem, PackedRun, bytes],
        send: Callable[[], Send | None],
        now: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._proto = proto
        self._send = send
        self._now = now
        self._started = time.time()
        self.peers: dict[bytes, _Peer] = {}
        """Registered peers: what their HELLO said of their software and protocol."""
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REFUSALS)
        self._samples: deque[_Sample] = deque(maxlen=int(RATE_WINDOW / SAMPLE_EVERY) + 2)
        self.tailers: dict[bytes, Tailer] = {}
        self.tap: Tap | None = None
        """Between the hub's protocol and the hub while anyone tails; else None."""

    # ------------------------------------------------------------------ what the hub tells

    def hello(self, peer: bytes, agent: str, protocol: int) -> None:
        self.peers[peer] = _Peer(agent, protocol)

    def forgot(self, peer: bytes) -> None:
        self.peers.pop(peer, None)

    def acked(self, peer: bytes, count: int) -> None:
        """``count`` acks came from ``peer`` (once per ACK multipart)."""
        known = self.peers.get(peer)
        if known is not None:
            known.acked += count

    def refused(self, peer: bytes, exc: RemoteProtocolError) -> None:
        self.recent.append(
            {"at": time.time(), "peer": peer.hex(), "code": exc.code, "reason": exc.reason}
        )
        if self.tap is not None and exc.message_id:
            self.tap.outcome(exc.message_id, "refused", detail=f"{exc.code}: {exc}")

    def tick(self, now: float) -> None:
        """Sample the counters now and then (for rates); end the tails whose lease ran out."""
        if not self._samples or now - self._samples[-1].at >= SAMPLE_EVERY:
            self._samples.append(self._sample(now))
        if self.tailers:
            self._expire(now)
        if self.tap is not None:
            self.flush()

    # ------------------------------------------------------------------ requests

    def request(self, peer: bytes, req: wire_pb2.AdminRequest, key: str | None) -> None:
        """Answer an operator's request (the hub decoded it), or refuse it."""
        why = self.may_admin(key)
        if why is not None:
            raise RemoteProtocolError(why, code=UNAUTHORIZED)
        send = self._send()
        if send is None:
            return
        now = self._now()
        if req.kind == wire_pb2.AdminRequest.STATUS:
            reply = wire_pb2.AdminReply(status_json=json.dumps(self.status(now)))
            send(peer, encode_admin_reply(reply))
        elif req.kind == wire_pb2.AdminRequest.TAIL:
            lease = (req.lease_ms / 1000) if req.lease_ms else DEFAULT_LEASE
            self.tailers[peer] = Tailer(
                tuple(req.types), frozenset(req.services), now + min(lease, 60.0)
            )
            if self.tap is None:
                self.tap = Tap(self._hub, self._proto)
                self._proto.io = self.tap
            send(peer, encode_admin_reply(wire_pb2.AdminReply()))  # "tailing"
        elif req.kind == wire_pb2.AdminRequest.UNTAIL:
            self.tailers.pop(peer, None)
            self._expire(now)
        else:
            raise RemoteProtocolError(f"unknown admin request kind {req.kind}")

    def may_admin(self, key: str | None) -> str | None:
        """None when ``key`` may ask (no keys; keys without an access file; a key marked
        ``admin = true``), else why not."""
        access: Access | None = self._proto.access  # type: ignore[assignment]
        if key is None or access is None:
            return None
        return access.may_admin(key)

    def flush(self) -> None:
        """Send the traffic noted since the last flush to each tail that wants it."""
        tap = self.tap
        if tap is None or not tap.records:
            return
        records, tap.records = tap.records, []
        self._expire(self._now())  # a tail that stopped renewing gets nothing more
        lost, tap.lost = tap.lost, 0
        send = self._send()
        if send is None:
            return
        for peer, tailer in list(self.tailers.items()):
            mine = [r for r in records if tailer.wants(r)]
            tailer.dropped += lost
            for start in range(0, len(mine), MAX_REPLY):
                chunk = mine[start : start + MAX_REPLY]
                reply = wire_pb2.AdminReply(traffic=chunk, dropped=tailer.dropped)
                if send(peer, encode_admin_reply(reply)):
                    tailer.dropped = 0
                else:
                    tailer.dropped += len(chunk)

    def _expire(self, now: float) -> None:
        for peer, tailer in list(self.tailers.items()):
            if tailer.expires <= now:
                del self.tailers[peer]
        if not self.tailers and self.tap is not None:
            self._proto.io = self._hub  # nobody tails: the protocol talks to the hub again
            self.tap = None

    # ------------------------------------------------------------------ status

    def _sample(self, now: float) -> _Sample:
        s = self._proto.stats
        return _Sample(
            now,
            _totals(s),
            {peer: p.acked for peer, p in self.peers.items()},
        )

    def status(self, now: float) -> dict[str, Any]:
        """The hub's view, as ``ackbus status`` and the status page show it."""
        hub = self._hub
        proto = self._proto
        routing = proto.routing
        current = self._sample(now)
        old = next((x for x in self._samples if now - x.at <= RATE_WINDOW + SAMPLE_EVERY), None)
        span = now - old.at if old is not None else 0.0
        stalled = set(proto.stalled_peers())

        def rate(new: int, was: int | None) -> float | None:
            if old is None or span < 0.5 or was is None:
                return None
            return round(max(new - was, 0) / span, 2)

        window = [x for x in self._samples if now - x.at <= RATE_WINDOW + SAMPLE_EVERY]

        def acks_per_s(peer: bytes, known: _Peer | None) -> float | None:
            """Over the window, from the first sample that knew the instance."""
            first = next((x for x in window if peer in x.acked), None)
            if known is None or first is None or now - first.at < 0.5:
                return None
            return round(max(known.acked - first.acked[peer], 0) / (now - first.at), 2)

        services: dict[str, list[dict[str, Any]]] = {}
        for inst in sorted(
            routing.instances(), key=lambda i: (i.identity.service, i.identity.instance)
        ):
            known = self.peers.get(inst.peer)
            services.setdefault(inst.identity.service, []).append(
                _instance(
                    inst,
                    known,
                    proto.keys.get(inst.peer) or None,
                    routing.in_flight(inst.peer),
                    inst.peer in stalled,
                    now,
                    acks_per_s(inst.peer, known),
                )
            )
        stats = proto.stats
        totals = current.totals
        rates = {
            name: rate(totals[name], old.totals.get(name) if old else None)
            for name in ("routed", "acks_forwarded", "no_route", "refused")
        }
        access = proto.access
        return {
            "format": STATUS_FORMAT,
            "hub": {
                "name": hub.identity.service,
                "instance": hub.identity.instance,
                "addresses": list(hub.addresses),
                "version": __version__,
                "started": self._started,
                "uptime_s": round(time.time() - self._started, 1),
                "keys": hub.enrolled is not None,
                "enrolled": hub.enrolled,
                "access": getattr(access, "path", None),
                "time": time.time(),
            },
            "totals": totals,
            "rates": {**rates, "window_s": round(span, 1)},
            "services": [
                {
                    "name": name,
                    "instances": insts,
                    "in_flight": sum(i["in_flight"] for i in insts),
                    "acked_per_s": _sum_rates(insts),
                }
                for name, insts in sorted(services.items())
            ],
            "refused": {
                "by_code": dict(sorted(stats.refused.items())),
                "unauthenticated": stats.unauthenticated,
                "unauthorized": stats.unauthorized,
                "key_limit": stats.key_limit,
                "recent": list(self.recent)[::-1],
            },
            "tails": len(self.tailers),
            "schema_drift": {
                "noticed": stats.schema_drift,
                "types_now": dict(sorted(proto.drift.disagreeing().items())),
            },
        }


def _totals(s: HubStats) -> dict[str, int]:
    return {
        "routed": s.routed,
        "acks_forwarded": s.acks_forwarded,
        "no_route": s.no_route,
        "held": s.held,
        "overflow": s.overflow,
        "deferred": s.deferred,
        "registered": s.registered,
        "dead_peers": s.dead_peers,
        "stalled": s.stalled,
        "refused": sum(s.refused.values()),
        "unauthenticated": s.unauthenticated,
        "unauthorized": s.unauthorized,
        "schema_drift": s.schema_drift,
    }


def _sum_rates(insts: list[dict[str, Any]]) -> float | None:
    values = [i["acked_per_s"] for i in insts if i["acked_per_s"] is not None]
    return round(sum(values), 2) if values else None


def _instance(
    inst: Instance,
    known: _Peer | None,
    key: str | None,
    in_flight: int,
    stalled: bool,
    now: float,
    acked_per_s: float | None,
) -> dict[str, Any]:
    return {
        "instance": inst.identity.instance,
        "agent": known.agent if known is not None else "",
        "protocol": known.protocol if known is not None else 0,
        "key": key,
        "in_flight": in_flight,
        "max_concurrency": inst.max_concurrency,
        "acked": known.acked if known is not None else 0,
        "acked_per_s": acked_per_s,
        "commands": sorted(inst.commands),
        "events": sorted(inst.events),
        "implements": sorted(inst.implements),
        "up_s": round(now - inst.registered_at, 1),
        "stalled": stalled,
    }


# ---------------------------------------------------------------------- tail


def _name(token: bytes) -> str:
    try:
        service, instance = decode_identity(token)
    except Exception:
        return token.hex()
    return f"{service}/{instance}"


class Tap:
    """The hub's actions, noted on their way (:class:`HubIO`, wrapping the hub's own):
    where each message went and how it ended, as ``ackbus tail`` shows it."""

    def __init__(self, inner: HubIO[MessageItem, PackedRun, bytes], proto: Any) -> None:
        self.inner = inner
        self._proto = proto
        self.records: list[wire_pb2.Traffic] = []
        self.lost = 0
        self._seen: dict[bytes, tuple[str, str, int]] = {}
        """Message id → (type, sender, attempt), from the batches that arrived."""
        self._pending: dict[tuple[bytes, str], tuple[float, wire_pb2.Traffic]] = {}
        """(message id, receiver) → when it was forwarded, and its record."""

    # -- what arrived, and the outcomes the hub itself decides

    def arrived(self, peer: bytes, items: Sequence[MessageItem | PackedRun]) -> None:
        inst = self._proto.routing.instance(peer)
        sender = f"{inst.identity.service}/{inst.identity.instance}" if inst else peer.hex()
        seen = self._seen
        if len(seen) > MAX_PENDING:
            seen.clear()
        for item in items:
            if isinstance(item, PackedRun):
                for msg_id in item.ids:
                    seen[msg_id] = (item.type, sender, 1)
            else:
                seen[item.id] = (item.type, sender, item.attempt)

    def _record(
        self, msg_id: bytes, outcome: str, receiver: str = "", detail: str = ""
    ) -> wire_pb2.Traffic:
        msg_type, sender, attempt = self._seen.get(msg_id, ("?", "?", 0))
        return wire_pb2.Traffic(
            message_id=msg_id,
            type=msg_type,
            sender=sender,
            receiver=receiver,
            outcome=outcome,
            attempt=attempt,
            at=time.time(),
            detail=detail,
        )

    def _emit(self, rec: wire_pb2.Traffic) -> None:
        if len(self.records) >= MAX_QUEUED:
            self.lost += 1
        else:
            self.records.append(rec)

    def outcome(self, msg_id: bytes, outcome: str, receiver: str = "", detail: str = "") -> None:
        self._emit(self._record(msg_id, outcome, receiver, detail))

    def _forwarded(self, msg_id: bytes, target: bytes) -> None:
        inst = self._proto.routing.instance(target)
        receiver = f"{inst.identity.service}/{inst.identity.instance}" if inst else target.hex()
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            del pending[next(iter(pending))]
        pending[(msg_id, receiver)] = (time.monotonic(), self._record(msg_id, "", receiver))

    def _settled(self, msg_id: bytes, receiver: str, outcome: str, detail: str = "") -> None:
        found = self._pending.pop((msg_id, receiver), None)
        if found is None:
            rec = self._record(msg_id, outcome, receiver, detail)
        else:
            since, rec = found
            rec.outcome = outcome
            rec.detail = detail
            rec.latency_s = time.monotonic() - since
            rec.at = time.time()
        self._emit(rec)

    # -- HubIO

    def forward(self, target: bytes, item: MessageItem, origin: bytes) -> None:
        self._forwarded(item.id, target)
        self.inner.forward(target, item, origin)

    def forward_run(self, run: PackedRun, targets: Sequence[bytes], origin: bytes) -> None:
        for msg_id, target in zip(run.ids, targets, strict=False):
            self._forwarded(msg_id, target)
        self.inner.forward_run(run, targets, origin)

    def routed(
        self,
        origin: bytes,
        msg_id: bytes,
        services: tuple[str, ...],
        implements: tuple[tuple[str, ...], ...],
    ) -> None:
        self.inner.routed(origin, msg_id, services, implements)

    def no_route(self, origin: bytes, msg_id: bytes, reason: str, attempt: int) -> None:
        self.outcome(msg_id, "no-route", detail=reason)
        self.inner.no_route(origin, msg_id, reason, attempt)

    def retry_later(self, origin: bytes, msg_id: bytes, after: float, attempt: int) -> None:
        self.outcome(msg_id, "retry-later", detail=f"after {after:.3f} s")
        self.inner.retry_later(origin, msg_id, after, attempt)

    def held(self, origin: bytes, msg_id: bytes, attempt: int, lease: float) -> None:
        self.outcome(msg_id, "held", detail="every instance at its max_concurrency")
        self.inner.held(origin, msg_id, attempt, lease)

    def settled(self, full: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        return self.inner.settled(full)

    def split(self, run: PackedRun) -> Sequence[MessageItem]:
        return self.inner.split(run)

    def forward_acks(
        self, origin: bytes, ok_ids: Sequence[bytes], full: Sequence[bytes], receiver: bytes
    ) -> None:
        name = _name(receiver)
        for msg_id in ok_ids:
            self._settled(msg_id, name, "ok")
        for raw in full:
            try:
                ack = envelope_pb2.Ack.FromString(raw)
            except Exception:
                continue
            outcome = envelope_pb2.Outcome.Name(ack.outcome).lower().replace("_", "-")
            if ack.outcome == envelope_pb2.IN_PROGRESS:
                continue
            detail = ack.error.message if ack.HasField("error") else ""
            if ack.HasField("error") and ack.error.type:
                detail = f"{ack.error.type}: {detail}"
            self._settled(ack.message_id, name, outcome, detail)
        self.inner.forward_acks(origin, ok_ids, full, receiver)

    def refused(self, origin: bytes, msg_id: bytes, code: str, reason: str) -> None:
        self.inner.refused(origin, msg_id, code, reason)  # noted by Admin.refused

    def send_welcome(self, peer: bytes, heartbeat_ms: int) -> None:
        self.inner.send_welcome(peer, heartbeat_ms)

    def send_heartbeat(self, peer: bytes) -> None:
        self.inner.send_heartbeat(peer)

    def forgotten(
        self, peer: bytes, instance: Instance | None, why: str, tell: bool = False
    ) -> None:
        self.inner.forgotten(peer, instance, why, tell)

    def connected(self, peer: bytes) -> bool:
        return self.inner.connected(peer)

    def stalled(self, peer: bytes, instance: Instance | None, silence: float, up: bool) -> None:
        self.inner.stalled(peer, instance, silence, up)
