"""Policy options: parsing, precedence (method > message > service > defaults), checks."""

from __future__ import annotations

import dataclasses

import ackbus
import pytest
from ackbus import options_pb2
from ackbus_codegen import policy as pol
from ackbus_codegen.errors import GenerationError
from ackbus_codegen.generate import generate

from .conftest import Compile

P = pol.PolicyOptions


def test_from_proto_keeps_only_set_fields() -> None:
    proto = options_pb2.Policy(ack_timeout_s=0.5, max_attempts=0, retry_rejected=False)
    # Explicitly set zero values count: proto3 optional fields track presence.
    assert pol.from_proto(proto) == P(ack_timeout=0.5, max_attempts=0, retry_rejected=False)
    assert pol.from_proto(options_pb2.Policy()) == P()
    assert pol.from_proto(options_pb2.Policy(kind=options_pb2.EVENT)) == P(kind="EVENT")
    assert pol.from_proto(options_pb2.Policy(kind=options_pb2.KIND_UNSPECIFIED)) == P()


@pytest.mark.parametrize(
    ("method", "message", "service", "merged"),
    [
        (P(), P(), P(), P()),
        (P(priority=3), P(priority=5), P(priority=1), P(priority=3)),
        (P(), P(priority=5), P(priority=1), P(priority=5)),
        (P(), P(), P(priority=1), P(priority=1)),
        # unset fields inherit field by field
        (
            P(max_attempts=3),
            P(priority=5, max_attempts=9),
            P(ack_timeout=0.5, max_attempts=8),
            P(ack_timeout=0.5, max_attempts=3, priority=5),
        ),
        (P(kind="COMMAND"), P(kind="EVENT"), P(), P(kind="COMMAND")),
        (P(retry_rejected=False), P(), P(retry_rejected=True), P(retry_rejected=False)),
    ],
)
def test_most_specific_level_wins(method: P, message: P, service: P, merged: P) -> None:
    assert pol.merge([method, message, service]) == merged


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (P(max_attempts=0), "max_attempts must be >= 1, got 0"),
        (P(ack_timeout=0.0), "ack_timeout_s must be > 0"),
        (P(deadline=-1.0), "deadline_s must be > 0"),
        (P(jitter=1.5), "jitter must be within [0, 1]"),
        (P(backoff_cap=0.01), "need 0 <= backoff_base_s <= backoff_cap_s, got 0.05 and 0.01"),
        (P(ack_timeout=float("inf")), "ack_timeout_s must be a finite number"),
    ],
)
def test_problems(options: P, problem: str) -> None:
    assert any(problem in p for p in pol.problems(options)), pol.problems(options)


def test_valid_policies_have_no_problems() -> None:
    assert pol.problems(P()) == []
    assert pol.problems(P(backoff_base=1.0, backoff_cap=1.0, jitter=0.0, max_attempts=1)) == []


def test_runtime_defaults_match_the_runtime() -> None:
    """The generator checks merged policies against a copy of the runtime's defaults."""
    runtime = ackbus.Policy()
    for f in dataclasses.fields(runtime):
        if f.name in ("subscribers", "subscriber_policies", "life"):
            continue  # not schema options: the generator derives them from the services
        value = getattr(runtime, f.name)
        expected = value.name if isinstance(value, ackbus.Kind) else value
        assert getattr(pol.RUNTIME_DEFAULTS, f.name) == expected, f.name


SCHEMA = """
syntax = "proto3";
package o;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

message Ping {
  option (ackbus.message_policy) = { priority: 5 max_attempts: 9 };
  int32 n = 1;
}
message Tick {
  option (ackbus.message_policy) = { kind: EVENT };
}
service S {
  option (ackbus.service_policy) = { ack_timeout_s: 0.25 max_attempts: 8 jitter: 0 };
  rpc Ping(o.Ping) returns (google.protobuf.Empty) {
    option (ackbus.method_policy) = { max_attempts: 7 deadline_s: 12.5 };
  }
  rpc Tick(o.Tick) returns (google.protobuf.Empty);
}
"""


