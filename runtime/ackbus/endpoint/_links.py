"""Hub links: the protocol's actions toward hubs (acks, HELLO, heartbeats), encoded
with the wire; link events; the timer.
"""

from __future__ import annotations

import logging

from .. import wire_pb2
from .._fingerprint import fingerprint
from .._throttle import held_back
from .._types import (
    Kind,
)
from .._version import __version__
from .._watchdog import handler_codes
from ..core.endpoint_protocol import AckReply
from ..wire import (
    SUPPORTED_VERSIONS,
    encode_ack,
    encode_heartbeat,
    encode_hello,
)
from ._base import EndpointBase, HubLink

log = logging.getLogger("ackbus.endpoint")

AGENT = f"ackbus-python/{__version__}"
"""What an endpoint's HELLO says of its software (``Hello.agent``, for ``ackbus status``)."""

RECONNECT_AFTER = 5.0
"""Seconds a connected link says HELLO unanswered before it reconnects: by then a hub
has dropped a dead connection of ours it still held (``TransportOptions.tcp_maxrt_ms``,
3 s by default, counted from before our link reconnected)."""


class HubLinks(EndpointBase):
    """Hub links of :class:`~ackbus.endpoint.Endpoint`."""

    def send_acks(self, hub: int, msg_ids: list[bytes], peer: bytes) -> None:
        outbox = self._links[hub].link.outbox
        if len(msg_ids) == 1:
            outbox.ack(msg_ids[0], peer)
        else:
            outbox.acks(msg_ids, peer)

    def send_ack(self, hub: int, ack: AckReply, peer: bytes) -> None:
        self._links[hub].link.outbox.full_ack(encode_ack(ack), peer)

    def send_hello(self, hub: int) -> None:
        proto = self._proto
        hello = wire_pb2.Hello(
            commands=proto.commands,
            events=proto.events,
            heartbeat_ms=int(self.heartbeat * 1000),
            max_concurrency=self.max_concurrency,
            versions=SUPPORTED_VERSIONS,
            max_batch=self.limits.max_batch,
            implements=proto.implements,
            methods=proto.methods,
            agent=AGENT,
            codecs=self._codecs,
        )
        fps = self._fingerprints
        if len(fps) > self.limits.max_hello_types:  # handled types first (dicts keep order)
            fps = dict(list(fps.items())[: self.limits.max_hello_types])
        hello.fingerprints.update(fps)
        hello.identity.service = self.identity.service
        hello.identity.instance = self.identity.instance
        link = self._links[hub]
        if link.link.connected and self._loop is not None:
            now = self._loop.time()
            if link.hello_since is None:
                link.hello_since = now
            elif now - link.hello_since >= RECONNECT_AFTER:
                # A hub ignores a connection that came with the routing id of one it
                # still holds (our previous one, not yet timed out there): a new
                # connection gets in once that one is gone.
                log.warning(
                    "%s: hub %s answered no HELLO for %.0f s on a connected link; reconnecting",
                    self.identity,
                    link.link.address,
                    now - link.hello_since,
                )
                link.hello_since = None
                link.link.reconnect()
        link.link.outbox.control(encode_hello(hello), first=True)

    def send_heartbeat(self, hub: int) -> None:
        self._links[hub].link.outbox.control(encode_heartbeat())

    def hub_silent(self, hub: int, silence: float) -> None:
        address = self._links[hub].link.address
        allowed = self._warnings.allow(f"silent {address}")  # one line a minute per hub
        if allowed is not None:
            log.warning(
                "%s: hub %s silent for %.1f s%s",
                self.identity,
                address,
                silence,
                held_back(allowed[1], "such lines"),
            )

    def _types_changed(self) -> None:
        if self._watchdog is not None:  # the async handlers it may find on the loop's stack
            self._watchdog.handlers = handler_codes(
                (r.handler, r.origin) for r in self._dispatch.routes() if not r.plain
            )
        self.stats.max_concurrency = self._proto.max_concurrency = self.max_concurrency
        # The handled types' fingerprints first, then those sent so far (send_hello).
        handled: dict[str, bytes] = {}
        for route in self._dispatch.routes():
            cls = route.cls
            if cls is None:
                spec = self.registry.get(route.msg_type)
                cls = spec.cls if spec is not None else None
            if cls is not None:
                handled[route.msg_type] = fingerprint(cls.DESCRIPTOR)
        sent = {t: fp for t, fp in self._fingerprints.items() if t not in handled}
        self._fingerprints = {**handled, **sent}
        self._proto.set_types(
            self._dispatch.types(Kind.COMMAND),
            self._dispatch.types(Kind.EVENT),
            self._loop.time() if self._loop is not None else 0.0,
            self._dispatch.services(),
            self._dispatch.methods(),
        )

    def _on_connection(self, hub: HubLink, up: bool) -> None:
        hub.hello_since = None  # a new connection (or none): its HELLOs count afresh
        if self._closed or not hasattr(hub, "link"):
            return  # called during connect(): start() says hello right after
        self._proto.connected(hub.index, self._loop.time() if self._loop else 0.0, up)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        self._proto.tick(loop.time())
        self._arm_timer()
