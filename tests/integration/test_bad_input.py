"""Bad input from raw pyzmq sockets: refused with a reason, counted, never fatal.

A raw DEALER talks to a real hub, and a raw ROUTER plays hub to a real endpoint. Each
sends what a broken or hostile peer might; the target answers with a REFUSAL (or a
negative ack) naming the problem, counts it, and keeps serving real traffic. The raw
hub also packs what a real hub may put in one batch: several origins, a failing
handler and a retry of a message next to the message itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import zmq
import zmq.asyncio
from ackbus import Context, Kind, Policy
from ackbus.endpoint import Endpoint
from ackbus.envelope_pb2 import DUPLICATE, NO_ROUTE, REJECTED, RETRY_LATER, Ack
from ackbus.errors import Reject
from ackbus.hub import Hub
from ackbus.wire import (
    DEFAULT_LIMITS,
    HEARTBEAT_FRAME,
    HELLO_FRAME,
    MESSAGE_FRAME,
    Command,
    Limits,
    decode_command,
    decode_refusal,
    decode_routed,
    encode_hello,
    encode_identity,
    encode_message,
    encode_welcome,
    group_frame,
    split_acks,
)
from ackbus.wire_pb2 import Bye, Hello, Welcome
from helpers import running_hub

TIMEOUT = 2.0
ORIGIN = encode_identity("lobby", "origin")
"""Origin tokens as a hub stamps them: the sender's registered identity."""
A, B = encode_identity("lobby", "a"), encode_identity("lobby", "b")


async def recv(sock: zmq.asyncio.Socket) -> list[bytes]:
    """The next multipart that is not a heartbeat (peers send those on their own)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            frames = list(await sock.recv_multipart())
            if frames[-1:] != [HEARTBEAT_FRAME]:
                return frames


async def refusal_code(sock: zmq.asyncio.Socket, frames: list[bytes]) -> str:
    await sock.send_multipart(frames)
    reply = await recv(sock)
    assert decode_command(reply) is Command.REFUSAL, reply
    return decode_refusal(reply).code


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    c = zmq.asyncio.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    limits = Limits(max_message_bytes=4096)
    async with running_hub("tcp", heartbeat=0.5, limits=limits) as running:
        yield running.hub


def hello_frames(service: str = "raw", commands: tuple[str, ...] = ("ackbus.Bye",)) -> list[bytes]:
    hello = Hello(versions=[1], heartbeat_ms=500, commands=commands)
    hello.identity.service = service
    hello.identity.instance = "raw-1"
    return encode_hello(hello)


async def test_hub_refuses_each_kind_of_bad_input_and_keeps_serving(
    hub: Hub, ctx: zmq.asyncio.Context
) -> None:
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(hub.addresses[0])
    item = encode_message(os.urandom(16), "ackbus.Bye", b"")
    try:
        assert await refusal_code(raw, [b"garbage"]) == "BAD_SIGNATURE"
        assert await refusal_code(raw, [b"AB\x09\x03", b"x"]) == "UNSUPPORTED_VERSION"
        assert await refusal_code(raw, [HELLO_FRAME, b"\xff\xff\xff"]) == "MALFORMED"
        assert await refusal_code(raw, [MESSAGE_FRAME, group_frame(1), item]) == ("NOT_REGISTERED")
        await raw.send_multipart(hello_frames())
        assert decode_command(await recv(raw)) is Command.WELCOME
        too_big = encode_message(os.urandom(16), "ackbus.Bye", b"x" * 5000)
        assert await refusal_code(raw, [MESSAGE_FRAME, group_frame(1), too_big]) == "TOO_LARGE"
        assert await refusal_code(raw, [MESSAGE_FRAME, group_frame(2), item]) == "MALFORMED"
        assert await refusal_code(raw, [MESSAGE_FRAME, group_frame(1), item[:20]]) == ("MALFORMED")
        # An unknown type is not malformed: it has no route, and the sender is told so.
        unknown = encode_message(os.urandom(16), "nobody.Handles", b"")
        await raw.send_multipart([MESSAGE_FRAME, group_frame(1), unknown])
        reply = await recv(raw)
        assert decode_command(reply) is Command.ACK
        [group] = split_acks(reply)
        [ack] = group.full_acks()
        assert ack.outcome == NO_ROUTE
        assert "nobody.Handles" in ack.error.message
    finally:
        raw.close()
    assert hub.stats.refused["BAD_SIGNATURE"] == 1
    assert hub.stats.refused["TOO_LARGE"] == 1
    assert hub.stats.refused["MALFORMED"] == 3
    assert hub.stats.no_route == 1

    # The hub still routes real traffic.
    got: list[str] = []

    async def on_bye(msg: Bye, c: Context) -> None:
        got.append(msg.reason)

    receiver = Endpoint("table", hub.addresses[0])
    receiver.register_handler(Bye, on_bye)
    async with receiver, Endpoint("dealer", hub.addresses[0]) as sender:
        assert await sender.send(Bye(reason="still here"), timeout=2)
    assert got == ["still here"]


async def test_hub_refuses_a_hello_whose_names_a_routed_notice_cannot_carry(
    hub: Hub, ctx: zmq.asyncio.Context
) -> None:
    """Found by fuzzing: a HELLO as "audit service" (or implementing "bad name") was
    welcomed, and then every publish of an event it subscribed to failed at the hub,
    whose ROUTED encoder refuses such names (LocalProtocolError out of its receive path)."""
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(hub.addresses[0])
    try:
        for service, implements, code in (
            ("audit service", [], "MALFORMED"),
            ("audit", ["bad name"], "UNKNOWN_TYPE"),
        ):
            hello = Hello(versions=[1], events=["ackbus.Bye"], implements=implements)
            hello.identity.service = service
            assert await refusal_code(raw, [HELLO_FRAME, hello.SerializeToString()]) == code
    finally:
        raw.close()

    got: list[str] = []

    async def on_bye(msg: Bye, c: Context) -> None:
        got.append(msg.reason)

    event = Policy(kind=Kind.EVENT, ack_timeout=0.5, deadline=2)
    audit = Endpoint("audit", hub.addresses[0])
    audit.register_handler(Bye, on_bye, kind=Kind.EVENT)
    async with audit, Endpoint("lobby", hub.addresses[0]) as publisher:
        assert await publisher.publish(Bye(reason="tick"), policy=event)
    assert got == ["tick"]


@pytest.fixture
async def fake_hub(ctx: zmq.asyncio.Context) -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, f"tcp://127.0.0.1:{port}"
    router.close()


async def welcome(router: zmq.asyncio.Socket, ep: Endpoint) -> bytes:
    """Start ``ep`` against the raw hub: answer its HELLO; returns its routing id."""
    starting = asyncio.ensure_future(ep.start())
    peer, *hello = await recv(router)
    assert hello[0] == HELLO_FRAME
    await router.send_multipart([peer, *encode_welcome(Welcome(heartbeat_ms=5000, version=1))])
    async with asyncio.timeout(TIMEOUT):
        await starting
    return peer


async def answer(router: zmq.asyncio.Socket, peer: bytes, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` to the endpoint; its next reply that answers something."""
    await router.send_multipart([peer, *frames])
    while True:
        reply = await recv(router)
        assert reply[0] == peer
        # Heartbeats, and a repeated HELLO when the link reports its connection after
        # start() already said hello, are not answers to what we sent.
        if decode_command(reply[1:]) not in (Command.HEARTBEAT, Command.HELLO):
            return reply[1:]


