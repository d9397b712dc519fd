"""OpenTelemetry through real endpoints and a real hub: one trace across three services
(a command A -> B, B's handler publishes an event, C subscribes), the W3C traceparent in
the envelope's headers, spans following the messaging semantic conventions, and a
failed send's span marked as an error. Spans are read from the SDK's in-memory
exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from ackbus import Context, Kind, Reject
from ackbus.endpoint import Endpoint
from ackbus.otel import TracingMiddleware
from helpers import FAST
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from poker import table_pb2


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    out = {}
    for span in finished:
        assert span.name not in out, f"two spans named {span.name}"
        out[span.name] = span
    return out


@pytest.mark.parametrize("sync", [False, True], ids=["async", "def"])
async def test_one_trace_follows_a_command_into_its_handler_its_event_and_the_subscriber(
    hub: str, spans: tuple[TracerProvider, InMemorySpanExporter], sync: bool
) -> None:
    provider, exporter = spans
    headers_seen: list[dict[str, str]] = []
    audited = asyncio.Event()

    b = Endpoint("table", hub, policy=FAST, middleware=[TracingMiddleware(provider)])
    c = Endpoint("audit", hub, policy=FAST, middleware=[TracingMiddleware(provider)])
    loop = asyncio.get_running_loop()

    async def start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        headers_seen.append(dict(ctx.headers))
        assert await b.publish(table_pb2.HandStarted(table_id=msg.table_id))

    def start_hand_def(msg: table_pb2.StartHand, ctx: Context) -> None:  # in a worker thread
        headers_seen.append(dict(ctx.headers))
        event = table_pb2.HandStarted(table_id=msg.table_id)
        assert asyncio.run_coroutine_threadsafe(b.publish(event), loop).result(10)

    async def hand_started(msg: table_pb2.HandStarted, ctx: Context) -> None:
        audited.set()

    b.register_handler(table_pb2.StartHand, start_hand_def if sync else start_hand)
    c.register_handler(table_pb2.HandStarted, hand_started, kind=Kind.EVENT)
    a = Endpoint("dealer", hub, policy=FAST, middleware=[TracingMiddleware(provider)])
    async with b, c, a:
        assert await a.send(table_pb2.StartHand(table_id="t1"))
        await asyncio.wait_for(audited.wait(), 5)

    got = by_name(exporter.get_finished_spans())
    assert sorted(got) == [
        "process poker.HandStarted",
        "process poker.StartHand",
        "send poker.HandStarted",
        "send poker.StartHand",
    ]
    a_send, b_process = got["send poker.StartHand"], got["process poker.StartHand"]
    b_publish, c_process = got["send poker.HandStarted"], got["process poker.HandStarted"]
    # ONE trace, each span the child of the one before it
    traces = {s.context.trace_id for s in got.values()}
    assert len(traces) == 1
    assert a_send.parent is None
    assert b_process.parent is not None
    assert b_process.parent.span_id == a_send.context.span_id
    assert b_publish.parent is not None
    assert b_publish.parent.span_id == b_process.context.span_id
    assert c_process.parent is not None
    assert c_process.parent.span_id == b_publish.context.span_id
    # W3C trace context in the envelope's headers
    (headers,) = headers_seen
    version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
    assert version == "00"
    assert int(trace_id, 16) == a_send.context.trace_id
    assert int(parent_id, 16) == a_send.context.span_id
    # messaging semantic conventions
    assert a_send.kind is SpanKind.PRODUCER
    assert c_process.kind is SpanKind.CONSUMER
    assert a_send.attributes is not None
    assert b_process.attributes is not None
    assert b_publish.attributes is not None
    assert c_process.attributes is not None
    assert dict(a_send.attributes) == {
        "messaging.system": "ackbus",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "poker.StartHand",
        "messaging.client.id": a.identity.instance,
        "messaging.message.id": a_send.attributes["messaging.message.id"],
        "messaging.ackbus.attempts": 1,
    }
    assert b_process.attributes["messaging.message.id"] == a_send.attributes["messaging.message.id"]
    assert b_process.attributes["messaging.operation.type"] == "process"
    assert b_process.attributes["messaging.consumer.group.name"] == "table"
    assert b_process.attributes["messaging.ackbus.attempt"] == 1
    assert b_publish.attributes["messaging.operation.name"] == "publish"
    assert c_process.attributes["messaging.destination.name"] == "poker.HandStarted"
    assert c_process.attributes["messaging.consumer.group.name"] == "audit"
    assert all(s.status.status_code is StatusCode.UNSET for s in got.values())


async def test_a_rejected_message_marks_both_spans_as_errors(
    hub: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def start_hand(msg: table_pb2.StartHand, ctx: Context) -> None:
        raise Reject("table is closed")

    b = Endpoint("table", hub, policy=FAST, middleware=[TracingMiddleware(provider)])
    b.register_handler(table_pb2.StartHand, start_hand)
    async with (
        b,
        Endpoint("dealer", hub, policy=FAST, middleware=[TracingMiddleware(provider)]) as a,
    ):
        assert not await a.send(table_pb2.StartHand(table_id="t1"))
    got = by_name(exporter.get_finished_spans())
    assert got["send poker.StartHand"].status.status_code is StatusCode.ERROR
    assert "table is closed" in (got["send poker.StartHand"].status.description or "")
    assert got["process poker.StartHand"].status.status_code is StatusCode.ERROR
    assert [e.name for e in got["process poker.StartHand"].events] == ["exception"]
