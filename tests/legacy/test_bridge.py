"""A real legacy service (tests/legacy/legacy_service.py: plain pyzmq, its own
process) and a typed ackbus service exchange messages both ways through a Bridge,
over a real hub on TCP loopback."""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers
import pytest
import zmq
import zmq.asyncio
from ackbus import Context, Registry, Rejected
from ackbus.endpoint import Endpoint
from ackbus.legacy import FieldCase, LegacyCodec, LegacyFormat
from ackbus.legacy.bridge import Bridge
from poker import cards_pb2, lobby_ackbus, lobby_pb2, table_ackbus, table_pb2
from proc_harness import Procs, free_port

PlainZmq = Callable[[int], zmq.asyncio.Socket]

LEGACY = Path(__file__).with_name("legacy_service.py")
_SCHEMA = Registry()
_SCHEMA.update(table_ackbus.REGISTRY)
_SCHEMA.update(lobby_ackbus.REGISTRY)
POKER = helpers.run_time_subscribers(_SCHEMA)
"""The poker registry; its events' subscribers here are not the schema's Audit and Lobby."""
# Slower retries and a longer deadline: messages wait in retries while the legacy
# process starts or comes back.
FAST = helpers.FAST.with_(ack_timeout=0.3, backoff_base=0.02, backoff_cap=0.2, deadline=8.0)


@dataclass
class Legacy:
    """Addresses of the legacy process's sockets and its log of what it received."""

    pull: str
    pub: str
    rep: str
    push_to: str
    log: Path
    argv: list[str] = field(default_factory=list)

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def ports(tmp_path: Path) -> Legacy:
    pull, pub, rep, push = (free_port() for _ in range(4))
    legacy = Legacy(
        pull=f"tcp://127.0.0.1:{pull}",
        pub=f"tcp://127.0.0.1:{pub}",
        rep=f"tcp://127.0.0.1:{rep}",
        push_to=f"tcp://127.0.0.1:{push}",
        log=tmp_path / "legacy.jsonl",
    )
    legacy.argv = [
        str(LEGACY),
        *("--pull", str(pull), "--pub", str(pub), "--rep", str(rep)),
        *("--push", legacy.push_to, "--log", str(legacy.log), "--slow", "0.8"),
    ]
    return legacy


def make_bridge(hub: str, legacy: Legacy) -> Bridge:
    ep = Endpoint("legacy-table", hub, registry=POKER, policy=FAST)
    bridge = Bridge(ep, LegacyCodec(POKER, field_case=FieldCase.PASCAL, sender="bridge"))
    bridge.push_to(legacy.pull, [table_pb2.StartHand])
    bridge.subscribe(legacy.pub)
    bridge.pull(legacy.push_to, bind=True)
    bridge.request_to(
        legacy.rep, {lobby_pb2.ServiceRegistration: lobby_pb2.RegistrationResult}, timeout=0.4
    )
    return bridge


class Croupier:
    """The typed side: takes the legacy service's events and commands."""

    def __init__(self, hub: str) -> None:
        self.hands: list[table_pb2.HandStarted] = []
        self.actions: list[tuple[table_pb2.PlayerAction, Context]] = []
        self.ep = Endpoint("croupier", hub, registry=POKER, policy=FAST)
        self.ep.register_handler(table_pb2.HandStarted, self.on_hand_started)
        self.ep.register_handler(table_pb2.PlayerAction, self.on_player_action)

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        self.hands.append(msg)

    async def on_player_action(self, msg: table_pb2.PlayerAction, ctx: Context) -> None:
        self.actions.append((msg, ctx))


async def until(check: Callable[[], bool]) -> None:
    """Polls every 20 ms (some checks read the legacy process's log file)."""
    await helpers.eventually(check, timeout=5.0, every=0.02)


async def warm_up(croupier: Croupier, send: Callable[[str], Awaitable[object]]) -> None:
    """A SUB socket misses what its PUB sent before the subscription arrived (the
    slow-joiner rule of PUB/SUB): start hands until one is seen, then count from there."""
    async with asyncio.timeout(5):
        while not any(h.table_id == "warmup" for h in croupier.hands):
            await send("warmup")
            await asyncio.sleep(0.1)


