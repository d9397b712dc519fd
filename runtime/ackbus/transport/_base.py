"""The transport interface, its options, and the logic both implementations share.

Two roles, like ZeroMQ's: a :class:`Link` is the client side (one DEALER connected to
one hub address), a :class:`Listener` the server side (one ROUTER bound to one or more
addresses). A :class:`Backend` makes them: :class:`~._zmq.ZmqBackend` over real sockets,
:class:`~._memory.MemoryBackend` in memory for unit tests of the layers above. Both
pass one shared test class (``tests/transport``).

Receiving is push: the transport calls ``on_receive(multiparts)`` with every multipart
it could drain in one go (no future per message; this is where ``zmq.asyncio`` lost
a factor of six on the reference machine). A listener's multiparts start with the
peer's routing id.

Sending is coalesced: callers add to an :class:`~ackbus.wire.Outbox` (one per
destination); the first addition schedules one flush with ``loop.call_soon``, so a
lone message leaves at the end of the current loop iteration and a burst leaves as few
multiparts. When the socket is full (high-water mark), what could not be written stays
queued, the outbox reports ``writable == False``, and the flush is retried when the
socket can take more: backpressure, never silent loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

from ..errors import ClosedError, ConnectTimeout, SendWindowTimeout
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

log = logging.getLogger("ackbus.transport")

OnReceive = Callable[[list[Multipart]], None]
"""Called with a batch of received multiparts (a listener's start with the peer id)."""
OnConnection = Callable[[bool], None]
"""Called with True when a link (re)connects, False when it loses its connection."""
OnUnroutable = Callable[[bytes, list[Multipart]], None]
"""Called with a peer id and what could not be sent to it because it is gone."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE keypair (Z85 or raw 32-byte keys), e.g. from ``zmq.curve_keypair()``."""

    public: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Socket and queue settings. The defaults suit a hub and its endpoints on one host.

    High-water marks count multiparts (each up to 64 messages), per peer connection.
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
    zmtp_heartbeat_ms: int = 0
    """ZeroMQ's own connection heartbeat (ZMQ_HEARTBEAT_IVL, timeout 3x): detects a
    half-open TCP connection (peer host gone, no RST) so a link reports the disconnect
    and reconnects. 0: off (ackbus's HEARTBEAT command still detects dead peers)."""
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

    def forget(self, peer: bytes) -> list[Multipart]:
        """Drop ``peer``'s outbox (it is gone); returns what was still unsent."""
        ...

    def writable(self, peer: bytes) -> bool: ...

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


# --------------------------------------------------------------------------- shared logic


class _Waiters:
    """Futures waiting for one condition; woken together, each with its own timeout."""

    __slots__ = ("_futs", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._futs: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(self._futs)

    async def wait(self, timeout: float) -> bool:
        """True when woken, False when the timeout ran out first."""
        fut = self._loop.create_future()
        self._futs.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            if fut in self._futs:
                self._futs.remove(fut)

    def wake(self) -> None:
        futs, self._futs = self._futs, []
        for fut in futs:
            if not fut.done():
                fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        futs, self._futs = self._futs, []
        for fut in futs:
            if not fut.done():
                fut.set_exception(exc)


async def _wait_until(
    cond: Callable[[], bool],
    waiters: _Waiters,
    loop: asyncio.AbstractEventLoop,
    timeout: float,
    is_closed: Callable[[], bool],
    on_timeout: Callable[[], Exception],
) -> None:
    deadline = loop.time() + timeout
    while not cond():
        if is_closed():
            raise ClosedError("transport closed")
        remaining = deadline - loop.time()
        if remaining <= 0 or not await waiters.wait(remaining):
            if cond():
                return
            raise on_timeout()


def _safe_call(fn: Callable[..., None], *args: object) -> None:
    """Call a user callback; a bug in it is logged, never allowed to kill the reader."""
    try:
        fn(*args)
    except Exception:
        log.exception("transport callback %r raised", fn)


_RETRY_MIN = 0.001
_RETRY_MAX = 0.05


class LinkBase:
    """Flush scheduling, backpressure and waits of a link. Subclasses write bytes."""

    def __init__(
        self,
        address: str,
        on_receive: OnReceive,
        on_connection: OnConnection | None,
        options: TransportOptions,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._address = address
        self.options = options
        self._on_receive = on_receive
        self._on_connection = on_connection
        self._outbox = Outbox(
            high_water=options.outbox_high_water,
            max_batch=options.max_batch,
            max_acks=options.max_acks,
            on_ready=self._schedule_flush,
        )
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        self._connected = False
        self._closed = False
        self._paused = False
        self._writers = _Waiters(self._loop)
        self._connect_waiters = _Waiters(self._loop)

    # --------------------------------------------------------------- hooks

    def _write(self, frames: Multipart) -> bool:
        """Send one multipart without blocking; False when the socket is full."""
        raise NotImplementedError

    def _after_write(self, wrote: bool) -> None:
        """Called after a flush tried to write (zmq: re-check the edge-triggered FD)."""

    def _release(self) -> None:
        """Close the underlying resources."""
        raise NotImplementedError

    # --------------------------------------------------------------- public

    @property
    def address(self) -> str:
        return self._address

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writable(self) -> bool:
        return not self._closed and self._outbox.writable

    async def wait_writable(self, timeout: float) -> None:
        await _wait_until(
            lambda: self.writable,
            self._writers,
            self._loop,
            timeout,
            lambda: self._closed,
            lambda: SendWindowTimeout(f"{self._address}: socket stayed full for {timeout} s"),
        )

    async def wait_connected(self, timeout: float) -> None:
        await _wait_until(
            lambda: self._connected,
            self._connect_waiters,
            self._loop,
            timeout,
            lambda: self._closed,
            lambda: ConnectTimeout(f"{self._address}: not connected after {timeout} s"),
        )

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def close(self) -> None:
        if self._closed:
            return
        if self._connected:
            self._flush()  # best effort: e.g. a BYE queued just before close
        self._closed = True
        self._connected = False
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None
        self._release()
        self._writers.fail(ClosedError(f"{self._address}: link closed"))
        self._connect_waiters.fail(ClosedError(f"{self._address}: link closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- internals

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed:
            return
        ob = self._outbox
        wrote = False
        attempted = bool(ob)
        while (frames := ob.pop()) is not None:
            if not self._write(frames):
                ob.unpop(frames)
                ob.blocked = True
                self._arm_retry()
                break
            wrote = True
        else:
            ob.blocked = False
            self._retry_delay = _RETRY_MIN
        if self._writers and ob.writable:
            self._writers.wake()
        if attempted:
            self._after_write(wrote)

    def _arm_retry(self) -> None:
        """Retry a blocked flush on a short backoff timer, in case no writable event
        comes (the zmq subclass also retries as soon as POLLOUT shows up)."""
        if self._retry_handle is None and not self._closed:
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    def _set_connected(self, value: bool) -> None:
        if value == self._connected or self._closed:
            return
        self._connected = value
        if value:
            self._connect_waiters.wake()
        if self._on_connection is not None:
            _safe_call(self._on_connection, value)
        if value and self._outbox:
            self._retry_delay = _RETRY_MIN
            self._schedule_flush()

    def _deliver(self, batch: list[Multipart]) -> None:
        _safe_call(self._on_receive, batch)


class ListenerBase:
    """Per-peer outboxes, flush scheduling, backpressure and waits of a listener."""

    def __init__(
        self,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None,
        options: TransportOptions,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.options = options
        self._on_receive = on_receive
        self._on_unroutable = on_unroutable
        self._outboxes: dict[bytes, Outbox] = {}
        self._dirty: set[bytes] = set()
        self._blocked: set[bytes] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        self._closed = False
        self._paused = False
        self._writers = _Waiters(self._loop)
        self._addresses: tuple[str, ...] = ()

    # --------------------------------------------------------------- hooks

    def _write(self, peer: bytes, frames: Multipart) -> bool | None:
        """Send one multipart to ``peer``: True sent, False socket full, None the peer
        is unknown (gone)."""
        raise NotImplementedError

    def _after_write(self, wrote: bool) -> None:
        """Called after a flush tried to write; ``wrote``: at least one multipart went."""

    def _release(self) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- public

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    @property
    def closed(self) -> bool:
        return self._closed

    def outbox(self, peer: bytes) -> Outbox:
        ob = self._outboxes.get(peer)
        if ob is None:
            if self._closed:
                raise ClosedError("listener closed")
            ob = Outbox(
                high_water=self.options.outbox_high_water,
                max_batch=self.options.max_batch,
                max_acks=self.options.max_acks,
                on_ready=lambda: self._mark_dirty(peer),
            )
            self._outboxes[peer] = ob
        return ob

    def forget(self, peer: bytes) -> list[Multipart]:
        ob = self._outboxes.pop(peer, None)
        self._dirty.discard(peer)
        self._blocked.discard(peer)
        if ob is None:
            return []
        out = []
        while (frames := ob.pop()) is not None:
            out.append(frames)
        return out

    def writable(self, peer: bytes) -> bool:
        ob = self._outboxes.get(peer)
        return not self._closed and (ob is None or ob.writable)

    async def wait_writable(self, peer: bytes, timeout: float) -> None:
        await _wait_until(
            lambda: self.writable(peer),
            self._writers,
            self._loop,
            timeout,
            lambda: self._closed,
            lambda: SendWindowTimeout(f"peer {peer!r}: socket stayed full for {timeout} s"),
        )

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def close(self) -> None:
        if self._closed:
            return
        self._flush()  # best effort
        self._closed = True
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None
        self._outboxes.clear()
        self._dirty.clear()
        self._blocked.clear()
        self._release()
        self._writers.fail(ClosedError("listener closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- internals

    def _mark_dirty(self, peer: bytes) -> None:
        self._dirty.add(peer)
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed:
            return
        peers = self._dirty | self._blocked
        self._dirty = set()
        wrote = False
        attempted = bool(peers)
        for peer in peers:
            ob = self._outboxes.get(peer)
            if ob is None:
                continue
            while (frames := ob.pop()) is not None:
                sent = self._write(peer, frames)
                if sent:
                    wrote = True
                    continue
                if sent is None:  # peer gone: hand everything back to the owner
                    lost = [frames, *self.forget(peer)]
                    if self._on_unroutable is not None:
                        _safe_call(self._on_unroutable, peer, lost)
                    else:
                        log.warning("dropped %d multiparts for gone peer %r", len(lost), peer)
                    break
                ob.unpop(frames)
                ob.blocked = True
                self._blocked.add(peer)
                break
            else:
                ob.blocked = False
                self._blocked.discard(peer)
        if self._blocked:
            self._arm_retry()
        else:
            self._retry_delay = _RETRY_MIN
        if self._writers:
            self._writers.wake()  # each waiter re-checks its own peer
        if attempted:
            self._after_write(wrote)

    def _arm_retry(self) -> None:
        if self._retry_handle is None and not self._closed:
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    def _deliver(self, batch: list[Multipart]) -> None:
        _safe_call(self._on_receive, batch)
