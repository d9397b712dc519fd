"""The send path: send, publish and request; framing, the send window, tracking;
and settling each report when the protocol says it was acked or failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from google.protobuf.message import Message

from .._fingerprint import FP_HEADER, fingerprint
from .._log import message_fields
from .._pending import attempt_frame, settle_acked, settle_failed
from .._types import (
    DeliveryReport,
    Policy,
    Untyped,
    rpcs_taking,
)
from .._untyped import encode_untyped
from ..core import Completion
from ..core._values import capped
from ..errors import (
    AmbiguousMethod,
    ClosedError,
    DeliveryError,
    RemoteProtocolError,
    SchemaError,
    SendWindowTimeout,
)
from ..middleware import Outgoing
from ..wire import (
    BODY_FRAME_FROM,
    FLAG_KEYED,
    FLAG_REQUEST,
    FLAG_ZSTD,
    KIND_COMMAND,
    KIND_EVENT,
    check_name,
    compress,
    encode_envelope,
    is_compressed,
    item_key,
    item_method,
    key_hash,
    keyed_envelope,
    method_prefix,
    pack_item,
    plain_item,
    require_zstd,
)
from ._base import ENVELOPE_CACHE, EndpointBase

log = logging.getLogger("ackbus.endpoint")

R = TypeVar("R", bound=Message)


def ordering_key_of(msg: Message | Untyped, path: str) -> str | bytes | int:
    """The value of the field ``path`` (``"table_id"``, ``"hand.table_id"``) of a
    message: its ordering key. An untyped message's payload is read by the same path
    (a missing field is the empty key)."""
    value: Any = msg.payload if isinstance(msg, Untyped) else msg
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, Mapping) else getattr(value, part)
    if isinstance(value, str | bytes | int):
        return value
    raise TypeError(f"ordering_key {path!r} of {type(msg).__name__} is not a scalar field")


class Sending(EndpointBase):
    """The send path of :class:`~ackbus.endpoint.Endpoint`."""

    # ------------------------------------------------------------------ sending

    # send and publish are plain functions returning _send's coroutine, which the caller
    # awaits: the same as ``async def`` to every caller, without a second coroutine
    # object per waiting send for the garbage collector to walk, nor a second frame to
    # resume.

    def send(
        self,
        msg: Message | Untyped,
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        to: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        key: str | bytes | int | None = None,
        method: str | None = None,
    ) -> Coroutine[Any, Any, DeliveryReport]:
        """Send a command (await it). With ``wait_ack`` (the default) return once it
        was acked or failed; otherwise at once, with a pending report to ``await
        report.wait()``.

        ``timeout`` caps the message's whole life (its deadline); the report is never
        pending after it. ``key`` orders it among this endpoint's messages of the same
        key (by default the value of the policy's ``ordering_key`` field, if it names
        one). ``method`` names the rpc it is for ("poker.Table/StartHand"; generated
        clients name theirs); without it the one rpc taking its type, and where several
        do, :class:`AmbiguousMethod` at once, naming them. Raises
        :class:`SendWindowTimeout` if the in-flight window stayed full that long,
        :class:`ClosedError` after :meth:`close`.
        """
        if self._send_through is not None:
            return self._through(
                msg, "command", False, wait_ack, timeout, to, priority, headers, policy, key, method
            )
        return self._send(
            msg, KIND_COMMAND, wait_ack, timeout, to, priority, headers, policy, False, key, method
        )

    def publish(
        self,
        event: Message | Untyped,
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        key: str | bytes | int | None = None,
    ) -> Coroutine[Any, Any, DeliveryReport]:
        """Publish an event to one instance of every service subscribed to its type
        (await it). Acked once every such service acked (at once if none subscribes).
        ``key``: as for :meth:`send`."""
        if self._send_through is not None:
            return self._through(
                event, "event", False, wait_ack, timeout, None, priority, headers, policy, key
            )
        return self._send(
            event, KIND_EVENT, wait_ack, timeout, None, priority, headers, policy, False, key
        )

    async def request(
        self,
        msg: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
        to: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        key: str | bytes | int | None = None,
        method: str | None = None,
    ) -> R:
        """Send a command whose handler returns a ``response_type``; return the response.
        ``method``: as for :meth:`send`. Raises the :class:`DeliveryError` of the failed
        report."""
        if self._send_through is not None:
            report = await self._through(
                msg, "command", True, True, timeout, to, priority, headers, policy, key, method
            )
        else:
            report = await self._send(
                msg, KIND_COMMAND, True, timeout, to, priority, headers, policy, True, key, method
            )
        report.raise_for_status()
        response = response_type()
        try:
            response.ParseFromString(report.response or b"")
        except Exception as exc:
            raise RemoteProtocolError(
                f"undecodable {response_type.DESCRIPTOR.full_name} response: {exc}",
                message_id=report.message_id,
            ) from None
        return response

    def _through(
        self,
        msg: Message | Untyped,
        kind: Literal["command", "event"],
        request: bool,
        wait_ack: bool,
        timeout: float | None,
        to: str | None,
        priority: int | None,
        headers: Mapping[str, str] | None,
        policy: Policy | None,
        key: str | bytes | int | None,
        method: str | None = None,
    ) -> Coroutine[Any, Any, DeliveryReport]:
        """A send through the middleware chain (:mod:`ackbus.middleware`)."""
        assert self._send_through is not None
        type_name = msg.type_name if isinstance(msg, Untyped) else msg.DESCRIPTOR.full_name
        out = Outgoing(
            msg,
            type_name,
            kind,
            request,
            self.identity,
            dict(headers) if headers else {},
            to,
            wait_ack,
            timeout,
            priority,
            policy,
            key,
            method,
        )
        return self._send_through(out)

    async def _send(
        self,
        msg: Message | Untyped,
        kind: int,
        wait_ack: bool,
        timeout: float | None,
        to: str | None,
        priority: int | None,
        headers: Mapping[str, str] | None,
        policy: Policy | None,
        request: bool,
        key: str | bytes | int | None = None,
        method: str | None = None,
    ) -> DeliveryReport:
        if self._closed or not self._started:
            if self._closed:
                raise ClosedError(f"{self.identity}: endpoint is closed")
            await self._start_within(timeout)  # the first send starts it (ConnectTimeout)
        loop = self._loop
        assert loop is not None
        msg_type, body, json_body, pol, hashed, method, destination = self._resolve(
            msg, kind, timeout, to, priority, policy, key, method
        )
        lines = self._window_waiters
        durable = self._durable
        waited = destination in lines.lines or (
            self._tracker.in_flight(destination) >= self._window
        )
        if waited:
            self.window_waits += 1
            # Wait in line for a slot (_window.py); the future is awaited here, not in
            # a coroutine of its own: one object fewer per waiting send.
            deadline = loop.time() + pol.life
            place = None
            while True:
                fut, place = lines.enter(
                    destination, deadline, loop, priority=pol.priority, place=place, key=hashed
                )
                try:
                    await fut
                except BaseException:
                    lines.leave(destination, fut)
                    if hashed:
                        lines.key_left(hashed)
                    raise
                # Woken for a settled message's slot. The tracker gives a freed slot
                # to a message it queued (resumed, or committed while the window was
                # full) before anyone: then the slot is gone, and this send waits for
                # the next in the place it had rather than queue behind that one
                # (else every later send would queue there too, and a queued message
                # costs the tracker more than a direct one). A durable send goes on to
                # its commit, which so overlaps the wait for a slot.
                if durable is not None or self._tracker.in_flight(destination) < self._window:
                    break
            if hashed:
                lines.key_left(hashed)
        try:
            now = loop.time()
            mid = self._ids.next()
            now_ns = int((now + self._wall_offset) * 1e9)
            frame, split = self._pack(
                msg,
                msg_type,
                json_body,
                body,
                pol,
                hashed,
                method,
                to,
                headers,
                kind,
                request,
                mid,
                now_ns,
                durable is None,
            )
            report = DeliveryReport(mid, msg_type)
            if split is not None:
                report._body = split
            if durable is not None:
                # On disk before send returns; inside a handler, with the handler's commit.
                batch = durable.stage(report, frame, destination, kind, request, pol, now_ns)
                if batch is None:
                    return report
                try:
                    await batch.waiter()
                except asyncio.CancelledError:
                    durable.cancelled(batch, report, frame, destination, kind, pol)
                    raise
                durable.committed(batch, report)
                durable.track(report, frame, destination, kind, pol, loop.time())
            else:
                self._track(report, frame, destination, kind, pol, now)
        except BaseException:
            if waited:
                lines.admit(destination)  # our turn in line goes to the next one
            raise
        if wait_ack:
            # The tracker settles every message by its deadline; the extra second only
            # guards against a bug leaving this wait open forever.
            await report.wait(pol.life + 1.0)
            if not report.done:  # pragma: no cover - would be a tracker bug
                self._proto.cancel(mid, loop.time(), "the tracker never settled it")
        return report

    def _resolve(
        self,
        msg: Message | Untyped,
        kind: int,
        timeout: float | None,
        to: str | None,
        priority: int | None,
        policy: Policy | None,
        key: str | bytes | int | None,
        method: str | None,
    ) -> tuple[str, bytes, bool, Policy, int, str | None, str]:
        """What a message is sent as, before it waits for room: (type name, body,
        JSON body?, policy, ordering key's hash, rpc, destination). Raises for a
        message that cannot be sent (a bad timeout, an ambiguous or wrong rpc)."""
        if isinstance(msg, Untyped):
            msg_type, body, json_body, pol = self._untyped(msg, policy)
        else:
            msg_type, body, json_body = msg.DESCRIPTOR.full_name, msg.SerializeToString(), False
            if policy is not None:  # generated clients pass their type's policy
                pol = policy
            else:
                spec = self.registry.for_class(type(msg))
                pol = spec.policy if spec is not None else self.policy
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be > 0, got {timeout}")
            if timeout < pol.life:  # else the copy would equal pol
                pol = capped(pol, timeout)
        if priority is not None and priority != pol.priority:
            pol = pol.with_(priority=priority)
        hashed = 0
        if key is not None:
            hashed = key_hash(key)
        elif pol.ordering_key:
            hashed = key_hash(ordering_key_of(msg, pol.ordering_key))
        if kind == KIND_COMMAND and not isinstance(msg, Untyped):
            method = self._method_of(msg, method)
        elif method:
            raise ValueError(f"method= names a command's rpc; {msg_type} is sent by type")
        return msg_type, body, json_body, pol, hashed, method, to or method or msg_type

    def _pack(
        self,
        msg: Message | Untyped,
        msg_type: str,
        json_body: bool,
        body: bytes,
        pol: Policy,
        hashed: int,
        method: str | None,
        to: str | None,
        headers: Mapping[str, str] | None,
        kind: int,
        request: bool,
        mid: bytes,
        now_ns: int,
        may_split: bool,
    ) -> tuple[bytes, bytes | None]:
        """The message's frame (attempt 1), created at ``now_ns`` (Unix ns), and its
        body where it travels as a frame of its own (only if ``may_split``: a durable
        body is written whole by the store, so it stays in its item), else ``None``."""
        if isinstance(msg, Untyped):  # no descriptor of its own: no fingerprint
            if headers or json_body:
                envelope = self._envelope_with(headers or {}, json_body)
            else:
                envelope = self._envelope
        else:
            envelope = self._fp_envelopes.get(msg_type) or self._fp_envelope(msg)
            if headers:
                fp = {FP_HEADER: self._fingerprints[msg_type].hex()}
                envelope = self._envelope_with({**headers, **fp}, False)
        flags = FLAG_REQUEST if request else 0
        if method:
            envelope = method_prefix(method) + envelope
        if hashed:
            envelope = keyed_envelope(hashed, envelope)
            flags |= FLAG_KEYED
        type_name = self._type_names.get(msg_type)
        if type_name is None:
            if len(self._type_names) >= ENVELOPE_CACHE:
                self._type_names.clear()
            type_name = self._type_names[msg_type] = check_name(msg_type, "type name")
        if pol.compress_above and len(body) >= pol.compress_above:
            body, zipped = self._compressed(body)
            if zipped:
                flags |= FLAG_ZSTD
        # A big body travels as a frame of its own, never copied on this side.
        split = may_split and len(body) >= BODY_FRAME_FROM
        frame = pack_item(
            mid,
            type_name,
            check_name(to, "recipient") if to else b"",
            envelope,
            body,
            kind,
            1,
            pol.priority,
            flags,
            now_ns,
            now_ns,
            now_ns + int(pol.life * 1e9),
            split,
        )
        return frame, body if split else None

    # ------------------------------------------------------------------ groups

    async def send_many(
        self,
        msgs: Iterable[Message | Untyped],
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        to: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        key: str | bytes | int | None = None,
        method: str | None = None,
    ) -> list[DeliveryReport]:
        """Send many commands as one group; their reports, in order.

        The group is accepted as one: every message is checked and framed first (an
        error in any, such as :class:`AmbiguousMethod`, raises before any is sent), it
        waits once for room in the window, and with a store all its outbox rows commit
        in **one** transaction before this returns (a failed commit raises
        :class:`StoreError` and none of them is sent; inside a handler they join its
        unit, as :meth:`send` does). The options apply to every message, as
        :meth:`send`'s. With ``wait_ack`` (the default) return once every message was
        acked or failed, each report saying which: a failed delivery does not raise.
        Without, return at once with pending reports.
        """
        return await self._send_group(
            msgs, KIND_COMMAND, wait_ack, timeout, to, priority, headers, policy, key, method
        )

    async def publish_many(
        self,
        events: Iterable[Message | Untyped],
        *,
        wait_ack: bool = True,
        timeout: float | None = None,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        key: str | bytes | int | None = None,
    ) -> list[DeliveryReport]:
        """Publish many events as one group: :meth:`send_many` for :meth:`publish`."""
        return await self._send_group(
            events, KIND_EVENT, wait_ack, timeout, None, priority, headers, policy, key, None
        )

    async def _send_group(
        self,
        msgs: Iterable[Message | Untyped],
        kind: int,
        wait_ack: bool,
        timeout: float | None,
        to: str | None,
        priority: int | None,
        headers: Mapping[str, str] | None,
        policy: Policy | None,
        key: str | bytes | int | None,
        method: str | None,
    ) -> list[DeliveryReport]:
        group = list(msgs)
        if not group:
            return []
        if self._send_through is not None:
            # Through the middleware, message by message (each sees its own Outgoing);
            # staged in one loop iteration, their rows still commit together.
            through: Literal["command", "event"] = "command" if kind == KIND_COMMAND else "event"
            sent = await asyncio.gather(
                *(
                    self._through(
                        m,
                        through,
                        False,
                        False,
                        timeout,
                        to,
                        priority,
                        headers,
                        policy,
                        key,
                        method,
                    )
                    for m in group
                )
            )
            reports = list(sent)
            if wait_ack:
                await _settled(reports)
            return reports
        if self._closed or not self._started:
            if self._closed:
                raise ClosedError(f"{self.identity}: endpoint is closed")
            await self._start_within(timeout)
        loop = self._loop
        assert loop is not None
        resolved = [
            self._resolve(m, kind, timeout, to, priority, policy, key, method) for m in group
        ]
        # One admission for the group: for each destination it goes to, wait (once)
        # until that destination's window is not full and nothing queues for it. The
        # messages beyond the window's room are queued by the tracker, which transmits
        # them as slots free: a group never puts more than its own size past the window.
        lines = self._window_waiters
        tracker = self._tracker
        window = self._window
        waited: list[str] = []
        for destination in dict.fromkeys(r[6] for r in resolved):
            if not (
                destination in lines.lines
                or tracker.in_flight(destination) + tracker.queued(destination) >= window
            ):
                continue
            self.window_waits += 1
            deadline = loop.time() + min(r[3].life for r in resolved)
            place = None
            while True:
                fut, place = lines.enter(
                    destination, deadline, loop, priority=resolved[0][3].priority, place=place
                )
                try:
                    await fut
                except BaseException:
                    lines.leave(destination, fut)
                    for d in waited:
                        lines.admit(d)
                    raise
                if tracker.in_flight(destination) + tracker.queued(destination) < window:
                    break
            waited.append(destination)
        try:
            reports, joined = await self._commit_group(group, resolved, kind, to, headers)
        except BaseException:
            for d in waited:
                lines.admit(d)  # our turn in line goes to the next one
            raise
        if wait_ack and not joined:  # a handler's unit: they leave after its commit
            await _settled(reports, max(r[3].life for r in resolved) + 1.0)
        return reports

    async def _commit_group(
        self,
        group: list[Message | Untyped],
        resolved: list[tuple[str, bytes, bool, Policy, int, str | None, str]],
        kind: int,
        to: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[list[DeliveryReport], bool]:
        """Frame an admitted group, commit its outbox rows (one transaction) and track
        it: its reports, pending, and whether it joined the running handler's unit
        instead (then it is tracked after that commits)."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        now_ns = int((now + self._wall_offset) * 1e9)
        ids = self._ids
        reports: list[DeliveryReport] = []
        frames: list[bytes] = []
        durable = self._durable
        for m, (msg_type, body, json_body, pol, hashed, meth, _) in zip(
            group, resolved, strict=True
        ):
            mid = ids.next()
            frame, split = self._pack(
                m,
                msg_type,
                json_body,
                body,
                pol,
                hashed,
                meth,
                to,
                headers,
                kind,
                False,
                mid,
                now_ns,
                durable is None,
            )
            frames.append(frame)
            report = DeliveryReport(mid, msg_type)
            if split is not None:
                report._body = split
            reports.append(report)
        if durable is None:
            for report, frame, r in zip(reports, frames, resolved, strict=True):
                self._track(report, frame, r[6], kind, r[3], now)
            return reports, False
        batch = durable.stage_group(reports, frames, resolved, kind, now_ns)
        if batch is None:  # inside a handler: they commit with its unit
            return reports, True
        try:
            await batch.waiter()
        except asyncio.CancelledError:
            for report, frame, r in zip(reports, frames, resolved, strict=True):
                durable.cancelled(batch, report, frame, r[6], kind, r[3])
            raise
        durable.committed(batch, reports[0])
        now = loop.time()
        for report, frame, r in zip(reports, frames, resolved, strict=True):
            durable.track(report, frame, r[6], kind, r[3], now)
        return reports, False

    def _track(
        self,
        report: DeliveryReport,
        frame: bytes,
        destination: str,
        kind: int,
        pol: Policy,
        now: float,
    ) -> None:
        """Hand a new message to the tracker and transmit it if its window has room."""
        mid = report.message_id
        report._frame = frame
        self._pending[mid] = report
        # Tracked by the rpc it names, else its type: what the hub routes by and names
        # the service of.
        name = item_method(frame) or report.message_type
        self._proto.submit(mid, name, destination, pol, now, kind == KIND_EVENT, item_key(frame))
        # The only timer submit added is this message's: its first ack timeout, or its
        # deadline while it waits for window room (tracker.submit). Every other change
        # already armed the timer, so the protocol's next deadline (three machines
        # asked) is not needed here, once per message.
        if self._timer is not None:
            self._timer.at(now + min(pol.ack_timeout, pol.life))

    def _compressed(self, body: bytes) -> tuple[bytes, bool]:
        """``body`` compressed, if a hub takes compressed bodies (its WELCOME listed
        zstd) and it comes out smaller; ``ModuleNotFoundError`` naming the extra when
        zstandard is not installed (docs/protocol.md, "Compressed bodies")."""
        require_zstd()
        if not any(hub.link.outbox.zstd for hub in self._links):
            return body, False
        packed = compress(body)
        return (packed, True) if len(packed) < len(body) else (body, False)

    def _window_timeout(self, destination: str) -> SendWindowTimeout:
        return SendWindowTimeout(
            f"{self.identity}: {self._window} messages to {destination} "
            "stayed unacknowledged for the whole timeout"
        )

    def _method_of(self, msg: Message, method: str | None) -> str:
        """The rpc a command is for: ``method`` (checked against the rpcs known to take
        its type), else the one rpc known to take it ("" for none: sent by type);
        :class:`AmbiguousMethod` where several do."""
        known = rpcs_taking(type(msg))
        msg_type = msg.DESCRIPTOR.full_name
        if method:
            if known and method not in known:
                raise SchemaError(
                    f"rpc {method} does not take {msg_type}; the rpcs that do: {', '.join(known)}"
                )
            return method
        if len(known) <= 1:
            return known[0] if known else ""
        names = ", ".join(known)
        raise AmbiguousMethod(
            f"{msg_type} is the request of {len(known)} rpcs ({names}): say which with "
            f"send(msg, method={known[0]!r}) (or request(..., method=...)), or send it "
            "through the generated client of that rpc",
            known,
        )

    def _envelope_with(self, headers: Mapping[str, str], json_body: bool) -> bytes:
        return encode_envelope(self.identity, headers=headers, json_body=json_body)

    def _fp_envelope(self, msg: Message) -> bytes:
        """The envelope of a first message of its type: with its ``fp`` header (the
        type's schema fingerprint), encoded once per type; the type's fingerprint is
        announced from the next HELLO on (docs/protocol.md, "Fingerprints")."""
        msg_type = msg.DESCRIPTOR.full_name
        fp = self._fingerprints[msg_type] = fingerprint(msg.DESCRIPTOR)
        if len(self._fp_envelopes) >= ENVELOPE_CACHE:
            self._fp_envelopes.clear()
        envelope = self._fp_envelopes[msg_type] = self._envelope_with({FP_HEADER: fp.hex()}, False)
        return envelope

    def _untyped(self, msg: Untyped, policy: Policy | None) -> tuple[str, bytes, bool, Policy]:
        return encode_untyped(self.registry, msg, policy, self.policy)

    # -- the protocol's actions on the send path (EndpointIO) --

    def transmit(self, hub: int, msg_id: bytes, attempt: int, now: float) -> None:
        frame = attempt_frame(self._pending, msg_id, attempt, now + self._wall_offset)
        if frame is not None:
            outbox = self._links[hub].link.outbox
            body = self._pending[msg_id]._body
            if is_compressed(frame) and not outbox.zstd:  # several hubs, not all take it
                frame, body = plain_item(frame, body, self.limits.max_message_bytes)
            outbox.message(frame, b"", body)

    def failed(self, c: Completion, error: DeliveryError) -> None:
        report = settle_failed(self._pending, c, error, self._wall_offset)
        if report is None:
            return
        self.dead_letters.append(report)
        log.warning(
            "delivery failed: %s",
            report.error,
            extra=message_fields(c.msg_id, report.message_type, self.identity.service, c.attempts),
        )
        if self._durable is not None:
            self._durable.failed(c, report)
        if self._window_waiters:
            self._window_waiters.admit(c.destination)

    def acked(self, completions: Sequence[Completion]) -> None:
        """Settle acked messages: an ACK group's worth in one loop, as a pipelined
        sender settles tens of thousands a second."""
        hook = self._on_acked
        if hook is None:
            acked = settle_acked(self._pending, completions, self._wall_offset)
        else:
            reports: list[DeliveryReport] = []
            acked = settle_acked(self._pending, completions, self._wall_offset, reports)
            hook(reports)
        if self._durable is not None and acked:
            self._durable.acked(acked)
        waiting = self._window_waiters
        if waiting:
            for c in completions:
                waiting.admit(c.destination)
                if not waiting:  # the last line emptied: the rest would find no one
                    break


async def _settled(reports: list[DeliveryReport], timeout: float | None = None) -> None:
    """Until every report settled: one wait at a time, so a group has at most one
    waiting future. (The tracker settles each by its deadline; ``timeout``, the
    longest life and a second, only guards against a bug leaving a wait open.)"""
    for report in reports:
        if not report.done:
            await report.wait(timeout)