def test_policy_constants_in_the_generated_module(compile_request: Compile) -> None:
    text = generate(compile_request({"o.proto": SCHEMA})).files[0].content
    compact = "".join(text.split()).replace(",)", ")")
    assert (
        "S_PING_POLICY:Final[ackbus.Policy]=ackbus.Policy(ack_timeout=0.25,max_attempts=7,"
        "jitter=0.0,deadline=12.5,priority=5)"
    ) in compact
    assert (
        "S_TICK_POLICY:Final[ackbus.Policy]=ackbus.Policy(ack_timeout=0.25,max_attempts=8,"
        "jitter=0.0,kind=ackbus.Kind.EVENT)"
    ) in compact
    # The event's own policy: its message's options, S subscribing (rpc Tick) with its
    # own attempts (its service's 8, where the event has the runtime's 10).
    assert (
        "TICK_EVENT_POLICY:Final[ackbus.Policy]=ackbus.Policy(kind=ackbus.Kind.EVENT,"
        'subscribers=("o.S"),subscriber_policies=(ackbus.SubscriberPolicy("o.S",max_attempts=8)))'
    ) in compact
    # A call's policy= replaces the schema's (ackbus.Client._send), else it holds.
    assert 'returnself._send(msg,S_PING_POLICY,"o.S/Ping",options)' in compact
    assert "S_TICK_POLICY)" in compact  # the handler's MethodSpec
    assert "returnself._publish(msg,TICK_EVENT_POLICY,options)" in compact  # the publisher
    assert "_S_PING_POLICY" not in text  # no private copy beside the public name
    assert "class OEvents(" in text
    assert "send_tick" not in text
    assert text.count("def publish_tick(") == 1  # once, for OEvents and OBlockingEvents


HEADER = (
    'syntax = "proto3";\npackage b;\nimport "ackbus/options.proto";\n'
    'import "google/protobuf/empty.proto";\nmessage X {\n'
)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            "}\nservice S {\n  option (ackbus.service_policy) = { jitter: 2 };\n"
            "  rpc Do(X) returns (google.protobuf.Empty);\n}\n",
            r"b\.proto:8: service b\.S: invalid policy: jitter must be within \[0, 1\], got 2\.0",
        ),
        (
            "}\nservice S {\n  rpc Do(X) returns (google.protobuf.Empty) {\n"
            "    option (ackbus.method_policy) = { max_attempts: 0 };\n  }\n}\n",
            r"b\.proto:9: rpc b\.S\.Do: invalid policy: max_attempts must be >= 1, got 0",
        ),
        (
            "  option (ackbus.message_policy) = { ack_timeout_s: -1 };\n}\n",
            r"b\.proto:6: message b\.X: invalid policy: ack_timeout_s must be > 0, got -1\.0",
        ),
        (
            # each level is valid, the merge is not: base from the method, cap from the service
            "}\nservice S {\n  option (ackbus.service_policy) = { backoff_cap_s: 1 };\n"
            "  rpc Do(X) returns (google.protobuf.Empty) {\n"
            "    option (ackbus.method_policy) = { backoff_base_s: 1.5 };\n  }\n}\n",
            r"b\.proto:9: rpc b\.S\.Do \(method, message and service policy merged\): "
            r"invalid policy: need 0 <= backoff_base_s <= backoff_cap_s, got 1\.5 and 1\.0",
        ),
    ],
    ids=["service", "method", "message", "merged"],
)
def test_bad_option_value_names_file_and_line(
    compile_request: Compile, body: str, error: str
) -> None:
    with pytest.raises(GenerationError, match=f"^{error}$"):
        generate(compile_request({"b.proto": HEADER + body}))


def test_event_with_a_reply_is_refused(compile_request: Compile) -> None:
    text = (
        'syntax = "proto3";\npackage e;\nimport "ackbus/options.proto";\n'
        "message X { option (ackbus.message_policy) = { kind: EVENT }; }\nmessage Y {}\n"
        "service S { rpc Do(X) returns (Y); }\n"
    )
    with pytest.raises(
        GenerationError, match=r"e\.proto:6: rpc e\.S\.Do is an EVENT but returns e\.Y"
    ):
        generate(compile_request({"e.proto": text}))


EVENTS_ONLY = {
    "ev/hand-events.proto": """
        syntax = "proto3";
        package ev;
        import "ackbus/options.proto";
        // A round ended.
        message RoundEnded {
          option (ackbus.message_policy) = { kind: EVENT deadline_s: 8 };
          // Which round.
          uint32 round = 1;
          message Detail { string text = 1; }
        }
        message Noise { string text = 1; }
    """,
    "ev/listeners.proto": """
        syntax = "proto3";
        package ev;
        import "ackbus/options.proto";
        import "google/protobuf/empty.proto";
        import "ev/hand-events.proto";
        service Slow {
          rpc Round(ev.RoundEnded) returns (google.protobuf.Empty) {
            option (ackbus.method_policy) = { deadline_s: 120 max_attempts: 40 };
          }
          rpc Detail(ev.RoundEnded.Detail) returns (google.protobuf.Empty) {
            option (ackbus.method_policy) = { kind: EVENT };
          }
        }
        service Same {
          rpc Round(ev.RoundEnded) returns (google.protobuf.Empty);
        }
    """,
}


