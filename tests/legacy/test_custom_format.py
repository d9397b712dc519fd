"""Legacy services of any shape (issue 20, section 6): a home-grown layout given as two
typed functions (``CustomFormat``), here the zguide weather server's ``"10001 23 45"``
text frames; and a legacy REP's failure reply reported to the sender as ``Rejected``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import helpers
import pytest
from ackbus import Context, MessageSpec, Registry, Rejected, SchemaError
from ackbus.endpoint import Endpoint
from ackbus.legacy import CustomFormat, FieldCase, LegacyCodec, LegacyFormat, LegacyFormatError
from ackbus.legacy.bridge import Bridge
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from poker import lobby_pb2
from proc_harness import Procs, free_port

from .test_bridge import FAST, POKER, ports

WUSERVER = Path(__file__).with_name("wuserver.py")


def _weather_class() -> type[Message]:
    """``weather.WeatherUpdate {uint32 zipcode; sint32 temperature; uint32 relhumidity}``,
    built from its descriptor (a user would generate it from a .proto)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="weather/weather.proto", package="weather", syntax="proto3"
    )
    msg = fdp.message_type.add(name="WeatherUpdate")
    F = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
        [
            ("zipcode", F.TYPE_UINT32),
            ("temperature", F.TYPE_SINT32),
            ("relhumidity", F.TYPE_UINT32),
        ],
        start=1,
    ):
        msg.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("weather.WeatherUpdate"))


WeatherUpdate = _weather_class()


def weather_from_frames(frames: Sequence[bytes]) -> Any:
    """The zguide layout: one frame, ``"ZIPCODE TEMPERATURE HUMIDITY"``."""
    (frame,) = frames
    zipcode, temperature, relhumidity = frame.split()
    return WeatherUpdate(
        zipcode=int(zipcode), temperature=int(temperature), relhumidity=int(relhumidity)
    )


def weather_to_frames(msg: Any) -> list[bytes]:
    return [f"{msg.zipcode} {msg.temperature} {msg.relhumidity}".encode()]


WEATHER = CustomFormat(weather_from_frames, weather_to_frames, name="zguide weather")
SCHEMA = Registry([MessageSpec("weather.WeatherUpdate", WeatherUpdate, FAST)])
"""What a generated module's REGISTRY would hold: the bridge registers a typed handler
for the types it writes to the legacy side."""
CODEC = LegacyCodec(SCHEMA)


# ---------------------------------------------------------------- the codec hook


@settings(max_examples=200, deadline=None)
@given(
    zipcode=st.integers(0, 99999),
    temperature=st.integers(-80, 134),
    relhumidity=st.integers(10, 59),
)
def test_the_custom_format_round_trips(zipcode: int, temperature: int, relhumidity: int) -> None:
    msg = WeatherUpdate(zipcode=zipcode, temperature=temperature, relhumidity=relhumidity)
    frames = CODEC.encode(msg, WEATHER)
    assert frames == [f"{zipcode} {temperature} {relhumidity}".encode()]
    back = CODEC.decode(frames, WEATHER)
    assert back.message == msg
    assert back.type_name == back.full_name == "weather.WeatherUpdate"
    assert (back.message_id, back.sender, back.timestamp) == ("", "", None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=3))
def test_any_frames_decode_to_a_message_or_a_legacy_format_error(frames: list[bytes]) -> None:
    """The decoders' contract holds around the user's function: whatever it raises is a
    LegacyFormatError naming the format, never another exception."""
    try:
        got = CODEC.decode(frames, WEATHER)
    except LegacyFormatError as exc:
        error = str(exc)
        assert error.startswith("MALFORMED: zguide weather could not read"), error
    else:
        assert isinstance(got.message, WeatherUpdate)


def test_a_decode_function_that_returns_no_message_is_refused() -> None:
    fmt = CustomFormat(lambda frames: frames[0], name="broken")  # type: ignore[arg-type, return-value]
    with pytest.raises(LegacyFormatError, match="broken returned bytes, not a protobuf message"):
        CODEC.decode([b"x"], fmt)


def test_an_encode_that_fails_or_is_missing_is_a_schema_error() -> None:
    msg = WeatherUpdate(zipcode=1)
    with pytest.raises(SchemaError, match="has no encode function: it cannot write weather"):
        CODEC.encode(msg, CustomFormat(weather_from_frames, name="read only"))
    bad = CustomFormat(weather_from_frames, lambda m: ["text"], name="bad")  # type: ignore[list-item]
    with pytest.raises(SchemaError, match="bad must write a non-empty list of bytes"):
        CODEC.encode(msg, bad)
    boom = CustomFormat(weather_from_frames, lambda m: [b"%d" % (1 / 0)], name="boom")
    with pytest.raises(SchemaError, match=r"boom could not write weather\.WeatherUpdate: Zero"):
        CODEC.encode(msg, boom)


