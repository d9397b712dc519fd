"""wrap_service and LegacyServiceMixin: an existing object's handle_<type> methods go on
an endpoint in one call, typed where the registry knows the type; over a real hub."""

from __future__ import annotations

import threading
from typing import Any

import helpers
import pytest
from ackbus import Context, Registry, SchemaError, Untyped, envelope_pb2
from ackbus.endpoint import Endpoint
from ackbus.legacy import LegacyServiceMixin, handler_name, wrap_service
from poker import lobby_ackbus, lobby_pb2, table_ackbus, table_pb2

_SCHEMA = Registry()
_SCHEMA.update(table_ackbus.REGISTRY)
_SCHEMA.update(lobby_ackbus.REGISTRY)
POKER = helpers.run_time_subscribers(_SCHEMA)
"""The poker registry; its events' subscribers here are not the schema's Audit and Lobby."""
FAST = helpers.FAST.with_(ack_timeout=0.3)


class LegacyLobby:
    """Written before ackbus: one method per message type, some sync, some async."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.threads: set[str] = set()

    def handle_service_registration(self, message: Any) -> lobby_pb2.RegistrationResult:
        self.seen.append(message)
        self.threads.add(threading.current_thread().name)
        return lobby_pb2.RegistrationResult(accepted=True, table_ids=["t1"])

    async def handle_hand_started_message(self, message: Any, ctx: Context) -> None:
        self.seen.append((message, ctx.sender.service))

    def handle_something_else(self, message: Any) -> None:  # no such type: left alone
        raise AssertionError("never registered")


def test_handler_names_follow_the_convention() -> None:
    assert handler_name("ServiceRegistration") == "handle_service_registration"
    assert handler_name("poker.StartHand") == "handle_start_hand"
    assert handler_name("HTTPRequest") == "handle_http_request"
    assert handler_name("Player2Action", prefix="on_") == "on_player2_action"


async def test_an_existing_object_goes_on_the_bus_in_one_call(hub: str) -> None:
    lobby = LegacyLobby()
    ep = Endpoint("lobby", hub, registry=POKER, policy=FAST)
    names = wrap_service(ep, lobby)
    assert names == ["poker.HandStarted", "poker.ServiceRegistration"]
    async with ep, Endpoint("table", hub, registry=POKER, policy=FAST) as table:
        result = await table.request(
            lobby_pb2.ServiceRegistration(service_name="table"), lobby_pb2.RegistrationResult
        )
        assert result.table_ids == ["t1"]
        assert await table.publish(table_pb2.HandStarted(table_id="t1"))
        # the legacy name reaches the typed handler too
        assert await table.send(Untyped("ServiceRegistration", {"serviceName": "old"}))
    assert lobby.seen == [
        lobby_pb2.ServiceRegistration(service_name="table"),  # typed
        (table_pb2.HandStarted(table_id="t1"), "table"),
        lobby_pb2.ServiceRegistration(service_name="old"),
    ]
    assert lobby.threads == {"MainThread"}  # plain def runs on the loop by default


async def test_explicit_mapping_dicts_and_threads(hub: str) -> None:
    lobby = LegacyLobby()
    ep = Endpoint("lobby", hub, registry=POKER, policy=FAST)
    got: list[dict[str, Any]] = []
    names = wrap_service(
        ep,
        lobby,
        handlers={
            lobby_pb2.ServiceRegistration: "handle_service_registration",
            "MessageType": got.append,  # any callable; a name nobody declared: a dict
        },
        threaded=True,
        dicts=True,
    )
    assert names == ["MessageType", "poker.ServiceRegistration"]
    async with ep, Endpoint("client", hub, policy=FAST) as client:
        assert await client.send(lobby_pb2.ServiceRegistration(service_name="x", id="1"))
        assert await client.send(Untyped("MessageType", {"Data": "payload"}))
    assert lobby.seen == [{"service_name": "x", "id": "1"}]  # dicts=True: the JSON mapping
    assert got == [{"Data": "payload"}]
    assert lobby.threads != {"MainThread"}


async def test_the_mixin_and_send_with_confirmation(hub: str) -> None:
    class Lobby(LegacyLobby, LegacyServiceMixin):
        pass

    lobby = Lobby()
    ep = Endpoint("lobby", hub, registry=POKER, policy=FAST)
    lobby.attach(ep)
    started: list[str] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        started.append(msg.table_id)

    table = Endpoint("table", hub, policy=FAST)
    table.register_handler(table_pb2.StartHand, on_start)
    async with ep, table:
        assert await lobby.send_with_confirmation(table_pb2.StartHand(table_id="t9"), 2.0)
        assert not await lobby.send_with_confirmation(Untyped("Nobody", {}), 0.3)
    assert started == ["t9"]


async def test_nothing_to_wrap_is_an_error(hub: str) -> None:
    ep = Endpoint("x", hub, registry=POKER)
    with pytest.raises(SchemaError, match="no handle_<type> method"):
        wrap_service(ep, object())
    with pytest.raises(SchemaError, match="not in the registry"):
        wrap_service(ep, LegacyLobby(), handlers={envelope_pb2.Ack: "handle_something_else"})

    class Twice:
        def handle_start_hand(self, m: Any) -> None: ...
        def handle_start_hand_message(self, m: Any) -> None: ...

    with pytest.raises(SchemaError, match="two handlers"):
        wrap_service(ep, Twice())
    with pytest.raises(RuntimeError, match="attach"):
        await LegacyServiceMixin().send_with_confirmation(Untyped("X", {}))
    assert len(ep._dispatch) == 0  # nothing half-registered
