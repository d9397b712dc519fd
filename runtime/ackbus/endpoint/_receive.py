"""The receive path: input from a hub decoded and fed to the protocol; the handlers of
the messages it accepts run (``async def`` ones eagerly on the loop, see
:mod:`ackbus._eager`; plain ``def`` ones in the worker pool, see :mod:`ackbus._workers`),
and their ends go back to the protocol, which acks.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from .. import envelope_pb2
from .._dispatch import Route, Unhandled
from .._eager import report_when_done, start_eager
from .._fingerprint import FP_HEADER, fingerprint
from .._log import message_fields
from .._throttle import held_back
from .._types import (
    Context,
    Identity,
)
from ..core.endpoint_io import InboundItem
from ..errors import (
    Reject,
    RemoteProtocolError,
    RetryLater,
)
from ..wire import (
    BODY_VERSION,
    FLAG_REQUEST,
    JSON_ENCODING,
    ZSTD,
    Command,
    MessageItem,
    Multipart,
    ack_replies,
    decode_bye,
    decode_command,
    decode_heartbeat,
    decode_identity,
    decode_messages,
    decode_refusal,
    decode_routed,
    decode_welcome,
    refusal_for,
    split_acks,
)
from ._base import ENVELOPE_CACHE, NO_HEADERS, EndpointBase, HubLink

log = logging.getLogger("ackbus.endpoint")


class Receiving(EndpointBase):
    """The receive path of :class:`~ackbus.endpoint.Endpoint`."""

    def _on_receive(self, hub: HubLink, multiparts: list[Multipart]) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        proto = self._proto
        proto.begin_batch(hub.index, now)
        try:
            for frames in multiparts:
                try:
                    self._handle(hub, frames, now)
                except RemoteProtocolError as exc:
                    self.stats.refused[exc.code] += 1
                    allowed = self._warnings.allow(f"refused {exc.code}")  # one a minute
                    if allowed is not None:
                        log.warning(
                            "%s: refused input from hub %s: %s%s",
                            self.identity,
                            hub.link.address,
                            exc,
                            held_back(allowed[1], f"{exc.code} refusals"),
                        )
                    hub.link.outbox.control(refusal_for(exc))
        finally:
            proto.end_batch()
        self._arm_timer()

    def _handle(self, hub: HubLink, frames: Multipart, now: float) -> None:
        cmd = decode_command(frames)
        proto = self._proto
        if cmd is Command.MESSAGE:
            resolve = self._dispatch.resolve
            for item in decode_messages(frames, self.limits):
                route = resolve(item.method, item.type)
                if type(route) is Unhandled:
                    proto.unhandled(hub.index, item, route.why, route.permanent)
                elif proto.accept(hub.index, item, now):
                    self._on_message(hub, item, now)
        elif cmd is Command.ACK:
            for group in split_acks(frames, self.limits):
                who = self._identity_of(group.peer)  # stamped by the hub, not claimed
                proto.on_acks(who, group.ok_ids, ack_replies(group, who), now)
        elif cmd is Command.ROUTED:
            for entry in decode_routed(frames, self.limits):
                proto.on_routed(entry.message_id, entry.targets, now, entry.implements)
        elif cmd is Command.HEARTBEAT:
            decode_heartbeat(frames)
            proto.on_heartbeat(hub.index, now)
        elif cmd is Command.WELCOME:
            welcome = decode_welcome(frames, self.limits)
            outbox = hub.link.outbox
            outbox.limit_batch(welcome.max_batch)  # what this hub accepts
            outbox.body_frames = welcome.version >= BODY_VERSION  # else bodies are joined
            outbox.zstd = ZSTD in welcome.codecs  # else bodies are not compressed for it
            hub.hello_since = None
            hub.refused = None
            proto.on_welcome(
                hub.index,
                welcome.heartbeat_ms,
                now,
                Identity(welcome.hub.service, welcome.hub.instance),
            )
            self._welcomed.set()
        elif cmd is Command.REFUSAL:
            refusal = decode_refusal(frames, self.limits)
            text = str(refusal)
            # A refused HELLO is said again every second: one line until the reason changes.
            if refusal.message_id:  # one line per refusal code a minute
                allowed = self._warnings.allow(f"refusal {refusal.code}")
                if allowed is not None:
                    log.warning(
                        "%s: hub %s refused: %s%s",
                        self.identity,
                        hub.link.address,
                        text,
                        held_back(allowed[1], f"{refusal.code} refusals"),
                        extra=message_fields(refusal.message_id, "", self.identity.service, 0),
                    )
            elif hub.refused != text:
                log.warning("%s: hub %s refused: %s", self.identity, hub.link.address, text)
            if not refusal.message_id:
                hub.refused = text
            proto.on_refusal(hub.index, refusal.code, refusal.message_id, str(refusal), now)
        elif cmd is Command.BYE:
            decode_bye(frames, self.limits)
            proto.on_bye(hub.index)
        else:
            raise RemoteProtocolError(f"{cmd.name} is not a command an endpoint accepts")

    def _identity_of(self, raw: bytes) -> Identity:
        ident = self._identities.get(raw)
        if ident is None:
            service, instance = decode_identity(raw)
            if len(self._identities) >= ENVELOPE_CACHE:
                self._identities.clear()
            ident = self._identities[raw] = Identity(service, instance)
        return ident

    def start_waiting(self, hub: int, item: InboundItem, now: float) -> None:
        """The protocol starts a message that waited for a slot (``max_concurrency``)."""
        assert isinstance(item, MessageItem)
        self._on_message(self._links[hub], item, now)

    def _on_message(self, hub: HubLink, item: MessageItem, now: float) -> None:
        """Run the handler of a message the protocol accepted."""
        route = self._dispatch.resolve(item.method, item.type)
        assert type(route) is Route  # checked before the protocol accepted it
        try:
            raw = item.envelope_bytes
            known = self._envelopes.get(raw)  # see _parse_envelope
            if known is not None:
                json_body = known
                env = None
            else:
                json_body, env = self._parse_envelope(item, raw, route)
            if self._fp_refused:
                why = self._fp_refused.get(raw)
                if why is not None:  # written with an incompatible schema (_compat.py)
                    self._handled(hub, item, route, None, Reject(why))
                    return
            msg = self._decode(route, item, json_body)
            # The sender is the identity the hub stamped: the one registered on the
            # connection the message came from, not what its envelope claims.
            ctx = self._context(item, self._identity_of(item.peer), env, now)
        except Exception as exc:
            self._proto.undecodable(hub.index, item, str(exc), now)
            return
        loop = self._loop
        assert loop is not None
        if self._durable is not None:
            task = self._durable.run(hub, item, route, msg, ctx)
            if task is None:
                return
        elif route.sync:  # a plain def: in the worker pool, answered when it returned
            self._workers.start(
                loop, route.fn, msg, ctx, functools.partial(self._handled, hub, item, route)
            )
            return
        else:
            started = start_eager(route.fn(msg, ctx), loop)
            if isinstance(started, tuple):  # the handler returned (or raised) at once
                result, failure = started
                if failure is None and not item.flags & FLAG_REQUEST and not self._closed:
                    # The plain OK of most messages: acked with the batch.
                    self._proto.handled_ok(item.id, item.peer)
                else:
                    self._handled(hub, item, route, result, failure)
                return
            task = started
            report_when_done(task, functools.partial(self._handled, hub, item, route))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decode(self, route: Route, item: MessageItem, json_body: bool) -> Any:
        """The handler's argument: a typed message, or a dict for a by-name handler."""
        if route.cls is not None:
            msg = route.cls()
            if json_body:
                json_format.ParseDict(json.loads(item.body), msg)
            else:
                msg.ParseFromString(item.body_buffer())  # type: ignore[arg-type]  # any buffer
            return msg
        if json_body:
            payload = json.loads(item.body)
            if not isinstance(payload, dict):
                raise ValueError("a JSON body must be an object")
            return payload
        spec = self.registry.get(item.type)
        if spec is None:
            raise ValueError("protobuf body of a type this endpoint's registry does not know")
        typed = spec.cls()
        typed.ParseFromString(item.body)
        return json_format.MessageToDict(typed, preserving_proto_field_name=True)

    def _parse_envelope(
        self, item: MessageItem, raw: bytes, route: Route
    ) -> tuple[bool, envelope_pb2.Envelope | None]:
        """Whether the body is JSON, and the parsed envelope if it has headers or a
        correlation id (else None), for envelope bytes ``raw`` that :attr:`_envelopes`
        does not know. (The envelope's ``sender`` is what the sender wrote; a handler
        sees the identity the hub stamped instead.)

        A sender puts the same envelope bytes on every message without headers, so
        those are parsed once and kept by their bytes: the receiver looks them up
        there first, a dict lookup instead of a protobuf parse per message. Envelopes
        with headers or a correlation id vary per message and are parsed each time.
        The ``fp`` header (the sender's schema fingerprint of the type, the same on
        every message of the type) does not count: it is compared with this
        endpoint's own when the envelope is first parsed (:meth:`_check_fingerprint`)."""
        env = item.envelope()
        json_body = env.content_encoding == JSON_ENCODING
        headers = env.headers
        fp = headers.get(FP_HEADER) if headers else None
        if fp is not None:
            self._check_fingerprint(item, route, fp)
        if env.correlation_id or len(headers) > (fp is not None):
            return json_body, env
        if len(self._envelopes) >= ENVELOPE_CACHE:
            self._envelopes.clear()
        self._envelopes[raw] = json_body
        return json_body, None

    def _check_fingerprint(self, item: MessageItem, route: Route, fp: str) -> None:
        """Log once per (sender, type) a message whose sender's schema fingerprint of
        its type (``fp``, hex) differs from this endpoint's: the two were generated
        from different versions of the schema (docs/protocol.md, "Fingerprints")."""
        cls = route.cls
        if cls is None:
            spec = self.registry.get(item.type)
            cls = spec.cls if spec is not None else None
        if cls is None:
            return
        mine = fingerprint(cls.DESCRIPTOR).hex()
        if mine == fp:
            return
        if self._history is not None:
            why = self._history.verdict(cls.DESCRIPTOR, fp)
            if why is not None:
                if len(self._fp_refused) >= ENVELOPE_CACHE:
                    self._fp_refused.clear()
                self._fp_refused[item.envelope_bytes] = why
        seen = (item.peer, item.type)
        if seen in self._drift_logged:
            return
        if len(self._drift_logged) >= ENVELOPE_CACHE:
            self._drift_logged.clear()
        self._drift_logged.add(seen)
        log.warning(
            "%s: schema drift on %s: sender %s has fingerprint %s, this endpoint %s; "
            "their generated code disagrees on this type (regenerate one of them, or "
            "see `ackbus breaking`)",
            self.identity,
            item.type,
            self._identity_of(item.peer),
            fp,
            mine,
        )

    def _context(
        self, item: MessageItem, sender: Identity, env: envelope_pb2.Envelope | None, now: float
    ) -> Context:
        # Positional, in Context's field order: keyword arguments cost more, and this
        # runs once per handled message.
        return Context(
            item.id,
            item.type,
            sender,
            item.attempt,
            item.created_at_ns / 1e9,
            item.sent_at_ns / 1e9,
            now + self._wall_offset,
            NO_HEADERS if env is None else _headers(env),
            b"" if env is None else env.correlation_id,
            item.priority,
        )

    def _handled(
        self,
        hub: HubLink,
        item: MessageItem,
        route: Route,
        result: Message | None,
        exc: BaseException | None,
    ) -> None:
        """A handler ended (returned ``result`` or raised ``exc``): tell the protocol."""
        loop = self._loop
        proto = self._proto
        if loop is None or self._closed or isinstance(exc, asyncio.CancelledError):
            proto.abandon(item.id)
            return
        request = bool(item.flags & FLAG_REQUEST)
        if exc is None and request and result is None:
            exc = Reject(f"{route.origin} returned no response to a request")
        now = proto._batch_now if proto.receiving else loop.time()
        if exc is not None:
            if not isinstance(exc, Reject) and not isinstance(exc, RetryLater):
                log.error(
                    "%s raised on %s %s",
                    route.origin,
                    item.type,
                    item.id.hex(),
                    exc_info=exc,
                    extra=message_fields(item.id, item.type, self.identity.service, item.attempt),
                )
            proto.handled(hub.index, item, now, exc)
        elif result is None or not request:
            proto.handled(hub.index, item, now)
        else:
            proto.handled(
                hub.index, item, now, None, result.SerializeToString(), result.DESCRIPTOR.full_name
            )
        if not proto.receiving:
            self._arm_timer()


def _headers(env: envelope_pb2.Envelope) -> dict[str, str]:
    """A handler's headers: the envelope's but ``fp`` (the protocol's own)."""
    headers = dict(env.headers)
    headers.pop(FP_HEADER, None)
    return headers
