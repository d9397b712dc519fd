"""Naming rules, table-driven: every Python name comes from proto names by these rules."""

from __future__ import annotations

import pytest
from ackbus_codegen.errors import GenerationError
from ackbus_codegen.model import FileModel, Param, build_file
from ackbus_codegen.naming import (
    Namespace,
    module_for_proto,
    output_for_proto,
    param_name,
    policy_name,
    qualified_alias,
    snake_case,
)
from ackbus_codegen.protos import TypeIndex

from .conftest import Compile


@pytest.mark.parametrize(
    ("proto", "python"),
    [
        ("StartHand", "start_hand"),
        ("GetHTTPStatus", "get_http_status"),
        ("HTTPGet", "http_get"),
        ("Deal2Cards", "deal2_cards"),
        ("already_snake", "already_snake"),
        ("X", "x"),
        ("ListV1Items", "list_v1_items"),
    ],
)
def test_snake_case(proto: str, python: str) -> None:
    assert snake_case(proto) == python


@pytest.mark.parametrize(
    ("service", "rpc", "constant"),
    [
        ("Table", "StartHand", "TABLE_START_HAND_POLICY"),
        ("HTTPGateway", "GetHTTPStatus", "HTTP_GATEWAY_GET_HTTP_STATUS_POLICY"),
        ("type", "Do", "TYPE_DO_POLICY"),
        ("S", "already_snake", "S_ALREADY_SNAKE_POLICY"),
    ],
)
def test_policy_name(service: str, rpc: str, constant: str) -> None:
    assert policy_name(service, rpc) == constant


TAKEN = frozenset({"self", "timeout", "wait_ack", "to", "priority", "headers", "policy"})


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("from", "from_"),  # Python keyword
        ("class", "class_"),
        ("None", "None_"),
        ("async", "async_"),
        ("match", "match"),  # soft keyword: a valid name
        ("id", "id"),  # builtins are kept: bodies never use them
        ("type", "type"),
        ("str", "str"),
        ("self", "self_"),  # names the method itself needs
        ("timeout", "timeout_"),
        ("headers", "headers_"),
        ("policy", "policy_"),
        ("table_id", "table_id"),
    ],
)
def test_param_name(field: str, param: str) -> None:
    assert param_name(field, TAKEN) == param


@pytest.mark.parametrize(
    ("proto", "module", "output", "alias"),
    [
        ("poker/table.proto", "poker.table_pb2", "poker/table_ackbus.py", "poker_dot_table__pb2"),
        ("a/b-c.proto", "a.b_c_pb2", "a/b_c_ackbus.py", "a_dot_b__c__pb2"),
        ("top.proto", "top_pb2", "top_ackbus.py", "top__pb2"),
    ],
)
def test_module_names(proto: str, module: str, output: str, alias: str) -> None:
    assert module_for_proto(proto) == module
    assert output_for_proto(proto) == output
    assert qualified_alias(module) == alias


def test_qualified_alias_is_injective_where_short_names_clash() -> None:
    assert qualified_alias("a.b_c_pb2") != qualified_alias("a_b.c_pb2")


def test_namespace_claim_names_both_sides() -> None:
    ns = Namespace("module x", {"ackbus": "the import of ackbus"})
    ns.claim("FooClient", "service a.Foo")
    with pytest.raises(GenerationError, match=r"service a\.Bar and service a\.Foo both become"):
        ns.claim("FooClient", "service a.Bar")
    with pytest.raises(GenerationError, match="the import of ackbus"):
        ns.claim("ackbus", "something")


