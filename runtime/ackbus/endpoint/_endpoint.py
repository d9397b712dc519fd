"""The endpoint: one per service instance; sends, receives, acknowledges.

An endpoint connects a link to each hub, says HELLO with the types its handlers take,
and then

* sends: every message gets a 16-byte id and is tracked by the core
  :class:`~ackbus.core.OutboundTracker` until an ack settles it or its attempts or
  deadline run out; retries re-send the same frame with a new attempt number;
* receives: every message passes the core :class:`~ackbus.core.InboundDeduper` (a
  duplicate is re-acknowledged without running the handler), runs its handler (an
  ``async def`` eagerly on the loop, see :mod:`ackbus._eager`; a plain ``def`` in the
  worker pool, see :mod:`ackbus._workers`), and is acknowledged only after the handler
  returned.

Every decision is :class:`~ackbus.core.endpoint_protocol.EndpointProtocol`'s; the endpoint
is its asyncio driver. All timers share one ``loop.call_at`` handle armed at the
protocol's next deadline. Time inside is the loop's monotonic clock; reports and
contexts carry Unix time.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar, overload

from google.protobuf.message import Message

from .._compat import History, SchemaHistory
from .._dispatch import DictHandlerFn, Dispatcher, HandlerFn, MessageHandlerFn
from .._throttle import Throttle
from .._timer import Timer
from .._types import (
    DeliveryReport,
    Handler,
    Identity,
    Kind,
    Policy,
    Registry,
)
from .._watchdog import LoopWatchdog
from .._window import WindowLines
from .._workers import Workers, default_workers
from ..core.endpoint_protocol import EndpointProtocol, EndpointStats
from ..errors import (
    ClosedError,
    ConnectTimeout,
    StoreError,
)
from ..middleware import (
    Middleware,
    Outgoing,
    acked_hooks,
    future_of,
    handle_chain,
    send_chain,
)
from ..store import Store
from ..transport import Backend, DefaultBackend, Link, TransportOptions
from ..transport._address import resolve
from ..transport._keys import client_keys
from ..wire import (
    DEFAULT_LIMITS,
    KIND_COMMAND,
    KIND_EVENT,
    IdSource,
    Limits,
    check_name,
    codecs,
    encode_bye,
    encode_envelope,
)
from ._base import DEAD_LETTERS, HubLink
from ._durable import Durable, Hooks, UserTransaction
from ._links import HubLinks
from ._receive import Receiving
from ._send import Sending

log = logging.getLogger("ackbus.endpoint")

M = TypeVar("M", bound=Message)


_DEFAULT_POLICY = Policy()
_DRAIN_POLL = 0.02
"""Seconds between looks at what still runs while :meth:`Endpoint.drain` waits."""


class Endpoint(Sending, Receiving, HubLinks):
    """A service instance on the bus. Use as ``async with Endpoint(...) as ep``.

    ``service`` names the service (all its instances share it); ``hubs`` are the hub
    addresses to connect to (``dns://NAME:PORT``: one hub at each IPv4 address the
    name resolves to when the endpoint starts). ``instance`` defaults to a fresh unique
    id. ``policy`` applies to messages whose type has no policy in ``registry``
    (generated modules export a ``REGISTRY``; generated clients pass their policy
    themselves).
    ``store`` (``"sqlite:///path.db"`` or an :class:`ackbus.store.Store`) makes it
    durable: outbox, inbox, dead letters and identity survive restarts (docs/durable.md).
    ``keys`` (this endpoint's ``NAME.key_secret`` file) and ``hub_key`` (the hub's
    ``hub.key``) make its ZeroMQ links CURVE clients, for a hub run with keys; unset,
    they are read from ``ACKBUS_KEYS`` and ``ACKBUS_HUB_KEY`` (docs/security.md).
    ``workers`` bounds the threads that run plain ``def`` handlers (``None``:
    ``min(32, CPUs + 4)``); ``async def`` handlers run on the loop.
    ``stall_threshold``: a watchdog thread logs a warning naming the handler when the
    endpoint's event loop does not run for longer than this many seconds (an ``async
    def`` handler that blocks), and counts it in ``stats.loop_stalls``; ``None``: off.
    ``max_concurrency`` bounds the messages this instance handles at once: the hub sends
    it no more and holds the rest (``None``: ``workers`` when every handler is a plain
    ``def``, else 1,000, and with a PostgreSQL store at most its pool's live
    transactions; see :attr:`max_concurrency`).
    ``middleware``: :class:`~ackbus.middleware.Middleware` objects around every send and
    every handler run, the first the outermost (docs/observability.md). ``metrics``: a
    port to serve Prometheus metrics on (``http://127.0.0.1:PORT/metrics``, 0: any free
    port, see :attr:`metrics_port`) while the endpoint runs, its counters and the
    histograms of a :class:`~ackbus.metrics.PrometheusMiddleware` added to
    ``middleware`` (needs ``ackbus[metrics]``).
    ``schema_history``: earlier versions of the schemas (descriptor sets from ``protoc
    --descriptor_set_out --include_imports``, or their files): a message whose sender's
    fingerprint of its type is one of these versions' and which ``ackbus breaking``'s
    rules find incompatible with this endpoint's type is refused (Rejected, permanent,
    with the breaks as its reason) instead of handled (needs ``ackbus[codegen]``;
    docs/protocol.md, "Fingerprints").
    """

    def __init__(
        self,
        service: str,
        hubs: str | Sequence[str],
        *,
        instance: str | None = None,
        policy: Policy = _DEFAULT_POLICY,
        registry: Registry | None = None,
        window: int = 1000,
        max_concurrency: int | None = None,
        heartbeat: float = 1.0,
        misses: int = 3,
        connect_timeout: float = 5.0,
        dedupe_capacity: int = 100_000,
        dedupe_ttl: float = 600.0,
        backend: Backend | None = None,
        options: TransportOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
        seed: int | None = None,
        store: str | Store | None = None,
        keys: str | os.PathLike[str] | None = None,
        hub_key: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        stall_threshold: float | None = 0.5,
        middleware: Sequence[Middleware] = (),
        metrics: int | None = None,
        schema_history: History | Sequence[History] | None = None,
    ) -> None:
        if not service:
            raise ValueError("an endpoint needs a service name")
        check_name(service, "service name")  # LocalProtocolError: a hub would refuse it
        self._hub_addresses = [hubs] if isinstance(hubs, str) else list(hubs)
        if not self._hub_addresses:
            raise ValueError("an endpoint needs at least one hub address")
        # Durable mode (docs/durable.md): the store keeps this instance's identity.
        self._durable = Durable(store, service, instance, dedupe_ttl) if store is not None else None
        if self._durable is not None:
            instance = self._durable.instance
        self.identity = Identity(service, instance or uuid.uuid4().hex)
        self.policy = policy
        self.registry = registry if registry is not None else Registry()
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._max_concurrency = max_concurrency
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.limits = limits
        self.dead_letters: deque[DeliveryReport] = deque(maxlen=DEAD_LETTERS)
        """The latest failed reports (in-memory mode keeps the last 1,000)."""
        self._window = window
        self._proto = EndpointProtocol(
            self.identity,
            self,
            window=window,
            heartbeat=heartbeat,
            misses=misses,
            dedupe_capacity=dedupe_capacity,
            dedupe_ttl=dedupe_ttl,
            seed=seed,
        )
        self.stats: EndpointStats = self._proto.stats
        self._tracker = self._proto.tracker
        self._deduper = self._proto.deduper
        self._middleware = list(middleware)
        self._metrics_port = metrics
        self._metrics_server: Any = None
        if metrics is not None:
            from ..metrics import PrometheusMiddleware

            if not any(isinstance(mw, PrometheusMiddleware) for mw in self._middleware):
                self._middleware.append(PrometheusMiddleware())
        self._send_through = send_chain(self._middleware, self._send_next)
        self._on_acked = acked_hooks(self._middleware)
        self._dispatch = Dispatcher(handle_chain(self._middleware, self._in_thread))
        self.window_waits = 0
        self._warnings = Throttle()
        self._pending: dict[bytes, DeliveryReport] = {}
        """Reports of the messages sent and not settled; a pending report carries its
        frame (no second object per message)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._workers = Workers(
            default_workers() if workers is None else workers, f"ackbus-{service}-handler"
        )
        self._watchdog = (
            LoopWatchdog(str(self.identity), stall_threshold, self._on_stall)
            if stall_threshold is not None
            else None
        )
        self._links: list[HubLink] = []
        self._backend = backend or DefaultBackend()
        base = options or TransportOptions()
        if base.max_msgsize < 0:  # a bigger frame is never read, only refused
            base = replace(base, max_msgsize=limits.max_frame_bytes)
        curve = client_keys(keys, hub_key)  # a missing or bad key file fails here
        if curve is not None:
            base = replace(base, curve=curve[0], curve_server_key=curve[1])
        # A stable routing id lets a restarted hub route acks to us by the token our
        # messages carried before the restart.
        self._options = replace(
            base, routing_id=base.routing_id or self.identity.instance.encode()[:255]
        )
        self._envelope = encode_envelope(self.identity)
        self._identities: dict[bytes, Identity] = {}
        self._ids = IdSource()
        self._type_names: dict[str, bytes] = {}
        """Type names this endpoint sent, as checked for the wire (a sender sends few)."""
        self._envelopes: dict[bytes, bool] = {}
        """Parsed header-less envelopes by their bytes (see :meth:`_parse_envelope`)."""
        self._codecs = codecs()
        """Body codecs decompressed here: zstd when zstandard is installed."""
        self._fingerprints: dict[str, bytes] = {}
        """Schema fingerprint per type handled or sent so far (announced in HELLO)."""
        self._fp_envelopes: dict[str, bytes] = {}
        """Per type sent: the envelope with its ``fp`` header, encoded once."""
        self._drift_logged: set[tuple[bytes, str]] = set()
        """(sender token, type) whose fingerprint mismatch was logged (once each)."""
        self._history = SchemaHistory(schema_history) if schema_history is not None else None
        """Earlier versions of the schemas: messages written with an incompatible one
        are refused (:mod:`ackbus._compat`)."""
        self._fp_refused: dict[bytes, str] = {}
        """Envelope bytes → why messages carrying them are refused (their ``fp``)."""
        self._window_waiters = WindowLines(self._window_timeout)
        """Sends waiting for window room, per destination, first come first served."""
        self._welcomed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: Timer | None = None
        self._wall_offset = 0.0
        self._started = False
        self._closed = False
        for mw in self._middleware:
            mw.attach(self)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The endpoint's middleware, the outermost first."""
        return tuple(self._middleware)

    @property
    def metrics_port(self) -> int | None:
        """The port its Prometheus metrics are served on while it runs (``metrics=``)."""
        server = self._metrics_server
        return server.port if server is not None else self._metrics_port

    def _send_next(self, out: Outgoing) -> Coroutine[Any, Any, DeliveryReport]:
        """The send at the end of the middleware chain."""
        return self._send(
            out.message,
            KIND_EVENT if out.kind == "event" else KIND_COMMAND,
            out.wait_ack,
            out.timeout,
            out.to,
            out.priority,
            out.headers,
            out.policy,
            out.request,
            out.key,
            out.method,
        )

    def _in_thread(self, fn: HandlerFn, msg: Any, ctx: Any) -> asyncio.Future[Any]:
        """Run a plain ``def`` handler in the worker pool, for the middleware chain."""
        loop = self._loop
        assert loop is not None
        fut, done = future_of(loop)
        self._workers.start(loop, fn, msg, ctx, done)
        return fut

    # ------------------------------------------------------------------ registration

    def register(self, handler: Handler) -> None:
        """Register a generated handler object: every ``on_*`` method its class overrides."""
        self._dispatch.add_handler(handler)
        self._types_changed()

    @overload
    def register_handler(
        self,
        msg_type: type[M],
        fn: MessageHandlerFn[M],
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
        implements: str | None = None,
    ) -> None: ...

    @overload
    def register_handler(
        self,
        msg_type: str,
        fn: DictHandlerFn,
        *,
        kind: Kind | None = None,
        response: None = None,
        implements: str | None = None,
    ) -> None: ...

    def register_handler(
        self,
        msg_type: type[M] | str,
        fn: Any,
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
        implements: str | None = None,
    ) -> None:
        """Register a function for messages of class ``msg_type``, or by type name:
        ``register_handler("StartHand", fn)`` hands ``fn`` the payload as a dict
        (reachable under the full and the legacy name when the registry knows it).

        ``fn(msg, ctx)`` is an ``async def`` (run on the endpoint's loop) or a plain
        ``def`` (run in the endpoint's pool of ``workers`` threads, so that blocking code
        never stalls the loop); either way the message is acked after it returned.

        ``kind`` defaults to the registry's policy for the type (else command).
        ``implements`` names the schema service (``"poker.Audit"``) ``fn`` handles the
        type for: publishers whose schema declares that service a subscriber of an event
        type wait for it (a generated handler says so itself).
        """
        if implements is not None:
            self._dispatch.add_service(implements)
        if isinstance(msg_type, str):
            spec = self.registry.get(msg_type)
            names = [msg_type]
            if spec is not None:
                names = sorted({spec.full_name, *([spec.legacy_name] if spec.legacy_name else [])})
            if kind is None:
                kind = spec.policy.kind if spec is not None else Kind.COMMAND
            self._dispatch.add_named(names, fn, kind=kind)
        else:
            if kind is None:
                found = self.registry.for_class(msg_type)
                kind = found.policy.kind if found is not None else Kind.COMMAND
            self._dispatch.add_function(msg_type, fn, kind=kind, response=response)
        self._types_changed()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Endpoint:
        """Connect to every hub and wait until one welcomed us: up to ``connect_timeout``
        seconds, then :class:`ConnectTimeout` says what to check. An endpoint not
        started is started by its first send, whose ``timeout`` bounds that wait too."""
        return await self._start(self.connect_timeout)

    async def _start_within(self, timeout: float | None) -> None:
        """Start for a first send: its ``timeout`` bounds the connect wait too."""
        if timeout is None or timeout >= self.connect_timeout:
            await self._start(self.connect_timeout)
        else:
            await self._start(timeout, " (the send's timeout)")

    async def _start(self, limit: float, bound: str = "") -> Endpoint:
        if self._closed:
            raise ClosedError("endpoint closed")
        if self._started:
            return self
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._wall_offset = self._proto.wall_offset = time.time() - loop.time()
        self._timer = Timer(loop, self._tick)
        if self._watchdog is not None:
            self._watchdog.start(loop)
        try:
            if self._metrics_port is not None:
                from ..metrics import serve

                self._metrics_server = serve(self._metrics_port, self)
            if self._durable is not None:
                await self._durable.start(self._hooks(loop), loop)
            for address in await resolve(self._hub_addresses, limit):
                hub = HubLink(self._proto.add_hub(address))
                hub.link = self._backend.connect(
                    address,
                    on_receive=functools.partial(self._on_receive, hub),
                    on_connection=functools.partial(self._on_connection, hub),
                    options=self._options,
                )
                self._links.append(hub)
                self._proto.connected(hub.index, loop.time())
            async with asyncio.timeout(limit):
                await self._welcomed.wait()
        except TimeoutError:
            why = await self._why_unanswered()
            await self.close()
            raise ConnectTimeout(
                f"{self.identity}: no hub of {self._hub_addresses} answered within "
                f"{limit} s{bound}{why}"
            ) from None
        except BaseException:
            # A bad address (AddressError), a store that cannot open, a cancel: release
            # the links and the store opened so far; `async with` never calls __aexit__
            # when __aenter__ raised.
            await self.close()
            raise
        if self._durable is not None:
            self._durable.resume()
        return self

    async def _why_unanswered(self) -> str:
        """What the links can tell about a ConnectTimeout, and what to check."""
        refused = [hub.refused for hub in self._links if hub.refused]
        if refused:
            return f"; the hub refused this endpoint's HELLO: {refused[0]}"
        failures = {hub.link.handshake_failure for hub in self._links} - {None}
        curve = self._options.curve is not None
        if "HANDSHAKE_FAILED_AUTH" in failures:
            return (
                "; the hub refused this endpoint's CURVE key in the handshake: enroll its "
                "public key (NAME.key) in the hub's clients/ folder"
            )
        if failures and curve:
            return (
                "; the CURVE handshake failed: hub_key may not be this hub's key, or the hub "
                "runs without keys"
            )
        if failures:
            return "; the handshake failed: the hub may require keys (keys=, hub_key=)"
        if curve:
            return "; with CURVE keys: the hub may have refused this endpoint's key"
        return await _check_addresses([hub.link for hub in self._links])

    def _hooks(self, loop: asyncio.AbstractEventLoop) -> Hooks:
        """Durable mode's whole interface to this endpoint."""
        return Hooks(
            self.identity,
            self._proto,
            lambda: self._closed,
            loop.time,
            self._pending.__contains__,
            self._track,
            self._handled,
            self._arm_timer,
            functools.partial(self._workers.start, loop),
            self,
        )

    async def drain(self, grace: float = 30.0) -> bool:
        """Shut down gracefully, then :meth:`close`: stop taking new messages (the hubs
        route nothing more here, and a message already on its way is answered so that
        its sender routes it again, elsewhere), let the handlers running or waiting here
        finish and be acked, and wait for the messages this endpoint sent to settle, all
        within ``grace`` seconds; then make sure every hub read the acks (a HELLO it
        answers, at least 1 s allowed for it) and say BYE. True when everything
        finished in time; False when ``close`` had to cancel handlers still running
        (their senders retry them elsewhere) or give up on pending sends.
        ``ackbus run`` calls it on SIGTERM (docs/running.md)."""
        loop = self._loop
        if self._closed or loop is None or not self._started:
            await self.close()
            return True
        self._proto.drain(loop.time())
        self._arm_timer()
        deadline = loop.time() + grace
        proto = self._proto
        finished = await _poll(
            lambda: not proto.running_count() and not self._pending, deadline, loop
        )
        # Once the acks left the outboxes, a HELLO follows them on each connection
        # (a HELLO is put ahead of what is still queued): its WELCOME means the hub
        # read, and passed on, them. Closing at once could lose them in the socket (no
        # linger), and the sender's retry would run the handler elsewhere.
        until = max(deadline, loop.time() + 1.0)
        links = [h for h in self._links if proto.welcomed(h.index)]
        await _poll(  # the drain's HELLO answered (its WELCOME must not answer the next)
            lambda: (
                all(proto.answered(h.index) for h in links)
                and not any(h.link.outbox for h in links)
            ),
            until,
            loop,
        )
        proto.hello_again(loop.time())
        self._arm_timer()
        await _poll(lambda: all(proto.answered(h.index) for h in links), until, loop)
        await self.close(timeout=max(0.0, deadline - loop.time()))
        return finished

    async def close(self, *, timeout: float = 1.0) -> None:
        """Fail what is pending with :class:`Cancelled`, say BYE and release everything.

        Handlers still running are cancelled (their messages are not acked, so the
        sender retries them elsewhere). A plain ``def`` handler cannot be cancelled in
        its thread: those not started yet never start, and ``close`` waits up to
        ``timeout`` seconds for the running ones; their messages are not acked either
        (the sender retries them elsewhere, where they may run again), and one still
        running after ``timeout`` finishes in its thread, unreported (the process exits
        only after it returned). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        self._proto.close(self._pending, now)
        self._window_waiters.fail(ClosedError(f"{self.identity}: endpoint closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        until = time.monotonic() + timeout
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self._workers.close(max(0.0, until - time.monotonic()))
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.stop()
        for hub in self._links:
            if self._proto.welcomed(hub.index):
                hub.link.outbox.control(encode_bye("closing"))
            hub.link.close()
        self._links.clear()
        if self._durable is not None:
            await self._durable.close()
        if self._metrics_server is not None:
            server, self._metrics_server = self._metrics_server, None
            await asyncio.to_thread(server.close)

    async def __aenter__(self) -> Endpoint:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_stall(self, seconds: float) -> None:
        """The watchdog saw the loop held for ``seconds`` (called on the loop)."""
        self.stats.loop_stalls += 1
        self.stats.loop_stalled_s += seconds

    def window_waiting(self) -> dict[str, int]:
        """Sends waiting for window room now, by destination (any thread may ask)."""
        return {d: len(line.waiters) for d, line in list(self._window_waiters.lines.items())}

    def in_flight_by_type(self) -> dict[str, int]:
        """Messages sent and not settled, by type (any thread may ask)."""
        return dict(Counter(r.message_type for r in list(self._pending.values())))

    @property
    def pending(self) -> int:
        """Messages sent and not yet settled."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Messages received whose handlers run, or wait for a slot, here now."""
        return self._proto.running_count()

    @property
    def store(self) -> Store | None:
        """The durable store, or ``None`` in memory mode."""
        return self._durable.store if self._durable is not None else None

    def transaction(self) -> UserTransaction:
        """``async with ep.transaction() as tx:`` your own writes (``await
        tx.execute(sql, params)``) and messages sent through ``tx`` (``await
        tx.send(msg)``, or a generated client bound to it: ``TableClient(tx)``) commit
        as one when the block ends; the messages are transmitted only after the commit,
        and never if the block raises (it rolls back). Durable mode only: ``StoreError``
        if the commit fails. On PostgreSQL the transaction is live (it reads, and holds a
        pooled connection for the block); on SQLite its statements are recorded and run
        at the commit (docs/durable.md, "Your own transaction")."""
        if self._durable is None:
            raise StoreError(f"{self.identity}: ep.transaction() needs a durable store (store=)")
        return self._durable.transaction()

    @property
    def resumed(self) -> list[DeliveryReport]:
        """Reports of the messages a previous run left in the store's outbox, sent
        again by :meth:`start` (empty in memory mode)."""
        return self._durable.resumed if self._durable is not None else []


