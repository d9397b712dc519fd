"""ackbus.build and the generated clients' bases: what every generated method relies on."""

from __future__ import annotations

import pytest
from ackbus import (
    AsyncClient,
    BlockingClient,
    CommandOptions,
    DeliveryReport,
    Policy,
    PublishOptions,
    build,
    wire_pb2,
)
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message


def test_build_takes_a_message_or_fields_not_both() -> None:
    given = wire_pb2.Bye(reason="r")
    assert build(wire_pb2.Bye, given, {"reason": None}) is given
    built = build(wire_pb2.Hello, None, {"commands": ["a.B"], "heartbeat_ms": None})
    assert list(built.commands) == ["a.B"]
    assert not built.heartbeat_ms  # None leaves it unset
    with pytest.raises(TypeError, match=r"ackbus\.Bye: pass a message or its fields, not both"):
        build(wire_pb2.Bye, given, {"reason": "other"})


def test_build_names_the_field_a_value_is_wrong_for() -> None:
    with pytest.raises(TypeError, match=r"ackbus\.Hello\.heartbeat_ms takes int \(uint32\)"):
        build(wire_pb2.Hello, None, {"heartbeat_ms": "fast"})
    with pytest.raises(TypeError, match="letter by letter"):
        build(wire_pb2.Hello, None, {"commands": "a.B"})


def test_build_refuses_a_required_field_left_unset() -> None:
    part = descriptor_pb2.UninterpretedOption.NamePart
    assert build(part, None, {"name_part": "x", "is_extension": False}).name_part == "x"
    with pytest.raises(TypeError, match="required fields unset: is_extension"):
        build(part, None, {"name_part": "x"})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, dict[str, object]]] = []

    def send(self, msg: Message, **options: object) -> DeliveryReport:
        self.calls.append(("send", msg, options))
        return DeliveryReport(b"i" * 16, msg.DESCRIPTOR.full_name)

    def publish(self, event: Message, **options: object) -> DeliveryReport:
        self.calls.append(("publish", event, options))
        return DeliveryReport(b"i" * 16, event.DESCRIPTOR.full_name)

    def request(self, msg: Message, response_type: type[Message], **options: object) -> Message:
        self.calls.append(("request", msg, options))
        return response_type()


SCHEMA = Policy(max_attempts=3)


def test_the_schema_policy_holds_unless_a_call_gives_one() -> None:
    bus = Recorder()
    client = BlockingClient(bus)  # type: ignore[arg-type]  # a recorder, not an endpoint
    mine = Policy(max_attempts=1)
    options: CommandOptions = {"priority": 2}
    client._send(wire_pb2.Bye(), SCHEMA, "a.S/Bye", options)
    client._send(wire_pb2.Bye(), SCHEMA, "a.S/Bye", {"policy": mine})
    client._send(wire_pb2.Bye(), SCHEMA, "a.S/Bye", {"policy": None})
    events: PublishOptions = {}
    client._publish(wire_pb2.Bye(), SCHEMA, events)
    reply = client._request(wire_pb2.Bye(), wire_pb2.Welcome, SCHEMA, "a.S/Get", {})
    assert isinstance(reply, wire_pb2.Welcome)
    assert [(verb, kw) for verb, _, kw in bus.calls] == [
        ("send", {"method": "a.S/Bye", "priority": 2, "policy": SCHEMA}),
        ("send", {"method": "a.S/Bye", "policy": mine}),
        ("send", {"method": "a.S/Bye", "policy": SCHEMA}),
        ("publish", {"policy": SCHEMA}),
        ("request", {"method": "a.S/Get", "policy": SCHEMA}),
    ]


async def test_the_async_client_returns_what_the_bus_does_to_await() -> None:
    class AsyncRecorder(Recorder):
        async def asend(self, msg: Message, **options: object) -> DeliveryReport:
            return super().send(msg, **options)

    bus = AsyncRecorder()
    bus.send = bus.asend  # type: ignore[method-assign]
    client = AsyncClient(bus)  # type: ignore[arg-type]
    report = await client._send(wire_pb2.Bye(), SCHEMA, "a.S/Bye", {})
    assert report.message_type == "ackbus.Bye"
