"""Identities that cannot be forged (issue 18, item 4), without CURVE: a real `ackbus hub`
process on 127.0.0.1, real endpoints, and raw ZeroMQ clients playing the attacker.

Issue 18 measured, on a hub without keys: a HELLO reusing a live instance's identity took
its commands and left it unrouted for good; a socket that only set its routing id to the
victim's inherited its slot; acks forged by another registered peer completed sends with
no receiver running; a handler saw whatever sender the envelope claimed. Each must fail
here, while legitimate traffic flows unchanged.
"""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio
from ackbus import Context, Identity
from ackbus.endpoint import Endpoint
from ackbus.wire import (
    ACK_FRAME,
    Command,
    decode_command,
    decode_messages,
    decode_refusal,
    encode_envelope,
    encode_message,
    encode_messages,
)
from ackbus.wire_pb2 import Bye, Hello
from helpers import eventually, say_hello
from proc_harness import Procs, free_port

N = 50


@pytest.fixture
def hub_address(procs: Procs) -> str:
    """A real `ackbus hub` process on loopback, without keys (procs reaps it)."""
    port = free_port()
    procs.hub(port)
    return f"tcp://127.0.0.1:{port}"


def raw(
    ctx: zmq.asyncio.Context, address: str, routing_id: bytes | None = None
) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if routing_id is not None:
        sock.routing_id = routing_id
    sock.connect(address)
    return sock


class Table:
    """The victim: a real endpoint of service "table" handling Bye."""

    def __init__(self, address: str) -> None:
        self.senders: list[Identity] = []
        self.ep = Endpoint("table", address, heartbeat=0.25)
        self.ep.register_handler(Bye, self.on_bye)

    async def on_bye(self, msg: Bye, ctx: Context) -> None:
        self.senders.append(ctx.sender)


async def send_all(sender: Endpoint, n: int = N, timeout: float = 5.0) -> list[bool]:
    reports = await asyncio.gather(
        *(sender.send(Bye(reason=str(i)), timeout=timeout) for i in range(n))
    )
    return [bool(r) for r in reports]


async def test_a_hello_reusing_a_live_instances_identity_does_not_displace_it(
    hub_address: str,
) -> None:
    table = Table(hub_address)
    ctx = zmq.asyncio.Context()
    impostor = raw(ctx, hub_address)  # a connection of its own, the victim's identity
    try:
        async with table.ep, Endpoint("orders", hub_address) as orders:
            answer = await say_hello(impostor, "table", table.ep.identity.instance, ("ackbus.Bye",))
            assert answer is not None
            assert decode_command(answer) is Command.REFUSAL
            refusal = decode_refusal(answer)
            assert refusal.code == "IN_USE"
            assert "registered on another live connection" in str(refusal)
            assert all(await send_all(orders))  # every one acked, by the real table
            assert len(table.senders) == N
            assert not await impostor.poll(100, zmq.POLLIN)  # and none went to it
    finally:
        impostor.close(0)
        ctx.term()


async def test_a_routing_id_reusing_a_live_instances_id_does_not_take_its_slot(
    hub_address: str,
) -> None:
    table = Table(hub_address)
    ctx = zmq.asyncio.Context()
    try:
        async with table.ep, Endpoint("orders", hub_address) as orders:
            # The endpoint's routing id is its instance id: a raw socket setting the same
            # one, without any HELLO, and then with one.
            thief = raw(ctx, hub_address, table.ep.identity.instance.encode())
            await asyncio.sleep(0.3)
            assert all(await send_all(orders))
            assert (
                await say_hello(thief, "table", table.ep.identity.instance, ("ackbus.Bye",)) is None
            )
            assert all(await send_all(orders))
            assert not await thief.poll(100, zmq.POLLIN)  # it was sent nothing at all
            assert len(table.senders) == 2 * N
    finally:
        ctx.destroy(0)


async def test_a_forged_ack_from_another_registered_peer_does_not_complete_a_send(
    hub_address: str,
) -> None:
    """Issue 18: "200 of 200 commands reported acked with no receiver running at all".
    Here a raw "table" takes the commands and never acks them; mallory, registered as
    another service, learns the sender's origin token from an event it subscribed to and
    acks every command id (OK and full), which the hub forwards stamped as mallory's."""
    ctx = zmq.asyncio.Context()
    silent_table = raw(ctx, hub_address)
    mallory = raw(ctx, hub_address)
    try:
        assert await say_hello(silent_table, "table", "t-silent", ("ackbus.Bye",)) is not None
        assert await say_hello(mallory, "audit", "m-1", (), ("ackbus.Hello",)) is not None
        async with Endpoint("orders", hub_address, heartbeat=0.25) as orders:
            pending = asyncio.ensure_future(send_all(orders, 20, timeout=2.0))
            # The event reveals orders' origin token; the ids it saw or predicted.
            await orders.publish(Hello(), wait_ack=False)
            frames = await asyncio.wait_for(mallory.recv_multipart(), 2)
            token = decode_messages(frames)[0].peer
            got: set[bytes] = set()
            while len(got) < 20:
                frames = await asyncio.wait_for(silent_table.recv_multipart(), 2)
                got.update(item.id for item in decode_messages(frames))
            ids = sorted(got)
            full = encode_ack_ok_with_response(ids[0])
            await mallory.send_multipart([ACK_FRAME, token, b"".join(ids), full])
            results = await asyncio.wait_for(pending, 10)
            assert results == [False] * 20  # none completed: the table never acked
            assert orders._proto.tracker.foreign >= 21
    finally:
        ctx.destroy(0)


def encode_ack_ok_with_response(msg_id: bytes) -> bytes:
    from ackbus.core import Outcome
    from ackbus.core.endpoint_io import AckReply
    from ackbus.wire import encode_ack
    from ackbus.wire._control import full_acks_frame

    reply = AckReply(msg_id, Outcome.OK, Identity("table", "t-silent"), response=b"forged")
    return full_acks_frame([encode_ack(reply)])


async def test_a_handler_sees_the_true_sender_not_what_the_envelope_claims(
    hub_address: str,
) -> None:
    table = Table(hub_address)
    ctx = zmq.asyncio.Context()
    liar = raw(ctx, hub_address)
    try:
        async with table.ep:
            assert await say_hello(liar, "lobby", "l-9") is not None
            for claimed in (Identity("table", "victim"), Identity("", "")):
                item = encode_message(
                    bytes(16) if not claimed.service else b"\x01" * 16,
                    "ackbus.Bye",
                    Bye(reason="hi").SerializeToString(),
                    envelope=encode_envelope(claimed),
                )
                await liar.send_multipart(encode_messages([(b"", [item])]))
            await eventually(lambda: len(table.senders) == 2, timeout=5)
            assert table.senders == [Identity("lobby", "l-9")] * 2
    finally:
        liar.close(0)
        ctx.term()
