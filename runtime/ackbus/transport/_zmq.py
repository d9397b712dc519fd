"""The ZeroMQ transport: plain ``zmq.Socket``\\ s driven by the asyncio loop's reader
callbacks, not ``zmq.asyncio``.

Why: ``zmq.asyncio`` makes a future per received message; plain sockets drained by
non-blocking receives from a reader callback on the socket's file descriptor need none,
and carry acknowledged exchanges several times faster (docs/performance.md).

The catch: ``ZMQ_FD`` is edge-triggered. It signals when the socket's state changes,
not while messages wait, and any send or receive may consume the edge. So after every
send or receive we read ``ZMQ_EVENTS`` and, if ``POLLIN`` is set, drain again (on the
next loop iteration, never recursively); a message is never left sitting unnoticed.

zmq errors are translated here, at the boundary: a full socket is ``False`` from
``_write``, an unknown ROUTER peer is ``None`` (ROUTER_MANDATORY makes it an error
rather than a silent drop), a closed socket stops the reader, and a failed bind or
connect is an :class:`~ackbus.errors.AddressError` naming the address and what to do
(after every socket the constructor made is closed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from typing import Any, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..wire import BODIES_FRAME, Multipart
from ._address import Op, address_error, check
from ._base import OnConnection, OnReceive, OnUnroutable, TransportOptions
from ._flow import FlowBase, LinkBase, ListenerBase, log

__all__ = ["ZmqBackend", "ZmqLink", "ZmqListener"]

# Plain ints: pyzmq's constants are enum members, whose arithmetic runs Python code,
# and the hot path uses them on every send and receive.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_RECONNECT_PAUSE = 0.25
"""Seconds between dropping a connection and making a new one (:meth:`ZmqLink.reconnect`)."""
_MONITOR_BATCH = 256
"""Most monitor events read per wake-up (libzmq retries a failed accept in a busy loop,
reporting each failure): the rest are read on the next loop iteration."""
_ZERO_COPY = 65536
"""Frames this big are handed to libzmq without a copy (pyzmq keeps the bytes alive);
below it, copying is cheaper than the bookkeeping."""


def _send_rest(send: Any, frames: Multipart) -> None:
    """Send the frames of a multipart whose first frame was accepted.

    ``Socket.send_multipart`` costs more than this loop (it validates every frame in
    Python). Big frames (message items with large bodies) go without a copy. ZeroMQ
    multiparts are atomic: once the first frame is accepted, the others
    are too (if the peer vanished meanwhile, libzmq drops the rest silently), so only
    the first ``send`` of a multipart can raise EAGAIN.
    """
    last = len(frames) - 1
    for i in range(1, last):
        frame = frames[i]
        if len(frame) < _ZERO_COPY:
            send(frame, _MORE)
        else:
            send(frame, _MORE, copy=False)
    if last > 0:
        frame = frames[last]
        send(frame, _NOBLOCK, copy=len(frame) < _ZERO_COPY)


_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _configure(sock: zmq.Socket[Any], options: TransportOptions) -> None:
    sock.setsockopt(zmq.LINGER, options.linger_ms)
    sock.setsockopt(zmq.SNDHWM, options.sndhwm)
    sock.setsockopt(zmq.RCVHWM, options.rcvhwm)
    sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, options.connect_timeout_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_msgsize)
    if options.handshake_ms > 0:
        sock.setsockopt(zmq.HANDSHAKE_IVL, options.handshake_ms)
    if options.tcp_maxrt_ms > 0:
        sock.setsockopt(zmq.TCP_MAXRT, options.tcp_maxrt_ms)
    if options.zmtp_heartbeat_ms > 0:
        sock.setsockopt(zmq.HEARTBEAT_IVL, options.zmtp_heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.zmtp_timeout_ms)


def _bind_or_connect(sock: zmq.Socket[Any], op: Op, address: str) -> None:
    """``sock.bind`` or ``sock.connect``, a failure translated to an AddressError."""
    try:
        if op == "bind":
            sock.bind(address)
        else:
            sock.connect(address)
    except zmq.ZMQError as exc:
        code = exc.errno or errno.EINVAL  # always set by pyzmq; typed optional
        # zmq.strerror, not exc.strerror: pyzmq appends the address, which we place.
        raise address_error(address, op, code, reason=zmq.strerror(code)) from exc


_UNBIND_WAIT_MS = 1000


def _unbind_now(
    sock: zmq.Socket[Any], bound: list[str], monitor: zmq.Socket[Any] | None = None
) -> None:
    """Give back the addresses a listener took before returning.

    libzmq closes a listening descriptor in its I/O thread, a moment after ``unbind``
    or ``close``: a caller binding again at once (a hub restarted in the same process,
    or the other addresses of a bind that failed part-way) would find the ports still
    in use. So wait, on the socket's monitor, until each TCP and IPC listener reported
    it closed (usually well under a millisecond; at most ``_UNBIND_WAIT_MS``). Used
    when a listener closes and when a bind fails. ``monitor``: the socket's monitor if it
    has one already (a socket has at most one; it must report ``EVENT_CLOSED``), which
    this disables and closes as it would its own.
    """
    waits = sum(1 for address in bound if not address.startswith("inproc://"))
    if monitor is None and waits:
        monitor = sock.get_monitor_socket(zmq.EVENT_CLOSED)
    for address in bound:
        sock.unbind(address)
    if monitor is None:
        return
    deadline = time.monotonic() + _UNBIND_WAIT_MS / 1000
    try:
        while waits and monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            if recv_monitor_message(monitor)["event"] == zmq.EVENT_CLOSED:
                waits -= 1
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        monitor.close(0)


class _Reader(FlowBase):
    """Drains an edge-triggered zmq socket from the loop's reader callback."""

    _sock: zmq.Socket[Any]

    def _init_reader(self) -> None:
        self._drain_handle: asyncio.Handle | None = None
        self._wrote = True
        self._checks = 0
        """How often EVENTS was read by :meth:`_check_events`: lets a drain skip a
        second read when its flush already read it after the last socket operation
        (each read polls libzmq's mailbox: a system call)."""
        self._fd = cast(int, self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._on_readable)
        # Messages may have arrived before the reader was added: look once.
        self._schedule_drain()

    def _wants_pollout(self) -> bool:
        """Whether POLLOUT should trigger a flush (a blocked outbox is waiting)."""
        raise NotImplementedError

    def _schedule_drain(self) -> None:
        if self._drain_handle is None and not self._closed:
            self._drain_handle = self._loop.call_soon(self._on_readable)

    def _check_events(self) -> None:
        """Read ZMQ_EVENTS and act on it later in this loop iteration. Reading EVENTS
        (like any send or recv) consumes the FD's edge, so whatever it reports must be
        acted on here or it is lost until the next unrelated wake-up."""
        self._checks += 1
        try:
            events = cast(int, self._sock.getsockopt(_EVENTS))
        except zmq.ZMQError:  # closed
            return
        if (events & _POLLIN and not self._paused) or (events & _POLLOUT and self._wants_pollout()):
            self._schedule_drain()

    def _on_readable(self) -> None:
        self._drain_handle = None
        if self._closed:
            return
        sock = self._sock
        try:
            events = cast(int, sock.getsockopt(_EVENTS))
        except zmq.ZMQError:
            return
        if events & _POLLOUT and self._wants_pollout():
            self._flush()  # ends with _after_write -> _check_events
        if events & _POLLIN and not self._paused:
            recv = self._recv_with_user_id if self.options.user_ids else self._recv_multipart
            getopt = sock.getsockopt
            batch: list[Multipart] = []
            try:
                for _ in range(self.options.drain_limit):
                    # POLLIN promises a whole multipart. Asking EVENTS before each
                    # receive is cheaper than ending on an EAGAIN exception, which
                    # matters for the lone message of a round trip.
                    batch.append(recv(_NOBLOCK))
                    if not cast(int, getopt(_EVENTS)) & _POLLIN:
                        break
            except zmq.Again:  # defensive: POLLIN said otherwise
                pass
            except zmq.ZMQError as exc:  # socket closed under us
                log.debug("recv stopped: %s", exc)
                return
            if batch:
                self._deliver(batch)
                # What the callback queued in reply goes now, not one loop iteration
                # later: the input is drained, so there is nothing more to coalesce
                # with (a hub forwarding, an immediate ack). Saves a loop iteration
                # per hop on a round trip.
                if self._flush_handle is not None:
                    checks = self._checks
                    self.flush()
                    if self._checks != checks:
                        return  # the flush read EVENTS after its last send: nothing since
        # Edge-triggered: the FD will not fire again for what is still queued.
        if not self._closed:
            self._check_events()

    _routed = False
    """A ROUTER: every multipart starts with the peer's routing id."""

    def _recv_multipart(self, flags: int) -> Multipart:
        """``recv_multipart``, except that the frames after a MESSAGE's
        :data:`~ackbus.wire.BODIES_FRAME` are received without a copy: the big ones
        (body frames) stay ``zmq.Frame`` objects, which a hub forwards as they are and
        a receiver parses through a view (docs/protocol.md, "Body frames"). A plain
        loop also costs less than pyzmq's ``recv_multipart``."""
        recv = self._sock.recv
        part = recv(flags)
        parts = [part]
        if self._routed:
            if not self._sock.getsockopt(_RCVMORE):
                return parts
            part = recv(flags)
            parts.append(part)
        self._recv_rest(parts, part, flags)
        return parts

    def _recv_rest(self, parts: Multipart, head: bytes, flags: int) -> None:
        """The frames after frame 0 (``head``, the last in ``parts``)."""
        sock = self._sock
        recv = sock.recv
        more = sock.getsockopt
        if head != BODIES_FRAME:
            while more(_RCVMORE):
                parts.append(recv(flags))
            return
        while more(_RCVMORE):
            frame = recv(flags, copy=False)
            # A zmq.Frame is a buffer, not bytes: only body frames are left as such,
            # and the wire reads those as buffers (MessageItem.body_frame).
            parts.append(frame.bytes if len(frame) < _ZERO_COPY else cast(bytes, frame))

    def _recv_with_user_id(self, flags: int) -> Multipart:
        """One multipart as ``[peer, user id, *frames]`` (``TransportOptions.user_ids``):
        the first frame is received as a ``zmq.Frame`` to read the ZeroMQ User-Id of its
        connection (with CURVE and ZAP, the client key's name)."""
        sock = self._sock
        first = sock.recv(flags, copy=False)
        try:
            user_id = str(first.get("User-Id")).encode()
        except zmq.ZMQError:  # no security mechanism on this connection
            user_id = b""
        parts = [first.bytes, user_id]
        if sock.getsockopt(_RCVMORE):
            head = sock.recv(flags)
            parts.append(head)
            self._recv_rest(parts, head, flags)
        return parts

    def _after_write(self, wrote: bool) -> None:
        self._wrote = wrote
        if not self._closed:
            self._check_events()

    def resume_reading(self) -> None:
        self._paused = False
        self._schedule_drain()

    def _close_reader(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        self._loop.remove_reader(self._fd)


class ZmqLink(_Reader, LinkBase):
    """A DEALER connected to one address. libzmq reconnects it; a socket monitor
    reports each completed handshake and each disconnect to ``on_connection``."""

    def __init__(
        self,
        context: zmq.Context[Any],
        address: str,
        on_receive: OnReceive,
        on_connection: OnConnection | None,
        options: TransportOptions,
    ) -> None:
        LinkBase.__init__(self, address, on_receive, on_connection, options)
        check(address, "connect")
        sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
        self._sock = sock
        self._monitor: zmq.Socket[Any] | None = None
        self._handshake_warned = False
        self._handshake_failures = 0
        """Failed handshakes since the last one that succeeded."""
        try:
            _configure(sock, options)
            # Queue only to completed connections: while disconnected, sends fail with
            # EAGAIN and stay in our outbox (visible backpressure, HELLO can go first).
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if options.routing_id is not None:
                sock.setsockopt(zmq.ROUTING_ID, options.routing_id)
            if options.curve is not None:
                if options.curve_server_key is None:
                    raise ValueError("a CURVE link needs curve_server_key")
                sock.setsockopt(zmq.CURVE_PUBLICKEY, options.curve.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, options.curve.secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, options.curve_server_key)
            self._monitor = sock.get_monitor_socket(_MONITORED)
            self._mon_fd = cast(int, self._monitor.getsockopt(zmq.FD))
            _bind_or_connect(sock, "connect", address)
        except BaseException:
            if self._monitor is not None:
                sock.disable_monitor()
                self._monitor.close(0)
            sock.close(0)
            self._closed = True
            raise
        self._loop.add_reader(self._mon_fd, self._on_monitor)
        self._init_reader()
        self._on_monitor()

    def _write(self, frames: Multipart) -> bool:
        send = self._sock.send
        try:
            send(frames[0], _MORE if len(frames) > 1 else _NOBLOCK)
        except zmq.Again:
            return False
        _send_rest(send, frames)
        return True

    def _wants_pollout(self) -> bool:
        # A DEALER has one connection: POLLOUT means it can take more.
        return self._outbox.blocked

    def reconnect(self) -> None:
        """Drop the connection and make a new one (same socket, routing id and outbox).
        A hub ignores a connection that came with the routing id of one it still
        holds (no ROUTER_HANDOVER), for as long as it lasts: a new one gets in once
        the old is gone."""
        if self._closed:
            return
        with contextlib.suppress(zmq.ZMQError):  # not connected now: connect all the same
            self._sock.disconnect(self._address)
        # A moment later: the hub must see the old connection close first, or it
        # ignores the new one too.
        self._loop.call_later(_RECONNECT_PAUSE, self._connect_again)

    def _connect_again(self) -> None:
        if not self._closed:
            _bind_or_connect(self._sock, "connect", self._address)

    def _on_monitor(self) -> None:
        mon = self._monitor
        while mon is not None and not self._closed:
            try:
                event = recv_monitor_message(mon, _NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_warned = False
                self._handshake_failures = 0
                self.handshake_failure = None
                self._set_connected(True)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._set_connected(False)
            else:  # a failed handshake (the monitor reports nothing else)
                self.handshake_failure = zmq.Event(kind).name
                self._handshake_failures += 1
                if self._handshake_warned:  # once, not at every reconnect attempt
                    continue
                if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._handshake_failures < 2:
                    continue  # one cut handshake: a hub restarting, or busy accepting
                self._handshake_warned = True
                log.warning(
                    "%s: handshake failed (%s): %s; retrying quietly",
                    self._address,
                    zmq.Event(kind).name,
                    _handshake_cause(kind, self.options.curve is not None),
                )

    def _release(self) -> None:
        self._close_reader()
        if self._monitor is not None:
            self._loop.remove_reader(self._mon_fd)
            self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self._sock.close(self.options.linger_ms)


def _handshake_cause(kind: int, curve: bool) -> str:
    """What a failed handshake of a link most likely means, for its warning."""
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "the hub refused this endpoint's CURVE key (enroll it in the hub's clients/)"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (
            "the peer speaks another ZMTP security mechanism: keys on one side only, "
            "or not an ackbus hub"
        )
    if curve:
        return (
            "the connection was cut during the handshake: the hub_key may not be this "
            "hub's, the hub may run without keys, or it is restarting"
        )
    return (
        "the connection was cut during the handshake, again: the hub may require keys "
        "(keys=, hub_key=), or it is restarting or overloaded"
    )


class ZmqListener(_Reader, ListenerBase):
    """A ROUTER bound to one or more addresses, with ROUTER_MANDATORY so that sending
    to a gone peer is reported (``on_unroutable``) instead of silently dropped."""

    _routed = True

    def __init__(
        self,
        context: zmq.Context[Any],
        addresses: list[str],
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None,
        options: TransportOptions,
    ) -> None:
        ListenerBase.__init__(self, on_receive, on_unroutable, options)
        for address in addresses:
            check(address, "bind")
        sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
        self._sock = sock
        self._monitor: zmq.Socket[Any] | None = None
        self._mon_reading = False
        bound = []
        try:
            _configure(sock, options)
            sock.setsockopt(zmq.BACKLOG, options.backlog)
            if options.on_accept_failed is not None:  # before binding: no failure missed
                # EVENT_CLOSED too: closing waits on it (_unbind_now), and a socket
                # has one monitor at most.
                self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPT_FAILED | zmq.EVENT_CLOSED)
                self._mon_fd = cast(int, self._monitor.getsockopt(zmq.FD))
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # No ROUTER_HANDOVER: a connection with the routing id of a live one is
            # ignored by libzmq (its frames are dropped), so nobody takes over a live
            # peer's slot by naming its id. A peer reconnecting with a fixed routing
            # id gets in once its old connection is gone (closed, reset, or dropped by
            # TCP_MAXRT); a link that got in too early reconnects
            # (:meth:`ZmqLink.reconnect`, asked by an endpoint whose HELLO goes
            # unanswered).
            if options.curve is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, options.curve.secret)
            for address in addresses:
                _bind_or_connect(sock, "bind", address)
                bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except BaseException:
            _unbind_now(sock, bound, self._stop_monitor())
            sock.close(0)
            self._closed = True
            raise
        self._addresses = tuple(bound)
        self._init_reader()
        if self._monitor is not None:
            self._loop.add_reader(self._mon_fd, self._on_monitor)
            self._mon_reading = True
            self._on_monitor()

    def _on_monitor(self) -> None:
        """Report each failed accept (the monitor's FD is edge-triggered: read until it
        is empty, or come back next iteration after a batch)."""
        mon = self._monitor
        report = self.options.on_accept_failed
        if mon is None or report is None or self._closed:
            return
        for _ in range(_MONITOR_BATCH):
            try:
                event = recv_monitor_message(mon, _NOBLOCK)
            except zmq.ZMQError:  # zmq.Again: all read
                return
            if event["event"] == zmq.EVENT_ACCEPT_FAILED:
                report(int(event["value"]))
        self._loop.call_soon(self._on_monitor)

    def _stop_monitor(self) -> zmq.Socket[Any] | None:
        """Stop reading the monitor; the monitor, for :func:`_unbind_now` to finish."""
        if self._mon_reading:
            self._loop.remove_reader(self._mon_fd)
            self._mon_reading = False
        monitor, self._monitor = self._monitor, None
        return monitor

    def _write(self, peer: bytes, frames: Multipart) -> bool | None:
        send = self._sock.send
        try:
            send(peer, _MORE)  # the routing id: where ROUTER_MANDATORY says no
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return None
            raise
        send(frames[0], _MORE if len(frames) > 1 else _NOBLOCK)
        _send_rest(send, frames)
        return True

    def reachable(self, peer: bytes, probe: Multipart) -> bool:
        if self._closed:
            return False
        try:
            self._sock.send(peer, _MORE)
        except zmq.Again:
            return True  # its pipe is full: it is there
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return False
            raise
        last = len(probe) - 1
        for i, frame in enumerate(probe):
            self._sock.send(frame, _NOBLOCK if i == last else _MORE)
        self._after_write(True)
        return True

    def _wants_pollout(self) -> bool:
        # A ROUTER's POLLOUT means *some* peer can take more, not which: retry blocked
        # peers on it only while retries make progress (no spinning on a stuck peer;
        # the backoff timer covers that case).
        return bool(self._blocked) and self._wrote

    def _release(self) -> None:
        self._close_reader()
        # Free to bind again at once.
        _unbind_now(self._sock, list(self._addresses), self._stop_monitor())
        self._sock.close(self.options.linger_ms)


class ZmqBackend:
    """Links and listeners over real ZeroMQ sockets (tcp://, ipc://, inproc://)."""

    def __init__(self, context: zmq.Context[Any] | None = None) -> None:
        self.context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()

    def connect(
        self,
        address: str,
        *,
        on_receive: OnReceive,
        on_connection: OnConnection | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> ZmqLink:
        return ZmqLink(self.context, address, on_receive, on_connection, options)

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> ZmqListener:
        addrs = [addresses] if isinstance(addresses, str) else list(addresses)
        return ZmqListener(self.context, addrs, on_receive, on_unroutable, options)
