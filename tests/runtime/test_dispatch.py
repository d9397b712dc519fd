"""Dispatcher: routes from handler classes and plain functions; collisions named."""

import functools
from typing import Any, ClassVar
from unittest.mock import AsyncMock

import pytest
from ackbus import Context, Handler, Kind, MethodSpec, Policy, SchemaError, unimplemented
from ackbus._dispatch import Dispatcher, Unhandled, is_sync
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
    assert d.methods() == ["test.Fake/Greet"]  # a command's route is its rpc's
    greet = d.get("test.Fake/Greet")
    assert greet is not None
    assert greet.response is Welcome
    assert greet.origin == "Partial.on_greet"
    assert d.get("test.Fake/Leave") is None
    # A message naming no rpc finds the one rpc taking its type; an event, its type.
    assert d.resolve("", "ackbus.Hello") is greet
    assert d.resolve("", "ackbus.Welcome") == d.get("ackbus.Welcome")
    assert d.resolve("test.Fake/Leave", "ackbus.Bye") == Unhandled(
        "no handler for rpc test.Fake/Leave here", False
    )


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
    async def on_welcome(msg: Welcome, ctx: Context) -> Message | None:
        return None

    d = Dispatcher()
    d.add_function(Welcome, on_welcome, kind=Kind.EVENT)
    with pytest.raises(
        SchemaError, match=r"ackbus\.Welcome already has a handler.*Partial\.on_welcomed"
    ):
        d.add_handler(Partial())
    assert d.get("test.Fake/Greet") is None, "a failed registration must not be partial"


class TwoRpcs(Handler):
    """Two rpcs of one service taking one request type (as googleapis has them)."""

    __ackbus_service__ = "test.Twin"
    __ackbus_methods__: ClassVar[tuple[MethodSpec, ...]] = (
        MethodSpec("test.Twin", "Create", "on_create", Hello, None, Policy()),
        MethodSpec("test.Twin", "CreateAsync", "on_create_async", Hello, None, Policy()),
    )

    async def on_create(self, msg: Hello, ctx: Context) -> None:
        return None

    async def on_create_async(self, msg: Hello, ctx: Context) -> None:
        return None


def test_rpcs_sharing_a_type_are_found_by_name_and_ambiguous_without_one() -> None:
    async def by_type(msg: Hello, ctx: Context) -> None:
        return None

    d = Dispatcher()
    create, create_async = d.add_handler(TwoRpcs())
    assert d.types(Kind.COMMAND) == ["ackbus.Hello"]
    assert d.methods() == ["test.Twin/Create", "test.Twin/CreateAsync"]
    assert d.resolve("test.Twin/Create", "ackbus.Hello") is create
    assert d.resolve("test.Twin/CreateAsync", "ackbus.Hello") is create_async
    unhandled = d.resolve("", "ackbus.Hello")
    assert isinstance(unhandled, Unhandled)
    assert unhandled.permanent
    assert "test.Twin/Create, test.Twin/CreateAsync" in unhandled.why
    # A handler registered for the type takes what names no rpc, or an rpc not run here.
    d.add_function(Hello, by_type)
    route = d.get("ackbus.Hello")
    assert d.resolve("", "ackbus.Hello") is route
    assert d.resolve("test.Twin/Other", "ackbus.Hello") is route


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
