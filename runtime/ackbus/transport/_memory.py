"""The in-memory transport: the same contract as the ZeroMQ one, no sockets.

It exists so the endpoint and hub can be unit-tested fast and deterministically, so
users can test their handlers without a network, and so a hub embedded in a service
reaches that service's endpoints without sockets (``inmem://`` in the default backend,
:mod:`._default`). It imitates what the layers above
can observe of ZeroMQ: delivery on a later loop iteration, connection events after a
listener binds or goes away, automatic reconnection to an address that is bound again,
a bounded queue per direction (``sndhwm + rcvhwm`` multiparts) that makes a sender see
backpressure, and an unknown peer reported as unroutable.

Addresses look like ``inmem://name``; ``inmem://*`` picks a fresh name. A name bound
twice, or another scheme, is an :class:`~ackbus.errors.AddressError`, as with ZeroMQ.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections import deque

from ..errors import AddressError
from ..wire import Multipart
from ._address import Op, address_error
from ._base import OnConnection, OnReceive, OnUnroutable, TransportOptions
from ._flow import FlowBase, LinkBase, ListenerBase, log

__all__ = ["MemoryBackend", "MemoryLink", "MemoryListener"]

SCHEME = "inmem://"
_AUTO_ID = b"\x00m"


def _other_loop(address: str) -> AddressError:
    return address_error(
        address,
        "connect",
        errno.EXDEV,
        reason="bound on another event loop",
        forms=f"{SCHEME}NAME",
    )


def _check_scheme(address: str, op: Op) -> None:
    if not address.startswith(SCHEME):
        raise address_error(address, op, errno.EPROTONOSUPPORT, forms=f"{SCHEME}NAME")


class _Inbox(FlowBase):
    """Received multiparts waiting for the owner, delivered on a later loop iteration
    in batches of at most ``drain_limit`` (as the zmq reader drains)."""

    def _init_inbox(self) -> None:
        self._inbox: deque[Multipart] = deque()
        self._delivery: asyncio.Handle | None = None

    def _schedule_delivery(self) -> None:
        if self._delivery is None and not self._paused and not self._closed:
            self._delivery = self._loop.call_soon(self._deliver_some)

    def _deliver_some(self) -> None:
        self._delivery = None
        if self._closed or self._paused or not self._inbox:
            return
        n = min(len(self._inbox), self.options.drain_limit)
        batch = [self._inbox.popleft() for _ in range(n)]
        self._taken(batch)
        self._deliver(batch)
        if self._inbox:
            self._schedule_delivery()
        self._space_freed_for_peers()

    def _taken(self, batch: list[Multipart]) -> None:
        """Bookkeeping for multiparts leaving the inbox."""

    def _space_freed_for_peers(self) -> None:
        """The inbox has room again: let blocked senders retry now."""

    def resume_reading(self) -> None:
        super().resume_reading()
        self._schedule_delivery()


class MemoryLink(_Inbox, LinkBase):
    def __init__(
        self,
        backend: MemoryBackend,
        address: str,
        on_receive: OnReceive,
        on_connection: OnConnection | None,
        options: TransportOptions,
    ) -> None:
        super().__init__(address, on_receive, on_connection, options)
        self._backend = backend
        # Six bytes: never equal to a ZeroMQ ROUTER's own ids (five), so one hub can
        # listen on both (transport._default).
        self.routing_id = options.routing_id or _AUTO_ID + next(backend._ids).to_bytes(4, "big")
        self._peer: MemoryListener | None = None
        listener = backend._listeners.get(address)
        if listener is not None and listener._loop is not self._loop:
            self._closed = True
            raise _other_loop(address)
        self._init_inbox()
        backend._waiting.setdefault(address, set()).add(self)
        if listener is not None:
            listener._attach(self)

    def reconnect(self) -> None:
        """Nothing to do in memory: a link waiting for its routing id to be free
        gets in as soon as it is (see ``MemoryListener._detach``)."""

    # called by the listener
    def _attached(self, listener: MemoryListener) -> None:
        self._peer = listener
        self._loop.call_soon(self._set_connected, True)

    def _detached(self) -> None:
        self._peer = None
        self._inbox.clear()  # like a dead zmq pipe: what the hub sent is gone
        self._loop.call_soon(self._set_connected, False)

    def _accept(self, frames: Multipart) -> bool:
        if self._closed or len(self._inbox) >= self._capacity_from_peer():
            return False
        self._inbox.append(frames)
        self._schedule_delivery()
        return True

    def _capacity_from_peer(self) -> int:
        sndhwm = self._peer.options.sndhwm if self._peer is not None else 0
        return sndhwm + self.options.rcvhwm

    def _space_freed_for_peers(self) -> None:
        if self._peer is not None and self._peer._blocked:
            self._peer._schedule_flush()

    def _write(self, frames: Multipart) -> bool:
        if self._peer is None or not self._connected:
            return False
        return self._peer._accept(self, frames)

    def _release(self) -> None:
        waiting = self._backend._waiting.get(self._address)
        if waiting is not None:
            waiting.discard(self)
        if self._peer is not None:
            self._peer._detach(self)
            self._peer = None
        self._inbox.clear()


class MemoryListener(_Inbox, ListenerBase):
    def __init__(
        self,
        backend: MemoryBackend,
        addresses: list[str],
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None,
        options: TransportOptions,
    ) -> None:
        super().__init__(on_receive, on_unroutable, options)
        self._backend = backend
        self._peers: dict[bytes, MemoryLink] = {}
        self._queued: dict[bytes, int] = {}
        self._init_inbox()
        bound: list[str] = []
        for address in addresses:  # all checked before any is taken: nothing to undo
            _check_scheme(address, "bind")
            if address == SCHEME + "*":
                address = f"{SCHEME}auto-{next(backend._ids)}"
            if address in backend._listeners or address in bound:
                raise address_error(address, "bind", errno.EADDRINUSE)
            bound.append(address)
        self._addresses = tuple(bound)
        for address in bound:
            backend._listeners[address] = self
            for link in list(backend._waiting.get(address, ())):
                if link._loop is self._loop:
                    self._attach(link)
                else:  # it never connects: its wait_connected times out
                    log.error("%s: %s", link.address, _other_loop(address))

    def has_peer(self, peer: bytes) -> bool:
        """Whether ``peer`` is a link connected to this listener now."""
        return peer in self._peers

    def _attach(self, link: MemoryLink) -> None:
        old = self._peers.get(link.routing_id)
        if old is not None and old is not link:
            # No ROUTER_HANDOVER (as ZeroMQ's listener): the routing id of a live link
            # is not taken over; this link waits, unconnected, until that one leaves.
            return
        self._peers[link.routing_id] = link
        link._attached(self)

    def _detach(self, link: MemoryLink) -> None:
        if self._peers.get(link.routing_id) is link:
            del self._peers[link.routing_id]
            for other in list(self._backend._waiting.get(link._address, ())):
                if other is not link and other.routing_id == link.routing_id and not other._peer:
                    self._attach(other)  # the one waiting for this routing id gets in
                    break

    def _accept(self, link: MemoryLink, frames: Multipart) -> bool:
        peer = link.routing_id
        queued = self._queued.get(peer, 0)
        if self._closed or queued >= link.options.sndhwm + self.options.rcvhwm:
            return False
        self._queued[peer] = queued + 1
        self._inbox.append([peer, b"", *frames] if self.options.user_ids else [peer, *frames])
        self._schedule_delivery()
        return True

    def _taken(self, batch: list[Multipart]) -> None:
        for frames in batch:
            self._queued[frames[0]] -= 1

    def _space_freed_for_peers(self) -> None:
        for link in list(self._peers.values()):
            if link.outbox.blocked:
                link._schedule_flush()

    def _write(self, peer: bytes, frames: Multipart) -> bool | None:
        link = self._peers.get(peer)
        if link is None:
            return None
        return link._accept(frames)

    def reachable(self, peer: bytes, probe: Multipart) -> bool:
        link = self._peers.get(peer)
        if link is None or self._closed:
            return False
        link._accept(probe)  # a full inbox drops it, as a full pipe would
        return True

    def _release(self) -> None:
        for address in self._addresses:
            if self._backend._listeners.get(address) is self:
                del self._backend._listeners[address]
        for link in list(self._peers.values()):
            link._detached()
        self._peers.clear()
        self._inbox.clear()


class MemoryBackend:
    """A namespace of in-memory addresses; links and listeners made by one backend
    can reach each other."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryListener] = {}
        self._waiting: dict[str, set[MemoryLink]] = {}
        self._ids = itertools.count(1)

    def connect(
        self,
        address: str,
        *,
        on_receive: OnReceive,
        on_connection: OnConnection | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> MemoryLink:
        _check_scheme(address, "connect")
        return MemoryLink(self, address, on_receive, on_connection, options)

    def bind(
        self,
        addresses: str | list[str] | tuple[str, ...],
        *,
        on_receive: OnReceive,
        on_unroutable: OnUnroutable | None = None,
        options: TransportOptions = TransportOptions(),  # noqa: B008 (frozen)
    ) -> MemoryListener:
        addrs = [addresses] if isinstance(addresses, str) else list(addresses)
        return MemoryListener(self, addrs, on_receive, on_unroutable, options)
