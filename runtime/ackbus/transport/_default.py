"""The backend a hub and an endpoint use unless told otherwise: ZeroMQ, plus
``inmem://`` addresses for a hub and endpoints that share one process.

Why in-process addresses: without them a hub embedded in a service (``Hub`` on the
service's own event loop) reaches that service's endpoint over TCP loopback, so each
message and each ack crosses the loopback twice inside one process: four libzmq
I/O-thread and event-loop wake-ups and four system calls per round trip that carry
nothing a function call could not. Bound to an ``inmem://`` address as well, the hub
hands multiparts to its in-process endpoints through the in-memory transport (the same
contract, run by the same tests as ZeroMQ), and reaches everyone else over ZeroMQ:

    async with Hub(["tcp://0.0.0.0:5555", "inmem://hub"], keys="hub-keys") as hub, \\
               Endpoint("tables", "inmem://hub") as ep:   # same process, same loop
        ...                                               # others connect over TCP

What it is not: ``inmem://`` never leaves the process, so CURVE and the socket options
do not apply to it, and both sides must run on the same event loop (a link from
another loop is refused with an :class:`~ackbus.errors.AddressError`; threads use
``tcp://``, ``ipc://`` or ``inproc://``).
"""

from __future__ import annotations

from typing import Any

import zmq

from ..wire import Multipart, Outbox
from ._base import Link, Listener, OnConnection, OnReceive, OnUnroutable, TransportOptions
from ._flow import ClosesOnExit
from ._memory import SCHEME, MemoryBackend, MemoryListener
from ._zmq import ZmqBackend, ZmqListener

__all__ = ["LOCAL", "DefaultBackend"]

LOCAL = MemoryBackend()
"""The process's ``inmem://`` namespace: what one hub binds there, any endpoint of this
process (on the hub's loop) can connect to."""


class DefaultBackend:
    """ZeroMQ (``tcp://``, ``ipc://``, ``inproc://``), and ``inmem://`` in this process.

    A listener bound to addresses of both kinds is one listener to its owner: it
    reports what either side receives and sends each peer's multiparts through the
    side that peer is connected to.
    """

    def __init__(
        self, context: zmq.Context[Any] | None = None, local: MemoryBackend | None = None
    ) -> None:
        self.zmq = ZmqBackend(context)
        self.local = LOCAL if local is None else local

    def connect(
        self,
        address: str,
        *,
        on_receive: OnReceive,
        on_connection: OnConnection | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> Link:
        backend: ZmqBackend | MemoryBackend = self.local if address.startswith(SCHEME) else self.zmq
        return backend.connect(
            address, on_receive=on_receive, on_connection=on_connection, options=options
        )

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> Listener:
        addrs = [addresses] if isinstance(addresses, str) else list(addresses)
        local = [a for a in addrs if a.startswith(SCHEME)]
        remote = [a for a in addrs if not a.startswith(SCHEME)]
        if not local:
            return self.zmq.bind(
                remote, on_receive=on_receive, on_unroutable=on_unroutable, options=options
            )
        # The names are checked and taken first: a memory bind fails before any socket
        # exists, and a failed socket bind has only a memory listener to close.
        memory = self.local.bind(
            local, on_receive=on_receive, on_unroutable=on_unroutable, options=options
        )
        if not remote:
            return memory
        try:
            sockets = self.zmq.bind(
                remote, on_receive=on_receive, on_unroutable=on_unroutable, options=options
            )
        except BaseException:
            memory.close()
            raise
        return _MixedListener(memory, sockets, addrs)


class _MixedListener(ClosesOnExit):
    """An in-memory listener and a ZeroMQ one, bound together.

    Which side a peer is on: the in-memory listener knows its peers from the moment
    they connect; every other peer is a ZeroMQ peer. A peer id names one connection
    of one hub, as with ZeroMQ alone (endpoints use their instance id): two links
    with the same fixed routing id, one on each side, would both be the in-memory one.
    """

    def __init__(self, memory: MemoryListener, sockets: ZmqListener, asked: list[str]) -> None:
        self._memory = memory
        self._sockets = sockets
        self._is_local = memory.has_peer
        local, remote = iter(memory.addresses), iter(sockets.addresses)
        self._addresses = tuple(  # resolved (port 0, inmem://*), in the order asked for
            next(local) if a.startswith(SCHEME) else next(remote) for a in asked
        )

    def _side(self, peer: bytes) -> MemoryListener | ZmqListener:
        return self._memory if self._is_local(peer) else self._sockets

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    @property
    def closed(self) -> bool:
        return self._memory.closed and self._sockets.closed

    def outbox(self, peer: bytes) -> Outbox:
        return self._side(peer).outbox(peer)

    def send_once(self, peer: bytes, frames: Multipart) -> bool:
        return self._side(peer).send_once(peer, frames)

    def forget(self, peer: bytes) -> list[Multipart]:
        return self._memory.forget(peer) + self._sockets.forget(peer)

    def writable(self, peer: bytes) -> bool:
        return self._side(peer).writable(peer)

    def reachable(self, peer: bytes, probe: Multipart) -> bool:
        return self._side(peer).reachable(peer, probe)

    async def wait_writable(self, peer: bytes, timeout: float) -> None:
        await self._side(peer).wait_writable(peer, timeout)

    def flush(self) -> None:
        self._memory.flush()
        self._sockets.flush()

    def pause_reading(self) -> None:
        self._memory.pause_reading()
        self._sockets.pause_reading()

    def resume_reading(self) -> None:
        self._memory.resume_reading()
        self._sockets.resume_reading()

    def close(self) -> None:
        try:
            self._sockets.close()
        finally:
            self._memory.close()