SCHEMA = """
syntax = "proto3";
package n;
import "google/protobuf/empty.proto";
import "google/protobuf/timestamp.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
}
message Outer {
  message Inner { int32 x = 1; }
  enum Shade { SHADE_UNSPECIFIED = 0; DARK = 1; }
}
message Req {
  string from = 1;
  int64 id = 2;
  string type = 3;
  Outer.Inner inner = 4;
  Color color = 5;
  Outer.Shade shade = 6;
  repeated string tags = 7;
  repeated Outer.Inner inners = 8;
  map<string, int32> counts = 9;
  map<int64, Outer.Inner> by_id = 10;
  oneof choice {
    int32 number = 11;
    Outer.Inner boxed = 12;
    Color hue = 13;
  }
  optional double ratio = 14;
  google.protobuf.Timestamp at = 15;
  int32 timeout = 16;
  bytes self = 17;
  bool msg = 18;
}
service Svc {
  rpc Do(Req) returns (google.protobuf.Empty);
}
"""

P = Param
EXPECTED = [  # every argument defaults to None, which leaves its field unset
    P("from_", "from", "str", ""),
    P("id", "id", "int", ""),
    P("type", "type", "str", ""),
    P("inner", "inner", "n_pb2.Outer.Inner", ""),
    P("color", "color", "n_pb2.Color.ValueType", ""),
    P("shade", "shade", "n_pb2.Outer.Shade.ValueType", ""),
    P("tags", "tags", "Iterable[str]", ""),
    P("inners", "inners", "Iterable[n_pb2.Outer.Inner]", ""),
    P("counts", "counts", "Mapping[str, int]", ""),
    P("by_id", "by_id", "Mapping[int, n_pb2.Outer.Inner]", ""),
    P("number", "number", "int", ""),
    P("boxed", "boxed", "n_pb2.Outer.Inner", ""),
    P("hue", "hue", "n_pb2.Color.ValueType", ""),
    P("ratio", "ratio", "float", ""),
    P("at", "at", "timestamp_pb2.Timestamp", ""),
    P("timeout_", "timeout", "int", ""),
    P("self_", "self", "bytes", ""),
    P("msg_", "msg", "bool", ""),
]


def _model(compile_request: Compile, files: dict[str, str], name: str) -> FileModel:
    request = compile_request(files)
    index = TypeIndex(request.proto_file)
    return build_file(
        index.files[name], index, version="0.1.0", warnings=[], type_names=Namespace("t")
    )


@pytest.mark.parametrize("expected", EXPECTED, ids=[p.field for p in EXPECTED])
def test_field_to_keyword_argument(compile_request: Compile, expected: Param) -> None:
    model = _model(compile_request, {"n.proto": SCHEMA}, "n.proto")
    (method,) = model.services[0].methods
    by_field = {p.field: p for p in method.params}
    assert by_field[expected.field] == expected


def test_field_order_is_declaration_order(compile_request: Compile) -> None:
    model = _model(compile_request, {"n.proto": SCHEMA}, "n.proto")
    assert [p.field for p in model.services[0].methods[0].params] == [e.field for e in EXPECTED]


PROTO2 = """
syntax = "proto2";
package p2;
import "google/protobuf/empty.proto";
message Req {
  required string name = 1;
  optional int32 count = 2 [default = 7];
  optional Req child = 3;
  oneof o { int32 a = 4; }
}
service S { rpc Do(Req) returns (google.protobuf.Empty); }
"""


def test_proto2_fields(compile_request: Compile) -> None:
    model = _model(compile_request, {"p2.proto": PROTO2}, "p2.proto")
    params = {p.field: p for p in model.services[0].methods[0].params}
    # required too: a message may be passed instead; ackbus.build refuses it left unset
    assert params["name"] == P("name", "name", "str", "")
    assert params["count"] == P("count", "count", "int", "")
    assert params["child"] == P("child", "child", "p2_pb2.Req", "")
    assert params["a"] == P("a", "a", "int", "")


