"""The blocking API: an :class:`~ackbus.endpoint.Endpoint` for plain threads.

``BlockingEndpoint`` runs an ordinary endpoint on an event loop in a background
thread (:class:`~ackbus._loop_thread.LoopThread`); its methods block the calling
thread until the endpoint answers. Handlers stay ``async def`` and run on the loop
thread. Timeouts and reports are exactly those of the async endpoint, so a blocking
``send`` can never wait longer than the message's deadline.

Generated ``*BlockingClient`` classes take a ``BlockingEndpoint``.

A call that waits for the bus (``start``, ``send``, ``publish``, ``request``, ``wait``)
from a thread whose event loop is running would freeze that loop until it returned:
it raises ``RuntimeError`` at once instead, saying what to use, as ``asyncio.run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Unpack, overload

from google.protobuf.message import Message

from ._dispatch import DictHandlerFn, MessageHandlerFn
from ._loop_thread import LoopThread
from ._options import EndpointOptions
from ._types import (
    DeliveryReport,
    Handler,
    Kind,
    PublishOptions,
    RequestOptions,
    SendOptions,
    Untyped,
)
from .endpoint import Endpoint, EndpointStats
from .errors import ClosedError
from .store import BlockingTx

__all__ = ["BlockingEndpoint"]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
T = TypeVar("T")


class BlockingEndpoint:
    """A service instance on the bus, for synchronous code. Use as a context manager.

    Takes the same arguments as :class:`~ackbus.endpoint.Endpoint`, typed alike
    (:class:`~ackbus._options.EndpointOptions`). Calls are thread safe: several threads
    may send at once.
    """

    def __init__(
        self, service: str, hubs: str | Sequence[str], **options: Unpack[EndpointOptions]
    ) -> None:
        self._thread = LoopThread(name=f"ackbus-{service}")
        try:
            self._ep: Endpoint = self._thread.run(_make(service, hubs, options))
        except BaseException:
            self._thread.close()
            raise

    @property
    def endpoint(self) -> Endpoint:
        """The async endpoint underneath (use it only from its loop thread)."""
        return self._ep

    @property
    def stats(self) -> EndpointStats:
        return self._ep.stats

    @property
    def max_concurrency(self) -> int:
        """The most messages this endpoint handles at once (see ``Endpoint``)."""
        return self._ep.max_concurrency

    def start(self) -> BlockingEndpoint:
        """Connect; raises :class:`~ackbus.ConnectTimeout` as the async endpoint does."""
        _refuse_in_loop("start")
        try:
            self._thread.run(self._ep.start())
        except BaseException:
            self._thread.close()
            raise
        return self

    def close(self) -> None:
        """Close the endpoint (pending sends fail with Cancelled) and stop the thread."""
        with contextlib.suppress(ClosedError):  # closed before: nothing left to release
            self._thread.run(self._ep.close())
        self._thread.close()

    def __enter__(self) -> BlockingEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, handler: Handler) -> None:
        self._call(self._ep.register, handler)

    @overload
    def register_handler(
        self,
        msg_type: type[M],
        fn: MessageHandlerFn[M],
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
        implements: str | None = None,
    ) -> None: ...

    @overload
    def register_handler(
        self,
        msg_type: str,
        fn: DictHandlerFn,
        *,
        kind: Kind | None = None,
        response: None = None,
        implements: str | None = None,
    ) -> None: ...

    def register_handler(
        self,
        msg_type: type[M] | str,
        fn: Any,
        *,
        kind: Kind | None = None,
        response: type[Message] | None = None,
        implements: str | None = None,
    ) -> None:
        """Blocking :meth:`Endpoint.register_handler`: an ``async def`` handler runs on the
        loop thread, a plain ``def`` one in the endpoint's worker threads."""
        register: Callable[..., None] = self._ep.register_handler
        self._call(
            lambda: register(msg_type, fn, kind=kind, response=response, implements=implements)
        )

    def send(self, msg: Message | Untyped, **options: Unpack[SendOptions]) -> DeliveryReport:
        """Blocking :meth:`Endpoint.send`."""
        _refuse_in_loop("send")
        return self._thread.run(self._ep.send(msg, **options))

    def publish(
        self, event: Message | Untyped, **options: Unpack[PublishOptions]
    ) -> DeliveryReport:
        """Blocking :meth:`Endpoint.publish`."""
        _refuse_in_loop("publish")
        return self._thread.run(self._ep.publish(event, **options))

    def send_many(
        self, msgs: Iterable[Message | Untyped], **options: Unpack[SendOptions]
    ) -> list[DeliveryReport]:
        """Blocking :meth:`Endpoint.send_many`: many commands, one admission and (with a
        store) one commit; their reports in order."""
        _refuse_in_loop("send_many")
        group = list(msgs)  # iterated here, not on the loop's thread
        return self._thread.run(self._ep.send_many(group, **options))

    def publish_many(
        self, events: Iterable[Message | Untyped], **options: Unpack[PublishOptions]
    ) -> list[DeliveryReport]:
        """Blocking :meth:`Endpoint.publish_many`."""
        _refuse_in_loop("publish_many")
        group = list(events)
        return self._thread.run(self._ep.publish_many(group, **options))

    def request(self, msg: Message, response_type: type[R], **options: Unpack[RequestOptions]) -> R:
        """Blocking :meth:`Endpoint.request`."""
        _refuse_in_loop("request")
        return self._thread.run(self._ep.request(msg, response_type, **options))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[BlockingTx]:
        """Blocking :meth:`Endpoint.transaction`: ``with ep.transaction() as tx:`` your
        writes (``tx.execute(sql, params)``) and sends (``tx.send(msg)``, or
        ``TableBlockingClient(tx)``) commit as one when the block ends, and the messages
        leave only then; an exception rolls back and propagates."""
        scope = self._call(self._ep.transaction)
        tx = self._thread.run(scope.__aenter__())
        try:
            yield BlockingTx(tx, self._thread.loop)
        except BaseException as exc:
            self._thread.run(scope.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self._thread.run(scope.__aexit__(None, None, None))

    def wait(self, report: DeliveryReport, timeout: float | None = None) -> DeliveryReport:
        """Block until a report from ``send(..., wait_ack=False)`` settles (or timeout)."""
        _refuse_in_loop("wait")
        return self._thread.run(report.wait(timeout))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return self._thread.run(call())


def _refuse_in_loop(method: str) -> None:
    """Raise at once when called from a running event loop, which the call would freeze
    (every task on it, heartbeats included) until the bus answered."""
    if asyncio._get_running_loop() is None:  # the cheap check asyncio.run makes too
        return
    raise RuntimeError(
        f"BlockingEndpoint.{method}() cannot be called from a running event loop: it would "
        "freeze the loop until the bus answers. In async code use ackbus.Endpoint and "
        f"`await ep.{method}(...)` (and a generated *Client, not a *BlockingClient), or "
        f"run the blocking call in a thread: `await asyncio.to_thread(ep.{method}, ...)`"
    )


async def _make(service: str, hubs: str | Sequence[str], options: EndpointOptions) -> Endpoint:
    return Endpoint(service, hubs, **options)
