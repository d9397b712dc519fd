"""Middleware: your code around every send and every handler run of an endpoint.

A middleware is an object of a subclass of :class:`Middleware` that overrides
:meth:`~Middleware.on_send`, :meth:`~Middleware.on_handle`, or both; each one receives
what is being done and the next step (``call_next``), and decides what happens around
it (time it, log it, add a header, check a header and refuse, set a ``ContextVar``).
:meth:`~Middleware.on_acked` hears of acked messages a batch at a time::

    class Timing(Middleware):
        async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
            started = time.perf_counter()
            try:
                return await call_next(msg, ctx)
            finally:
                log.info("%s took %.3f s", ctx.message_type, time.perf_counter() - started)

    ep = Endpoint("table", hub, middleware=[Timing()])

The first middleware of the list is the outermost: it sees a send or a message first and
its result last. An endpoint chains only the hooks its middleware override, so an
endpoint without middleware, or whose middleware leave :meth:`~Middleware.on_send`
alone, runs its send path exactly as it would without them (docs/observability.md).

:mod:`ackbus.metrics` (Prometheus histograms) and :mod:`ackbus.otel` (OpenTelemetry
spans) are built on these hooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from google.protobuf.message import Message

from ._dispatch import HandlerFn, Route
from ._types import Context, DeliveryReport, Identity, Policy, Untyped

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = [
    "AckedHook",
    "HandleNext",
    "Middleware",
    "Outgoing",
    "SendNext",
    "acked_hooks",
    "handle_chain",
    "send_chain",
]


@dataclass(slots=True)
class Outgoing:
    """One send, publish or request as a middleware sees it, before the endpoint frames
    it. A middleware may change its fields before it calls ``call_next(out)``: above all
    :attr:`headers`, which travel in the message's envelope to the handler
    (``ctx.headers``)."""

    message: Message | Untyped
    type_name: str
    """The message's type: its full proto name (an untyped message's name as given)."""
    kind: Literal["command", "event"]
    request: bool
    """A request: the handler's response comes back in the report."""
    sender: Identity
    """The endpoint that sends it."""
    headers: dict[str, str]
    """The message's headers (a fresh dict a middleware may change)."""
    to: str | None = None
    wait_ack: bool = True
    timeout: float | None = None
    priority: int | None = None
    policy: Policy | None = None
    key: str | bytes | int | None = None
    method: str | None = None
    """The rpc a command is for ("poker.Table/StartHand"), when the caller named one."""

    @property
    def destination(self) -> str:
        """The service it is sent to (``to``), else its rpc or type (the hub picks)."""
        return self.to or self.method or self.type_name


SendNext: TypeAlias = Callable[[Outgoing], Coroutine[Any, Any, DeliveryReport]]
"""The rest of a send: the next middleware, or the endpoint's own send."""
AckedHook: TypeAlias = Callable[[Sequence[DeliveryReport]], None]
"""Every middleware's ``on_acked`` in one call (what the endpoint calls per ack batch)."""
HandleNext: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
"""The rest of a handler run: the next middleware, or the handler (its response, or
``None``)."""