def test_service_and_method_names(compile_request: Compile) -> None:
    model = _model(compile_request, {"n.proto": SCHEMA}, "n.proto")
    svc = model.services[0]
    assert (svc.client, svc.blocking_client, svc.handler, svc.sync_handler) == (
        "SvcClient",
        "SvcBlockingClient",
        "SvcHandler",
        "SvcSyncHandler",
    )
    m = svc.methods[0]
    assert (m.send, m.request, m.handler, m.rpc) == ("send_do", None, "on_do", "n.Svc/Do")
    assert m.policy == "SVC_DO_POLICY"
    assert [p.name for p in model.policies] == ["SVC_DO_POLICY"]
    assert model.exports == [
        "REGISTRY",
        "SVC_DO_POLICY",
        "SvcBlockingClient",
        "SvcClient",
        "SvcHandler",
        "SvcSyncHandler",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "message X { optional string from = 1; optional string from_ = 2; }\n"
            "service S { rpc Do(X) returns (google.protobuf.Empty); }",
            r"field c\.X\.from_ \(c\.proto:\d+\) and field c\.X\.from \(c\.proto:\d+\) both "
            r"become 'from_' in the keyword arguments of rpc c\.S\.Do",
        ),
        (
            "message X {} message Y {}\n"
            "service S { rpc StartHand(X) returns (google.protobuf.Empty);\n"
            "            rpc start_hand(Y) returns (google.protobuf.Empty); }",
            r"rpc c\.S\.start_hand \(c\.proto:\d+\) and rpc c\.S\.StartHand \(c\.proto:\d+\) "
            r"both become 'send_start_hand'",
        ),
        (
            "message X {} message Y {}\n"
            "service Foo { rpc A(X) returns (google.protobuf.Empty); }\n"
            "service FooBlocking { rpc B(Y) returns (google.protobuf.Empty); }",
            r"service c\.FooBlocking \(c\.proto:\d+\) and service c\.Foo \(c\.proto:\d+\) both "
            r"become 'FooBlockingClient'",
        ),
        (
            "message X { option (ackbus.message_policy) = { kind: EVENT }; }\n"
            "service S { rpc A(X) returns (google.protobuf.Empty);\n"
            "            rpc B(X) returns (google.protobuf.Empty); }",
            r"c\.proto:\d+: rpc c\.S\.B and rpc c\.S\.A both subscribe to event c\.X",
        ),
        (
            'message X { option (ackbus.legacy_name) = "Old"; }\n'
            'message Y { option (ackbus.legacy_name) = "Old"; }',
            r"the legacy_name of c\.Y \(c\.proto:\d+\) and the legacy_name of c\.X "
            r"\(c\.proto:\d+\) both become 'Old'",
        ),
        (
            "message X {} message Y {}\n"
            "service Foo { rpc BarBaz(X) returns (google.protobuf.Empty); }\n"
            "service FooBar { rpc Baz(Y) returns (google.protobuf.Empty); }",
            r"rpc c\.FooBar\.Baz \(c\.proto:\d+\) and rpc c\.Foo\.BarBaz \(c\.proto:\d+\) "
            r"both become 'FOO_BAR_BAZ_POLICY' in module c_ackbus\.py",
        ),
        (
            "message X {} message Y {}\n"
            "service Table { rpc Do(X) returns (google.protobuf.Empty); }\n"
            "service table { rpc Do(Y) returns (google.protobuf.Empty); }",
            r"rpc c\.table\.Do \(c\.proto:\d+\) and rpc c\.Table\.Do \(c\.proto:\d+\) "
            r"both become 'TABLE_DO_POLICY'",
        ),
    ],
    ids=[
        "fields",
        "rpcs",
        "services",
        "event-subscribed-twice",
        "legacy-name",
        "policy-constants",
        "policy-constants-by-case",
    ],
)
def test_collisions_name_both_sides(compile_request: Compile, body: str, message: str) -> None:
    text = (
        'syntax = "proto2";\npackage c;\nimport "ackbus/options.proto";\n'
        'import "google/protobuf/empty.proto";\n' + body
    )
    with pytest.raises(GenerationError, match=message):
        _model(compile_request, {"c.proto": text}, "c.proto")
