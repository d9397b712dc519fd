"""Untyped messages: a type name and a dict, delivered like typed ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ackbus import Context, Registry, SchemaError, Untyped
from ackbus.endpoint import Endpoint
from helpers import FAST, HEARTBEAT
from poker import table_ackbus, table_pb2

POKER = Registry()
POKER.update(table_ackbus.REGISTRY)


async def test_dict_in_dict_out_for_a_type_nobody_declared(hub: str) -> None:
    got: list[tuple[dict[str, Any], str]] = []

    async def on_anything(payload: dict[str, Any], ctx: Context) -> None:
        got.append((payload, ctx.message_type))

    receiver = Endpoint("legacy", hub, policy=FAST)
    receiver.register_handler("ServiceRegistration", on_anything)
    async with receiver, Endpoint("sender", hub, policy=FAST) as sender:
        report = await sender.send(
            Untyped("ServiceRegistration", {"Data": "payload", "n": [1, 2]}), timeout=2
        )
    assert report, report.error
    assert got == [({"Data": "payload", "n": [1, 2]}, "ServiceRegistration")]


async def test_untyped_send_reaches_a_typed_handler_typed(hub: str) -> None:
    got: list[table_pb2.StartHand] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg)

    receiver = Endpoint("table", hub, policy=FAST)
    receiver.register_handler(table_pb2.StartHand, on_start)
    async with receiver, Endpoint("sender", hub, policy=FAST, registry=POKER) as sender:
        # Known to the sender's registry: converted with the JSON mapping, sent typed.
        report = await sender.send(
            Untyped("poker.StartHand", {"tableId": "t9", "seats": 4}), timeout=2
        )
    assert report, report.error
    assert got == [table_pb2.StartHand(table_id="t9", seats=4)]


async def test_json_body_reaches_a_typed_handler_typed(hub: str) -> None:
    """The sender does not know the type (no registry): the body travels as JSON and
    the receiver, whose handler is typed, parses it into its class."""
    got: list[table_pb2.StartHand] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        got.append(msg)

    receiver = Endpoint("table", hub, policy=FAST)
    receiver.register_handler(table_pb2.StartHand, on_start)
    async with receiver, Endpoint("sender", hub, policy=FAST) as sender:
        report = await sender.send(
            Untyped("poker.StartHand", {"table_id": "j1", "seats": 2}), timeout=2
        )
    assert report, report.error
    assert got == [table_pb2.StartHand(table_id="j1", seats=2)]


async def test_typed_send_reaches_a_by_name_handler_as_a_dict(hub: str) -> None:
    got: list[dict[str, Any]] = []

    async def on_start(payload: dict[str, Any], ctx: Context) -> None:
        got.append(payload)

    receiver = Endpoint("table", hub, policy=FAST, registry=POKER)
    receiver.register_handler("poker.StartHand", on_start)
    async with receiver, Endpoint("sender", hub, policy=FAST) as sender:
        report = await sender.send(table_pb2.StartHand(table_id="d1", seats=3), timeout=2)
    assert report, report.error
    assert got == [{"table_id": "d1", "seats": 3}]


async def test_untyped_is_retried_and_deduplicated(hub: str) -> None:
    runs = 0

    async def slow(payload: dict[str, Any], ctx: Context) -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.5)  # past two ack timeouts: the sender retries

    receiver = Endpoint("legacy", hub, policy=FAST)
    receiver.register_handler("Slow", slow)
    async with receiver, Endpoint("sender", hub, policy=FAST) as sender:
        # Past the hub's grace period (two heartbeats): a retry during it is answered
        # retry-later by the hub and never reaches the receiver's deduper.
        await asyncio.sleep(2.5 * HEARTBEAT)
        report = await sender.send(Untyped("Slow", {}), timeout=3)
        assert report, report.error
        assert report.attempts >= 2
        assert receiver.stats.duplicates >= 1
    assert runs == 1


async def test_payload_that_does_not_fit_the_schema_is_refused_at_send(hub: str) -> None:
    async with Endpoint("sender", hub, policy=FAST, registry=POKER) as sender:
        with pytest.raises(SchemaError, match=r"poker\.StartHand"):
            await sender.send(Untyped("poker.StartHand", {"seats": "many"}))
        with pytest.raises(SchemaError, match="not JSON-able"):
            await sender.send(Untyped("Whatever", {"x": object()}))


async def test_legacy_name_reaches_the_handler_registered_by_either_name(hub: str) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    async def on_start(payload: dict[str, Any], ctx: Context) -> None:
        got.append((ctx.message_type, payload))

    receiver = Endpoint("table", hub, policy=FAST, registry=POKER)
    receiver.register_handler("StartHand", on_start)  # the legacy name of poker.StartHand
    async with (
        receiver,
        Endpoint("old", hub, policy=FAST) as old,
        Endpoint("new", hub, policy=FAST, registry=POKER) as new,
    ):
        assert await old.send(Untyped("StartHand", {"table_id": "a"}), timeout=2)
        assert await new.send(Untyped("StartHand", {"table_id": "b"}), timeout=2)
    assert got == [
        ("StartHand", {"table_id": "a"}),  # JSON under the legacy name
        ("poker.StartHand", {"table_id": "b"}),  # converted and typed by the sender
    ]
