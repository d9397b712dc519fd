"""Generated code, and the endpoints it runs on, are typed where it matters: mistakes
must fail ``mypy --strict``.

Each snippet uses the committed poker code (or ``ackbus.BlockingEndpoint``) the way a
service would, with one mistake on the line marked ``# error``; one more snippet without
mistakes must pass. All run in one mypy process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import ackbus

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ROOT = Path(ackbus.__file__).resolve().parents[1]

HEADER = """\
import ackbus
from poker import cards_pb2, lobby_pb2, table_pb2
from poker.table_ackbus import (
    TableBlockingClient,
    TableBlockingEvents,
    TableClient,
    TableEvents,
    TableHandler,
    TableSyncHandler,
)

"""

BAD = {
    "handler_wrong_message_type": """
        class Table(TableHandler):
            async def on_start_hand(
                self, msg: table_pb2.DealCards, ctx: ackbus.Context  # error
            ) -> None: ...
    """,
    "handler_wrong_reply_type": """
        class Table(TableHandler):
            async def on_get_table_state(  # error
                self, msg: table_pb2.GetTableState, ctx: ackbus.Context
            ) -> lobby_pb2.RegistrationResult:
                return lobby_pb2.RegistrationResult()
    """,
    "sync_override_of_the_async_base": """
        class Table(TableHandler):
            def on_start_hand(  # error
                self, msg: table_pb2.StartHand, ctx: ackbus.Context
            ) -> None: ...
    """,
    "async_override_of_the_sync_base": """
        class Table(TableSyncHandler):
            async def on_start_hand(  # error
                self, msg: table_pb2.StartHand, ctx: ackbus.Context
            ) -> None: ...
    """,
    "sync_handler_wrong_reply_type": """
        class Table(TableSyncHandler):
            def on_get_table_state(  # error
                self, msg: table_pb2.GetTableState, ctx: ackbus.Context
            ) -> lobby_pb2.RegistrationResult:
                return lobby_pb2.RegistrationResult()
    """,
    "def_handler_function_of_wrong_message_type": """
        def on_deal(msg: table_pb2.DealCards, ctx: ackbus.Context) -> None: ...
        def f(ep: ackbus.Endpoint) -> None:
            ep.register_handler(table_pb2.StartHand, on_deal)  # error
    """,
    "field_of_wrong_type": """
        async def f(client: TableClient) -> None:
            await client.send_start_hand(table_id=3)  # error
    """,
    "unknown_field": """
        async def f(client: TableClient) -> None:
            await client.send_start_hand(table_idd="t1")  # error
    """,
    "enum_given_an_int": """
        async def f(client: TableClient) -> None:
            await client.send_player_action(kind=3)  # error
    """,
    "reply_is_typed": """
        async def f(client: TableClient) -> lobby_pb2.RegistrationResult:
            return await client.request_get_table_state(table_id="t")  # error
    """,
    "fields_are_keyword_only": """
        async def f(client: TableClient) -> None:
            await client.send_start_hand("t1")  # error
    """,
    "built_message_of_wrong_type": """
        def f(client: TableBlockingClient) -> None:
            client.send_start_hand(table_pb2.DealCards())  # error
    """,
    "policy_is_a_whole_policy": """
        async def f(client: TableClient) -> None:
            await client.send_start_hand(policy={"max_attempts": 1})  # error
    """,
    "schema_policy_is_final": """
        import poker.table_ackbus
        poker.table_ackbus.TABLE_START_HAND_POLICY = ackbus.Policy()  # error
    """,
    "schema_policy_is_a_policy": """
        from poker.table_ackbus import TABLE_START_HAND_POLICY
        def f() -> None:
            print(TABLE_START_HAND_POLICY.max_attempt)  # error
    """,
    "policy_with_checks_field_names": """
        from poker.table_ackbus import TABLE_START_HAND_POLICY
        def f() -> None:
            print(TABLE_START_HAND_POLICY.with_(max_attempt=1))  # error
    """,
    "policy_with_checks_field_types": """
        from poker.table_ackbus import TABLE_START_HAND_POLICY
        def f() -> None:
            print(TABLE_START_HAND_POLICY.with_(max_attempts="1"))  # error
    """,
    "client_needs_a_bus": """
        client = TableClient(object())  # error
    """,
    "blocking_endpoint_option_misspelt": """
        ackbus.BlockingEndpoint("svc", "tcp://x", windw=5)  # error
    """,
    "blocking_endpoint_option_of_wrong_type": """
        ackbus.BlockingEndpoint("svc", "tcp://x", window="5")  # error
    """,
    "blocking_send_option_misspelt": """
        def f(ep: ackbus.BlockingEndpoint) -> None:
            ep.send(table_pb2.StartHand(), wait_ak=False)  # error
    """,
    "publish_takes_no_recipient": """
        def f(ep: ackbus.BlockingEndpoint) -> None:
            ep.publish(table_pb2.StartHand(), to="table")  # error
    """,
    "publisher_field_of_wrong_type": """
        async def f(ep: ackbus.Endpoint) -> None:
            await TableEvents(ep).publish_hand_started(hand_number="7")  # error
    """,
    "publisher_takes_no_recipient": """
        def f(ep: ackbus.BlockingEndpoint) -> None:
            TableBlockingEvents(ep).publish_hand_started(to="lobby")  # error
    """,
    "publisher_message_of_wrong_type": """
        async def f(ep: ackbus.Endpoint) -> None:
            await TableEvents(ep).publish_hand_started(table_pb2.StartHand())  # error
    """,
}
NAMED = {
    "blocking_endpoint_option_misspelt": '"windw"',
    "blocking_endpoint_option_of_wrong_type": '"window"',
    "blocking_send_option_misspelt": '"wait_ak"',
    "publish_takes_no_recipient": '"to"',
    "publisher_takes_no_recipient": '"to"',
}
"""Snippets whose error must also name this (the option, not just the line)."""

GOOD = """
    from poker import table_ackbus
    from poker.table_ackbus import TABLE_GET_TABLE_STATE_POLICY


    class Table(TableHandler):
        async def on_start_hand(self, msg: table_pb2.StartHand, ctx: ackbus.Context) -> None:
            print(msg.table_id, ctx.attempt)

        async def on_get_table_state(
            self, msg: table_pb2.GetTableState, ctx: ackbus.Context
        ) -> table_pb2.TableState:
            return table_pb2.TableState(table_id=msg.table_id)

    class SyncTable(TableSyncHandler):
        def on_start_hand(self, msg: table_pb2.StartHand, ctx: ackbus.Context) -> None:
            print(msg.table_id, ctx.attempt)

        def on_get_table_state(
            self, msg: table_pb2.GetTableState, ctx: ackbus.Context
        ) -> table_pb2.TableState:
            return table_pb2.TableState(table_id=msg.table_id)

    def on_start(msg: table_pb2.StartHand, ctx: ackbus.Context) -> None:
        print(msg.seats)

    def on_state(msg: table_pb2.GetTableState, ctx: ackbus.Context) -> table_pb2.TableState:
        return table_pb2.TableState()

    async def on_start_async(msg: table_pb2.StartHand, ctx: ackbus.Context) -> None:
        print(msg.seats)

    def by_name(payload: dict[str, object], ctx: ackbus.Context) -> None:
        print(payload)

    def handlers(ep: ackbus.Endpoint, blocking: ackbus.BlockingEndpoint) -> None:
        ep.register(Table())
        ep.register(SyncTable())
        ep.register_handler(table_pb2.StartHand, on_start)
        ep.register_handler(table_pb2.StartHand, on_start_async)
        ep.register_handler(table_pb2.GetTableState, on_state, response=table_pb2.TableState)
        ep.register_handler("StartHand", by_name)
        blocking.register_handler(table_pb2.StartHand, on_start)
        print(ackbus.Endpoint("svc", "tcp://x", workers=4))

    async def f(client: TableClient, blocking: TableBlockingClient) -> None:
        report: ackbus.DeliveryReport = await client.send_player_action(
            table_id="t", from_="alice", kind=cards_pb2.RAISE, chips=10, comment=None
        )
        if not report:
            print(report.error)
        state: table_pb2.TableState = await client.request_get_table_state(table_id="t")
        print(state.pots["main"], blocking.send_start_hand(seats=6, wait_ack=False))
        once = ackbus.Policy(max_attempts=1)
        await client.send_start_hand(table_pb2.StartHand(), policy=once)
        print(blocking.request_get_table_state(table_id="t", policy=once).hand_number)
        await client.send_start_hand(
            table_id="t", policy=table_ackbus.TABLE_START_HAND_POLICY.with_(max_attempts=1)
        )
        fast = TABLE_GET_TABLE_STATE_POLICY.with_(ack_timeout=0.1)
        print(blocking.request_get_table_state(policy=fast).hand_number)

    async def publish(ep: ackbus.Endpoint, blocking: ackbus.BlockingEndpoint) -> None:
        report = await TableEvents(ep).publish_hand_started(table_id="t", hand_number=7)
        print(report.acked_by, report.error)
        later = table_ackbus.HAND_STARTED_EVENT_POLICY.with_(subscriber_policies=())
        msg = table_pb2.HandStarted(table_id="t")
        print(TableBlockingEvents(blocking).publish_hand_started(msg, policy=later))
        print(ackbus.SubscriberPolicy("poker.Audit", max_attempts=3).deadline)

    def g() -> None:
        with ackbus.BlockingEndpoint(
            "svc", ["tcp://x"], window=5, heartbeat=0.2, store="sqlite:///x.db", seed=None
        ) as ep:
            print(ep.stats, TableBlockingClient(ep))
            print(ep.send(table_pb2.StartHand(), wait_ack=False, to="table", priority=1))
            print(ep.request(table_pb2.GetTableState(), table_pb2.TableState, timeout=1.0))
        ep_async = ackbus.Endpoint("svc", "tcp://x", window=5)
        print(ep_async.stats, ackbus.Hub(bind="tcp://*:5555").stats)
