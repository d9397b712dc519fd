"""Which handler runs for which message type, in one endpoint.

An endpoint registers generated handler objects (one route per rpc the subclass
implements) and plain functions by message class (the dynamic path). Every route
knows the class to decode the body into, whether the type is a command or an event
subscription, and the class of the response when it is a request.

A handler is an ``async def`` (run on the endpoint's loop, eagerly) or a plain ``def``
(run in the endpoint's worker pool, :mod:`ackbus._workers`); each route records which.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from google.protobuf.message import Message

from ._types import Context, Handler, Kind
from .errors import SchemaError

__all__ = ["DictHandlerFn", "Dispatcher", "HandlerFn", "MessageHandlerFn", "Route", "is_sync"]

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


class Dispatcher:
    """Message type name → route. Registering the same type twice is an error."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
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
            known = self._routes.get(route.msg_type)
            if known is not None:
                raise SchemaError(
                    f"{route.msg_type} already has a handler ({known.origin}); "
                    f"cannot also register {route.origin}"
                )
        for route in routes:
            self._routes[route.msg_type] = route

    def get(self, msg_type: str) -> Route | None:
        return self._routes.get(msg_type)

    def routes(self) -> list[Route]:
        """Every route (one per type name; a by-name handler may have two)."""
        return list(self._routes.values())

    def types(self, kind: Kind) -> list[str]:
        """Registered type names of one kind, sorted (for the hello)."""
        return sorted(name for name, r in self._routes.items() if r.kind is kind)

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
        return bool(self._routes) and all(r.sync for r in self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)
