"""What the endpoint's parts share: its state, declared once, and its hub links.

:class:`~ackbus.endpoint.Endpoint` is one object whose methods live in rooms by path:
sending (``_send.py``), receiving (``_receive.py``), hub links (``_links.py``), the
facade with its lifecycle (``_endpoint.py``) and durable mode (``_durable.py``). Each
room's class derives from :class:`EndpointBase`, which declares every attribute they
share, so each reads as a whole and mypy checks every access.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .._compat import SchemaHistory
from .._dispatch import Dispatcher
from .._throttle import Throttle
from .._timer import Timer
from .._types import DeliveryReport, Identity, Policy, Registry
from .._watchdog import LoopWatchdog
from .._window import WindowLines
from .._workers import Workers
from ..core import InboundDeduper, OutboundTracker
from ..core.endpoint_protocol import EndpointProtocol, EndpointStats
from ..middleware import AckedHook, Middleware, SendNext
from ..transport import Backend, Link, TransportOptions
from ..wire import IdSource, Limits
from ._durable import Durable

DEFAULT_CONCURRENCY = 1000
"""An endpoint's ``max_concurrency`` when any of its handlers is ``async def``."""
DEAD_LETTERS = 1000
"""Failed reports kept in memory (the durable store keeps all)."""
ENVELOPE_CACHE = 1024
"""Distinct sender envelopes a receiver keeps parsed (one per sending instance), and
distinct type names a sender keeps checked."""
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a message that has none: one shared read-only mapping."""


class HubLink:
    """One hub connection (its state lives in the protocol, under ``index``)."""

    __slots__ = ("hello_since", "index", "link", "refused")

    link: Link

    def __init__(self, index: int) -> None:
        self.index = index
        self.hello_since: float | None = None
        """When the first HELLO on this connection still unanswered by a WELCOME went."""
        self.refused: str | None = None
        """Why the hub last refused something that names no message (our HELLO)."""


class EndpointBase:
    """The endpoint's state (set by ``Endpoint.__init__``) and what every path uses."""

    identity: Identity
    policy: Policy
    registry: Registry
    _max_concurrency: int | None
    """As given to the constructor (``None``: sized for the handlers)."""
    heartbeat: float
    connect_timeout: float
    limits: Limits
    stats: EndpointStats
    dead_letters: deque[DeliveryReport]
    """The latest failed reports (in-memory mode keeps the last 1,000)."""
    _hub_addresses: list[str]
    _durable: Durable | None
    _window: int
    _proto: EndpointProtocol
    _tracker: OutboundTracker
    """The protocol's tracker (the send path asks it for window room)."""
    _deduper: InboundDeduper
    _dispatch: Dispatcher
    _pending: dict[bytes, DeliveryReport]
    """Reports of the messages sent and not settled; a pending report carries its
    frame (no second object per message)."""
    _tasks: set[asyncio.Task[Any]]
    _workers: Workers
    _watchdog: LoopWatchdog | None
    """Says when the loop stops running, and which handler held it (None: off)."""
    """The threads that run plain ``def`` handlers (none until the first one runs)."""
    _links: list[HubLink]
    _backend: Backend
    _options: TransportOptions
    _envelope: bytes
    """This sender's envelope (header-less), encoded once."""
    _identities: dict[bytes, Identity]
    _ids: IdSource
    _type_names: dict[str, bytes]
    """Type names this endpoint sent, as checked for the wire (a sender sends few)."""
    _envelopes: dict[bytes, bool]
    """Parsed header-less envelopes by their bytes (see ``_parse_envelope``)."""
    _codecs: tuple[str, ...]
    """Body codecs this endpoint decompresses (its HELLO's ``codecs``)."""
    _fingerprints: dict[str, bytes]
    """Schema fingerprint per type this endpoint handles or has sent (its HELLO's)."""
    _fp_envelopes: dict[str, bytes]
    """Per type sent: this sender's envelope with that type's ``fp`` header, encoded once."""
    _drift_logged: set[tuple[bytes, str]]
    """(sender token, type) whose fingerprint mismatch was logged (once each)."""
    _history: SchemaHistory | None
    """Earlier versions of the schemas (``schema_history``; None: mismatches are logged)."""
    _fp_refused: dict[bytes, str]
    """Envelope bytes → why messages carrying them are refused (their ``fp``)."""
    _window_waiters: WindowLines
    """Sends waiting for window room, per destination, first come first served."""
    _welcomed: asyncio.Event
    _loop: asyncio.AbstractEventLoop | None
    _timer: Timer | None
    _wall_offset: float
    """Unix time minus loop time: reports and contexts carry Unix time."""
    _started: bool
    _closed: bool
    _middleware: list[Middleware]
    _send_through: SendNext | None
    """The sends through the middleware that override ``on_send`` (None: none does)."""
    _warnings: Throttle
    """Repeated warnings (a silent hub, refusals) written once a minute per key."""
    _on_acked: AckedHook | None
    """Every middleware's ``on_acked`` (None: none overrides it)."""
    window_waits: int
    """Sends that waited for room in their destination's window (``window``)."""

    @property
    def max_concurrency(self) -> int:
        """The most messages this instance handles at once, as HELLO tells the hub: the
        ``max_concurrency`` given, else ``workers`` when every handler registered is a
        plain ``def`` (so that messages wait at the hub, not in the pool's queue), else
        :data:`DEFAULT_CONCURRENCY`; and without one given, never more than the store's
        live transactions (``store.max_transactions``: PostgreSQL's ``pool_size - 1``),
        so that messages wait at the hub, not for a connection."""
        if self._max_concurrency is not None:
            return self._max_concurrency
        n = self._workers.size if self._dispatch.all_sync() else DEFAULT_CONCURRENCY
        bound = self._durable.store.max_transactions if self._durable is not None else None
        return n if bound is None else min(n, bound)

    async def _start_within(self, timeout: float | None) -> None:
        """Start the endpoint for its first send, the connect wait bounded by the send's
        ``timeout`` too (``Endpoint`` defines it)."""
        raise NotImplementedError

    def _arm_timer(self) -> None:
        """Arm the endpoint's one timer for the protocol's next deadline."""
        timer = self._timer
        if timer is None:
            return
        timer.at(self._proto.next_deadline())
