"""The transport contract, run over every backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from ackbus import ClosedError, ConnectTimeout, SendWindowTimeout, wire
from ackbus.transport import TransportOptions
from ackbus.wire import Multipart
from helpers import eventually
from proc_harness import free_port

from .conftest import Kit

T = 5.0  # generous per-await timeout; tests finish in milliseconds


def item(i: int, body: bytes = b"x" * 100) -> bytes:
    return wire.encode_message(i.to_bytes(16, "big"), "t.T", body)


def ids(multiparts: list[Multipart], *, peer_first: bool) -> list[int]:
    out = []
    for mp in multiparts:
        frames = mp[1:] if peer_first else mp
        out += [int.from_bytes(i.id, "big") for i in wire.decode_messages(frames)]
    return out


class Inbox:
    """Collects what a transport delivers and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.batches: list[list[Multipart]] = []
        self._changed = asyncio.Event()

    def __call__(self, batch: list[Multipart]) -> None:
        self.batches.append(batch)
        self._changed.set()

    @property
    def multiparts(self) -> list[Multipart]:
        return [mp for b in self.batches for mp in b]

    async def until(self, cond: Callable[[], bool], timeout: float = T) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()


async def test_round_trip_with_peer_ids(kit: Kit) -> None:
    server, client = Inbox(), Inbox()
    events: list[bool] = []
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        link = kit.backend.connect(
            listener.addresses[0], on_receive=client, on_connection=events.append
        )
        async with asyncio.timeout(T):
            await link.wait_connected(T)
        assert link.connected
        assert events == [True]
        link.outbox.message(item(1))
        await server.until(lambda: len(server.multiparts) == 1)
        peer = server.multiparts[0][0]
        assert ids(server.multiparts, peer_first=True) == [1]
        listener.outbox(peer).ack((1).to_bytes(16, "big"), peer=b"origin")
        await client.until(lambda: len(client.multiparts) == 1)
        [group] = wire.split_acks(client.multiparts[0])
        assert (group.peer, group.ok_ids) == (b"origin", [(1).to_bytes(16, "big")])
        link.close()