async def test_the_zguide_weather_server_reaches_a_typed_handler(hub: str, procs: Procs) -> None:
    """The zguide's weather server, its own process, plain pyzmq: the bridge subscribes to
    zip code 10001 (as the book's client does) and a typed service gets WeatherUpdate
    messages, acked after its handler ran; nothing else of the stream reaches it."""
    port = free_port()
    procs.start(
        str(WUSERVER), "--port", str(port), "--zip-from", "10000", "--zip-to", "10010",
        ready=b"ready",
    )  # fmt: skip
    got: list[Any] = []

    async def on_update(msg: Any, ctx: Context) -> None:
        got.append(msg)

    forecaster = Endpoint("forecaster", hub, policy=FAST)
    forecaster.register_handler(WeatherUpdate, on_update)
    bridge = Bridge(Endpoint("weather-bridge", hub, policy=FAST), CODEC)
    bridge.subscribe(f"tcp://127.0.0.1:{port}", fmt=WEATHER, topics=[b"10001 "])
    async with forecaster, bridge:
        await helpers.eventually(lambda: bridge.stats.delivered >= 20, timeout=10.0)
    assert len(got) >= 20
    assert {m.zipcode for m in got} == {10001}
    assert all(-80 <= m.temperature < 135 and 10 <= m.relhumidity < 60 for m in got)
    assert sum(bridge.stats.failed.values()) == 0
    assert not bridge.stats.malformed


async def test_bus_messages_go_out_in_the_custom_layout(hub: str, plain_zmq: Any) -> None:
    """The other direction: typed sends, written by the user's encode function to a
    legacy PULL (here a plain pyzmq socket)."""
    import zmq

    pull = plain_zmq(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    bridge = Bridge(Endpoint("weather-out", hub, policy=FAST), CODEC)
    bridge.push_to(f"tcp://127.0.0.1:{port}", [WeatherUpdate], fmt=WEATHER)
    async with bridge, Endpoint("station", hub, policy=FAST) as station:
        report = await station.send(
            WeatherUpdate(zipcode=10001, temperature=-3, relhumidity=40), timeout=5
        )
        assert report, report.error
        async with asyncio.timeout(5):
            assert await pull.recv_multipart() == [b"10001 -3 40"]


# ---------------------------------------------------------------- failure replies


def _rep_bridge(hub: str, rep: str, **outcome: Any) -> Bridge:
    ep = Endpoint("legacy-lobby", hub, registry=POKER, policy=FAST)
    bridge = Bridge(ep, LegacyCodec(POKER, field_case=FieldCase.PASCAL))
    bridge.request_to(rep, {lobby_pb2.ServiceRegistration: lobby_pb2.RegistrationResult}, **outcome)
    return bridge


async def test_a_failure_reply_from_a_legacy_rep_is_rejected_with_its_text(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    """The legacy REP (tests/legacy/legacy_service.py) answers a registration of
    "banned" with ``{"Accepted": false, "Reason": "banned"}``. Without a rule that reply
    was the ack; with ``error_field="reason"`` it is a ``Rejected`` with the reply's text,
    sent once (the legacy handler ran: no retry), while other requests still succeed."""
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")
    async with (
        _rep_bridge(hub, legacy.rep, error_field="reason") as bridge,
        Endpoint("client", hub, registry=POKER, policy=FAST) as client,
    ):
        ok = await client.request(
            lobby_pb2.ServiceRegistration(service_name="table"),
            lobby_pb2.RegistrationResult,
            timeout=5,
        )
        assert ok.accepted
        with pytest.raises(Rejected) as caught:
            await client.request(
                lobby_pb2.ServiceRegistration(service_name="banned"),
                lobby_pb2.RegistrationResult,
                timeout=5,
            )
        report = await client.send(lobby_pb2.ServiceRegistration(service_name="banned"), timeout=5)
    err = caught.value
    assert (err.remote_message, err.permanent) == ("banned", True)
    assert "rejected by the receiver after 1 attempt: Reject: banned" in str(err)
    assert isinstance(report.error, Rejected)
    assert report.error.remote_message == "banned"
    assert report.attempts == 1
    assert bridge.stats.failure_replies == 2
    names = [e["Payload"]["ServiceName"] for e in legacy.received() if e["socket"] == "rep"]
    assert names == ["table", "banned", "banned"]


async def test_a_failure_rule_of_the_users_reads_the_typed_reply(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    """``failure=`` is a function of the decoded reply: here "not accepted" is a failure,
    whatever the reason says."""
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")

    def refused(reply: lobby_pb2.RegistrationResult) -> str | None:
        return None if reply.accepted else f"lobby refused: {reply.reason or 'no reason'}"

    async with (
        _rep_bridge(hub, legacy.rep, failure=refused),
        Endpoint("client", hub, registry=POKER, policy=FAST) as client,
    ):
        with pytest.raises(Rejected, match="lobby refused: banned"):
            await client.request(
                lobby_pb2.ServiceRegistration(service_name="banned"),
                lobby_pb2.RegistrationResult,
                timeout=5,
            )


def test_an_error_field_the_reply_lacks_is_refused_at_configuration(hub: str) -> None:
    bridge = Bridge(Endpoint("x", hub), LegacyCodec(POKER))
    with pytest.raises(SchemaError, match=r"'error' is not a field of poker\.RegistrationResult"):
        bridge.request_to(
            "tcp://127.0.0.1:1",
            {lobby_pb2.ServiceRegistration: lobby_pb2.RegistrationResult},
            error_field="error",
        )
    with pytest.raises(ValueError, match="not both"):
        bridge.request_to("tcp://127.0.0.1:1", {}, error_field="x", failure=lambda r: None)
    assert LegacyFormat.ENVELOPE  # the built-in formats are unchanged beside custom ones
