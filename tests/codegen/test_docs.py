"""``ackbus docs``: the AsyncAPI 3.0 document of schemas/ validates against the official
JSON Schema (vendored in tests/codegen/asyncapi/, with its license), its payload schemas
say what the descriptors say, and the HTML catalogue reads right in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ackbus.cli import main
from ackbus_codegen import asyncapi, catalogue
from ackbus_codegen.docs import write_docs
from browser import chromium
from google.protobuf import descriptor_pb2

from .conftest import Compile

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
POKER = sorted(p.relative_to(SCHEMAS).as_posix() for p in (SCHEMAS / "poker").glob("*.proto"))
ASYNCAPI_SCHEMA = Path(__file__).parent / "asyncapi/3.0.0.json"

# protoc in a subprocess, a browser start and some 60 round trips to it: on a loaded
# 2-core machine these take several times their idle 10 s.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def poker_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ackbus docs`` on the example schemas, as ``make docs`` runs it."""
    out = tmp_path_factory.mktemp("docs")
    run = subprocess.run(
        [sys.executable, "-m", "ackbus.cli", "docs", "-I", "schemas", "-o", str(out), *POKER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"ackbus docs: wrote {out}/asyncapi.yaml and {out}/index.html"
    return out


@pytest.fixture(scope="module")
def doc(poker_docs: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((poker_docs / "asyncapi.yaml").read_text())
    return loaded


def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# -- the AsyncAPI document ---------------------------------------------------


def test_the_asyncapi_document_validates(doc: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in _validator().iter_errors(doc)
    ]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0"
    # What the JSON Schema cannot check, and an AsyncAPI parser does: every reference
    # resolves, and an operation's messages are its channel's.
    for ref in _refs(doc):
        assert _pointer(doc, ref) is not None, ref
    for name, op in doc["operations"].items():
        channel = op["channel"]["$ref"]
        for msg in op["messages"]:
            assert msg["$ref"].startswith(channel + "/messages/"), name


def test_the_validator_refuses_a_broken_document(doc: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(doc))
    broken["operations"]["poker.Table.StartHand"]["action"] = "publish"
    del broken["info"]["version"]
    paths = {"/".join(map(str, e.absolute_path)) for e in _validator().iter_errors(broken)}
    assert paths == {"operations/poker.Table.StartHand", "info"}


def test_commands_requests_and_events_with_their_effective_policies(doc: dict[str, Any]) -> None:
    ops = doc["operations"]
    start = ops["poker.Table.StartHand"]
    assert start["action"] == "receive"
    assert start["x-ackbus-kind"] == "command"
    assert start["description"] == "Start a new hand. The table publishes HandStarted once it has."
    assert start["x-ackbus-policy"] == {
        "ack_timeout_s": 0.5,
        "max_attempts": 8,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 2.0,
        "jitter": 0.2,
        "deadline_s": 10.0,
        "priority": 3,
        "retry_rejected": False,
    }
    assert start["x-ackbus-policy-set-by"] == {
        "ack_timeout_s": "service",
        "max_attempts": "service",
        "deadline_s": "method",
        "priority": "method",
    }
    assert ops["poker.Table.StartHand.send"]["action"] == "send"
    assert doc["channels"]["poker.Table.StartHand"]["address"] == "poker.StartHand"
    # PlayerAction: priority and ordering key from the message, max_attempts and
    # retry_rejected from the rpc
    action = ops["poker.Table.PlayerAction"]["x-ackbus-policy-set-by"]
    assert action == {
        "ack_timeout_s": "service",
        "max_attempts": "method",
        "priority": "message",
        "retry_rejected": "method",
        "ordering_key": "message",
    }
    assert ops["poker.Table.PlayerAction"]["x-ackbus-policy"]["ordering_key"] == "table_id"
    assert "ordering_key" not in start["x-ackbus-policy"]  # none set: no order

    state = ops["poker.Table.GetTableState"]
    assert state["x-ackbus-kind"] == "request"
    assert state["reply"]["channel"] == {"$ref": "#/channels/poker.Table.GetTableState.reply"}
    assert doc["channels"]["poker.Table.GetTableState.reply"]["address"] is None

    publish = ops["poker.HandStarted.publish"]
    assert (publish["action"], publish["x-ackbus-subscribers"]) == (
        "send",
        ["poker.Audit", "poker.Lobby"],
    )
    assert publish["x-ackbus-policy-set-by"] == {}  # the message sets only kind
    audit, lobby = ops["poker.Audit.HandStarted"], ops["poker.Lobby.HandStarted"]
    assert audit["channel"] == lobby["channel"] == {"$ref": "#/channels/poker.HandStarted"}
    assert (audit["action"], audit["x-ackbus-kind"]) == ("receive", "event")
    # each subscriber's delivery under its own rpc's policy
    assert (audit["x-ackbus-policy"]["max_attempts"], audit["x-ackbus-policy"]["deadline_s"]) == (
        100,
        300.0,
    )
    assert (
        lobby["x-ackbus-policy"]["max_attempts"],
        lobby["x-ackbus-policy"]["ack_timeout_s"],
    ) == (
        5,
        2.0,
    )
    assert sorted(t["name"] for t in doc["info"]["tags"]) == [
        "poker.Audit",
        "poker.Lobby",
        "poker.Table",
    ]


def test_subscribers_are_those_the_generated_publishers_wait_for(doc: dict[str, Any]) -> None:
    from poker import cards_ackbus, lobby_ackbus, table_ackbus

    declared = {
        spec.full_name: list(spec.policy.subscribers)
        for module in (cards_ackbus, lobby_ackbus, table_ackbus)
        for spec in module.REGISTRY
        if spec.policy.subscribers
    }
    documented = {
        name.removesuffix(".publish"): op["x-ackbus-subscribers"]
        for name, op in doc["operations"].items()
        if name.endswith(".publish")
    }
    assert documented == declared == {"poker.HandStarted": ["poker.Audit", "poker.Lobby"]}


def test_messages_carry_legacy_names_comments_and_payload_schemas(doc: dict[str, Any]) -> None:
    msgs, schemas = doc["components"]["messages"], doc["components"]["schemas"]
    start = msgs["poker.StartHand"]
    assert start["x-ackbus-legacy-name"] == "StartHand"
    assert start["description"] == "Start a new hand at a table."
    assert start["contentType"] == "application/x-protobuf"
    assert start["payload"] == {"$ref": "#/components/schemas/poker.StartHand"}
    fields = schemas["poker.StartHand"]["properties"]
    assert fields["seats"]["description"] == "Number of seats taking part."
    assert fields["start_at"]["format"] == "date-time"  # google.protobuf.Timestamp
    assert fields["blinds"]["allOf"] == [{"$ref": "#/components/schemas/poker.Blinds"}]
    deal = schemas["poker.DealCards"]["properties"]
    assert deal["hands"]["additionalProperties"] == {
        "$ref": "#/components/schemas/poker.DealCards.Hand"
    }
    assert deal["board"]["items"] == {"$ref": "#/components/schemas/poker.Card"}
    assert schemas["poker.Card.Suit"]["enum"][1:] == ["CLUBS", "DIAMONDS", "HEARTS", "SPADES"]


# -- payload schemas from descriptors ------------------------------------------

EVERY_KIND = {
    "k/every.proto": """
        syntax = "proto3";
        package k;
        import "google/protobuf/duration.proto";
        import "google/protobuf/struct.proto";
        import "google/protobuf/wrappers.proto";

        // A message with one field of every kind.
        message Every {
          enum Colour { COLOUR_UNSPECIFIED = 0; RED = 1; }
          message Inner { string s = 1; Inner next = 2; }
          double d = 1;
          int32 i32 = 2;
          uint64 u64 = 3;
          bool b = 4;
          bytes raw = 5;
          Colour colour = 6;
          Inner inner = 7;
          repeated Inner inners = 8;
          map<int32, string> names = 9;
          oneof choice { string text = 10; int64 number = 11; Inner nested = 12; }
          optional string maybe = 13;
          google.protobuf.Duration wait = 14;
          google.protobuf.Int32Value boxed = 15;
          google.protobuf.Struct blob = 16;
        }
    """,
    "k/old.proto": """
        syntax = "proto2";
        package k;
        message Old { required string id = 1; optional int32 n = 2; }
    """,
}


@pytest.fixture
def every(compile_request: Compile) -> tuple[dict[str, Any], catalogue.Catalogue]:
    request = compile_request(EVERY_KIND)
    fds = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
    cat = catalogue.build(fds, list(EVERY_KIND))
    _, schemas = asyncapi.payload_schemas(cat.index, ["k.Every", "k.Old"])
    root = {"components": {"schemas": schemas}}
    return root, cat


def _check(root: dict[str, Any], name: str) -> Callable[[dict[str, Any]], bool]:
    schema = {**root, "$ref": f"#/components/schemas/{name}"}
    validator = jsonschema.Draft7Validator(schema)
    return lambda instance: bool(validator.is_valid(instance))


def test_payload_schemas_follow_the_descriptors(
    every: tuple[dict[str, Any], catalogue.Catalogue],
) -> None:
    root, cat = every
    schemas = root["components"]["schemas"]
    assert sorted(schemas) == ["k.Every", "k.Every.Colour", "k.Every.Inner", "k.Old"]
    props = schemas["k.Every"]["properties"]
    assert props["u64"] == {
        "type": "integer",
        "format": "uint64",
        "minimum": 0,
        "x-proto-type": "uint64",
        "x-proto-number": 3,
    }
    assert props["raw"]["contentEncoding"] == "base64"
    assert props["wait"]["type"] == "string"  # Duration, as "1.5s"
    assert props["boxed"]["format"] == "int32"  # a wrapper is its scalar
    assert props["names"]["x-proto-type"] == "map<int32, string>"
    assert schemas["k.Old"]["required"] == ["id"]
    assert schemas["k.Every"]["description"] == "A message with one field of every kind."

    every_ok = _check(root, "k.Every")
    assert every_ok(
        {
            "d": 1.5,
            "u64": 7,
            "colour": "RED",
            "inner": {"s": "a", "next": {"s": "b"}},  # recursive
            "inners": [{"s": "c"}],
            "names": {"1": "one"},
            "text": "hi",
            "maybe": "",
            "wait": "1.5s",
            "boxed": 3,
            "blob": {"any": ["thing"]},
        }
    )
    assert not every_ok({"u64": -1})
    assert not every_ok({"colour": "BLUE"})
    assert not every_ok({"names": {"one": "1"}})  # int32 keys
    assert not every_ok({"text": "hi", "number": 3})  # two members of one oneof
    assert not every_ok({"inner": {"s": 3}})
    old_ok = _check(root, "k.Old")
    assert old_ok({"id": "x"})
    assert not old_ok({"n": 1})

    (every_msg,) = (m for m in cat.messages if m.full_name == "k.Every")
    labels = {f.name: (f.label, f.oneof) for f in every_msg.fields}
    assert labels["inners"] == ("repeated", None)
    assert labels["names"] == ("", None)
    assert labels["maybe"] == ("optional", None)
    assert labels["number"] == ("", "choice")


# -- the command line ------------------------------------------------------------


def test_docs_are_deterministic_and_match_the_command_line(
    tmp_path: Path, poker_docs: Path
) -> None:
    written = write_docs(POKER, include=[SCHEMAS], out=tmp_path)
    assert [p.name for p in written] == ["asyncapi.yaml", "index.html"]
    for p in written:
        assert p.read_bytes() == (poker_docs / p.name).read_bytes()


def test_a_bad_schema_fails_and_writes_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nmessage X {\n  int32 a = 1\n}\n')
    code = main(["docs", "-I", str(tmp_path), "-o", str(tmp_path / "out"), "bad.proto"])
    assert code == 1
    err = capfd.readouterr().err  # protoc's own line comes from its C++ code, on fd 2
    assert 'bad.proto:4:1: Expected ";".' in err
    assert "ackbus docs: error: protoc failed on bad.proto" in err
    assert not (tmp_path / "out").exists()


def test_docs_without_the_codegen_extra_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    code = main(["docs", "-I", str(SCHEMAS), "-o", str(tmp_path / "out"), *POKER])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "ackbus docs needs the code generator: pip install 'ackbus[codegen]' (missing: pyyaml)"
    ]
    assert not (tmp_path / "out").exists()


# -- the HTML catalogue, in a real browser -----------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    with chromium("1100,800") as chrome:
        yield chrome


def test_the_catalogue_reads_right_in_chromium(browser: Any, poker_docs: Path) -> None:
    from selenium.webdriver.common.by import By

    page = poker_docs / "index.html"
    browser.get(page.as_uri())
    assert browser.title == "ackbus messages"
    # one page, nothing loaded from anywhere else
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    def visible(css: str, root: Any = browser) -> list[str]:
        return [e.text for e in root.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]

    assert visible("h2") == ["Services", "Events", "Request/reply", "Messages", "Enums"]
    table = browser.find_element(By.ID, "poker.Table")
    assert table.find_element(By.TAG_NAME, "h3").text == "poker.Table poker/table.proto:108"
    assert "The dealer of one table." in table.text
    rpcs = [
        row.find_element(By.TAG_NAME, "code").text
        for row in table.find_elements(By.CSS_SELECTOR, "tr.rpc")
    ]
    assert rpcs == ["StartHand", "DealCards", "PlayerAction", "GetTableState"]
    start = table.find_elements(By.CSS_SELECTOR, "tr.rpc")[0].text
    assert "command" in start
    assert "Start a new hand." in start
    assert "deadline_s\n10.0 method" in start  # set by the rpc: the method level
    event = browser.find_element(By.ID, "event-poker.HandStarted").text
    assert "Subscribers:" in event
    assert "poker.Audit" in event
    assert "poker.Lobby" in event
    requests = visible("#requests .entry h3")
    assert requests == ["poker.Lobby.RegisterService", "poker.Table.GetTableState"]
    assert "Legacy name: StartHand" in browser.find_element(By.ID, "poker.StartHand").text
    entries = browser.find_elements(By.CSS_SELECTOR, ".entry")
    assert browser.find_element(By.ID, "count").text == f"{len(entries)} entries"

    box = browser.find_element(By.ID, "search")
    box.send_keys("audit")
    shown = [e for e in entries if e.is_displayed()]
    assert {e.get_attribute("id") for e in shown} >= {"poker.Audit", "event-poker.HandStarted"}
    assert not browser.find_element(By.ID, "poker.Table").is_displayed()
    assert all("audit" in e.text.lower() for e in shown)
    assert len(shown) < len(entries)
    assert (
        browser.find_element(By.ID, "count").text == f"{len(shown)} of {len(entries)} entries match"
    )
    assert visible("h2") == ["Services", "Events"]  # no message mentions audit

    box.send_keys(" no-such-thing")
    assert [e for e in entries if e.is_displayed()] == []
    box.clear()
    box.send_keys(" ")  # clear() fires no input event
    assert all(e.is_displayed() for e in entries)
