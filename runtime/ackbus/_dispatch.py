"""Which handler runs for which message, in one endpoint.

An endpoint registers generated handler objects (one route per rpc the subclass
implements, found by the rpc's name, "poker.Table/StartHand", for a command and by its
type for an event) and plain functions by message class (the dynamic path, found by
type). Every route knows the class to decode the body into, whether the type is a
command or an event subscription, and the class of the response when it is a request.

A message that names its rpc runs that rpc's handler, or a handler registered for its
type; one that names none (a dynamic ``send``, a sender of protocol version 1) runs the
handler of its type, or the one rpc taking it: where several rpcs take the type it is
ambiguous (:meth:`Dispatcher.resolve` says which).

A handler is an ``async def`` (run on the endpoint's loop, eagerly) or a plain ``def``
(run in the endpoint's worker pool, :mod:`ackbus._workers`); each route records which.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias, TypeVar

from google.protobuf.message import Message

from ._types import Context, Handler, Kind
from .errors import SchemaError

__all__ = [
    "DictHandlerFn",
    "Dispatcher",
    "HandlerFn",
    "MessageHandlerFn",
    "Route",
    "Unhandled",
    "is_sync",
]

M = TypeVar("M", bound=Message)

MessageHandlerFn: TypeAlias = (
    Callable[[M, Context], Coroutine[Any, Any, Message | None]]
    | Callable[[M, Context], Message | None]
)
"""A handler function for messages of class ``M``: ``async def`` or plain ``def``."""
DictHandlerFn: TypeAlias = (
    Callable[[dict[str, Any], Context], Coroutine[Any, Any, None]]
    | Callable[[dict[str, Any], Context], None]
)
"""A handler function registered by type name (it receives the payload as a dict)."""
HandlerFn = Callable[[Any, Context], Any]
"""A route's function: a coroutine function, or a plain one when ``Route.sync``."""


