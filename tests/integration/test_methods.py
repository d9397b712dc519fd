"""Method addressing on real endpoints and a real hub (in memory and over ipc): two rpcs
that take one request type each reach their own handler, in one service or in two; a
message naming no rpc goes by its type; a hub of protocol version 1 (which ignores the
rpc) still gets each message to its own handler through the receiver.

The googleapis services whose rpcs share request types run in
tests/codegen/test_realworld.py; these use a schema-less handler class, so they can
name their own rpcs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import ackbus.hub
import pytest
from ackbus import (
    Context,
    Endpoint,
    Handler,
    MethodSpec,
    NoRoute,
    Policy,
    Rejected,
    unimplemented,
)
from ackbus.wire_pb2 import Bye
from helpers import FAST, HEARTBEAT, HubBus, running_hub

CREATE = "test.Buckets/Create"
CREATE_ASYNC = "test.Buckets/CreateAsync"


class BucketsHandler(Handler):
    """Shaped like a generated base: two rpcs taking one request type (ackbus.Bye)."""

    __ackbus_service__ = "test.Buckets"
    __ackbus_methods__: ClassVar[tuple[MethodSpec, ...]] = (
        MethodSpec("test.Buckets", "Create", "on_create", Bye, None, Policy()),
        MethodSpec("test.Buckets", "CreateAsync", "on_create_async", Bye, None, Policy()),
    )

    def __init__(self, seen: list[tuple[str, str]]) -> None:
        self.seen = seen

    @unimplemented
    async def on_create(self, msg: Bye, ctx: Context) -> None:
        raise NotImplementedError

    @unimplemented
    async def on_create_async(self, msg: Bye, ctx: Context) -> None:
        raise NotImplementedError


class Both(BucketsHandler):
    async def on_create(self, msg: Bye, ctx: Context) -> None:
        self.seen.append(("Create", msg.reason))

    async def on_create_async(self, msg: Bye, ctx: Context) -> None:
        self.seen.append(("CreateAsync", msg.reason))


class OnlyCreate(BucketsHandler):
    async def on_create(self, msg: Bye, ctx: Context) -> None:
        self.seen.append(("Create", msg.reason))


class OnlyCreateAsync(BucketsHandler):
    async def on_create_async(self, msg: Bye, ctx: Context) -> None:
        self.seen.append(("CreateAsync", msg.reason))


@pytest.fixture(params=["memory", "ipc"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubBus]:
    async with running_hub(request.param, tmp_path) as running:
        yield running


def endpoint(bus: HubBus, service: str) -> Endpoint:
    return Endpoint(service, bus.address, backend=bus.backend, policy=FAST, heartbeat=HEARTBEAT)


async def test_each_rpc_sharing_a_type_reaches_its_own_handler(bus: HubBus) -> None:
    seen: list[tuple[str, str]] = []
    async with endpoint(bus, "buckets") as server, endpoint(bus, "caller") as caller:
        server.register(Both(seen))
        await server.start()
        for method, reason in [(CREATE, "a"), (CREATE_ASYNC, "b"), (CREATE, "c")]:
            report = await caller.send(Bye(reason=reason), method=method, timeout=5)
            report.raise_for_status()
            assert [i.service for i in report.acked_by] == ["buckets"]
        assert seen == [("Create", "a"), ("CreateAsync", "b"), ("Create", "c")]
        # Naming no rpc: the hub routes by type to the one service, whose two rpcs take
        # it: refused for good, naming both and how to choose.
        report = await caller.send(Bye(reason="d"), timeout=5)
        with pytest.raises(Rejected, match=r"test\.Buckets/Create, test\.Buckets/CreateAsync"):
            report.raise_for_status()
        assert seen[-1] == ("Create", "c")


async def test_the_hub_routes_by_rpc_to_the_service_running_it(bus: HubBus) -> None:
    seen: list[tuple[str, str]] = []
    async with (
        endpoint(bus, "creator") as creator,
        endpoint(bus, "async-creator") as async_creator,
        endpoint(bus, "caller") as caller,
    ):
        creator.register(OnlyCreate(seen))
        async_creator.register(OnlyCreateAsync(seen))
        await creator.start()
        await async_creator.start()
        first = await caller.send(Bye(reason="a"), method=CREATE_ASYNC, timeout=5)
        second = await caller.send(Bye(reason="b"), method=CREATE, timeout=5)
        first.raise_for_status()
        second.raise_for_status()
        assert [i.service for i in first.acked_by] == ["async-creator"]
        assert [i.service for i in second.acked_by] == ["creator"]
        assert seen == [("CreateAsync", "a"), ("Create", "b")]
        # By type alone the two services compete: no route, naming both.
        report = await caller.send(Bye(reason="c"), timeout=5)
        with pytest.raises(NoRoute, match=r"async-creator.*creator"):
            report.raise_for_status()


async def test_a_version_1_hub_routes_by_type_and_receivers_still_dispatch_by_rpc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The upgrade case of docs/protocol.md: endpoints of version 2, a hub that speaks
    version 1 only (it negotiates 1, ignores Hello.methods and routes by type). Each
    message still runs the handler of its rpc: the rpc travels in the envelope."""
    monkeypatch.setattr(ackbus.hub, "negotiate", lambda versions: 1)
    seen: list[tuple[str, str]] = []
    async with running_hub("ipc", tmp_path) as bus:
        server, caller = endpoint(bus, "buckets"), endpoint(bus, "caller")
        async with server, caller:
            server.register(Both(seen))
            await server.start()
            for method, reason in [(CREATE_ASYNC, "a"), (CREATE, "b")]:
                report = await caller.send(Bye(reason=reason), method=method, timeout=5)
                report.raise_for_status()
            assert seen == [("CreateAsync", "a"), ("Create", "b")]
            routing = bus.hub._proto.routing
            assert routing.handles("ackbus.Bye")
            assert not routing.handles(CREATE), "a version-1 hub registers no rpcs"
