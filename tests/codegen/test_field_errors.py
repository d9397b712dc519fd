"""A generated stub given a wrong value names the field, the type it takes and the value
(issue 20, section 5: protobuf said ``bad argument type for built-in operation``), and a
``str`` for a ``repeated string`` field is refused instead of sent letter by letter."""

from __future__ import annotations

from typing import Any

import ackbus
import pytest
from google.protobuf.message import Message
from poker import lobby_pb2, table_ackbus, table_pb2


class Bus:
    """Records what a blocking client would send (no endpoint: this tests the stub)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, msg: Message, **options: Any) -> Any:
        self.sent.append(msg)

    def publish(self, msg: Message, **options: Any) -> Any:
        self.sent.append(msg)

    def request(self, msg: Message, response_type: type[Message], **options: Any) -> Any:
        self.sent.append(msg)
        return response_type()


def test_a_wrong_type_names_the_field_and_what_it_takes() -> None:
    bus = Bus()
    client = table_ackbus.TableBlockingClient(bus)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as caught:
        client.send_start_hand(table_id="t1", seats="six")  # type: ignore[arg-type]
    assert str(caught.value) == "poker.StartHand.seats takes int (uint32), got str 'six'"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    with pytest.raises(TypeError, match=r"^poker\.StartHand\.table_id takes str, got int 5$"):
        client.send_start_hand(table_id=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"StartHand\.blinds takes a poker\.Blinds \(or a dict"):
        client.send_start_hand(blinds=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"DealCards\.hands takes a mapping of str to a poker"):
        client.send_deal_cards(hands={"p1": 3})  # type: ignore[dict-item]
    assert bus.sent == []


def test_a_value_out_of_range_is_a_value_error_naming_the_field() -> None:
    client = table_ackbus.TableBlockingClient(Bus())  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^poker\.StartHand\.seats takes int \(uint32\), got int -1: "
    ):
        client.send_start_hand(seats=-1)


def test_a_str_for_a_repeated_string_field_is_refused() -> None:
    bus = Bus()
    events = table_ackbus.TableBlockingEvents(bus)  # type: ignore[arg-type]
    # mypy takes a str for Iterable[str]; protobuf would store "b", "o", "o", "k".
    with pytest.raises(TypeError) as caught:
        events.publish_hand_started(table_id="t1", player_ids="book")
    assert str(caught.value) == (
        "poker.HandStarted.player_ids takes an iterable of str, got str 'book': it would be "
        "sent letter by letter; pass ['book']"
    )
    with pytest.raises(TypeError, match=r"player_ids takes an iterable of str, got list"):
        events.publish_hand_started(player_ids=["a", 3])  # type: ignore[list-item]
    assert bus.sent == []
    events.publish_hand_started(table_id="t1", player_ids=["book"])
    events.publish_hand_started(table_id="t1", player_ids=("a", "b"))
    assert [list(m.player_ids) for m in bus.sent] == [["book"], ["a", "b"]]  # type: ignore[attr-defined]


def test_right_values_build_the_message_as_before() -> None:
    bus = Bus()
    client = table_ackbus.TableBlockingClient(bus)  # type: ignore[arg-type]
    client.send_start_hand(table_id="t1", seats=6, blinds=table_pb2.Blinds(small=1, big=2))
    assert bus.sent == [table_pb2.StartHand(table_id="t1", seats=6, blinds={"small": 1, "big": 2})]


def test_field_error_on_its_own() -> None:
    """The helper generated stubs call, for any message class."""
    err = ackbus.field_error(table_pb2.PlayerAction, {"kind": "FOLDX"}, ValueError("unknown"))
    assert isinstance(err, ValueError)
    assert str(err).startswith(
        "poker.PlayerAction.kind takes a poker.ActionKind value (int or name), got str 'FOLDX': "
    )
    err = ackbus.field_error(lobby_pb2.ServiceRegistration, {"handles": "x" * 60})
    assert isinstance(err, TypeError)
    assert "got str 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..." in str(err)
    # no field to blame: the constructor's error, with the message's name
    err = ackbus.field_error(table_pb2.StartHand, {"seats": 1}, TypeError("odd"))
    assert (type(err), str(err)) == (TypeError, "poker.StartHand: odd")
