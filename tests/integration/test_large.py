"""Large messages end to end over real ZeroMQ sockets (issue 21, item 2): a big body
travels as a frame of its own (protocol version 3, docs/protocol.md "Body frames"),
received without a copy by the hub, which forwards the very ``zmq.Frame``, and by the
receiver, which parses it through a view; peers of version 2 get it joined.

An older peer is simulated where the protocol decides: its HELLO lists versions 1 and 2
(the hub then negotiates 2 with it and never sends it a body frame, nor does it), or the
hub negotiates 2 with everyone (an older hub).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ackbus.endpoint._receive as receive_module
import ackbus.hub as hub_module
import pytest
import zmq
from ackbus import wire_pb2
from ackbus.endpoint import Endpoint
from ackbus.wire import BODY_FRAME_FROM, MessageItem, PackedRun
from helpers import FAST, HEARTBEAT, HubBus, byes_handled, running_hub

BIG = "x" * (1 << 20)  # 1 MiB of reason: a body well above BODY_FRAME_FROM
QUICK = FAST.with_(ack_timeout=5.0, deadline=15.0)


class Spy:
    """The body frames the hub and the receivers decoded, by the kind of object."""

    def __init__(self) -> None:
        self.hub: list[type | None] = []
        self.receiver: list[type | None] = []


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    seen = Spy()
    scan, decode = hub_module.scan_messages, receive_module.decode_messages

    def hub_scan(*args: Any) -> list[PackedRun | MessageItem]:
        entries = scan(*args)
        for e in entries:
            if isinstance(e, MessageItem) and e.size >= BODY_FRAME_FROM:
                seen.hub.append(None if e.body_frame is None else type(e.body_frame))
        return entries

    def receiver_decode(*args: Any) -> list[MessageItem]:
        items = decode(*args)
        for i in items:
            if i.size >= BODY_FRAME_FROM:
                seen.receiver.append(None if i.body_frame is None else type(i.body_frame))
        return items

    monkeypatch.setattr(hub_module, "scan_messages", hub_scan)
    monkeypatch.setattr(receive_module, "decode_messages", receiver_decode)
    return seen


def older(monkeypatch: pytest.MonkeyPatch, *services: str) -> None:
    """Make the hub see the HELLOs of ``services`` as those of version-2 peers."""
    decode = hub_module.decode_hello

    def decode_hello(*args: Any) -> wire_pb2.Hello:
        hello = decode(*args)
        if hello.identity.service in services:
            del hello.versions[:]
            hello.versions.extend([1, 2])
        return hello

    monkeypatch.setattr(hub_module, "decode_hello", decode_hello)


def endpoint(bus: HubBus, service: str) -> Endpoint:
    return Endpoint(service, bus.address, backend=bus.backend, policy=QUICK, heartbeat=HEARTBEAT)


async def one_big_message(bus: HubBus, receiver: str = "table") -> list[int]:
    reasons = await byes_handled(
        endpoint(bus, receiver), endpoint(bus, "lobby"), (BIG, "small", BIG)
    )
    return [len(r) for r in reasons]


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_a_big_body_is_forwarded_and_received_without_a_copy(
    spy: Spy, transport: str, tmp_path: Path
) -> None:
    async with running_hub(transport, tmp_path) as bus:
        assert await one_big_message(bus) == [len(BIG), 5, len(BIG)]
    # The hub forwarded the zmq.Frame it received; the receiver parsed one too.
    assert spy.hub == [zmq.Frame, zmq.Frame]
    assert spy.receiver == [zmq.Frame, zmq.Frame]


@pytest.mark.parametrize(
    ("older_one", "at_hub", "at_receiver"),
    [
        # a version-2 receiver: the new sender's body frames are joined for it
        ("receiver", [zmq.Frame, zmq.Frame], [None, None]),
        # a version-2 sender: whole items, forwarded as they came
        ("sender", [None, None], [None, None]),
        # a version-2 hub: it chose version 2, so everyone sends whole items
        ("hub", [None, None], [None, None]),
    ],
)
async def test_a_version_2_peer_gets_and_sends_whole_items(
    spy: Spy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    older_one: str,
    at_hub: list[type | None],
    at_receiver: list[type | None],
) -> None:
    if older_one == "hub":
        monkeypatch.setattr(hub_module, "negotiate", lambda versions: 2)
    else:
        older(monkeypatch, "table" if older_one == "receiver" else "lobby")
    async with running_hub("ipc", tmp_path) as bus:
        assert await one_big_message(bus) == [len(BIG), 5, len(BIG)]
    assert spy.hub == at_hub
    assert spy.receiver == at_receiver
