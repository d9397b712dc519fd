"""Middleware around sends and handler runs, through real endpoints and a real hub:
the order of a chain, headers added on send and read on handle, a refusal made by a
middleware, a ``ContextVar`` set around a handler (``async def`` and plain ``def``),
a request's response passing through, durable mode, and nothing chained when no
middleware overrides a hook."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from pathlib import Path
from typing import Any

import pytest
from ackbus import Context, DeliveryReport, Reject
from ackbus.endpoint import Endpoint
from ackbus.middleware import HandleNext, Middleware, Outgoing, SendNext
from ackbus.store import BlockingTx
from helpers import FAST
from poker import table_pb2

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class Recorder(Middleware):
    """Writes what it saw into a shared list, under its name."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen
        self.attached: list[str] = []

    def attach(self, endpoint: Endpoint) -> None:
        self.attached.append(str(endpoint.identity.service))

    async def on_send(self, out: Outgoing, call_next: SendNext) -> DeliveryReport:
        self.seen.append(f"{self.name} send {out.type_name} {out.kind}")
        out.headers[f"x-{self.name}"] = out.sender.service
        report = await call_next(out)
        self.seen.append(f"{self.name} sent {bool(report)}")
        return report

    async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
        self.seen.append(f"{self.name} handle {ctx.message_type}")
        try:
            return await call_next(msg, ctx)
        finally:
            self.seen.append(f"{self.name} handled")


class Caller(Middleware):
    """Sets CALLER from a header around each handler run; refuses a message without it."""

    async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
        who = ctx.headers.get("x-caller")
        if who is None:
            raise Reject("no x-caller header")
        token = CALLER.set(who)
        try:
            return await call_next(msg, ctx)
        finally:
            CALLER.reset(token)


async def test_a_chain_runs_in_order_around_send_and_handle_and_headers_travel(
    hub: str,
) -> None:
    seen: list[str] = []
    headers: list[dict[str, str]] = []

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        seen.append("handler")
        headers.append(dict(ctx.headers))

    outer, inner = Recorder("a", seen), Recorder("b", seen)
    rx = Endpoint("table", hub, policy=FAST, middleware=[outer, inner])
    rx.register_handler(table_pb2.StartHand, handle)
    tx_mw = Recorder("s", seen)
    async with rx, Endpoint("dealer", hub, policy=FAST, middleware=[tx_mw]) as tx:
        assert await tx.send(table_pb2.StartHand(table_id="t1"), headers={"k": "v"})
    assert seen == [
        "s send poker.StartHand command",
        "a handle poker.StartHand",
        "b handle poker.StartHand",
        "handler",
        "b handled",
        "a handled",
        "s sent True",
    ]
    assert headers == [{"k": "v", "x-s": "dealer"}]
    assert outer.attached == ["table"]
    assert tx_mw.attached == ["dealer"]


async def test_a_middleware_refuses_a_message_and_sets_context_for_both_kinds_of_handler(
    hub: str,
) -> None:
    callers: list[tuple[str, str, bool]] = []

    async def on_start(msg: table_pb2.StartHand, ctx: Context) -> None:
        callers.append(("async", CALLER.get(), False))

    def on_deal(msg: table_pb2.DealCards, ctx: Context) -> None:  # in a worker thread
        on_loop = threading.current_thread() is threading.main_thread()
        callers.append(("def", CALLER.get(), on_loop))

    rx = Endpoint("table", hub, policy=FAST, middleware=[Caller()])
    rx.register_handler(table_pb2.StartHand, on_start)
    rx.register_handler(table_pb2.DealCards, on_deal)
    async with rx, Endpoint("dealer", hub, policy=FAST) as tx:
        refused = await tx.send(table_pb2.StartHand(table_id="t1"))
        assert await tx.send(table_pb2.StartHand(table_id="t1"), headers={"x-caller": "ann"})
        assert await tx.send(table_pb2.DealCards(table_id="t1"), headers={"x-caller": "bob"})
    assert not refused
    assert refused.error is not None
    assert "no x-caller header" in str(refused.error)
    assert callers == [("async", "ann", False), ("def", "bob", False)]
    assert CALLER.get() == ""  # nothing leaked into the test's own context


