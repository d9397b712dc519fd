"""Put an existing service object on an endpoint in one call.

Pre-ackbus services are often an object with one method per message type, named
after the type: ``handle_service_registration(self, message)`` (or, ported from C#,
``handle_service_registration_message``). :func:`wrap_service` finds those methods by
that convention (or takes an explicit mapping) and registers each on an endpoint,
typed where the registry knows the type, so the object needs no change at all.
:class:`LegacyServiceMixin` is the same as a method, plus the C# original's
``SendWithConfirmationAsync`` as :meth:`~LegacyServiceMixin.send_with_confirmation`.

A wrapped method may be ``def`` or ``async def`` and take ``(message)`` or
``(message, ctx)``. A plain ``def`` runs on the event loop (as the legacy code ran on
its own loop thread); pass ``threaded=True`` to run it in a worker thread instead. Its
return value, when a message, is the response to a request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message

from .._types import Context, MessageSpec, Registry, Untyped
from ..blocking import BlockingEndpoint
from ..endpoint import Endpoint
from ..errors import SchemaError

__all__ = ["LegacyServiceMixin", "handler_name", "wrap_service"]

log = logging.getLogger("ackbus.legacy")

AnyEndpoint = Endpoint | BlockingEndpoint
Target = str | Callable[..., Any]
"""A method name on the service object, or any callable."""


def handler_name(type_name: str, prefix: str = "handle_") -> str:
    """``"ServiceRegistration"`` → ``"handle_service_registration"`` (the last dotted
    part of a full proto name; acronyms stay one word: ``"HTTPRequest"`` →
    ``"handle_http_request"``)."""
    short = type_name.rsplit(".", 1)[-1]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", short).lower()
    return prefix + snake


def _conventional(registry: Registry) -> dict[str, MessageSpec]:
    """Method name → spec, for every top-level message type of the registry."""
    out: dict[str, MessageSpec] = {}
    for spec in registry:
        if spec.cls.DESCRIPTOR.containing_type is not None:
            continue  # a nested type ("DealCards.Hand") is no message on its own
        base = handler_name(spec.legacy_name or spec.full_name)
        out.setdefault(base, spec)
        out.setdefault(base + "_message", spec)
    return out


def _registry_of(ep: AnyEndpoint) -> Registry:
    return ep.endpoint.registry if isinstance(ep, BlockingEndpoint) else ep.registry


def _adapt(fn: Callable[..., Any], *, threaded: bool, as_dict: bool, name: str) -> Any:
    """``fn`` as an endpoint handler ``async (message, ctx) -> Message | None``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass the message only
        params = None
    positional = [
        p for p in (params or ()) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    takes_ctx = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params or ())
    is_async = inspect.iscoroutinefunction(fn)

    async def handle(message: Any, ctx: Context) -> Message | None:
        args = (message, ctx) if takes_ctx else (message,)
        if is_async:
            result = await fn(*args)
        elif threaded:
            result = await asyncio.to_thread(fn, *args)
        else:
            result = fn(*args)
        return result if isinstance(result, Message) and not as_dict else None

    handle.__qualname__ = getattr(fn, "__qualname__", name)
    return handle


def wrap_service(
    ep: AnyEndpoint,
    service: object,
    *,
    registry: Registry | None = None,
    handlers: Mapping[str | type[Message], Target] | None = None,
    threaded: bool = False,
    dicts: bool = False,
) -> list[str]:
    """Register ``service``'s legacy handler methods on ``ep``; return the type names.

    Without ``handlers``, every method named ``handle_<snake name>`` or
    ``handle_<snake name>_message`` of a type in ``registry`` (default: the
    endpoint's) is registered for that type; the snake name comes from the type's
    legacy name, else its proto name. ``handlers`` maps types (classes or names) to
    method names or callables explicitly; a name the registry does not know is
    registered by name and its handler receives the payload dict. ``dicts=True``
    hands every handler the payload as a dict instead of the typed message.

    Raises :class:`~ackbus.SchemaError` when nothing matched, or when a type of the
    mapping is claimed twice.
    """
    registry = registry if registry is not None else _registry_of(ep)
    chosen: dict[str, tuple[MessageSpec | None, Callable[..., Any]]] = {}
    if handlers is None:
        for attr, spec in _conventional(registry).items():
            fn = getattr(service, attr, None)
            if callable(fn):
                if spec.full_name in chosen:
                    raise SchemaError(
                        f"{type(service).__name__} has two handlers for {spec.full_name}"
                    )
                chosen[spec.full_name] = (spec, fn)
    else:
        for key, target in handlers.items():
            found = registry.for_class(key) if isinstance(key, type) else registry.get(key)
            if found is None and isinstance(key, type):
                raise SchemaError(f"{key.DESCRIPTOR.full_name} is not in the registry")
            fn = getattr(service, target) if isinstance(target, str) else target
            name = found.full_name if found is not None else str(key)
            chosen[name] = (found, fn)
    if not chosen:
        raise SchemaError(
            f"{type(service).__name__} has no handle_<type> method for any type of the "
            "registry; pass handlers={type: method} to map them explicitly"
        )
    for name, (maybe, fn) in chosen.items():
        by_name = maybe is None or dicts
        handle = _adapt(fn, threaded=threaded, as_dict=by_name, name=name)
        if maybe is None or dicts:
            ep.register_handler(name, handle)
        else:
            ep.register_handler(maybe.cls, handle)
        log.debug("registered %s for %s", getattr(fn, "__qualname__", fn), name)
    return sorted(chosen)


class LegacyServiceMixin:
    """Mix into an existing service class to put it on the bus::

    class Lobby(LegacyLobby, LegacyServiceMixin):
        pass

    lobby = Lobby()
    lobby.attach(endpoint)          # registers handle_service_registration, ...
    await lobby.send_with_confirmation(StartHand(table_id="t1"), timeout=5)
    """

    _ackbus_endpoint: Endpoint | None = None

    def attach(
        self,
        ep: Endpoint,
        *,
        registry: Registry | None = None,
        handlers: Mapping[str | type[Message], Target] | None = None,
        threaded: bool = False,
    ) -> list[str]:
        """:func:`wrap_service` on this object; remembers ``ep`` for sends."""
        names = wrap_service(ep, self, registry=registry, handlers=handlers, threaded=threaded)
        self._ackbus_endpoint = ep
        return names

    async def send_with_confirmation(
        self, msg: Message | Untyped, timeout: float = 5.0, *, to: str | None = None
    ) -> bool:
        """Send and wait for the ack; ``True`` once acked, ``False`` if it failed (the
        reason is logged). The counterpart of C#'s ``SendWithConfirmationAsync``."""
        ep = self._ackbus_endpoint
        if ep is None:
            raise RuntimeError(f"{type(self).__name__}.attach(endpoint) was not called")
        report = await ep.send(msg, timeout=timeout, to=to)
        if not report:
            log.warning("%s: %s", type(self).__name__, report.error)
        return bool(report)
