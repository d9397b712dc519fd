"""OpenTelemetry spans of an endpoint's sends and handler runs (``pip install
'ackbus[otel]'``), one trace from a command into its handler, the events that handler
publishes and their subscribers::

    from ackbus.otel import TracingMiddleware

    ep = Endpoint("table", hub, middleware=[TracingMiddleware()])

A send, publish or request is a ``PRODUCER`` span named ``send <destination>`` (the
type, or the service given as ``to``), from the call until the message settled (acked
or failed: then its status is an error); the W3C ``traceparent`` (and whatever else the
configured propagator writes, ``tracestate`` and ``baggage`` by default) travels in the
message's envelope headers. A handler run is a ``CONSUMER`` span named ``process
<type>``, the child of the sender's span, and current while the handler runs: a send
made by the handler (``async def``, or a plain ``def`` in its worker thread) is a child
of it, so the trace goes on.

Attributes follow OpenTelemetry's messaging semantic conventions: ``messaging.system``
``"ackbus"``, ``messaging.operation.type`` (``send``, ``process``),
``messaging.operation.name`` (``send``, ``publish``, ``request``, ``process``),
``messaging.destination.name``, ``messaging.message.id`` (hex),
``messaging.consumer.group.name`` (the handling service), ``messaging.client.id`` (the
instance); and ``messaging.ackbus.attempt`` (a handler run's attempt number).

Spans go to the tracer provider given, else the global one
(``opentelemetry.trace.set_tracer_provider``); headers are written and read by the
global propagator (``opentelemetry.propagate``, W3C trace context by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._types import Context, DeliveryReport
from ._version import __version__
from .middleware import HandleNext, Middleware, Outgoing, SendNext

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = ["SYSTEM", "TracingMiddleware"]

SYSTEM = "ackbus"
"""``messaging.system`` of every span."""


class TracingMiddleware(Middleware):
    """Spans of one endpoint's sends (``PRODUCER``) and handler runs (``CONSUMER``),
    linked through the ``traceparent`` header (module docstring)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("ackbus", __version__, tracer_provider=tracer_provider)
        self._service = ""
        self._instance = ""

    def attach(self, endpoint: Endpoint) -> None:
        self._service = endpoint.identity.service
        self._instance = endpoint.identity.instance

    async def on_send(self, out: Outgoing, call_next: SendNext) -> DeliveryReport:
        operation = "request" if out.request else "publish" if out.kind == "event" else "send"
        destination = out.destination
        span = self._tracer.start_span(
            f"send {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": operation,
                "messaging.destination.name": destination,
                "messaging.client.id": self._instance,
            },
        )
        propagate.inject(out.headers, context=trace.set_span_in_context(span))
        try:
            report = await call_next(out)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
            raise
        span.set_attribute("messaging.message.id", report.message_id.hex())
        report.add_done_callback(lambda settled: _settled(span, settled))
        return report

    async def on_handle(self, msg: Any, ctx: Context, call_next: HandleNext) -> Any:
        parent = propagate.extract(ctx.headers) if ctx.headers else None
        with self._tracer.start_as_current_span(
            f"process {ctx.message_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_process_attributes(ctx, self._service, self._instance),
        ):
            return await call_next(msg, ctx)


def _process_attributes(ctx: Context, service: str, instance: str) -> Mapping[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": ctx.message_type,
        "messaging.message.id": ctx.message_id.hex(),
        "messaging.consumer.group.name": service,
        "messaging.client.id": instance,
        "messaging.ackbus.attempt": ctx.attempt,
    }


def _settled(span: trace.Span, report: DeliveryReport) -> None:
    """End a send's span when its message settled; a failure is its error status."""
    span.set_attribute("messaging.ackbus.attempts", report.attempts)
    if report.error is not None:
        span.set_status(Status(StatusCode.ERROR, str(report.error)))
    span.end()
