"""The default backend: ZeroMQ addresses and ``inmem://`` in one listener.

The contract itself runs on either side of such a listener (conftest's ``mixed-*``
kits); these tests cover what only a listener with both sides has.
"""

from __future__ import annotations

import asyncio
import errno
import threading

import pytest
import zmq
from ackbus import AddressError, wire
from ackbus.transport import DefaultBackend, MemoryBackend, ZmqBackend
from ackbus.wire import Multipart
from helpers import eventually

from .test_contract import Inbox, ids, item

T = 5.0


def ignore(batch: list[Multipart]) -> None:
    pass


async def test_one_listener_serves_peers_on_both_sides() -> None:
    backend = DefaultBackend(local=MemoryBackend())
    server = Inbox()
    async with backend.bind(["inmem://hub", "tcp://127.0.0.1:0"], on_receive=server) as hub:
        local_addr, tcp_addr = hub.addresses
        assert local_addr == "inmem://hub"
        assert tcp_addr.startswith("tcp://127.0.0.1:")
        assert not tcp_addr.endswith(":0")
        local, remote = Inbox(), Inbox()
        near = backend.connect(local_addr, on_receive=local)
        far = backend.connect(tcp_addr, on_receive=remote)
        await near.wait_connected(T)
        await far.wait_connected(T)
        near.outbox.message(item(1))
        far.outbox.message(item(2))
        await server.until(lambda: len(server.multiparts) == 2)
        peer_of = {ids([mp], peer_first=True)[0]: mp[0] for mp in server.multiparts}
        assert peer_of[1] != peer_of[2]
        # Each peer's multiparts go back through the side it is connected to.
        hub.outbox(peer_of[1]).message(item(10), peer=peer_of[2])
        hub.outbox(peer_of[2]).message(item(20), peer=peer_of[1])
        await local.until(lambda: len(local.multiparts) == 1)
        await remote.until(lambda: len(remote.multiparts) == 1)
        assert ids(local.multiparts, peer_first=False) == [10]
        assert ids(remote.multiparts, peer_first=False) == [20]
        assert hub.writable(peer_of[1])
        assert hub.writable(peer_of[2])
        near.close()
        far.close()


async def test_a_gone_local_peer_is_reported_unroutable() -> None:
    backend = DefaultBackend(local=MemoryBackend())
    server = Inbox()
    lost: list[tuple[bytes, list[Multipart]]] = []
    async with backend.bind(
        ["tcp://127.0.0.1:0", "inmem://hub"],
        on_receive=server,
        on_unroutable=lambda peer, mps: lost.append((peer, mps)),
    ) as hub:
        link = backend.connect("inmem://hub", on_receive=ignore)
        await link.wait_connected(T)
        link.outbox.message(item(1))
        await server.until(lambda: len(server.multiparts) == 1)
        peer = server.multiparts[0][0]
        link.close()
        hub.outbox(peer).message(item(2))  # to a peer neither side has any more
        await eventually(lambda: bool(lost), T, every=0.005)  # reported by the next flush
        assert lost[0][0] == peer
        assert [i.id for i in wire.decode_messages(lost[0][1][0])] == [(2).to_bytes(16, "big")]


async def test_a_failed_socket_bind_releases_the_local_name() -> None:
    ctx = zmq.Context()
    busy = ctx.socket(zmq.ROUTER)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    backend = DefaultBackend(local=MemoryBackend())
    try:
        with pytest.raises(AddressError) as caught:
            backend.bind(["inmem://hub", f"tcp://127.0.0.1:{port}"], on_receive=ignore)
        assert caught.value.errno == errno.EADDRINUSE
        backend.bind("inmem://hub", on_receive=ignore).close()  # free again
    finally:
        busy.close(0)
        ctx.term()


async def test_a_taken_local_name_fails_before_any_socket_is_bound() -> None:
    backend = DefaultBackend(local=MemoryBackend())
    with backend.bind("inmem://hub", on_receive=ignore):
        port_probe = ZmqBackend().bind("tcp://127.0.0.1:0", on_receive=ignore)
        address = port_probe.addresses[0]
        port_probe.close()
        with pytest.raises(AddressError) as caught:
            backend.bind([address, "inmem://hub"], on_receive=ignore)
        assert caught.value.errno == errno.EADDRINUSE
        # The TCP address was never taken: it binds at once.
        backend.bind(address, on_receive=ignore).close()


async def test_a_link_from_another_event_loop_is_refused() -> None:
    backend = DefaultBackend(local=MemoryBackend())
    bound = threading.Event()
    stop = threading.Event()

    def other_loop() -> None:
        async def serve() -> None:
            with backend.bind("inmem://elsewhere", on_receive=ignore):
                bound.set()
                while not stop.is_set():  # noqa: ASYNC110 - a thread's loop, polled
                    await asyncio.sleep(0.005)

        asyncio.run(serve())

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        assert bound.wait(T)
        with pytest.raises(AddressError) as caught:
            backend.connect("inmem://elsewhere", on_receive=ignore)
        err = caught.value
        assert (err.op, err.errno) == ("connect", errno.EXDEV)
        assert "another event loop" in str(err)
        assert "tcp://, ipc:// or inproc://" in str(err)
    finally:
        stop.set()
        thread.join(T)