async def test_a_requests_response_passes_through_the_chain(hub: str) -> None:
    seen: list[str] = []

    class Stamp(Middleware):
        async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
            response = await call_next(msg, ctx)
            assert isinstance(response, table_pb2.TableState)
            response.table_id += "+stamped"
            return response

    async def state(msg: table_pb2.GetTableState, ctx: Context) -> table_pb2.TableState:
        return table_pb2.TableState(table_id=msg.table_id)

    rx = Endpoint("table", hub, policy=FAST, middleware=[Stamp()])
    rx.register_handler(table_pb2.GetTableState, state, response=table_pb2.TableState)
    async with rx, Endpoint("dealer", hub, policy=FAST, middleware=[Recorder("s", seen)]) as tx:
        got = await tx.request(table_pb2.GetTableState(table_id="t9"), table_pb2.TableState)
    assert got.table_id == "t9+stamped"
    assert seen == ["s send poker.GetTableState command", "s sent True"]


async def test_a_send_without_waiting_returns_its_pending_report_through_the_chain(
    hub: str,
) -> None:
    settled: list[bool] = []

    class Watch(Middleware):
        async def on_send(self, out: Outgoing, call_next: SendNext) -> DeliveryReport:
            report = await call_next(out)
            assert not report.done  # wait_ack=False: pending when it comes back
            report.add_done_callback(lambda r: settled.append(bool(r)))
            return report

    release = asyncio.Event()

    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        await release.wait()

    rx = Endpoint("table", hub, policy=FAST.with_(ack_timeout=2.0))
    rx.register_handler(table_pb2.StartHand, handle)
    async with (
        rx,
        Endpoint("dealer", hub, policy=FAST.with_(ack_timeout=2.0), middleware=[Watch()]) as tx,
    ):
        report = await tx.send(table_pb2.StartHand(table_id="t1"), wait_ack=False)
        release.set()
        await asyncio.wait_for(report.wait(), 5)
    assert settled == [True]


async def test_hooks_no_middleware_overrides_are_not_chained(hub: str) -> None:
    async def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    class SendOnly(Middleware):
        async def on_send(self, out: Outgoing, call_next: SendNext) -> DeliveryReport:
            return await call_next(out)

    plain = Endpoint("table", hub)
    send_only = Endpoint("table", hub, middleware=[SendOnly(), Middleware()])
    handle_only = Endpoint("table", hub, middleware=[Caller()])
    for ep in (plain, send_only, handle_only):
        ep.register_handler(table_pb2.StartHand, handle)
    # The send path and the handler run exactly as without middleware where no hook is
    # overridden: no chain, the route's function is the handler itself.
    assert plain._send_through is None
    assert handle_only._send_through is None
    assert send_only._send_through is not None
    for ep in (plain, send_only):
        route = ep._dispatch.get("poker.StartHand")
        assert route is not None
        assert route.fn is handle
    route = handle_only._dispatch.get("poker.StartHand")
    assert route is not None
    assert route.fn is not handle
    assert route.handler is handle


def test_max_concurrency_of_def_handlers_is_the_pools_with_middleware_too() -> None:
    def handle(msg: table_pb2.StartHand, ctx: Context) -> None:
        return None

    ep = Endpoint("table", "tcp://127.0.0.1:1", workers=3, middleware=[Caller()])
    ep.register_handler(table_pb2.StartHand, handle)
    assert ep.max_concurrency == 3


@pytest.mark.parametrize("sync", [True, False], ids=["def", "async"])
async def test_durable_handlers_run_inside_the_chain_with_their_transaction(
    hub: str, tmp_path: Path, sync: bool
) -> None:
    seen: list[tuple[str, str]] = []

    def on_deal(msg: table_pb2.DealCards, ctx: Context) -> None:
        assert isinstance(ctx.tx, BlockingTx)  # a plain def gets the blocking one
        ctx.tx.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        seen.append((CALLER.get(), "def"))

    async def on_deal_async(msg: table_pb2.DealCards, ctx: Context) -> None:
        assert ctx.tx is not None
        assert not isinstance(ctx.tx, BlockingTx)
        await ctx.tx.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        seen.append((CALLER.get(), "async"))

    rx = Endpoint(
        "table",
        hub,
        policy=FAST,
        store=f"sqlite:///{tmp_path / 'rx.db'}",
        middleware=[Caller()],
    )
    rx.register_handler(table_pb2.DealCards, on_deal if sync else on_deal_async)
    async with rx, Endpoint("dealer", hub, policy=FAST) as tx:
        assert await tx.send(table_pb2.DealCards(table_id="t1"), headers={"x-caller": "cy"})
    assert seen == [("cy", "def" if sync else "async")]