async def test_messages_cross_the_bridge_both_ways(hub: str, procs: Procs, tmp_path: Path) -> None:
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")
    croupier = Croupier(hub)
    async with make_bridge(hub, legacy) as bridge, croupier.ep as ep:

        async def start_hand(table: str) -> object:
            report = await ep.send(table_pb2.StartHand(table_id=table, seats=2), timeout=5)
            assert report, report.error
            return report

        await warm_up(croupier, start_hand)
        before = len(croupier.actions)
        await start_hand("t1")
        await until(lambda: any(h.table_id == "t1" for h in croupier.hands))
        await until(lambda: len(croupier.actions) >= before + 1)

        # bus → legacy: the command arrived in the legacy format, PascalCase
        got = [e for e in legacy.received() if e["Payload"].get("TableId") == "t1"]
        assert len(got) == 1
        assert got[0]["Type"] == "StartHand"
        assert got[0]["Payload"] == {"TableId": "t1", "Seats": 2}
        assert got[0]["SenderId"] == "croupier"
        # legacy → bus: the event is typed, every field kept
        t1 = [h for h in croupier.hands if h.table_id == "t1"]
        assert t1 == [
            table_pb2.HandStarted(table_id="t1", hand_number=1, player_ids=["ann", "bob"])
        ]
        # legacy → bus: the command is typed, with the legacy metadata in headers
        await asyncio.sleep(0.3)  # room for the legacy duplicate to arrive (and be dropped)
        actions = [(a, c) for a, c in croupier.actions if a.table_id == "t1"]
        assert len(actions) == 1
        action, ctx = actions[0]
        assert action == table_pb2.PlayerAction(
            table_id="t1", kind=cards_pb2.RAISE, chips=40, **{"from": "bob"}
        )
        assert ctx.sender.service == "legacy-table"
        assert ctx.headers["legacy-sender"] == "legacy-table"
        assert ctx.headers["legacy-message-id"]
        assert bridge.stats.duplicates >= 1
        assert bridge.stats.malformed.total() == 0

        # REQ/REP: the legacy reply is the typed response
        result = await ep.request(
            lobby_pb2.ServiceRegistration(service_name="croupier", id="c1"),
            lobby_pb2.RegistrationResult,
            timeout=5,
        )
        assert result == lobby_pb2.RegistrationResult(accepted=True, table_ids=["t1", "t2"])
        await until(lambda: bridge.stats.delivered >= bridge.stats.forwarded)