async def _poll(done: Callable[[], bool], until: float, loop: asyncio.AbstractEventLoop) -> bool:
    """Look every :data:`_DRAIN_POLL` seconds until ``done()`` or the loop's clock
    reaches ``until``; whether it was done (a shutdown's waits, not a hot path)."""
    while True:
        if done():
            return True
        if loop.time() >= until:
            return False
        await asyncio.sleep(_DRAIN_POLL)


async def _check_addresses(links: Sequence[Link]) -> str:
    """What to check about hubs that never welcomed us, link by link: a host name that
    does not resolve (libzmq retries it quietly forever), a peer that connected but
    never answered HELLO (not an ackbus hub), or nothing listening."""
    notes = []
    for link in links:
        address = link.address
        if link.connected:
            notes.append(
                f"{address} accepted the connection but never answered HELLO: is it an "
                "ackbus hub (not another ZeroMQ service), of a compatible version?"
            )
            continue
        unresolved = await _unresolved(address)
        if unresolved:
            notes.append(unresolved)
        else:
            notes.append(
                f"nothing accepted a connection at {address}: is `ackbus hub --bind "
                f"{address}` (or an embedded Hub) running there, and does no firewall drop "
                "the port?"
            )
    return "; " + "; ".join(notes) if notes else ""


async def _unresolved(address: str, timeout: float = 2.0) -> str:
    """Why a ``tcp://`` address's host name does not resolve (empty when it does, when
    it is an IP address or another transport, or when resolving takes over ``timeout``)."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return ""
    host = rest.rpartition(";")[2].rpartition(":")[0].strip("[]")
    if not host or host == "*":
        return ""
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"the host {host!r} of {address} does not resolve ({exc.strerror}): check its name"
    except (OSError, TimeoutError):
        return ""
    return ""
