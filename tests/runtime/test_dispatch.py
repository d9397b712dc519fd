"""Dispatcher: routes from handler classes and plain functions; collisions named."""

import functools
from typing import Any, ClassVar
from unittest.mock import AsyncMock

import pytest
from ackbus import Context, Handler, Kind, MethodSpec, Policy, SchemaError, unimplemented
from ackbus._dispatch import Dispatcher, is_sync
from ackbus.wire_pb2 import Bye, Hello, Welcome
from google.protobuf.message import Message


class FakeServiceHandler(Handler):
    """Shaped like a generated base: three rpcs, all unimplemented."""

    __ackbus_service__ = "test.Fake"
    __ackbus_methods__: ClassVar[tuple[MethodSpec, ...]] = (
        MethodSpec("test.Fake", "Greet", "on_greet", Hello, Welcome, Policy()),
        MethodSpec("test.Fake", "Leave", "on_leave", Bye, None, Policy()),
        MethodSpec("test.Fake", "Welcomed", "on_welcomed", Welcome, None, Policy(kind=Kind.EVENT)),
    )

    @unimplemented
    async def on_greet(self, msg: Hello, ctx: Context) -> Welcome:
        raise NotImplementedError

    @unimplemented
    async def on_leave(self, msg: Bye, ctx: Context) -> None:
        raise NotImplementedError

    @unimplemented
    async def on_welcomed(self, msg: Welcome, ctx: Context) -> None:
        raise NotImplementedError


class Partial(FakeServiceHandler):
    async def on_greet(self, msg: Hello, ctx: Context) -> Welcome:
        return Welcome(heartbeat_ms=1)

    async def on_welcomed(self, msg: Welcome, ctx: Context) -> None:
        return None


def test_only_overridden_methods_become_routes() -> None:
    d = Dispatcher()
    routes = d.add_handler(Partial())
    assert sorted(r.msg_type for r in routes) == ["ackbus.Hello", "ackbus.Welcome"]
    assert d.types(Kind.COMMAND) == ["ackbus.Hello"]
    assert d.types(Kind.EVENT) == ["ackbus.Welcome"]
    greet = d.get("ackbus.Hello")
    assert greet is not None
    assert greet.response is Welcome
    assert greet.origin == "Partial.on_greet"
    assert d.get("ackbus.Bye") is None


def test_handler_implementing_nothing_is_refused() -> None:
    with pytest.raises(SchemaError, match="implements none"):
        Dispatcher().add_handler(FakeServiceHandler())


def test_function_route() -> None:
    async def on_bye(msg: Bye, ctx: Context) -> Message | None:
        return None

    d = Dispatcher()
    route = d.add_function(Bye, on_bye)
    assert route.msg_type == "ackbus.Bye"
    assert route.kind is Kind.COMMAND
    assert len(d) == 1


def test_collision_names_both_sides_and_registers_nothing() -> None:
    async def on_hello(msg: Hello, ctx: Context) -> Message | None:
        return None

    d = Dispatcher()
    d.add_function(Hello, on_hello)
    with pytest.raises(
        SchemaError, match=r"ackbus\.Hello already has a handler.*Partial\.on_greet"
    ):
        d.add_handler(Partial())
    assert d.get("ackbus.Welcome") is None, "a failed registration must not be partial"


class SyncPartial(FakeServiceHandler):
    """Plain ``def`` overrides (what a generated sync base's subclass has)."""

    def on_greet(self, msg: Hello, ctx: Context) -> Welcome:  # type: ignore[override]
        return Welcome(heartbeat_ms=1)


def test_each_route_records_whether_its_handler_is_a_plain_def() -> None:
    async def on_bye(msg: Bye, ctx: Context) -> None:
        return None

    def on_hello(msg: Hello, ctx: Context) -> None:
        return None

    def by_name(payload: dict[str, Any], ctx: Context) -> None:
        return None

    d = Dispatcher()
    assert d.add_function(Bye, on_bye).sync is False
    assert d.add_function(Hello, on_hello).sync is True
    assert [r.sync for r in d.add_named(["A", "B"], by_name)] == [True, True]
    (greet,) = Dispatcher().add_handler(SyncPartial())
    assert greet.sync is True
    assert [r.sync for r in Dispatcher().add_handler(Partial())] == [False, False]


class AsyncCallable:
    async def __call__(self, msg: Bye, ctx: Context) -> None:
        return None


class SyncCallable:
    def __call__(self, msg: Bye, ctx: Context) -> None:
        return None


class Subclassed(AsyncCallable):
    pass


async def _async_fn(msg: Bye, ctx: Context, extra: int = 0) -> None:
    return None


def _sync_fn(msg: Bye, ctx: Context, extra: int = 0) -> None:
    return None


@pytest.mark.parametrize(
    ("fn", "sync"),
    [
        (_async_fn, False),
        (_sync_fn, True),
        (functools.partial(_async_fn, extra=1), False),
        (functools.partial(_sync_fn, extra=1), True),
        (AsyncCallable(), False),
        (Subclassed(), False),
        (SyncCallable(), True),
        (Partial().on_greet, False),
        (SyncPartial().on_greet, True),
        (AsyncMock(), False),
        (lambda msg, ctx: None, True),
    ],
)
def test_is_sync(fn: Any, sync: bool) -> None:
    assert is_sync(fn) is sync