def is_sync(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is a plain function (run in a worker thread), not an ``async def``
    (also through ``functools.partial``, a bound method, or an object whose
    ``__call__`` is ``async def``)."""
    if inspect.iscoroutinefunction(fn):
        return False
    call = inspect.getattr_static(type(fn), "__call__", None)
    return not (inspect.isfunction(call) and inspect.iscoroutinefunction(call))


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler."""

    msg_type: str
    cls: type[Message] | None
    """``None`` for a handler registered by type name: it receives a dict."""
    fn: HandlerFn
    kind: Kind
    response: type[Message] | None
    origin: str
    """Where it came from, for error messages ("TableHandler.on_start_hand")."""
    sync: bool = False
    """``fn`` is a plain function: it runs in the endpoint's worker pool, not on its loop."""
    method: str = ""
    """The rpc ("poker.Table/StartHand") a generated handler's command route runs; ""
    for a route found by type (events, handlers registered by type)."""
    threaded: bool = False
    """``fn`` is the middleware chain (on the loop) around a plain ``def`` handler that
    the chain runs in the worker pool (:mod:`ackbus.middleware`)."""
    inner: HandlerFn | None = None
    """The handler itself, when ``fn`` is the middleware chain around it."""

    @property
    def handler(self) -> HandlerFn:
        """The registered function (inside the middleware chain, if any)."""
        return self.inner if self.inner is not None else self.fn

    @property
    def plain(self) -> bool:
        """The handler is a plain ``def`` (run in the worker pool)."""
        return self.sync or self.threaded

    @property
    def name(self) -> str:
        """What the route is found by: its rpc, else its type."""
        return self.method or self.msg_type


class Unhandled(NamedTuple):
    """Why no route takes a message: ``permanent`` when a retry cannot help (it names
    no rpc and several take its type), else the hub may route it elsewhere."""

    why: str
    permanent: bool


class Dispatcher:
    """Rpc or message type name → route. Registering the same name twice is an error.

    ``wrap`` (the endpoint's middleware chain, :func:`ackbus.middleware.handle_chain`)
    turns each route registered into the one that runs."""

    def __init__(self, wrap: Callable[[Route], Route] | None = None) -> None:
        self._wrap = wrap
        self._routes: dict[str, Route] = {}
        self._rpcs: dict[str, list[Route]] = {}
        """Command type → the rpc routes taking it."""
        self._services: set[str] = set()
        """Schema services whose rpcs registered handlers run."""

    def add_handler(self, handler: Handler) -> list[Route]:
        """Register every rpc ``handler``'s class implements; returns the new routes."""
        methods = type(handler).implemented_methods()
        if not methods:
            raise SchemaError(
                f"{type(handler).__name__} implements none of the on_* methods of "
                f"{type(handler).__ackbus_service__ or 'its generated base'}"
            )
        routes = [
            Route(
                msg_type=spec.request_type,
                cls=spec.request,
                fn=fn,
                kind=spec.policy.kind,
                response=spec.response,
                origin=f"{type(handler).__name__}.{spec.handler_attr}",
                sync=is_sync(fn),
                method="" if spec.policy.kind is Kind.EVENT else spec.full_name,
            )
            for spec in methods
            for fn in [getattr(handler, spec.handler_attr)]
        ]
        self._add_all(routes)
        self._services.update(spec.service for spec in methods)
        return routes

    def add_function(
        self,
        cls: type[M],
        fn: MessageHandlerFn[M],
        *,
        kind: Kind = Kind.COMMAND,
        response: type[Message] | None = None,
    ) -> Route:
        """Register ``fn`` for messages of class ``cls``."""
        route = Route(
            msg_type=cls.DESCRIPTOR.full_name,
            cls=cls,
            fn=fn,
            kind=kind,
            response=response,
            origin=getattr(fn, "__qualname__", repr(fn)),
            sync=is_sync(fn),
        )
        self._add_all([route])
        return route

    def add_named(
        self,
        names: list[str],
        fn: DictHandlerFn,
        *,
        kind: Kind = Kind.COMMAND,
    ) -> list[Route]:
        """Register ``fn`` under each of ``names`` (a type's full and legacy names);
        it receives the payload as a dict."""
        origin = getattr(fn, "__qualname__", repr(fn))
        sync = is_sync(fn)
        routes = [
            Route(
                msg_type=name,
                cls=None,
                fn=fn,
                kind=kind,
                response=None,
                origin=origin,
                sync=sync,
            )
            for name in names
        ]
        self._add_all(routes)
        return routes

    def _add_all(self, routes: list[Route]) -> None:
        for route in routes:
            known = self._routes.get(route.name)
            if known is not None:
                raise SchemaError(
                    f"{route.name} already has a handler ({known.origin}); "
                    f"cannot also register {route.origin}"
                )
        for route in routes:
            if self._wrap is not None:
                route = self._wrap(route)
            self._routes[route.name] = route
            if route.method:
                self._rpcs.setdefault(route.msg_type, []).append(route)

    def get(self, name: str) -> Route | None:
        """The route registered under rpc or type ``name``."""
        return self._routes.get(name)

    def resolve(self, method: str, msg_type: str) -> Route | Unhandled:
        """The route for a message of type ``msg_type`` naming rpc ``method`` ("" for
        none), or why there is none."""
        routes = self._routes
        if method:
            route = routes.get(method) or routes.get(msg_type)
            if route is not None:
                return route
            return Unhandled(f"no handler for rpc {method} here", False)
        route = routes.get(msg_type)
        if route is not None:
            return route
        rpcs = self._rpcs.get(msg_type)
        if rpcs is None:
            return Unhandled(f"no handler for {msg_type} here", False)
        if len(rpcs) == 1:
            return rpcs[0]
        names = ", ".join(sorted(r.method for r in rpcs))
        return Unhandled(
            f"{msg_type} names no rpc and several take it ({names}): the sender must "
            "name one (a generated client does; send(msg, method=...))",
            True,
        )

    def routes(self) -> list[Route]:
        """Every route (one per rpc or type name; a by-name handler may have two)."""
        return list(self._routes.values())

    def types(self, kind: Kind) -> list[str]:
        """The type names routes of one kind take, sorted (for the hello)."""
        return sorted({r.msg_type for r in self._routes.values() if r.kind is kind})

    def methods(self) -> list[str]:
        """The rpcs routes run, sorted (for the hello)."""
        return sorted(r.method for r in self._routes.values() if r.method)

    def add_service(self, service: str) -> None:
        """Count schema service ``service`` among those this endpoint runs."""
        if not service:
            raise SchemaError("a schema service name cannot be empty")
        self._services.add(service)

    def services(self) -> list[str]:
        """The schema services (full names) registered handlers run, sorted."""
        return sorted(self._services)

    def all_sync(self) -> bool:
        """Whether there are routes and every one runs a plain ``def`` (in threads)."""
        return bool(self._routes) and all(r.plain for r in self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)
