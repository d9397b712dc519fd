"""The generator end to end: golden output, options, warnings, and what the code does."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import ackbus
import pytest
from ackbus_codegen import plugin, protoc
from ackbus_codegen.generate import generate
from ackbus_codegen.naming import policy_name
from google.protobuf.compiler import plugin_pb2
from google.protobuf.message import Message

from .conftest import ROOT, Compile

R = TypeVar("R", bound=Message)

POKER = sorted(
    p.relative_to(ROOT / "schemas").as_posix() for p in (ROOT / "schemas/poker").glob("*.proto")
)


def test_golden_example_schemas(tmp_path: Path) -> None:
    """protoc + the installed plugin reproduce the committed generated/ byte for byte."""
    protoc.run(POKER, include=[ROOT / "schemas"], out=tmp_path, ackbus=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_ackbus.py"))
    assert [p.as_posix() for p in fresh] == [
        "poker/cards_ackbus.py",
        "poker/lobby_ackbus.py",
        "poker/table_ackbus.py",
    ]
    for name in fresh:
        assert (tmp_path / name).read_text() == (ROOT / "generated" / name).read_text(), name


def test_generation_is_deterministic(compile_request: Compile) -> None:
    files = {name: (ROOT / "schemas" / name).read_text() for name in POKER}
    request = compile_request(files)
    first = [(f.name, f.content) for f in generate(request).files]
    again = [(f.name, f.content) for f in generate(compile_request(files)).files]
    assert first == again
    assert all("\t" not in content and " \n" not in content for _, content in first)


OPTIONS = """
syntax = "proto3";
package opt;
import "ackbus/options.proto";
import "google/protobuf/empty.proto";

