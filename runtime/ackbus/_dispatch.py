"""Which handler runs for which message type, in one endpoint.

An endpoint registers generated handler objects (one route per rpc the subclass
implements) and plain functions by message class (the dynamic path). Every route
knows the class to decode the body into, whether the type is a command or an event
subscription, and the class of the response when it is a request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf.message import Message

from ._types import Context, Handler, Kind
from .errors import SchemaError

__all__ = ["Dispatcher", "HandlerFn", "Route"]

M = TypeVar("M", bound=Message)

HandlerFn = Callable[[Any, Context], Coroutine[Any, Any, Message | None]]


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
                fn=cast(HandlerFn, getattr(handler, spec.handler_attr)),
                kind=spec.policy.kind,
                response=spec.response,
                origin=f"{type(handler).__name__}.{spec.handler_attr}",
            )
            for spec in methods
        ]
        self._add_all(routes)
        self._services.update(spec.service for spec in methods)
        return routes

    def add_function(
        self,
        cls: type[M],
        fn: Callable[[M, Context], Coroutine[Any, Any, Message | None]],
        *,
        kind: Kind = Kind.COMMAND,
        response: type[Message] | None = None,
    ) -> Route:
        """Register ``fn`` for messages of class ``cls``."""
        route = Route(
            msg_type=cls.DESCRIPTOR.full_name,
            cls=cls,
            fn=cast(HandlerFn, fn),
            kind=kind,
            response=response,
            origin=getattr(fn, "__qualname__", repr(fn)),
        )
        self._add_all([route])
        return route

    def add_named(
        self,
        names: list[str],
        fn: Callable[[dict[str, Any], Context], Coroutine[Any, Any, Message | None]],
        *,
        kind: Kind = Kind.COMMAND,
    ) -> list[Route]:
        """Register ``fn`` under each of ``names`` (a type's full and legacy names);
        it receives the payload as a dict."""
        origin = getattr(fn, "__qualname__", repr(fn))
        routes = [
            Route(
                msg_type=name,
                cls=None,
                fn=cast(HandlerFn, fn),
                kind=kind,
                response=None,
                origin=origin,
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

    def __len__(self) -> int:
        return len(self._routes)
