"""The envelope and full-ack builders (wire/_envelope, wire/_acks): what they put in, and
bytes that decode back."""

from ackbus import envelope_pb2
from ackbus.core import Identity, Outcome, RemoteError
from ackbus.core.endpoint_protocol import AckReply
from ackbus.wire import (
    JSON_ENCODING,
    MessageItem,
    ack_replies,
    decode_messages,
    encode_ack,
    encode_acks,
    encode_envelope,
    encode_full_ack,
    encode_message,
    full_acks_frame,
    message_frames,
    split_acks,
)

TABLE = Identity("table", "t-1")


def test_a_plain_envelope_names_only_the_sender() -> None:
    env = envelope_pb2.Envelope.FromString(encode_envelope(TABLE))
    assert (env.sender.service, env.sender.instance) == ("table", "t-1")
    assert dict(env.headers) == {}
    assert env.content_encoding == ""
    assert env.correlation_id == b""


def test_a_plain_envelope_is_the_same_bytes_every_time() -> None:
    # A sender without headers builds it once and reuses it; a receiver caches by bytes.
    assert encode_envelope(TABLE) == encode_envelope(Identity("table", "t-1"))
    assert encode_envelope(TABLE, headers={}) == encode_envelope(TABLE)


def test_headers_json_and_correlation_id() -> None:
    raw = encode_envelope(
        TABLE, headers={"trace": "abc", "tenant": "7"}, json_body=True, correlation_id=b"\x01" * 16
    )
    env = envelope_pb2.Envelope.FromString(raw)
    assert dict(env.headers) == {"trace": "abc", "tenant": "7"}
    assert env.content_encoding == JSON_ENCODING
    assert env.correlation_id == b"\x01" * 16


def test_the_envelope_travels_in_a_message_item() -> None:
    raw = encode_envelope(TABLE, headers={"k": "v"})
    frame = encode_message(b"\x02" * 16, "poker.StartHand", b"body", envelope=raw)
    items: list[MessageItem] = decode_messages(message_frames([(b"", [frame])]))
    env = items[0].envelope()
    assert env.sender.service == "table"
    assert dict(env.headers) == {"k": "v"}


def test_an_ok_ack_carries_the_id_outcome_receiver_and_time() -> None:
    raw = encode_full_ack(b"\x03" * 16, Outcome.OK, receiver=TABLE, acked_at_ns=123)
    ack = envelope_pb2.Ack.FromString(raw)
    assert ack.message_id == b"\x03" * 16
    assert ack.outcome == envelope_pb2.OK
    assert (ack.receiver.service, ack.receiver.instance) == ("table", "t-1")
    assert ack.acked_at_ns == 123
    assert not ack.HasField("error")
    assert ack.retry_after_ms == 0
    assert (ack.response, ack.response_type) == (b"", "")


def test_an_ack_leaves_out_what_is_not_given() -> None:
    ack = envelope_pb2.Ack.FromString(encode_full_ack(b"\x04" * 16, Outcome.NO_ROUTE))
    assert not ack.HasField("receiver")
    assert ack.acked_at_ns == 0
    assert encode_full_ack(b"\x04" * 16, Outcome.NO_ROUTE) == (
        envelope_pb2.Ack(message_id=b"\x04" * 16, outcome=envelope_pb2.NO_ROUTE).SerializeToString()
    )


def test_an_error_ack() -> None:
    raw = encode_full_ack(
        b"\x05" * 16,
        Outcome.REJECTED,
        receiver=TABLE,
        error=RemoteError("ValueError", "seats must be > 0", permanent=True),
    )
    ack = envelope_pb2.Ack.FromString(raw)
    assert ack.outcome == envelope_pb2.REJECTED
    assert (ack.error.type, ack.error.message, ack.error.permanent) == (
        "ValueError",
        "seats must be > 0",
        True,
    )


def test_retry_after_is_whole_milliseconds() -> None:
    def ms(after: float) -> int:
        raw = encode_full_ack(b"\x06" * 16, Outcome.RETRY_LATER, retry_after=after)
        return envelope_pb2.Ack.FromString(raw).retry_after_ms

    assert ms(0.25) == 250
    assert ms(1.5) == 1500
    assert ms(0.0) == 0


def test_a_request_ack_carries_the_response() -> None:
    raw = encode_full_ack(
        b"\x07" * 16, Outcome.OK, response=b"\x08\x01", response_type="poker.TableState"
    )
    ack = envelope_pb2.Ack.FromString(raw)
    assert (ack.response, ack.response_type) == (b"\x08\x01", "poker.TableState")


def test_encode_ack_is_encode_full_ack_of_a_reply_stamped_now() -> None:
    reply = AckReply(
        b"\x09" * 16, Outcome.RETRY_LATER, TABLE, RemoteError("Busy", "later"), 0.5, b"", ""
    )
    ack = envelope_pb2.Ack.FromString(encode_ack(reply))
    assert ack.acked_at_ns > 0
    ack.ClearField("acked_at_ns")
    assert ack.SerializeToString() == encode_full_ack(
        reply.msg_id, reply.outcome, receiver=TABLE, error=reply.error, retry_after=0.5
    )


def test_an_ack_with_an_outcome_this_version_does_not_know_is_left_out() -> None:
    # Found by fuzzing: Outcome(99) raised ValueError out of the endpoint's receive path.
    unknown = envelope_pb2.Ack(message_id=b"\x0a" * 16)
    unknown.outcome = 99  # type: ignore[assignment]  # proto3 enums are open
    known = encode_full_ack(b"\x0b" * 16, Outcome.IN_PROGRESS)
    frames = encode_acks([(b"p", b"", full_acks_frame([unknown.SerializeToString(), known]))])
    (group,) = split_acks(frames)
    assert [(r.msg_id, r.outcome) for r in ack_replies(group)] == [
        (b"\x0b" * 16, Outcome.IN_PROGRESS)
    ]