message Ping {
  option (ackbus.message_policy) = { priority: 4 };
  option (ackbus.legacy_name) = "PING";
}
service Pinger {
  option (ackbus.service_policy) = { ack_timeout_s: 0.125 };
  rpc Ping(opt.Ping) returns (google.protobuf.Empty) {
    option (ackbus.method_policy) = { max_attempts: 7 };
  }
}
"""


def test_custom_option_reaches_the_generated_policy(tmp_path: Path) -> None:
    """Through real protoc and the real plugin process, then imported."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s/opt.proto").write_text(OPTIONS)
    protoc.generate_to(["opt.proto"], include=[tmp_path / "s"], out=tmp_path / "out")
    code = textwrap.dedent(
        """
        import opt_ackbus
        (spec,) = opt_ackbus.PingerHandler.__ackbus_methods__
        print(spec.policy.ack_timeout, spec.policy.max_attempts, spec.policy.priority)
        print(spec.policy is opt_ackbus.PINGER_PING_POLICY)
        registry = opt_ackbus.REGISTRY
        print(registry["PING"].full_name, registry["opt.Ping"].policy.priority)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "out",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert out == ["0.125", "7", "4", "True", "opt.Ping", "4"]


def test_options_are_invisible_unless_imported_before_parsing(compile_request: Compile) -> None:
    """Why plugin.py imports ackbus.options_pb2 first: parsed without it, options stay
    unknown fields that a later import does not recover."""
    data = compile_request({"opt.proto": OPTIONS}).SerializeToString()
    probe = textwrap.dedent(
        """
        import sys
        from google.protobuf.compiler import plugin_pb2
        request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
        from ackbus import options_pb2
        (f,) = [f for f in request.proto_file if f.name == "opt.proto"]
        print(f.service[0].options.HasExtension(options_pb2.service_policy))
        """
    )
    late = subprocess.run(
        [sys.executable, "-c", probe], input=data, capture_output=True, timeout=30, check=True
    )
    assert late.stdout.split() == [b"False"]
    response = plugin_pb2.CodeGeneratorResponse.FromString(plugin.run(data)[0])
    assert not response.error
    compact = "".join(response.file[0].content.split()).replace(",)", ")")
    assert "ackbus.Policy(ack_timeout=0.125,max_attempts=7,priority=4)" in compact


def test_plugin_reports_errors_in_the_response(compile_request: Compile) -> None:
    bad = OPTIONS.replace("max_attempts: 7", "max_attempts: 0")
    data, warnings = plugin.run(compile_request({"opt.proto": bad}).SerializeToString())
    response = plugin_pb2.CodeGeneratorResponse.FromString(data)
    assert response.error.startswith("opt.proto:14: rpc opt.Pinger.Ping: invalid policy")
    assert not response.file
    assert warnings == []
    assert response.supported_features & plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL


UNMAPPED = """
syntax = "proto3";
package um;
import "google/protobuf/empty.proto";
message X { int32 a = 1; }
message Y { int32 a = 1; }
message Z { int32 a = 1; }
service Mixed {
  rpc Watch(X) returns (stream Y);
  rpc Upload(stream Y) returns (google.protobuf.Empty);
  rpc Do(Z) returns (google.protobuf.Empty);
}
service OnlyStreams {
  rpc Chat(stream X) returns (stream Y);
}
"""


def test_unmapped_things_are_skipped_with_a_warning(compile_request: Compile) -> None:
    result = generate(compile_request({"um.proto": UNMAPPED}))
    assert result.warnings == [
        "um.proto:9: rpc um.Mixed.Watch skipped: streaming rpcs are not mapped",
        "um.proto:10: rpc um.Mixed.Upload skipped: streaming rpcs are not mapped",
        "um.proto:14: rpc um.OnlyStreams.Chat skipped: streaming rpcs are not mapped",
        "um.proto:13: service um.OnlyStreams skipped: it has no rpc ackbus maps",
    ]
    (f,) = result.files
    assert "def send_do(" in f.content
    assert "watch" not in f.content
    assert "OnlyStreams" not in f.content


def test_file_without_messages_or_services_gives_no_module(compile_request: Compile) -> None:
    result = generate(
        compile_request({"e.proto": 'syntax = "proto3";\npackage e;\nenum E { A = 0; }\n'})
    )
    assert result.files == []


# -- what the generated code does (poker, from generated/) ---------------------------------


class FakeBus:
    """Records what generated clients ask of the bus (this layer's fake; the
    runtime's own tests run the clients against real endpoints)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, dict[str, Any]]] = []

    async def send(self, msg: Message, **kw: Any) -> ackbus.DeliveryReport:
        self.calls.append(("send", msg, kw))
        return ackbus.DeliveryReport(b"\x01" * 16, msg.DESCRIPTOR.full_name)

    async def publish(self, event: Message, **kw: Any) -> ackbus.DeliveryReport:
        self.calls.append(("publish", event, kw))
        return ackbus.DeliveryReport(b"\x02" * 16, event.DESCRIPTOR.full_name)

    async def request(self, msg: Message, response_type: type[R], **kw: Any) -> R:
        self.calls.append(("request", msg, kw))
        return response_type()


class BlockingFakeBus:
    def __init__(self) -> None:
        self.inner = FakeBus()

    def send(self, msg: Message, **kw: Any) -> ackbus.DeliveryReport:
        return asyncio.run(self.inner.send(msg, **kw))

    def publish(self, event: Message, **kw: Any) -> ackbus.DeliveryReport:
        return asyncio.run(self.inner.publish(event, **kw))

    def request(self, msg: Message, response_type: type[R], **kw: Any) -> R:
        return asyncio.run(self.inner.request(msg, response_type, **kw))


async def test_client_builds_messages_with_presence_and_keywords() -> None:
    from poker import cards_pb2, table_ackbus, table_pb2

    bus = FakeBus()
    client = table_ackbus.TableClient(bus)
    report = await client.send_player_action(
        table_id="t1", from_="alice", kind=cards_pb2.RAISE, chips=40, to="table", priority=9
    )
    assert report.message_type == "poker.PlayerAction"
    verb, msg, kw = bus.calls[-1]
    assert verb == "send"
    assert isinstance(msg, table_pb2.PlayerAction)
    assert getattr(msg, "from") == "alice"
    assert msg.WhichOneof("amount") == "chips"
    assert not msg.HasField("comment")  # None leaves optional fields unset
    assert kw == {  # the options given, the schema's policy and the rpc
        "to": "table",
        "priority": 9,
        "policy": ackbus.Policy(
            ack_timeout=0.5,
            max_attempts=3,
            priority=5,
            retry_rejected=False,
            ordering_key="table_id",
        ),
        "method": "poker.Table/PlayerAction",  # sent to its rpc
    }
    await client.send_player_action(table_id="t1", all_in=True, comment="")
    msg = bus.calls[-1][1]
    assert isinstance(msg, table_pb2.PlayerAction)
    assert msg.WhichOneof("amount") == "all_in"
    assert msg.HasField("comment")  # "" was given, so it is set

    # One method takes a message or its fields, not both.
    given = table_pb2.PlayerAction(table_id="t2")
    await client.send_player_action(given, wait_ack=False)
    assert bus.calls[-1][1] is given
    assert bus.calls[-1][2] == {
        "wait_ack": False,
        "policy": table_ackbus.TABLE_PLAYER_ACTION_POLICY,
        "method": "poker.Table/PlayerAction",
    }
    with pytest.raises(TypeError, match=r"poker\.PlayerAction: pass a message or its fields"):
        await client.send_player_action(given, table_id="t3")


async def test_client_sets_nested_repeated_and_map_fields() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp
    from poker import cards_pb2, table_ackbus, table_pb2

    bus = FakeBus()
    client = table_ackbus.TableClient(bus)
    ace = cards_pb2.Card(suit=cards_pb2.Card.SPADES, rank=14)
    await client.send_deal_cards(
        table_id="t", hands={"bob": table_pb2.DealCards.Hand(cards=[ace])}, board=[ace, ace]
    )
    await client.send_start_hand(table_id="t", seats=6, start_at=Timestamp(seconds=5))
    deal, start = bus.calls[-2][1], bus.calls[-1][1]
    assert isinstance(deal, table_pb2.DealCards)
    assert isinstance(start, table_pb2.StartHand)
    assert deal.hands["bob"].cards[0].rank == 14
    assert len(deal.board) == 2
    assert start.start_at.seconds == 5
    assert not start.HasField("blinds")
    assert bus.calls[-1][2]["policy"] == ackbus.Policy(
        ack_timeout=0.5, max_attempts=8, deadline=10.0, priority=3
    )


async def test_request_and_publish() -> None:
    from poker import lobby_ackbus, lobby_pb2, table_ackbus, table_pb2

    bus = FakeBus()
    state = await table_ackbus.TableClient(bus).request_get_table_state(table_id="t", timeout=2.0)
    assert isinstance(state, table_pb2.TableState)
    assert bus.calls[-1][0] == "request"
    assert bus.calls[-1][2]["timeout"] == 2.0
    reply = await lobby_ackbus.LobbyClient(bus).request_register_service(
        service_name="table", id="i-1", labels={"region": "eu"}
    )
    assert isinstance(reply, lobby_pb2.RegistrationResult)
    await table_ackbus.TableEvents(bus).publish_hand_started(table_id="t", player_ids=["a", "b"])
    verb, _event, kw = bus.calls[-1]
    assert verb == "publish"
    assert "to" not in kw
    assert kw["policy"] is table_ackbus.HAND_STARTED_EVENT_POLICY
    assert kw["policy"].kind is ackbus.Kind.EVENT
    assert kw["policy"].max_attempts == 10  # the event's own; Audit's 100 is Audit's
    assert kw["policy"].limits("poker.Audit") == (100, 300.0)


def test_blocking_client_mirrors_the_async_one() -> None:
    from poker import table_ackbus

    bus = BlockingFakeBus()
    client = table_ackbus.TableBlockingClient(bus)
    report = client.send_start_hand(table_id="t")
    assert report.message_type == "poker.StartHand"
    client.request_get_table_state(table_id="t")
    assert [c[0] for c in bus.inner.calls] == ["send", "request"]
    async_names = {n for n in vars(table_ackbus.TableClient) if not n.startswith("_")}
    assert async_names == {
        n for n in vars(table_ackbus.TableBlockingClient) if not n.startswith("_")
    }


async def test_a_per_call_policy_replaces_the_schema_policy() -> None:
    from poker import table_ackbus, table_pb2

    mine = ackbus.Policy(max_attempts=1, ack_timeout=0.2)
    bus = FakeBus()
    table = table_ackbus.TableClient(bus)
    await table.send_start_hand(table_id="t", policy=mine)
    await table.send_start_hand(table_pb2.StartHand(), policy=mine)
    await table.request_get_table_state(table_id="t", policy=mine)
    await table.request_get_table_state(table_pb2.GetTableState(), policy=mine)
    await table_ackbus.TableEvents(bus).publish_hand_started(table_id="t", policy=mine)
    assert [(verb, kw["policy"] is mine) for verb, _, kw in bus.calls] == [
        ("send", True),
        ("send", True),
        ("request", True),
        ("request", True),
        ("publish", True),
    ]
    await table.send_start_hand(table_id="t")  # without policy=: the schema's
    assert bus.calls[-1][2]["policy"] == ackbus.Policy(
        ack_timeout=0.5, max_attempts=8, deadline=10.0, priority=3
    )


def test_a_per_call_policy_reaches_the_blocking_bus() -> None:
    from poker import table_ackbus, table_pb2

    mine = ackbus.Policy(max_attempts=1)
    bus = BlockingFakeBus()
    table_ackbus.TableBlockingClient(bus).send_start_hand(table_id="t", policy=mine)
    table_ackbus.TableBlockingClient(bus).request_get_table_state(policy=mine)
    table_ackbus.TableBlockingEvents(bus).publish_hand_started(table_pb2.HandStarted(), policy=mine)
    assert [(verb, kw["policy"] is mine) for verb, _, kw in bus.inner.calls] == [
        ("send", True),
        ("request", True),
        ("publish", True),
    ]


def test_public_policy_constants_are_what_the_handlers_declare() -> None:
    """One public constant per rpc, exported, and the very object the handler base
    declares (and so the runtime uses) for it: a user starting from it starts from
    exactly the schema's policy."""
    from poker import lobby_ackbus, table_ackbus

    found = {}
    for module in (lobby_ackbus, table_ackbus):
        for name in module.__all__:
            if name.endswith("Handler"):
                for spec in getattr(module, name).__ackbus_methods__:
                    const = policy_name(spec.service.rpartition(".")[2], spec.name)
                    assert const in module.__all__, const
                    assert getattr(module, const) is spec.policy, const
                    found[const] = spec.policy
    assert sorted(found) == [
        "AUDIT_HAND_STARTED_POLICY",
        "LOBBY_HAND_STARTED_POLICY",
        "LOBBY_REGISTER_SERVICE_POLICY",
        "TABLE_DEAL_CARDS_POLICY",
        "TABLE_GET_TABLE_STATE_POLICY",
        "TABLE_PLAYER_ACTION_POLICY",
        "TABLE_START_HAND_POLICY",
    ]
    policies = [n for m in (lobby_ackbus, table_ackbus) for n in m.__all__ if "POLICY" in n]
    # no constant without an rpc, but for each event type's own (its publisher's)
    assert sorted(policies) == sorted([*found, "HAND_STARTED_EVENT_POLICY"])
    start_hand = table_ackbus.TABLE_START_HAND_POLICY
    assert start_hand == ackbus.Policy(ack_timeout=0.5, max_attempts=8, deadline=10.0, priority=3)
    # The registry holds the request message's own policy, not the rpc's merged one.
    assert table_ackbus.REGISTRY["poker.StartHand"].policy == ackbus.Policy()
    doc = inspect.getdoc(table_ackbus.TableClient.send_start_hand) or ""
    assert "under TABLE_START_HAND_POLICY" in doc
    assert "policy=X_POLICY.with_(max_attempts=1)" in (table_ackbus.__doc__ or "")


async def test_changing_one_field_of_the_schema_policy_reaches_the_bus() -> None:
    from poker import table_ackbus, table_pb2

    bus = FakeBus()
    once = table_ackbus.TABLE_START_HAND_POLICY.with_(max_attempts=1)
    await table_ackbus.TableClient(bus).send_start_hand(table_id="t", policy=once)
    await table_ackbus.TableClient(bus).request_get_table_state(
        policy=table_ackbus.TABLE_GET_TABLE_STATE_POLICY.with_(ack_timeout=0.1)
    )
    await table_ackbus.TableEvents(bus).publish_hand_started(
        policy=table_ackbus.HAND_STARTED_EVENT_POLICY.with_(deadline=5.0)
    )
    sent = [kw["policy"] for _, _, kw in bus.calls]
    assert sent == [
        ackbus.Policy(ack_timeout=0.5, max_attempts=1, deadline=10.0, priority=3),
        ackbus.Policy(ack_timeout=0.1, max_attempts=8),
        ackbus.Policy(
            deadline=5.0,
            kind=ackbus.Kind.EVENT,
            subscribers=("poker.Audit", "poker.Lobby"),
            subscriber_policies=(
                ackbus.SubscriberPolicy("poker.Audit", max_attempts=100, deadline=300.0),
                ackbus.SubscriberPolicy("poker.Lobby", max_attempts=5),
            ),
        ),
    ]
    await table_ackbus.TableClient(bus).send_start_hand(table_pb2.StartHand(), policy=once)
    assert bus.calls[-1][2]["policy"] is once
    # The schema's constant is untouched: the next call without policy= uses it as it was.
    await table_ackbus.TableClient(bus).send_start_hand(table_id="t")
    assert bus.calls[-1][2]["policy"] is table_ackbus.TABLE_START_HAND_POLICY
    assert table_ackbus.TABLE_START_HAND_POLICY.max_attempts == 8


def test_every_client_method_takes_every_call_option() -> None:
    """Each method says its options once, as ``**options`` of the runtime's TypedDict
    for its kind (so none is forgotten, and a new one reaches every client)."""
    import typing

    from poker import lobby_ackbus, table_ackbus

    clients = [
        getattr(module, name)
        for module in (lobby_ackbus, table_ackbus)
        for name in module.__all__
        if name.endswith(("Client", "Events"))
    ]
    # Audit has no client: its one rpc takes an event, published through TableEvents.
    assert [c.__name__ for c in clients] == [
        "LobbyBlockingClient",
        "LobbyClient",
        "TableBlockingClient",
        "TableBlockingEvents",
        "TableClient",
        "TableEvents",
    ]
    kinds = {
        "send_": ackbus.CommandOptions,
        "publish_": ackbus.PublishOptions,
        "request_": ackbus.CallOptions,
    }
    seen = set()
    for cls in clients:
        for name in dir(cls):
            kind = next((k for k in kinds if name.startswith(k)), None)
            if kind is None:
                continue
            seen.add(kind)
            params = inspect.signature(getattr(cls, name)).parameters
            assert params["options"].kind is inspect.Parameter.VAR_KEYWORD, (cls, name)
            hints = typing.get_type_hints(getattr(cls, name))
            assert typing.get_args(hints["options"]) == (kinds[kind],), (cls, name)
    assert seen == set(kinds)
    assert {"wait_ack", "timeout", "to", "priority", "headers", "policy", "key"} == set(
        ackbus.CommandOptions.__annotations__
    ) | {k for base in ackbus.CommandOptions.__mro__ for k in getattr(base, "__annotations__", {})}


async def test_handler_base() -> None:
    from poker import table_ackbus, table_pb2

    class Table(table_ackbus.TableHandler):
        async def on_start_hand(self, msg: table_pb2.StartHand, ctx: ackbus.Context) -> None:
            return None

    assert Table.__ackbus_service__ == "poker.Table"
    assert [m.name for m in Table.implemented_methods()] == ["StartHand"]
    spec = {m.name: m for m in Table.__ackbus_methods__}["GetTableState"]
    assert (spec.handler_attr, spec.request, spec.response) == (
        "on_get_table_state",
        table_pb2.GetTableState,
        table_pb2.TableState,
    )
    ctx = ackbus.Context(b"\x00" * 16, "poker.DealCards", ackbus.Identity("t", "1"), 1, 0, 0, 0)
    with pytest.raises(
        NotImplementedError, match=r"TableHandler\.on_deal_cards is not implemented"
    ):
        await Table().on_deal_cards(table_pb2.DealCards(), ctx)


def test_sync_handler_base() -> None:
    """Beside each async base, a base of plain ``def`` methods: the same service and rpcs
    (the very MethodSpecs), registered alike, routed to the worker pool."""
    from ackbus._dispatch import Dispatcher
    from poker import table_ackbus, table_pb2

    class Table(table_ackbus.TableSyncHandler):
        def on_get_table_state(
            self, msg: table_pb2.GetTableState, ctx: ackbus.Context
        ) -> table_pb2.TableState:
            return table_pb2.TableState(table_id=msg.table_id)

    base = table_ackbus.TableSyncHandler
    assert base.__ackbus_service__ == "poker.Table"
    assert base.__ackbus_methods__ is table_ackbus.TableHandler.__ackbus_methods__
    assert [m.name for m in Table.implemented_methods()] == ["GetTableState"]
    (route,) = Dispatcher().add_handler(Table())
    assert (route.sync, route.response) == (True, table_pb2.TableState)
    ctx = ackbus.Context(b"\x00" * 16, "poker.DealCards", ackbus.Identity("t", "1"), 1, 0, 0, 0)
    with pytest.raises(
        NotImplementedError, match=r"TableSyncHandler\.on_deal_cards is not implemented"
    ):
        Table().on_deal_cards(table_pb2.DealCards(), ctx)


def test_registry_names_and_legacy_names() -> None:
    from poker import lobby_ackbus, table_ackbus, table_pb2

    reg = table_ackbus.REGISTRY
    assert reg["StartHand"] is reg["poker.StartHand"]
    assert reg["poker.HandStarted"].policy.kind is ackbus.Kind.EVENT
    assert reg.for_class(table_pb2.TableState.Seat) is not None
    assert "poker.DealCards.HandsEntry" not in reg  # map entries are not messages
    assert lobby_ackbus.REGISTRY["ServiceRegistration"].full_name == "poker.ServiceRegistration"


def test_docstrings_come_from_proto_comments() -> None:
    from poker import table_ackbus

    assert "The dealer of one table." in (table_ackbus.TableClient.__doc__ or "")
    doc = table_ackbus.TableClient.send_start_hand.__doc__ or ""
    assert doc.startswith("Start a new hand.")
    assert "table_id: The table that deals the hand." in doc
    assert (
        "generated by ackbus_codegen 0.1.0"
        in (ROOT / "generated/poker/table_ackbus.py").read_text()
    )


@pytest.mark.parametrize("version", ["0.2.0", "1.1.0"])
def test_mismatched_runtime_fails_loudly_at_import(version: str) -> None:
    code = f"import ackbus; ackbus.__version__ = {version!r}; import poker.table_ackbus"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(ROOT / "generated"), "PATH": ""},
    )
    assert run.returncode != 0
    assert (
        f"ImportError: poker.table_ackbus was generated by ackbus_codegen 0.1.0 and needs the "
        f"ackbus runtime 0.1.x, but ackbus {version} is installed"
    ) in run.stderr