def test_a_file_with_events_and_no_service_gets_its_publisher(compile_request: Compile) -> None:
    """Events declared in one file, subscribed to from another: the declaring file's module
    has the publisher classes (named after the file) and each event's own policy, with an
    entry for each subscriber whose limits differ (Slow: 120 s, 40 attempts; Same: none);
    a nested message an rpc takes as an EVENT is one too; the subscribers have no client."""
    request = compile_request(EVENTS_ONLY, generate=sorted(EVENTS_ONLY))
    files = {f.name: f.content for f in generate(request).files}
    text = files["ev/hand_events_ackbus.py"]
    compact = "".join(text.split()).replace(",)", ")")
    assert "class HandEventsEvents(" in text
    assert "class HandEventsBlockingEvents(" in text
    assert (
        "ROUND_ENDED_EVENT_POLICY:Final[ackbus.Policy]=ackbus.Policy(deadline=8.0,"
        'kind=ackbus.Kind.EVENT,subscribers=("ev.Same","ev.Slow"),subscriber_policies=('
        'ackbus.SubscriberPolicy("ev.Slow",max_attempts=40,deadline=120.0)))'
    ) in compact
    assert (
        "ROUND_ENDED_DETAIL_EVENT_POLICY:Final[ackbus.Policy]=ackbus.Policy("
        'kind=ackbus.Kind.EVENT,subscribers=("ev.Slow"))'
    ) in compact
    assert "def publish_round_ended(" in text
    assert "def publish_round_ended_detail(" in text
    assert "publish_noise" not in text
    assert "ROUND_ENDED_EVENT_POLICY)," in text  # the registry's spec
    listeners = files["ev/listeners_ackbus.py"]
    assert "class SlowHandler(" in listeners
    assert "SlowClient" not in listeners
    assert "publish_" not in listeners


KEYED = """
    syntax = "proto3";
    package k;
    import "ackbus/options.proto";
    import "google/protobuf/empty.proto";
    message Hand { string table_id = 1; }
    message Act {
      option (ackbus.message_policy) = { ordering_key: "hand.table_id" };
      Hand hand = 1;
      repeated string tags = 2;
      uint64 seat = 3;
    }
    message Bet { string table_id = 1; }
    service T {
      option (ackbus.service_policy) = { ordering_key: "table_id" };
      rpc Act(k.Act) returns (google.protobuf.Empty) {
        option (ackbus.method_policy) = { ordering_key: "seat" };
      }
      rpc Bet(k.Bet) returns (google.protobuf.Empty);
    }
"""


def test_an_ordering_key_arrives_in_the_generated_policies(compile_request: Compile) -> None:
    text = generate(compile_request({"k.proto": KEYED})).files[0].content
    compact = "".join(text.split()).replace(",)", ")")
    assert "T_ACT_POLICY:Final[ackbus.Policy]=ackbus.Policy(ordering_key='seat')" in compact
    assert "T_BET_POLICY:Final[ackbus.Policy]=ackbus.Policy(ordering_key='table_id')" in compact
    assert "ackbus.Policy(ordering_key='hand.table_id')" in compact  # Act's registry entry


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("nope", r"ordering_key 'nope': Act has no field 'nope'"),
        ("tags", r"ordering_key 'tags': Act\.tags is not a singular scalar field"),
        ("hand", r"ordering_key 'hand': Act\.hand is not a singular scalar field"),
        ("seat.x", r"ordering_key 'seat\.x': Act\.seat is not a singular message field"),
        ("hand.nope", r"ordering_key 'hand\.nope': Hand has no field 'nope'"),
        ("9x", r"ordering_key '9x': Act has no field '9x'"),
    ],
)
def test_an_ordering_key_must_name_a_scalar_field(
    compile_request: Compile, key: str, error: str
) -> None:
    schema = KEYED.replace('"hand.table_id"', f'"{key}"')
    with pytest.raises(GenerationError, match=r"k\.proto:\d+: .*" + error):
        generate(compile_request({"k.proto": schema}))


ZIPPED = """
    syntax = "proto3";
    package z;
    import "ackbus/options.proto";
    import "google/protobuf/empty.proto";
    message Report {
      option (ackbus.message_policy) = { compress_above: 4096 };
      string json = 1;
    }
    message Ping { string id = 1; }
    service Z {
      rpc Send(z.Report) returns (google.protobuf.Empty);
      rpc Ping(z.Ping) returns (google.protobuf.Empty) {
        option (ackbus.method_policy) = { compress_above: 0 };
      }
    }
"""


def test_compress_above_arrives_in_the_generated_policies(compile_request: Compile) -> None:
    """The policy option of compressed bodies (docs/protocol.md, "Compressed bodies")."""
    text = generate(compile_request({"z.proto": ZIPPED})).files[0].content
    compact = "".join(text.split()).replace(",)", ")")
    assert "ackbus.Policy(compress_above=4096)" in compact
    assert "Z_PING_POLICY:Final[ackbus.Policy]=ackbus.Policy(compress_above=0)" in compact
    with pytest.raises(ackbus.SchemaError, match="compress_above must be bytes >= 0"):
        ackbus.Policy(compress_above=-1)