async def test_endpoint_refuses_bad_input_from_its_hub_and_keeps_serving(
    fake_hub: tuple[zmq.asyncio.Socket, str],
) -> None:
    router, address = fake_hub
    handled: list[str] = []

    async def on_bye(msg: Bye, c: Context) -> None:
        handled.append(msg.reason)

    ep = Endpoint("table", address, limits=Limits(max_message_bytes=4096), policy=Policy())
    ep.register_handler(Bye, on_bye)
    peer = await welcome(router, ep)

    async def send(frames: list[bytes]) -> list[bytes]:
        return await answer(router, peer, frames)

    async def refused(frames: list[bytes]) -> str:
        reply = await send(frames)
        assert decode_command(reply) is Command.REFUSAL, reply
        return decode_refusal(reply).code

    async def acked(item: bytes) -> Ack | bytes:
        reply = await send([MESSAGE_FRAME, group_frame(1, ORIGIN), item])
        assert decode_command(reply) is Command.ACK, reply
        [group] = split_acks(reply)
        assert group.peer == ORIGIN
        return group.full_acks()[0] if group.full else group.ok_ids[0]

    try:
        assert await refused([b"\x00\x01"]) == "BAD_SIGNATURE"
        assert await refused([b"AB\x07\x03"]) == "UNSUPPORTED_VERSION"
        too_big = encode_message(os.urandom(16), "ackbus.Bye", b"x" * 5000)
        assert await refused([MESSAGE_FRAME, group_frame(1), too_big]) == "TOO_LARGE"
        bad_env = encode_message(os.urandom(16), "ackbus.Bye", b"", envelope=b"\xff\xff")
        ack = await acked(bad_env)
        assert isinstance(ack, Ack)
        assert ack.outcome == REJECTED
        assert ack.error.permanent
        assert "envelope" in ack.error.message
        bad_body = encode_message(os.urandom(16), "ackbus.Bye", b"\xff\xff\xff")
        ack = await acked(bad_body)
        assert isinstance(ack, Ack)
        assert ack.outcome == REJECTED
        assert "undecodable ackbus.Bye" in ack.error.message
        unknown = encode_message(os.urandom(16), "nobody.Handles", b"")
        ack = await acked(unknown)
        assert isinstance(ack, Ack)
        assert ack.outcome == NO_ROUTE  # this instance has no handler for it
        good_id = os.urandom(16)
        good = encode_message(good_id, "ackbus.Bye", Bye(reason="ok").SerializeToString())
        assert await acked(good) == good_id
    finally:
        await ep.close()
    assert handled == ["ok"]
    assert ep.stats.refused["BAD_SIGNATURE"] == 1
    assert ep.stats.refused["TOO_LARGE"] == 1
    assert ep.stats.refused["MALFORMED"] == 2
    assert DEFAULT_LIMITS.max_message_bytes > 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_endpoints_and_hubs_release_every_socket_on_close() -> None:
    async def cycle() -> None:
        async with Hub("tcp://127.0.0.1:0") as h:
            for _ in range(5):
                async with Endpoint("table", h.addresses[0]) as ep:
                    assert ep.pending == 0

    await cycle()  # warm-up: zmq's context and its internal sockets
    before = open_fds()
    for _ in range(5):
        await cycle()
    await asyncio.sleep(0.1)
    assert open_fds() - before <= 2, "sockets leak across endpoint/hub close"


