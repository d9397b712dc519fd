"""Generated clients and handler classes, wired to the runtime over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from ackbus import Context
from ackbus.blocking import BlockingEndpoint
from ackbus.endpoint import Endpoint
from ackbus.hub import Hub
from poker import lobby_ackbus, table_ackbus, table_pb2


class Table(table_ackbus.TableHandler):
    def __init__(self) -> None:
        self.hands: list[str] = []

    async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
        self.hands.append(msg.table_id)

    async def on_get_table_state(
        self, msg: table_pb2.GetTableState, ctx: Context
    ) -> table_pb2.TableState:
        state = table_pb2.TableState(table_id=msg.table_id, hand_number=len(self.hands))
        state.pots["main"] = 150
        return state


class Audit(lobby_ackbus.AuditHandler):
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        self.seen.append(msg.hand_number)


class Lobby(lobby_ackbus.LobbyHandler):
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def on_hand_started(self, msg: table_pb2.HandStarted, ctx: Context) -> None:
        self.seen.append(msg.hand_number)


async def test_typed_send_request_and_event(hub: str) -> None:
    table, audit, lobby = Table(), Audit(), Lobby()
    async with (
        Endpoint("table", hub) as t_ep,
        Endpoint("audit", hub) as a_ep,
        Endpoint("lobby", hub) as l_ep,
        Endpoint("dealer", hub) as dealer,
    ):
        t_ep.register(table)
        a_ep.register(audit)
        l_ep.register(lobby)
        await asyncio.sleep(0.05)
        client = table_ackbus.TableClient(dealer)
        report = await client.send_start_hand(table_id="t1", seats=6, timeout=5)
        assert report, report.error
        state = await client.request_get_table_state(table_id="t1", timeout=5)
        assert state.table_id == "t1"
        assert state.hand_number == 1
        assert dict(state.pots) == {"main": 150}
        events = table_ackbus.TableEvents(dealer)
        published = await events.publish_hand_started(table_id="t1", hand_number=7, timeout=5)
        assert published, published.error
    assert table.hands == ["t1"]
    assert audit.seen == [7]
    assert lobby.seen == [7]
    assert sorted(i.service for i in published.acked_by) == ["audit", "lobby"]


async def test_handler_that_implements_only_some_rpcs_gets_only_those(hub: str) -> None:
    class OnlyStart(table_ackbus.TableHandler):
        async def on_start_hand(self, msg: table_pb2.StartHand, ctx: Context) -> None:
            return None

    async with Endpoint("table", hub) as t_ep, Endpoint("dealer", hub) as dealer:
        t_ep.register(OnlyStart())
        await asyncio.sleep(0.05)
        client = table_ackbus.TableClient(dealer)
        assert await client.send_start_hand(table_id="x", timeout=5)
        report = await client.send_deal_cards(table_id="x", timeout=0.5)
        assert not report
        assert "poker.DealCards" in str(report.error)


def test_blocking_client_from_plain_threads(hub_thread: str) -> None:
    with BlockingEndpoint("table", hub_thread) as t_ep:
        table = Table()
        t_ep.register(table)
        with BlockingEndpoint("dealer", hub_thread) as dealer:
            client = table_ackbus.TableBlockingClient(dealer)
            results: list[bool] = []

            def worker(n: int) -> None:
                for i in range(10):
                    results.append(bool(client.send_start_hand(table_id=f"{n}-{i}", timeout=5)))

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            state = client.request_get_table_state(table_id="q", timeout=5)
    assert results == [True] * 40
    assert len(table.hands) == 40
    assert state.hand_number == 40


@pytest.fixture
def hub_thread() -> Iterator[str]:
    """A hub on its own loop thread, for tests that are not async themselves."""
    from ackbus._loop_thread import LoopThread

    lt = LoopThread(name="hub")
    h = Hub("tcp://127.0.0.1:0", heartbeat=0.2)
    lt.run(h.start(), timeout=5)
    try:
        yield h.addresses[0]
    finally:
        lt.run(h.close(), timeout=5)
        lt.close()