class Middleware:
    """Base of middleware classes: override :meth:`on_send`, :meth:`on_handle` or both
    (the defaults only call the next step, and are never called: an endpoint chains the
    hooks a class overrides and no others)."""

    def attach(self, endpoint: Endpoint) -> None:
        """Called once when the endpoint ``endpoint`` is built with this middleware (its
        ``identity`` is set): a middleware that labels what it records by service and
        instance takes them here. The default does nothing."""

    async def on_send(self, out: Outgoing, call_next: SendNext) -> DeliveryReport:
        """Around a send, publish or request: in the sender's task (its
        ``contextvars``), before the message is framed. ``await call_next(out)`` sends it
        and returns its report: settled when ``out.wait_ack`` (acked or failed), pending
        otherwise (``report.add_done_callback`` says when it settles). Raising instead
        of calling ``call_next`` sends nothing; the caller sees the exception."""
        return await call_next(out)

    def on_acked(self, reports: Sequence[DeliveryReport]) -> None:
        """After messages this endpoint sent were acked, on the loop, once per batch of
        acks (a pipelined sender settles thousands a second: cheaper than a callback per
        report), with their settled reports (``message_type``, ``attempts``,
        ``acked_by``, ``latency``: first send to ack). Must not raise nor block. Never
        called unless overridden."""

    async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
        """Around a handler run, on the endpoint's loop, in the run's own
        ``contextvars`` context: a ``ContextVar`` set here is seen by the handler (in its
        worker thread too, for a plain ``def`` handler) and by the sends it makes.
        ``await call_next(msg, ctx)`` runs the handler and returns its response (a
        request's) or ``None``. The message is acknowledged from what this returns or
        raises, as from a handler: raise :class:`~ackbus.Reject` to refuse it,
        :class:`~ackbus.RetryLater` or any other exception to have it retried."""
        return await call_next(msg, ctx)


def _overrides(mw: Middleware, name: str) -> bool:
    return getattr(type(mw), name) is not getattr(Middleware, name)


def acked_hooks(middleware: Sequence[Middleware]) -> AckedHook | None:
    """One function calling every middleware's ``on_acked`` that is overridden, in
    order; ``None`` when none is."""
    hooks = [mw.on_acked for mw in middleware if _overrides(mw, "on_acked")]
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def each(reports: Sequence[DeliveryReport]) -> None:
        for hook in hooks:
            hook(reports)

    return each


def send_chain(middleware: Sequence[Middleware], last: SendNext) -> SendNext | None:
    """The sends through every middleware that overrides ``on_send``, in order, ending
    at ``last``; ``None`` when none does (the endpoint then calls its send directly)."""
    hooks = [mw for mw in middleware if _overrides(mw, "on_send")]
    if not hooks:
        return None
    step = last
    for mw in reversed(hooks):
        step = _bind_send(mw, step)
    return step


def _bind_send(mw: Middleware, call_next: SendNext) -> SendNext:
    def step(out: Outgoing) -> Coroutine[Any, Any, DeliveryReport]:
        return mw.on_send(out, call_next)

    return step


InThread: TypeAlias = Callable[[HandlerFn, Any, Context], Awaitable[Any]]
"""Runs a plain ``def`` handler in the endpoint's worker pool; awaitable on the loop."""


def handle_chain(
    middleware: Sequence[Middleware], in_thread: InThread
) -> Callable[[Route], Route] | None:
    """What the endpoint's dispatcher applies to each route it registers: the route
    whose function runs every middleware that overrides ``on_handle`` around the
    handler; ``None`` when none does.

    The wrapped route is an ``async`` one (the chain runs on the loop); a plain ``def``
    handler inside it still runs in the worker pool (``in_thread``), which its
    ``threaded`` field says."""
    hooks = [mw for mw in middleware if _overrides(mw, "on_handle")]
    if not hooks:
        return None

    def wrap(route: Route) -> Route:
        fn = route.fn
        last: HandleNext
        if route.sync:

            def last(msg: Any, ctx: Context) -> Awaitable[Any]:
                return in_thread(fn, msg, ctx)

        else:
            last = fn
        step = last
        for mw in reversed(hooks):
            step = _bind_handle(mw, step)
        return dataclasses.replace(route, fn=step, sync=False, threaded=route.sync, inner=fn)

    return wrap


def _bind_handle(mw: Middleware, call_next: HandleNext) -> HandleNext:
    def step(msg: Any, ctx: Context) -> Coroutine[Any, Any, Any]:
        return mw.on_handle(msg, ctx, call_next)

    return step


def future_of(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Future[Any], Callable[..., None]]:
    """A future, and the ``on_done(result, error)`` of a worker run that settles it
    (a cancelled run cancels it; a future already done is left alone)."""
    fut: asyncio.Future[Any] = loop.create_future()

    def done(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(result)
        elif isinstance(error, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(error)

    return fut, done