async def test_a_fresh_hub_defers_retries_but_routes_first_attempts(
    ctx: zmq.asyncio.Context,
) -> None:
    async def on_bye(msg: Bye, c: Context) -> None:
        return None

    async with Hub("tcp://127.0.0.1:0", heartbeat=0.5, grace=5.0) as h:
        receiver = Endpoint("table", h.addresses[0])
        receiver.register_handler(Bye, on_bye)
        async with receiver:
            raw = ctx.socket(zmq.DEALER)
            raw.linger = 0
            raw.connect(h.addresses[0])
            try:
                await raw.send_multipart(hello_frames("sender", commands=()))
                assert decode_command(await recv(raw)) is Command.WELCOME
                first = encode_message(os.urandom(16), "ackbus.Bye", b"", attempt=1)
                retry = encode_message(os.urandom(16), "ackbus.Bye", b"", attempt=2)
                await raw.send_multipart([MESSAGE_FRAME, group_frame(1), first])
                routed = await recv(raw)  # the hub names the type's service first
                assert decode_routed(routed)[0].targets == ("table",)
                [group] = split_acks(await recv(raw))
                assert group.ok_ids, "a first attempt is routed during the grace period"
                await raw.send_multipart([MESSAGE_FRAME, group_frame(1), retry])
                [group] = split_acks(await recv(raw))
                [ack] = group.full_acks()
                assert ack.outcome == RETRY_LATER
                assert 0 < ack.retry_after_ms <= 5000
            finally:
                raw.close()
        assert h.stats.deferred == 1


async def test_a_batch_is_acked_per_origin_once_per_id_and_its_retry_runs_nothing(
    fake_hub: tuple[zmq.asyncio.Socket, str],
) -> None:
    """One MESSAGE from the hub with items of two origins, a rejecting handler, and a
    retry of the first item packed after it: each handler runs once, each origin's
    ok ids come back in its own group in order, the rejection as a full ack, and the
    retry gets no ack of its own (the first one settles its id). A retry in a later
    batch is answered DUPLICATE without running the handler."""
    router, address = fake_hub
    runs: list[str] = []

    async def on_bye(msg: Bye, c: Context) -> None:
        runs.append(msg.reason)
        if msg.reason == "boom":
            raise Reject("not today", permanent=True)

    ep = Endpoint("table", address, policy=Policy())
    ep.register_handler(Bye, on_bye)
    peer = await welcome(router, ep)
    ids = [bytes([i]) * 16 for i in range(5)]
    items = [
        encode_message(mid, "ackbus.Bye", Bye(reason=reason).SerializeToString())
        for mid, reason in zip(ids, ["a1", "a2", "b1", "boom", "a3"], strict=True)
    ]
    try:
        reply = await answer(
            router,
            peer,
            [
                MESSAGE_FRAME,
                group_frame(2, A),
                *items[0:2],
                group_frame(2, B),
                *items[2:4],
                group_frame(2, A),
                items[0],
                items[4],
            ],
        )
        assert decode_command(reply) is Command.ACK, reply
        groups = {g.peer: g for g in split_acks(reply)}
        assert sorted(groups) == sorted([A, B])
        assert groups[A].ok_ids == [ids[0], ids[1], ids[4]]
        assert groups[A].full == []
        assert groups[B].ok_ids == [ids[2]]
        [rejected] = groups[B].full_acks()
        assert (rejected.message_id, rejected.outcome) == (ids[3], REJECTED)
        assert runs == ["a1", "a2", "b1", "boom", "a3"]

        reply = await answer(router, peer, [MESSAGE_FRAME, group_frame(1, A), items[0]])
        [group] = split_acks(reply)
        [again] = group.full_acks()
        assert (group.peer, again.message_id, again.outcome) == (A, ids[0], DUPLICATE)
    finally:
        await ep.close()
    assert runs == ["a1", "a2", "b1", "boom", "a3"]
    assert ep.stats.duplicates == 2
