"""What both transports share: flush scheduling, backpressure, waits and close.

A subclass only moves bytes: ``_write`` sends one multipart without blocking (or says
the socket is full), ``_release`` frees its resources, and it calls ``_deliver`` with
what it received. Everything observable above the transport — when a flush happens,
when ``writable`` changes, how waits time out, what close does — lives here once, so
the ZeroMQ and the in-memory transport cannot drift apart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Self

from ..errors import ClosedError, ConnectTimeout, SendWindowTimeout
from ..wire import Multipart, Outbox
from ._base import OnConnection, OnReceive, OnUnroutable, TransportOptions

log = logging.getLogger("ackbus.transport")

_RETRY_MIN = 0.001
_RETRY_MAX = 0.05


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


def _safe_call(fn: Callable[..., None], *args: object) -> None:
    """Call a user callback; a bug in it is logged, never allowed to kill the reader."""
    try:
        fn(*args)
    except Exception:
        log.exception("transport callback %r raised", fn)


class ClosesOnExit:
    """``with`` and ``async with`` close the object (a link or listener) on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class FlowBase(ClosesOnExit):
    """The part of a link or listener that does not depend on its role."""

    def __init__(self, on_receive: OnReceive, options: TransportOptions) -> None:
        self._loop = asyncio.get_running_loop()
        self.options = options
        self._on_receive = on_receive
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        self._closed = False
        self._paused = False
        self._writers = _Waiters(self._loop)

    # --------------------------------------------------------------- hooks

    def _flush(self) -> None:
        raise NotImplementedError

    def _after_write(self, wrote: bool) -> None:
        """Called after a flush tried to write; ``wrote``: at least one multipart went
        (zmq: re-check the edge-triggered FD)."""

    def _release(self) -> None:
        """Free the underlying resources (sockets, readers)."""
        raise NotImplementedError

    def _name(self) -> str:
        raise NotImplementedError

    # --------------------------------------------------------------- public

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Write what is queued now instead of at the end of the loop iteration."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def close(self) -> None:
        """Flush what can go without blocking, then release everything. Idempotent;
        pending waits fail with ClosedError."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None
        self._release()
        self._fail_waiters(ClosedError(f"{self._name()} closed"))

    # --------------------------------------------------------------- internals

    def _fail_waiters(self, exc: ClosedError) -> None:
        self._writers.fail(exc)

    async def _wait_until(
        self, cond: Callable[[], bool], waiters: _Waiters, timeout: float, error: Exception
    ) -> None:
        """Wait for ``cond``, re-checked at each wake-up; ``error`` on timeout."""
        deadline = self._loop.time() + timeout
        while not cond():
            if self._closed:
                raise ClosedError(f"{self._name()} closed")
            remaining = deadline - self._loop.time()
            if remaining <= 0 or not await waiters.wait(remaining):
                if cond():
                    return
                raise error

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _arm_retry(self) -> None:
        """Retry a blocked flush on a short backoff timer, in case no writable event
        comes (the zmq transport also retries as soon as POLLOUT shows up)."""
        if self._retry_handle is None and not self._closed:
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    def _deliver(self, batch: list[Multipart]) -> None:
        _safe_call(self._on_receive, batch)


def _drain(ob: Outbox, write: Callable[[Multipart], bool | None]) -> tuple[bool, bool | None]:
    """Write ``ob``'s multiparts until it is empty or ``write`` refuses one (which is put
    back). Returns (wrote anything, the refusing result: False full, None gone; True if
    everything went)."""
    wrote = False
    while (frames := ob.pop()) is not None:
        sent = write(frames)
        if not sent:
            ob.unpop(frames)
            return wrote, sent
        wrote = True
    return wrote, True


class LinkBase(FlowBase):
    """A link: one outbox, connection state and its waits."""

    def __init__(
        self,
        address: str,
        on_receive: OnReceive,
        on_connection: OnConnection | None,
        options: TransportOptions,
    ) -> None:
        super().__init__(on_receive, options)
        self._address = address
        self._on_connection = on_connection
        self._outbox = Outbox(
            high_water=options.outbox_high_water,
            max_batch=options.max_batch,
            max_acks=options.max_acks,
            on_ready=self._schedule_flush,
        )
        self._connected = False
        self._connect_waiters = _Waiters(self._loop)
        self.handshake_failure: str | None = None
        """Why the last connection attempt's handshake failed (a ZeroMQ monitor event
        name, e.g. ``HANDSHAKE_FAILED_AUTH``); None after a handshake succeeded."""

    def _write(self, frames: Multipart) -> bool:
        """Send one multipart without blocking; False when the socket is full."""
        raise NotImplementedError

    def _name(self) -> str:
        return f"link to {self._address}"

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
    def writable(self) -> bool:
        return not self._closed and self._outbox.writable

    async def wait_writable(self, timeout: float) -> None:
        await self._wait_until(
            lambda: self.writable,
            self._writers,
            timeout,
            SendWindowTimeout(f"{self._address}: socket stayed full for {timeout} s"),
        )

    async def wait_connected(self, timeout: float) -> None:
        await self._wait_until(
            lambda: self._connected,
            self._connect_waiters,
            timeout,
            ConnectTimeout(f"{self._address}: not connected after {timeout} s"),
        )

    def close(self) -> None:
        super().close()
        self._connected = False

    def _fail_waiters(self, exc: ClosedError) -> None:
        super()._fail_waiters(exc)
        self._connect_waiters.fail(exc)

    def _flush(self) -> None:
        self._flush_handle = None
        ob = self._outbox
        if self._closed or not ob:
            return
        wrote, done = _drain(ob, self._write)
        ob.blocked = not done
        if done:
            self._retry_delay = _RETRY_MIN
        else:
            self._arm_retry()
        if self._writers and ob.writable:
            self._writers.wake()
        self._after_write(wrote)

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


class ListenerBase(FlowBase):
    """A listener: one outbox per peer, flushed together; gone peers reported."""

    def __init__(
        self,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None,
        options: TransportOptions,
    ) -> None:
        super().__init__(on_receive, options)
        self._on_unroutable = on_unroutable
        self._outboxes: dict[bytes, Outbox] = {}
        self._dirty: set[bytes] = set()
        self._blocked: set[bytes] = set()
        self._addresses: tuple[str, ...] = ()

    def _write(self, peer: bytes, frames: Multipart) -> bool | None:
        """Send one multipart to ``peer``: True sent, False socket full, None the peer
        is unknown (gone)."""
        raise NotImplementedError

    def _name(self) -> str:
        return f"listener on {', '.join(self._addresses)}"

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    def outbox(self, peer: bytes) -> Outbox:
        ob = self._outboxes.get(peer)
        if ob is None:
            if self._closed:
                raise ClosedError(f"{self._name()} closed")
            ob = Outbox(
                high_water=self.options.outbox_high_water,
                max_batch=self.options.max_batch,
                max_acks=self.options.max_acks,
                on_ready=lambda: self._mark_dirty(peer),
            )
            self._outboxes[peer] = ob
        return ob

    def send_once(self, peer: bytes, frames: Multipart) -> bool:
        """Send ``frames`` to ``peer`` now without keeping any state for it (an answer to
        a peer that is not registered, such as a refusal: a stream of garbage connections
        must not leave an outbox each). A peer with an outbox gets it queued there, after
        what is queued. False if it could not go at once (socket full, peer gone): then it
        is dropped."""
        ob = self._outboxes.get(peer)
        if ob is not None:
            return ob.control(frames)
        if self._closed:
            return False
        sent = self._write(peer, frames) is True
        self._after_write(sent)
        return sent

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
        await self._wait_until(
            lambda: self.writable(peer),
            self._writers,
            timeout,
            SendWindowTimeout(f"peer {peer!r}: socket stayed full for {timeout} s"),
        )

    def close(self) -> None:
        super().close()
        self._outboxes.clear()
        self._dirty.clear()
        self._blocked.clear()

    def _mark_dirty(self, peer: bytes) -> None:
        self._dirty.add(peer)
        self._schedule_flush()

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed:
            return
        peers = self._dirty | self._blocked if self._blocked else self._dirty
        if not peers:
            return
        self._dirty = set()
        wrote_any = False
        for peer in peers:
            ob = self._outboxes.get(peer)
            if ob is None:
                continue
            wrote, done = _drain(ob, functools.partial(self._write, peer))
            wrote_any = wrote_any or wrote
            if done is None:  # peer gone: hand everything back to the owner
                lost = self.forget(peer)
                if self._on_unroutable is not None:
                    _safe_call(self._on_unroutable, peer, lost)
                else:
                    log.warning("dropped %d multiparts for gone peer %r", len(lost), peer)
                continue
            ob.blocked = not done
            if done:
                self._blocked.discard(peer)
            else:
                self._blocked.add(peer)
        if self._blocked:
            self._arm_retry()
        else:
            self._retry_delay = _RETRY_MIN
        if self._writers:
            self._writers.wake()  # each waiter re-checks its own peer
        self._after_write(wrote_any)
