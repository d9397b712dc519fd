"""Untyped messages end to end, beyond tests/integration/test_untyped.py: events fanned
out to by-name and typed subscribers, the blocking API, dead letters, and untyped
legacy traffic through a Bridge in both directions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from ackbus import Context, Kind, NoRoute, Registry, Untyped
from ackbus.blocking import BlockingEndpoint
from ackbus.endpoint import Endpoint
from ackbus.legacy import Bridge, FieldCase, LegacyCodec
from helpers import FAST
from poker import table_ackbus, table_pb2

PlainZmq = Callable[[int], zmq.asyncio.Socket]

POKER = Registry()
POKER.update(table_ackbus.REGISTRY)


async def test_an_untyped_event_reaches_by_name_and_typed_subscribers(hub: str) -> None:
    got: list[tuple[str, Any]] = []

    async def audit(payload: dict[str, Any], ctx: Context) -> None:
        got.append(("audit", payload))

    async def lobby(msg: table_pb2.HandStarted, ctx: Context) -> None:
        got.append(("lobby", msg))

    a = Endpoint("audit", hub, policy=FAST, registry=POKER)
    # By legacy name, an event by the registry; the schema's subscriber poker.Audit.
    a.register_handler("HandStarted", audit, implements="poker.Audit")
    b = Endpoint("lobby", hub, policy=FAST)
    b.register_handler(table_pb2.HandStarted, lobby, kind=Kind.EVENT, implements="poker.Lobby")
    async with a, b, Endpoint("old-table", hub, policy=FAST, registry=POKER) as sender:
        report = await sender.publish(Untyped("HandStarted", {"tableId": "t", "handNumber": 7}))
    assert report, report.error
    assert sorted(i.service for i in report.acked_by) == ["audit", "lobby"]
    assert sorted(got, key=lambda g: g[0]) == [
        ("audit", {"table_id": "t", "hand_number": "7"}),  # uint64 is a string in JSON
        ("lobby", table_pb2.HandStarted(table_id="t", hand_number=7)),
    ]


async def test_untyped_from_plain_threads(hub: str) -> None:
    got: list[dict[str, Any]] = []

    async def on_message(payload: dict[str, Any], ctx: Context) -> None:
        got.append(payload)

    receiver = Endpoint("legacy", hub, policy=FAST)
    receiver.register_handler("MessageType", on_message)
    async with receiver:

        def blocking_client() -> bool:
            with BlockingEndpoint("client", hub, policy=FAST) as ep:
                return bool(ep.send(Untyped("MessageType", {"Data": "payload"})))

        assert await asyncio.to_thread(blocking_client)
    assert got == [{"Data": "payload"}]


async def test_a_failed_untyped_message_is_a_dead_letter_with_its_name(hub: str) -> None:
    async with Endpoint("client", hub, policy=FAST) as ep:
        report = await ep.send(Untyped("NobodyHandlesThis", {"x": 1}), timeout=0.3)
    assert isinstance(report.error, NoRoute)
    assert report.error.message_type == "NobodyHandlesThis"
    assert list(ep.dead_letters) == [report]


async def test_untyped_legacy_traffic_crosses_a_bridge_both_ways(
    hub: str, plain_zmq: PlainZmq
) -> None:
    """Types no schema declares: the legacy PUSH sends ``MessageType`` envelopes, a
    by-name handler on the bus gets the payload dict; a bus ``Untyped`` goes out to
    the legacy PULL with its name and payload untouched."""
    legacy_push = plain_zmq(zmq.PUSH)
    legacy_pull = plain_zmq(zmq.PULL)
    pull_port = legacy_pull.bind_to_random_port("tcp://127.0.0.1")
    got: list[tuple[dict[str, Any], dict[str, str]]] = []

    async def on_message(payload: dict[str, Any], c: Context) -> None:
        got.append((payload, dict(c.headers)))

    ep = Endpoint("legacy", hub, policy=FAST)
    bridge = Bridge(ep, LegacyCodec(Registry(), allow_untyped=True, field_case=FieldCase.PASCAL))
    inbound = bridge.pull("tcp://127.0.0.1:*", bind=True)
    bridge.push_to(f"tcp://127.0.0.1:{pull_port}", ["Reply"])
    receiver = Endpoint("modern", hub, policy=FAST)
    receiver.register_handler("MessageType", on_message)
    async with bridge, receiver, Endpoint("client", hub, policy=FAST) as client:
        legacy_push.connect(inbound.address)
        env = {"MessageId": "m-1", "Type": "MessageType", "Payload": {"Data": "payload"}}
        await legacy_push.send(json.dumps(env).encode())
        async with asyncio.timeout(3):
            while not got:  # noqa: ASYNC110 (the handler runs on this loop)
                await asyncio.sleep(0.02)
        assert await client.send(Untyped("Reply", {"Ok": True, "Items": [1, 2]}))
        async with asyncio.timeout(3):
            raw = await legacy_pull.recv()
    assert got == [({"Data": "payload"}, {"legacy-message-id": "m-1"})]
    out = json.loads(raw)
    assert (out["Type"], out["Payload"], out["SenderId"]) == (
        "Reply",
        {"Ok": True, "Items": [1, 2]},
        "client",
    )