async def test_malformed_legacy_input_is_counted_and_never_reaches_a_handler(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")
    croupier = Croupier(hub)
    async with make_bridge(hub, legacy) as bridge, croupier.ep as ep:

        async def start_hand(table: str) -> object:
            return await ep.send(table_pb2.StartHand(table_id=table), timeout=5)

        await warm_up(croupier, start_hand)
        assert await start_hand("garbage")
        await until(lambda: any(h.table_id == "garbage" for h in croupier.hands))
        # not JSON, three frames, a payload that does not fit; an unknown type
        assert bridge.stats.malformed == {"MALFORMED": 3, "UNKNOWN_TYPE": 1}
        assert all(h.table_id in ("warmup", "garbage") for h in croupier.hands)
        assert all(h.hand_number >= 1 for h in croupier.hands)  # the "many" one never came
        # and the bridge still works
        assert await start_hand("after")
        await until(lambda: any(h.table_id == "after" for h in croupier.hands))


async def test_push_to_a_legacy_service_that_is_down_is_retried_until_it_is_up(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    """PUSH is at-least-once into the legacy socket: while the legacy PULL is not
    there, the bridge refuses with RetryLater and the sender's retries carry on."""
    legacy = ports(tmp_path)
    croupier = Croupier(hub)
    async with make_bridge(hub, legacy) as bridge, croupier.ep as ep:
        report = await ep.send(table_pb2.StartHand(table_id="late"), wait_ack=False, timeout=6)
        await until(lambda: bridge.stats.backpressure >= 2)
        assert not report.done
        procs.start(*legacy.argv, ready=b"ready")
        await report.wait(6)
        assert report, report.error
        assert report.attempts >= 3
        await until(lambda: any(e["Payload"].get("TableId") == "late" for e in legacy.received()))


async def test_a_silent_rep_is_retried_with_the_same_message_id(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    """REQ/REP: the reply is the ack. A reply that does not come in time makes the
    bridge ask for a retry; the legacy side sees the same MessageId again, so it can
    tell a retry from a new request."""
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")
    async with (
        make_bridge(hub, legacy) as bridge,
        Endpoint("lobby-client", hub, registry=POKER, policy=FAST) as ep,
    ):
        result = await ep.request(
            lobby_pb2.ServiceRegistration(service_name="slow"),
            lobby_pb2.RegistrationResult,
            timeout=6,
            policy=FAST.with_(max_attempts=200),  # each RetryLater spends an attempt
        )
        assert result.accepted
        assert bridge.stats.backpressure >= 1
        ids = [e["MessageId"] for e in legacy.received() if e["socket"] == "rep"]
        assert len(ids) >= 2
        assert len(set(ids)) == 1


async def test_a_reply_of_the_wrong_type_is_rejected_not_retried(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    legacy = ports(tmp_path)
    procs.start(*legacy.argv, ready=b"ready")
    ep = Endpoint("legacy-table", hub, registry=POKER, policy=FAST)
    bridge = Bridge(ep, LegacyCodec(POKER, field_case=FieldCase.PASCAL))
    # The legacy REP answers with a RegistrationResult; we claim it answers TableState.
    bridge.request_to(legacy.rep, {lobby_pb2.ServiceRegistration: table_pb2.TableState})
    async with bridge, Endpoint("client", hub, registry=POKER, policy=FAST) as client:
        with pytest.raises(Rejected, match=r"expected poker\.TableState"):
            await client.request(
                lobby_pb2.ServiceRegistration(service_name="x"), table_pb2.TableState, timeout=3
            )
    assert bridge.stats.malformed["WRONG_REPLY"] == 1
    assert len([e for e in legacy.received() if e["socket"] == "rep"]) == 1


def test_the_legacy_service_imports_nothing_of_ackbus() -> None:
    tree = ast.parse(LEGACY.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "zmq" in imported
    assert not imported & {"ackbus", "google", "poker"}


async def test_topic_formats_on_plain_pub_sub_sockets(hub: str, plain_zmq: PlainZmq) -> None:
    """A plain pyzmq PUB sending ``[topic, JSON]`` feeds the bus; bus events go out to a
    plain SUB as ``[topic, protobuf bytes]``, filtered by topic as SUB sockets do."""
    legacy_pub = plain_zmq(zmq.PUB)
    legacy_sub = plain_zmq(zmq.SUB)
    pub_port = legacy_pub.bind_to_random_port("tcp://127.0.0.1")
    legacy_sub.setsockopt(zmq.SUBSCRIBE, b"table/")
    ep = Endpoint("legacy-table", hub, registry=POKER, policy=FAST)
    bridge = Bridge(ep, LegacyCodec(POKER, topics={"table/started": "HandStarted"}))
    bridge.subscribe(f"tcp://127.0.0.1:{pub_port}", fmt=LegacyFormat.TOPIC_JSON)
    out = bridge.publish_to(
        "tcp://127.0.0.1:*", [table_pb2.HandStarted], fmt=LegacyFormat.TOPIC_PROTOBUF
    )
    actions: list[table_pb2.PlayerAction] = []

    async def on_action(msg: table_pb2.PlayerAction, ctx: Context) -> None:
        actions.append(msg)

    croupier = Endpoint("croupier", hub, registry=POKER, policy=FAST)
    croupier.register_handler(table_pb2.PlayerAction, on_action)
    frames = [b"PlayerAction", b'{"tableId": "t3", "kind": "FOLD"}']
    async with bridge, croupier:
        legacy_sub.connect(out.address)
        async with asyncio.timeout(5):
            while not actions:  # PUB/SUB: resend until the subscription is up
                await legacy_pub.send_multipart(frames)
                await asyncio.sleep(0.05)
        event = table_pb2.HandStarted(table_id="t3", hand_number=2)
        async with asyncio.timeout(5):
            while True:
                assert await croupier.publish(event)
                if await legacy_sub.poll(100):
                    got = await legacy_sub.recv_multipart()
                    break
    assert actions[0] == table_pb2.PlayerAction(table_id="t3", kind=cards_pb2.FOLD)
    assert got[0] == b"table/started"  # mapped by the codec's topics
    assert table_pb2.HandStarted.FromString(got[1]) == event


async def test_a_type_the_bridge_takes_is_not_forwarded_back_to_it(
    hub: str, plain_zmq: PlainZmq
) -> None:
    """Misconfigured: the legacy service sends StartHand, and the bridge also takes
    StartHand for it. Forwarding would loop; it is refused and counted instead."""
    legacy_push = plain_zmq(zmq.PUSH)
    legacy_pull = plain_zmq(zmq.PULL)
    pull_port = legacy_pull.bind_to_random_port("tcp://127.0.0.1")
    bridge = Bridge(Endpoint("legacy", hub, registry=POKER, policy=FAST), LegacyCodec(POKER))
    inbound = bridge.pull("tcp://127.0.0.1:*", bind=True)
    bridge.push_to(f"tcp://127.0.0.1:{pull_port}", ["StartHand"])
    async with bridge:
        legacy_push.connect(inbound.address)
        await legacy_push.send(b'{"Type": "StartHand", "Payload": {"tableId": "x"}}')
        async with asyncio.timeout(3):
            while not bridge.stats.malformed:  # noqa: ASYNC110 (the reader runs here)
                await asyncio.sleep(0.02)
        assert not await legacy_pull.poll(200)
    assert bridge.stats.malformed == {"LOOP": 1}
    assert bridge.stats.forwarded == 0


async def test_the_bridge_outlives_a_legacy_kill_9_and_restart(
    hub: str, procs: Procs, tmp_path: Path
) -> None:
    """ZeroMQ reconnects the bridge's sockets to the restarted legacy process; what was
    sent while it was down waits in the sender's retries (PUSH refuses, RetryLater)."""
    legacy = ports(tmp_path)
    first = procs.start(*legacy.argv, ready=b"ready")
    croupier = Croupier(hub)
    async with make_bridge(hub, legacy) as bridge, croupier.ep as ep:

        async def start_hand(table: str) -> object:
            return await ep.send(table_pb2.StartHand(table_id=table), timeout=5)

        await warm_up(croupier, start_hand)
        procs.kill(first)
        # Each retry the PUSH refuses is answered RetryLater and spends an attempt: give it
        # enough for the legacy process's restart on a loaded machine (the deadline rules).
        patient = FAST.with_(max_attempts=200)
        report = await ep.send(
            table_pb2.StartHand(table_id="while-down"), wait_ack=False, policy=patient
        )
        await until(lambda: bridge.stats.backpressure >= 1)
        procs.start(*legacy.argv, ready=b"ready")
        await report.wait(6)
        assert report, report.error
        # the legacy PUSH → bridge PULL way does not depend on PUB/SUB's slow joiner
        await until(lambda: any(a.table_id == "while-down" for a, _ in croupier.actions))
        received = [e["Payload"].get("TableId") for e in legacy.received()]
        assert received.count("while-down") == 1
        assert bridge.stats.malformed.total() == 0


async def test_a_legacy_req_client_gets_the_bus_outcome_as_its_reply(
    hub: str, plain_zmq: PlainZmq
) -> None:
    """Legacy REQ → bridge REP → bus: the reply is the response, an Ack once a handler
    acked, or a Nack saying why; a re-sent MessageId gets the same reply, no second run."""
    runs: list[str] = []

    async def state(msg: table_pb2.GetTableState, ctx: Context) -> table_pb2.TableState:
        runs.append(msg.table_id)
        return table_pb2.TableState(table_id=msg.table_id, pots={"main": 30})

    async def start(msg: table_pb2.StartHand, ctx: Context) -> None:
        runs.append(msg.table_id)

    table = Endpoint("table", hub, registry=POKER, policy=FAST)
    table.register_handler(table_pb2.GetTableState, state, response=table_pb2.TableState)
    table.register_handler(table_pb2.StartHand, start)
    bridge = Bridge(
        Endpoint("legacy", hub, registry=POKER, policy=FAST),
        LegacyCodec(POKER, field_case=FieldCase.PASCAL),
    )
    rep = bridge.serve_requests(
        "tcp://127.0.0.1:*", {"poker.GetTableState": table_pb2.TableState}, timeout=1.0
    )
    req = plain_zmq(zmq.REQ)

    async def ask(raw: bytes) -> dict[str, Any]:
        await req.send(raw)
        async with asyncio.timeout(5):
            reply: dict[str, Any] = json.loads(await req.recv())
        return reply

    async with bridge, table:
        req.connect(rep.address)
        get = b'{"MessageId": "q1", "Type": "poker.GetTableState", "Payload": {"TableId": "t"}}'
        first = await ask(get)
        assert (first["Type"], first["Payload"]) == (
            "poker.TableState",
            {"TableId": "t", "Pots": {"main": "30"}},
        )
        again = await ask(get)  # a legacy client retrying the same request
        assert again == first
        ack = await ask(b'{"MessageId": "c1", "Type": "StartHand", "Payload": {"TableId": "u"}}')
        assert (ack["Type"], ack["Payload"]) == ("Ack", {"MessageId": "c1", "Acked": True})
        nobody = await ask(b'{"MessageId": "c2", "Type": "DealCards", "Payload": {}}')
        assert nobody["Type"] == "Nack"
        assert nobody["Payload"]["Error"] == "NoRoute"
        garbage = await ask(b"not json at all")
        assert (garbage["Type"], garbage["Payload"]["Error"]) == ("Nack", "MALFORMED")
        unknown = await ask(b'{"Type": "Who"}')
        assert unknown["Payload"]["Error"] == "UNKNOWN_TYPE"
    assert runs == ["t", "u"]
    assert bridge.stats.duplicates == 1
    assert bridge.stats.malformed == {"MALFORMED": 1, "UNKNOWN_TYPE": 1}
