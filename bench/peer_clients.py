"""The brokers' side of ``python -m bench.peers``: one producer and one consumer per system.

Each system has a consumer (run in its own OS process until told to stop) and a
producer (in another), written as each client library's users write them, and a
sentence saying when a message counts as done (:data:`DONE`). The producer is driven by
:class:`Driver`: it hands out message numbers, up to ``window`` not yet done (1 for the
sequential rows), and a message is done when each of its ``need`` confirmations came
back: the consumer's reply, and where the broker stores, the broker's own (NATS
JetStream's PubAck, Redis's XADD reply, RabbitMQ's publisher confirm). The clients are
imported in the worker processes only (``pip install 'ackbus[peers]'``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

SYSTEMS = {
    "nats-core": ("NATS core", "nats"),
    "jetstream": ("NATS JetStream", "nats"),
    "redis": ("Redis Streams", "redis"),
    "rabbitmq": ("RabbitMQ", "rabbitmq"),
}
"""Key -> (the name rows carry, the broker it needs)."""

DONE = {
    "nats-core": "handled: the consumer's callback ran and its reply reached the producer "
    "(request/reply: nothing is stored; a message without a subscriber is dropped)",
    "jetstream": "stored and acked: in a file-backed work-queue stream (PubAck back to the "
    "producer), delivered to a push consumer that acked it (explicit ack, sent before its "
    "reply) and replied",
    "redis": "stored and acked: XADD to a stream (the reply back to the producer; in memory "
    "and the append-only file, fsync'd every second), read by a consumer group member "
    "that XACKed it and published a reply, in one pipeline",
    "rabbitmq": "stored and acked: a persistent message in a durable classic queue, the "
    "publisher confirm back (RabbitMQ confirms once it is on disk or acked), consumed "
    "(prefetch 1,000) and basic.acked, and a reply published",
}

SUBJECT = "bench.req"
JS_SUBJECT = "bench.js"
STREAM = "bench"
GROUP = "bench"
QUEUE = "bench"
_TIMEOUT = 120.0
_MAXLEN = 100_000
"""Redis trims the stream to about this many entries (it holds acked ones otherwise)."""


class Producer(Protocol):
    need: int
    """Confirmations per message: the reply, and the broker's when it stores."""

    async def open(self, url: str, driver: Driver) -> None: ...

    async def send(self, ids: range, payload: bytes) -> None: ...

    async def close(self) -> None: ...


class Driver:
    """Windowed sending: message numbers go out while fewer than ``window`` are not yet
    done; each is done after ``producer.need`` confirmations (or one failure)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.need = producer.need
        self.counts: dict[int, int] = {}
        self.sent_at: dict[int, int] = {}
        self.next_id = 0
        self.done = 0
        self.failed = 0
        self.errors: list[str] = []
        self.rtts: list[int] = []
        self._wake: asyncio.Future[None] | None = None

    def confirm(self, i: int) -> None:
        count = self.counts.get(i, 0) + 1
        if count < self.need:
            self.counts[i] = count
            return
        self.counts.pop(i, None)
        sent = self.sent_at.pop(i, None)
        if sent is None:  # a late or repeated confirmation
            return
        self.rtts.append(time.perf_counter_ns() - sent)
        self._settled()

    def fail(self, i: int, why: str) -> None:
        self.counts.pop(i, None)
        if self.sent_at.pop(i, None) is None:
            return
        self.failed += 1
        if len(self.errors) < 3:
            self.errors.append(why)
        self._settled()

    def _settled(self) -> None:
        self.done += 1
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self, n: int, window: int, payload: bytes) -> float:
        """Send ``n`` with up to ``window`` in flight; seconds until the last was done."""
        loop = asyncio.get_running_loop()
        target = self.done + n
        last = self.next_id + n
        self.rtts = []
        start = time.perf_counter()
        async with asyncio.timeout(_TIMEOUT):
            while self.done < target:
                room = min(window - len(self.sent_at), last - self.next_id)
                if room > 0:
                    ids = range(self.next_id, self.next_id + room)
                    self.next_id += room
                    now = time.perf_counter_ns()
                    for i in ids:
                        self.sent_at[i] = now
                    await self.producer.send(ids, payload)
                    continue
                self._wake = loop.create_future()
                await self._wake
        return time.perf_counter() - start


def producer(system: str) -> Producer:
    makers: dict[str, Callable[[], Producer]] = {
        "nats-core": NatsCoreProducer,
        "jetstream": JetStreamProducer,
        "redis": RedisProducer,
        "rabbitmq": RabbitProducer,
    }
    return makers[system]()


async def consume(system: str, url: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    """Run ``system``'s consumer until ``stop`` is done; ``ready()`` once it consumes."""
    consumers = {
        "nats-core": _nats_core_consumer,
        "jetstream": _jetstream_consumer,
        "redis": _redis_consumer,
        "rabbitmq": _rabbit_consumer,
    }
    await consumers[system](url, ready, stop)


# --------------------------------------------------------------------------- NATS


class NatsCoreProducer:
    """``publish`` with a reply subject per message (what ``request`` does, without a
    future per message), the replies on one wildcard subscription."""

    need = 1

    async def open(self, url: str, driver: Driver) -> None:
        import nats

        self.nc = await nats.connect(url)
        self.inbox = self.nc.new_inbox()

        async def on_reply(msg: Any) -> None:
            driver.confirm(int(msg.subject.rsplit(".", 1)[1]))

        await self.nc.subscribe(f"{self.inbox}.*", cb=on_reply)
        await self.nc.flush()

    async def send(self, ids: range, payload: bytes) -> None:
        for i in ids:
            await self.nc.publish(SUBJECT, payload, reply=f"{self.inbox}.{i}")

    async def close(self) -> None:
        await self.nc.close()


