"""The transport interface, its options, and the logic both implementations share.

Two roles, like ZeroMQ's: a :class:`Link` is the client side (one DEALER connected to
one hub address), a :class:`Listener` the server side (one ROUTER bound to one or more
addresses). A :class:`Backend` makes them: :class:`~._zmq.ZmqBackend` over real sockets,
:class:`~._memory.MemoryBackend` in memory for unit tests of the layers above. Both
pass one shared test class (``tests/transport``).

Receiving is push: the transport calls ``on_receive(multiparts)`` with every multipart
it could drain in one go (no future per message: that is what makes ``zmq.asyncio``
slow, see :mod:`._zmq`). A listener's multiparts start with the peer's routing id.

Sending is coalesced: callers add to an :class:`~ackbus.wire.Outbox` (one per
destination); the first addition schedules one flush with ``loop.call_soon``, so a
lone message leaves at the end of the current loop iteration and a burst leaves as few
multiparts. When the socket is full (high-water mark), what could not be written stays
queued, the outbox reports ``writable == False``, and the flush is retried when the
socket can take more: backpressure, never silent loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

from ..wire import MAX_ACKS, MAX_BATCH, Multipart, Outbox

__all__ = [
    "Backend",
    "CurveKeys",
    "Link",
    "Listener",
    "OnConnection",
    "OnReceive",
    "OnUnroutable",
    "TransportOptions",
]

OnReceive = Callable[[list[Multipart]], None]
"""Called with a batch of received multiparts (a listener's start with the peer id)."""
OnConnection = Callable[[bool], None]
"""Called with True when a link (re)connects, False when it loses its connection."""
OnUnroutable = Callable[[bytes, list[Multipart]], None]
"""Called with a peer id and what could not be sent to it because it is gone."""
OnAcceptFailed = Callable[[int], None]
"""A listener could not accept a connection: the errno (EMFILE: out of descriptors)."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE keypair (Z85 or raw 32-byte keys), e.g. from ``zmq.curve_keypair()``."""

    public: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Socket and queue settings. The defaults suit a hub and its endpoints on one host.

    High-water marks count multiparts (each up to ``wire.MAX_BATCH`` messages), per peer
    connection.
    """

    sndhwm: int = 1000
    rcvhwm: int = 1000
    linger_ms: int = 0
    """How long a closed socket keeps trying to send; 0 drops what is unsent (the
    sender's retries cover it)."""
    outbox_high_water: int = 10_000
    """Queued messages/acks per destination above which ``writable`` turns false."""
    max_batch: int = MAX_BATCH
    max_acks: int = MAX_ACKS
    drain_limit: int = 512
    """Most multiparts read per wake-up before yielding to the event loop."""
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    connect_timeout_ms: int = 1000
    """ZMQ_CONNECT_TIMEOUT, for links: a TCP connect not done after this long is given
    up and dialled again (after ``reconnect_ivl_ms``). Without it a connect begun while
    the path was down waits on the kernel's SYN retransmissions (1, 2, 4, 8 ... s) well
    after the path is back. 0: the kernel's own timeout."""
    backlog: int = 1024
    """ZMQ_BACKLOG, for a listener: connections the kernel completes and queues before
    they are accepted (capped by ``net.core.somaxconn``, 4096 on current kernels).
    libzmq's default, 100, overflows when a thousand peers reconnect at once after a
    hub restart: the kernel drops their SYNs, and each waits out TCP's retransmission
    backoff (1, 2, 4 ... s) before it can say HELLO again."""
    zmtp_heartbeat_ms: int = 0
    """ZeroMQ's own connection heartbeat (ZMQ_HEARTBEAT_IVL; ZMQ_HEARTBEAT_TIMEOUT is
    ``zmtp_timeout_ms``), run by libzmq's I/O thread whatever the Python loop does. Off
    (0) by default: liveness is ackbus's own heartbeat, and a dead path
    ``tcp_maxrt_ms``'s. On a hub, it makes a stopped peer (SIGSTOP, a frozen container:
    its kernel still acknowledges, its libzmq answers no PING) lose its connection after
    about ``zmtp_heartbeat_ms + zmtp_timeout_ms``, so the hub forgets it then instead of
    keeping it as stalled up to its ``stall_limit`` (docs/protocol.md, Liveness). The
    cost, at 1 s: about 1.5 % of one core per thousand connections at the hub, whose I/O
    thread sends, times and answers every PING (docs/decisions.md)."""
    zmtp_timeout_ms: int = 3000
    """How long a ZMTP PING may go unanswered before the connection is dropped
    (``zmtp_heartbeat_ms`` must be on)."""
    tcp_maxrt_ms: int = 3000
    """ZMQ_TCP_MAXRT (the kernel's TCP_USER_TIMEOUT), for TCP: a connection whose sent
    data goes unacknowledged this long is dropped. A host gone without a reset (powered
    off, cut off) stops acknowledging what is sent to it, and the heartbeats each side
    sends every interval are such data: the kernel drops the connection, at no cost
    until then, and a link dials again (``connect_timeout_ms`` at a time), so it is
    connected again within about a second of the path's return. 3 s is the time after
    which ackbus calls a silent peer dead (three 1 s heartbeats); a shorter outage is
    bridged by TCP's retransmissions. 0: the kernel's own retransmission limit (about 15
    minutes)."""
    handshake_ms: int = 0
    """ZMQ_HANDSHAKE_IVL: a connection that has not completed ZeroMQ's handshake (and,
    with CURVE, its key check) after this long is dropped. 0: libzmq's default, 30 s; a
    hub uses 5 s, so idle or half-open connections cannot hold its descriptors."""
    max_msgsize: int = -1
    """ZMQ_MAXMSGSIZE: a peer sending a bigger frame is disconnected. -1: no limit
    (the wire layer refuses oversized messages with a reason instead)."""
    routing_id: bytes | None = None
    """A link's routing id at the hub (1-255 bytes, not starting with a zero byte);
    None lets the hub pick one per connection."""
    curve: CurveKeys | None = None
    """Own keypair: a listener becomes a CURVE server, a link a CURVE client."""
    curve_server_key: bytes | None = None
    """For a link: the listener's public key (required with ``curve``)."""
    user_ids: bool = False
    """For a listener: deliver each multipart as ``[peer, user id, *frames]``, the user
    id being the ZeroMQ User-Id of the connection it came from (with a hub's ZAP
    handler, the name of the client's CURVE key), UTF-8; ``b""`` where there is none
    (a plain or in-process connection). Read per multipart, as a routing id may pass
    from a closed connection to a new one."""
    on_accept_failed: OnAcceptFailed | None = None
    """For a ZeroMQ listener: called with the errno each time libzmq fails to accept a
    connection on a bound address (its socket monitor's ``EVENT_ACCEPT_FAILED``; EMFILE
    or ENFILE when the process or the system is out of file descriptors). libzmq tries
    again as long as the connection waits, so it may be called many times a second."""


class Link(Protocol):
    """Client side: one connection to one hub address that reconnects by itself."""

    @property
    def address(self) -> str: ...

    @property
    def outbox(self) -> Outbox:
        """Add messages, acks and control multiparts here; they are flushed at the end
        of the loop iteration."""
        ...

    @property
    def connected(self) -> bool: ...

    handshake_failure: str | None
    """Why the last handshake failed (``HANDSHAKE_FAILED_AUTH``: the hub refused our
    CURVE key; ``HANDSHAKE_FAILED_PROTOCOL``: wrong server key or security mechanism);
    None once one succeeded, and always for in-memory links."""

    @property
    def closed(self) -> bool: ...

    @property
    def writable(self) -> bool:
        """False while the socket is full or the outbox is above its high-water mark."""
        ...

    async def wait_writable(self, timeout: float) -> None:
        """Return once writable; SendWindowTimeout after ``timeout`` s, ClosedError if
        closed meanwhile."""
        ...

    async def wait_connected(self, timeout: float) -> None:
        """Return once connected; ConnectTimeout after ``timeout`` s."""
        ...

    def flush(self) -> None:
        """Write what is queued now instead of at the end of the loop iteration."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def reconnect(self) -> None:
        """Make a new connection in place of the current one (same routing id, same
        outbox): a listener ignores a connection that came with the routing id of one
        it still holds, until that one is gone."""
        ...

    def close(self) -> None:
        """Release the socket, its monitor and every callback. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Listener(Protocol):
    """Server side: bound addresses, many peers, each addressed by its routing id."""

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses actually bound (a port 0 or ``*`` resolved)."""
        ...

    @property
    def closed(self) -> bool: ...

    def outbox(self, peer: bytes) -> Outbox:
        """The outbox for ``peer`` (created on first use)."""
        ...

    def send_once(self, peer: bytes, frames: Multipart) -> bool:
        """Send one multipart to ``peer`` now, keeping no state for it (queued behind
        its outbox if it has one); False if it could not go at once: dropped."""
        ...

    def forget(self, peer: bytes) -> list[Multipart]:
        """Drop ``peer``'s outbox (it is gone); returns what was still unsent."""
        ...

    def writable(self, peer: bytes) -> bool: ...

    def reachable(self, peer: bytes, probe: Multipart) -> bool:
        """Whether ``peer``'s connection is up now: ``probe`` (a control multipart that
        may overtake what is queued, e.g. a heartbeat) is sent to it at once. ZeroMQ: a
        ROUTER_MANDATORY send, refused once the peer's connection dropped (closed,
        reset, timed out by ``tcp_maxrt_ms``, or its ZMTP heartbeats unanswered); a
        peer whose queue is full is up."""
        ...

    async def wait_writable(self, peer: bytes, timeout: float) -> None: ...

    def flush(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Backend(Protocol):
    """Makes links and listeners. Call inside a running event loop."""

    def connect(
        self,
        address: str,
        *,
        on_receive: OnReceive,
        on_connection: OnConnection | None = None,
        options: TransportOptions = ...,
    ) -> Link: ...

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = ...,
    ) -> Listener: ...