def test_every_export_exists() -> None:
    from poker import cards_ackbus, lobby_ackbus, table_ackbus

    for module in (cards_ackbus, lobby_ackbus, table_ackbus):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
    assert set(lobby_ackbus.__all__) >= {"LobbyClient", "AuditHandler", "REGISTRY"}


def test_unimportable_modules_are_skipped_and_leave_no_import(compile_request: Compile) -> None:
    files = {
        "import/thing.proto": 'syntax = "proto3";\npackage th;\nmessage Thing { int32 a = 1; }\n',
        "uses.proto": textwrap.dedent(
            """\
            syntax = "proto3";
            package uses;
            import "google/protobuf/empty.proto";
            import "import/thing.proto";
            message Wrap { th.Thing thing = 1; repeated string tags = 2; }
            message Plain { int32 a = 1; }
            service S {
              rpc Wrap(uses.Wrap) returns (google.protobuf.Empty);
              rpc Plain(uses.Plain) returns (google.protobuf.Empty);
            }
            """
        ),
    }
    result = generate(compile_request(files))
    assert result.warnings == [
        "import/thing.proto: file skipped: its module import.thing_pb2 cannot be spelled in "
        "an import statement",
        "uses.proto:8: rpc uses.S.Wrap skipped: module import.thing_pb2 cannot be spelled in "
        "an import statement",
    ]
    (module,) = result.files
    assert module.name == "uses_ackbus.py"
    assert "thing" not in module.content
    assert "Iterable" not in module.content  # asked for by the skipped rpc only
    assert "def send_plain(" in module.content