"""


def test_mistakes_fail_mypy_strict(tmp_path: Path) -> None:
    expected: dict[str, int] = {}
    for name, body in BAD.items():
        text = HEADER + textwrap.dedent(body)
        (tmp_path / f"{name}.py").write_text(text)
        expected[name] = next(i for i, line in enumerate(text.splitlines(), 1) if "# error" in line)
    (tmp_path / "good.py").write_text(HEADER + textwrap.dedent(GOOD))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / ".cache"),
            *sorted(p.name for p in tmp_path.glob("*.py")),
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": f"{RUNTIME_ROOT}{os.pathsep}{ROOT / 'generated'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors: dict[str, set[int]] = {}
    messages: dict[str, str] = {}
    for match in re.finditer(r"^(\w+)\.py:(\d+): error:(.*)$", run.stdout, re.MULTILINE):
        errors.setdefault(match[1], set()).add(int(match[2]))
        messages[match[1]] = messages.get(match[1], "") + match[3]
    assert "good" not in errors, run.stdout
    for name, line in expected.items():
        assert line in errors.get(name, set()), f"{name}: no error on line {line}\n{run.stdout}"
    assert set(errors) == set(BAD), run.stdout
    for name, text in NAMED.items():
        assert text in messages[name], f"{name}: the error does not name {text}\n{run.stdout}"