async def _nats_core_consumer(url: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    import nats

    nc = await nats.connect(url)

    async def on_request(msg: Any) -> None:
        await nc.publish(msg.reply, b"")

    await nc.subscribe(SUBJECT, cb=on_request)
    await nc.flush()
    ready()
    await stop
    await nc.close()


class JetStreamProducer:
    """A publish to the stream's subject whose reply subject gets JetStream's PubAck
    (what ``js.publish`` awaits, without a future per message); the consumer's reply
    subject in a header."""

    need = 2

    async def open(self, url: str, driver: Driver) -> None:
        import nats

        self.nc = await nats.connect(url)
        self.inbox = self.nc.new_inbox()

        async def on_answer(msg: Any) -> None:
            i = int(msg.subject.rsplit(".", 1)[1])
            if msg.subject.startswith(f"{self.inbox}.a.") and b'"error"' in msg.data:
                driver.fail(i, msg.data.decode(errors="replace"))
            else:
                driver.confirm(i)

        await self.nc.subscribe(f"{self.inbox}.>", cb=on_answer)
        await self.nc.flush()

    async def send(self, ids: range, payload: bytes) -> None:
        inbox = self.inbox
        for i in ids:
            headers = {"Reply": f"{inbox}.r.{i}"}
            await self.nc.publish(JS_SUBJECT, payload, reply=f"{inbox}.a.{i}", headers=headers)

    async def close(self) -> None:
        await self.nc.close()


async def _jetstream_consumer(url: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        name="BENCH",
        subjects=[JS_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    )

    async def on_message(msg: Any) -> None:
        await msg.ack()
        await nc.publish(msg.headers["Reply"], b"")

    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
    await js.subscribe(JS_SUBJECT, durable="bench", cb=on_message, manual_ack=True, config=config)
    await nc.flush()
    ready()
    await stop
    await nc.close()


# --------------------------------------------------------------------------- Redis


class RedisProducer:
    """XADDs in one pipeline per free stretch of the window (one at a time: a plain
    ``xadd``); replies on a pub/sub channel of its own, read by a task."""

    need = 2

    async def open(self, url: str, driver: Driver) -> None:
        from redis.asyncio import Redis

        self.driver = driver
        self.redis = Redis.from_url(url)
        self.channel = f"bench-reply-{os.getpid()}"
        self.pubsub: Any = self.redis.pubsub()
        await self.pubsub.subscribe(self.channel)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if msg is not None:
                self.driver.confirm(int(msg["data"]))

    async def send(self, ids: range, payload: bytes) -> None:
        fields: Any = {"d": payload, "r": self.channel}
        if len(ids) == 1:
            await self.redis.xadd(STREAM, {**fields, "i": ids[0]}, maxlen=_MAXLEN, approximate=True)
            self.driver.confirm(ids[0])
            return
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.xadd(STREAM, {**fields, "i": i}, maxlen=_MAXLEN, approximate=True)
        await pipe.execute()
        for i in ids:
            self.driver.confirm(i)

    async def close(self) -> None:
        self.reader.cancel()
        await self.pubsub.aclose()
        await self.redis.aclose()


async def _redis_consumer(url: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import ResponseError

    redis = Redis.from_url(url)
    try:
        await redis.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    except ResponseError as exc:  # BUSYGROUP: made by an earlier run
        if "BUSYGROUP" not in str(exc):
            raise
    ready()
    stopped = asyncio.ensure_future(stop)
    while not stopped.done():
        found: Any = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1000, block=200)
        for _stream, entries in found:
            pipe = redis.pipeline(transaction=False)
            pipe.xack(STREAM, GROUP, *(entry_id for entry_id, _ in entries))
            for _, fields in entries:
                pipe.publish(fields[b"r"], fields[b"i"])
            await pipe.execute()
    await redis.aclose()


# --------------------------------------------------------------------------- RabbitMQ


class RabbitProducer:
    """aio-pika on a channel with publisher confirms: a task per publish (each awaits
    its confirm); replies on an exclusive queue, consumed without acks."""

    need = 2

    async def open(self, url: str, driver: Driver) -> None:
        import aio_pika

        self.driver = driver
        self.connection = await aio_pika.connect(url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message: Any) -> None:
            driver.confirm(int(message.correlation_id))

        await self.replies.consume(on_reply, no_ack=True)
        self.tasks: set[asyncio.Task[Any]] = set()

    async def send(self, ids: range, payload: bytes) -> None:
        import aio_pika

        exchange = self.channel.default_exchange
        for i in ids:
            message = aio_pika.Message(
                payload,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                reply_to=self.replies.name,
                correlation_id=str(i),
            )
            task = asyncio.ensure_future(exchange.publish(message, routing_key=QUEUE))
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._confirmed, i))

    def _confirmed(self, i: int, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.driver.fail(i, repr(task.exception()) if not task.cancelled() else "cancelled")
        else:
            self.driver.confirm(i)

    async def close(self) -> None:
        await self.connection.close()


async def _rabbit_consumer(url: str, ready: Callable[[], None], stop: Awaitable[Any]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(QUEUE, durable=True)

    async def on_message(message: Any) -> None:
        await message.ack()
        reply = aio_pika.Message(b"", correlation_id=message.correlation_id)
        await channel.default_exchange.publish(reply, routing_key=message.reply_to)

    await queue.consume(on_message)
    ready()
    await stop
    await connection.close()