def test_an_event_types_policies_name_the_services_that_subscribe_to_it() -> None:
    """Every service with an rpc that takes an event type subscribes to it, across the
    files generated together: the rpc policies and the registry say so, and a
    publisher waits for each."""
    from poker import lobby_ackbus, table_ackbus

    both = ("poker.Audit", "poker.Lobby")
    event = table_ackbus.HAND_STARTED_EVENT_POLICY
    assert event.subscribers == both
    assert table_ackbus.REGISTRY["poker.HandStarted"].policy is event
    assert table_ackbus.REGISTRY["poker.HandStarted"].subscribers == both
    # Each subscriber's rpc policy where it differs from the event's own: Audit's
    # attempts and deadline, Lobby's attempts (its service's max_attempts: 5).
    assert table_ackbus.REGISTRY["poker.HandStarted"].subscriber_policies == (
        ackbus.SubscriberPolicy("poker.Audit", max_attempts=100, deadline=300.0),
        ackbus.SubscriberPolicy("poker.Lobby", max_attempts=5),
    )
    assert event.life == 300.0
    # A subscriber's rpc policy describes its own delivery, and names no subscribers.
    assert lobby_ackbus.AUDIT_HAND_STARTED_POLICY.subscribers == ()
    assert lobby_ackbus.LOBBY_HAND_STARTED_POLICY.max_attempts == 5
    # Commands have none.
    assert table_ackbus.TABLE_START_HAND_POLICY.subscribers == ()
    assert table_ackbus.REGISTRY["poker.StartHand"].subscribers == ()