async def test_burst_is_coalesced_and_lone_message_is_not_delayed(kit: Kit) -> None:
    server = Inbox()
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        link = kit.backend.connect(listener.addresses[0], on_receive=Inbox())
        await link.wait_connected(T)
        for i in range(1000):  # one loop iteration: one flush
            link.outbox.message(item(i))
        await server.until(lambda: len(ids(server.multiparts, peer_first=True)) == 1000)
        assert ids(server.multiparts, peer_first=True) == list(range(1000))
        batches = -(-1000 // wire.MAX_BATCH)  # full batches, then one partial
        assert len(server.multiparts) == batches
        # A lone message leaves at the end of this loop iteration, not after a timer.
        loop = asyncio.get_running_loop()
        start = loop.time()
        link.outbox.message(item(5000))
        await server.until(lambda: len(server.multiparts) == batches + 1)
        assert loop.time() - start < 0.5
        link.close()


async def test_messages_wait_for_a_listener_that_binds_later(kit: Kit) -> None:
    address = kit.address()
    if address.startswith("tcp://"):
        # A concrete free port, from a plain socket (its close is synchronous, while a
        # zmq listener's happened later in libzmq's I/O thread, long enough for the link
        # below to connect to the dying listener), below the ephemeral range (so the
        # link's reconnects cannot connect to themselves on it: see free_port).
        address = f"tcp://127.0.0.1:{free_port()}"
    elif "*" in address or address.endswith(":0"):
        probe_listener = kit.backend.bind(address, on_receive=Inbox())
        address = probe_listener.addresses[0]
        probe_listener.close()
    client_events: list[bool] = []
    link = kit.backend.connect(address, on_receive=Inbox(), on_connection=client_events.append)
    try:
        for i in range(3):
            link.outbox.message(item(i))
        await asyncio.sleep(0.05)
        assert not link.connected
        assert len(link.outbox) == 3  # still ours: nothing queued to a non-connection
        with pytest.raises(ConnectTimeout):
            await link.wait_connected(0.01)
        server = Inbox()
        with kit.backend.bind(address, on_receive=server):
            await link.wait_connected(T)
            await server.until(lambda: len(ids(server.multiparts, peer_first=True)) == 3)
        assert client_events[0] is True
    finally:
        link.close()


async def test_reconnects_after_listener_restarts_on_same_address(kit: Kit) -> None:
    events: list[bool] = []
    first = Inbox()
    listener = kit.backend.bind(kit.address(), on_receive=first)
    address = listener.addresses[0]
    link = kit.backend.connect(address, on_receive=Inbox(), on_connection=events.append)
    try:
        await link.wait_connected(T)
        link.outbox.message(item(1))
        await first.until(lambda: len(first.multiparts) == 1)
        listener.close()
        await eventually(lambda: not link.connected)
        second = Inbox()
        listener = kit.backend.bind(address, on_receive=second)
        await link.wait_connected(T)
        link.outbox.message(item(2))
        await second.until(lambda: len(second.multiparts) == 1)
        assert ids(second.multiparts, peer_first=True) == [2]
        assert events == [True, False, True]
    finally:
        link.close()
        listener.close()


async def test_backpressure_link_to_slow_listener_loses_nothing(kit: Kit) -> None:
    # One message per multipart and tiny high-water marks; big bodies so that kernel
    # socket buffers fill up too. The listener does not read until told to.
    opts = TransportOptions(sndhwm=1, rcvhwm=1, max_batch=1, outbox_high_water=50)
    body = b"b" * 65536
    server = Inbox()
    with kit.backend.bind(kit.address(), on_receive=server, options=opts) as listener:
        listener.pause_reading()
        link = kit.backend.connect(listener.addresses[0], on_receive=Inbox(), options=opts)
        await link.wait_connected(T)
        n = 300
        for i in range(n):
            link.outbox.message(item(i, body))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not link.writable
        assert link.outbox.blocked
        with pytest.raises(SendWindowTimeout):
            await link.wait_writable(0.02)
        listener.resume_reading()
        await link.wait_writable(T)
        await server.until(lambda: len(server.multiparts) == n)
        assert ids(server.multiparts, peer_first=True) == list(range(n))
        assert link.writable
        link.close()


async def test_backpressure_listener_to_slow_link(kit: Kit) -> None:
    opts = TransportOptions(sndhwm=1, rcvhwm=1, max_batch=1)
    body = b"b" * 65536
    server, client = Inbox(), Inbox()
    with kit.backend.bind(kit.address(), on_receive=server, options=opts) as listener:
        link = kit.backend.connect(listener.addresses[0], on_receive=client, options=opts)
        await link.wait_connected(T)
        link.outbox.control(wire.encode_heartbeat())
        await server.until(lambda: len(server.multiparts) == 1)
        peer = server.multiparts[0][0]
        link.pause_reading()
        n = 300
        for i in range(n):
            listener.outbox(peer).message(item(i, body))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not listener.writable(peer)
        with pytest.raises(SendWindowTimeout):
            await listener.wait_writable(peer, 0.02)
        link.resume_reading()
        await client.until(lambda: len(client.multiparts) == n)
        assert ids(client.multiparts, peer_first=False) == list(range(n))
        await listener.wait_writable(peer, T)
        link.close()


async def test_unknown_peer_is_reported_not_dropped(kit: Kit) -> None:
    lost: list[tuple[bytes, list[Multipart]]] = []
    with kit.backend.bind(
        kit.address(), on_receive=Inbox(), on_unroutable=lambda p, m: lost.append((p, m))
    ) as listener:
        listener.outbox(b"nobody").message(item(7))
        listener.outbox(b"nobody").control(wire.encode_heartbeat())
        await eventually(lambda: bool(lost))
        [(peer, multiparts)] = lost
        assert peer == b"nobody"
        assert [wire.decode_command(mp) for mp in multiparts] == [
            wire.Command.MESSAGE,
            wire.Command.HEARTBEAT,
        ]


async def test_reachable_sends_the_probe_to_a_connected_peer_only(kit: Kit) -> None:
    server, client = Inbox(), Inbox()
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        assert not listener.reachable(b"nobody", wire.encode_heartbeat())
        link = kit.backend.connect(
            listener.addresses[0],
            on_receive=client,
            options=TransportOptions(routing_id=b"table/t-1"),
        )
        await link.wait_connected(T)
        link.outbox.control(wire.encode_heartbeat())
        await server.until(lambda: len(server.multiparts) == 1)
        assert listener.reachable(b"table/t-1", wire.encode_heartbeat())
        await client.until(lambda: len(client.multiparts) == 1)
        assert wire.decode_command(client.multiparts[0]) is wire.Command.HEARTBEAT
        link.close()
        await eventually(lambda: not listener.reachable(b"table/t-1", wire.encode_heartbeat()))


async def test_fixed_routing_id(kit: Kit) -> None:
    server = Inbox()
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        link = kit.backend.connect(
            listener.addresses[0],
            on_receive=Inbox(),
            options=TransportOptions(routing_id=b"table/t-1"),
        )
        await link.wait_connected(T)
        link.outbox.control(wire.encode_heartbeat())
        await server.until(lambda: len(server.multiparts) == 1)
        assert server.multiparts[0][0] == b"table/t-1"
        link.close()


async def test_a_live_routing_id_is_not_taken_over(kit: Kit) -> None:
    """No ROUTER_HANDOVER: a second link naming a live link's routing id does not take
    its place (its frames are dropped); once the first is gone, a reconnect gets in."""
    server, first_in, thief_in = Inbox(), Inbox(), Inbox()
    options = TransportOptions(routing_id=b"table/t-1")
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        first = kit.backend.connect(listener.addresses[0], on_receive=first_in, options=options)
        await first.wait_connected(T)
        thief = kit.backend.connect(listener.addresses[0], on_receive=thief_in, options=options)
        await asyncio.sleep(0.2)
        thief.outbox.control(wire.encode_heartbeat())
        first.outbox.message(item(1))
        await server.until(lambda: len(server.multiparts) == 1)
        await asyncio.sleep(0.2)
        assert [mp[0] for mp in server.multiparts] == [b"table/t-1"]
        assert wire.decode_command(server.multiparts[0][1:]) is wire.Command.MESSAGE
        listener.outbox(b"table/t-1").control(wire.encode_heartbeat())
        await first_in.until(lambda: len(first_in.multiparts) == 1)
        assert thief_in.multiparts == []
        first.close()
        await asyncio.sleep(0.3)
        thief.reconnect()
        await asyncio.sleep(0.5)
        thief.outbox.control(wire.encode_heartbeat())
        await server.until(lambda: len(server.multiparts) == 2)
        thief.close()


async def test_close_is_idempotent_and_fails_waiters(kit: Kit) -> None:
    listener = kit.backend.bind(kit.address(), on_receive=Inbox())
    address = listener.addresses[0]
    listener.close()
    link = kit.backend.connect(address, on_receive=Inbox())
    waiter = asyncio.ensure_future(link.wait_connected(T))
    await asyncio.sleep(0.01)
    link.close()
    link.close()
    listener.close()
    with pytest.raises(ClosedError):
        async with asyncio.timeout(T):
            await waiter
    assert link.closed
    assert listener.closed
    assert not link.writable
    with pytest.raises(ClosedError):
        await link.wait_writable(T)
    with pytest.raises(ClosedError):
        listener.outbox(b"p")
    link.outbox.message(item(1))  # queued into a closed link: ignored, no error, no task
    await asyncio.sleep(0.01)


async def test_a_raising_callback_does_not_stop_the_reader(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Multipart] = []

    def flaky(batch: list[Multipart]) -> None:
        seen.extend(batch)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    with kit.backend.bind(kit.address(), on_receive=flaky) as listener:
        link = kit.backend.connect(listener.addresses[0], on_receive=Inbox())
        await link.wait_connected(T)
        with caplog.at_level(logging.ERROR, logger="ackbus.transport"):
            link.outbox.message(item(1))
            await eventually(lambda: bool(seen))
            link.outbox.message(item(2))
            await eventually(lambda: len(seen) >= 2)
        assert "handler bug" in caplog.text
        link.close()


async def test_ping_pong_never_stalls(kit: Kit) -> None:
    """Sequential round trips: a message left unnoticed on the edge-triggered FD would
    stall this within a few iterations."""
    done = asyncio.Event()
    count = 0
    listener = None

    def server(batch: list[Multipart]) -> None:
        assert listener is not None
        for mp in batch:
            for it in wire.decode_messages(mp[1:]):
                listener.outbox(mp[0]).ack(it.id)

    def client(batch: list[Multipart]) -> None:
        nonlocal count
        for _ in batch:
            count += 1
            if count == 500:
                done.set()
            else:
                link.outbox.message(item(count))

    listener = kit.backend.bind(kit.address(), on_receive=server)
    link = kit.backend.connect(listener.addresses[0], on_receive=client)
    try:
        await link.wait_connected(T)
        link.outbox.message(item(0))
        async with asyncio.timeout(T):
            await done.wait()
    finally:
        link.close()
        listener.close()


async def test_small_drain_limit_still_delivers_everything_in_order(kit: Kit) -> None:
    """Each wake-up reads at most ``drain_limit`` multiparts and comes back for the
    rest: on zmq that relies on re-checking the edge-triggered FD."""
    opts = TransportOptions(drain_limit=2, max_batch=1)
    server = Inbox()
    with kit.backend.bind(kit.address(), on_receive=server, options=opts) as listener:
        link = kit.backend.connect(listener.addresses[0], on_receive=Inbox(), options=opts)
        await link.wait_connected(T)
        for i in range(100):
            link.outbox.message(item(i))
        await server.until(lambda: len(server.multiparts) == 100)
        assert max(len(b) for b in server.batches) <= 2
        assert ids(server.multiparts, peer_first=True) == list(range(100))
        link.close()


async def test_large_messages_arrive_intact(kit: Kit) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, sent without a copy over zmq
    server = Inbox()
    with kit.backend.bind(kit.address(), on_receive=server) as listener:
        link = kit.backend.connect(listener.addresses[0], on_receive=Inbox())
        await link.wait_connected(T)
        for i in range(3):
            link.outbox.message(item(i, body))
        await server.until(lambda: len(ids(server.multiparts, peer_first=True)) == 3)
        items = [it for mp in server.multiparts for it in wire.decode_messages(mp[1:])]
        assert [it.body == body for it in items] == [True, True, True]
        link.close()
