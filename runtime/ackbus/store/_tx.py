"""``ctx.tx`` and ``ep.transaction()``: the entry points every store gives a transaction.

A transaction is where a service's own writes and the messages it sends commit as one:
a handler's (``ctx.tx``, with its message's inbox record) or the user's own
(``async with ep.transaction() as tx``). The same calls work on both stores, so code
moves from one to the other by changing the URL and the SQL it writes:

* ``await tx.execute(sql, params)`` and ``await tx.executemany(sql, seq)``;
* ``await tx.send(msg)`` and ``await tx.publish(event)``, or a generated client bound to
  it (``TableClient(tx).send_start_hand(...)``: a transaction is an
  :class:`~ackbus.AsyncBus`): the message's outbox row commits in the transaction and
  it is transmitted only after the commit; a rolled-back transaction never sends it.

What differs is what a statement does while the code runs. PostgreSQL's transaction is
live (:class:`~ackbus.store._pg_tx.PgTransaction`): a pooled connection inside
``BEGIN``, which reads and writes at once (``execute`` returns psycopg's cursor).
SQLite's records the statements and runs them in the group commit
(:class:`~ackbus.store.Transaction`): reading through it is not possible.

A plain ``def`` handler, and :meth:`ackbus.BlockingEndpoint.transaction`, get a
:class:`BlockingTx`: the same calls without ``await``, run on the endpoint's loop
(docs/decisions.md says why a facade and not a second, blocking connection).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from .._report import DeliveryReport
from .._types import PublishOptions, RequestOptions, SendOptions
from ..errors import RetryLater, WaitTimeout

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from .._types import AsyncBus
    from ._base import InboxRecord
    from ._unit import Transaction

__all__ = [
    "CURRENT",
    "RECORDED",
    "BlockingResult",
    "BlockingTx",
    "Params",
    "Recorded",
    "Tx",
    "check_sql",
]

Params = Sequence[Any] | Mapping[str, Any]
R = TypeVar("R", bound="Message")
T = TypeVar("T")

CURRENT: ContextVar[Transaction | None] = ContextVar("ackbus_unit", default=None)
"""The unit of work sends join in this context: the running handler's, or the
transaction whose ``send`` runs."""

_NOT_IN_A_UNIT = frozenset(
    {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ATTACH", "DETACH", "VACUUM"}
)


def check_sql(sql: str, open_: bool) -> None:
    """Refuse a statement after the transaction ended, and transaction control."""
    if not open_:
        raise RuntimeError(
            "the transaction is over (its handler returned, or its block ended): "
            "it is committed or rolled back"
        )
    words = sql.lstrip().split(None, 1)
    if not words:
        raise ValueError("empty SQL statement")
    if words[0].upper().rstrip(";") in _NOT_IN_A_UNIT:
        raise ValueError(
            f"{words[0].upper()} is not allowed in a transaction of ackbus's: the endpoint "
            "owns it (it commits with the message's inbox record, or when the block ends)"
        )


class BlockingResult:
    """What a :class:`BlockingTx` statement returns: its rows, fetched at once."""

    __slots__ = ("_at", "_rows", "rowcount")

    def __init__(self, rowcount: int, rows: list[tuple[Any, ...]] | None) -> None:
        self.rowcount = rowcount
        """Rows the statement changed or returned (-1 when not known: SQLite's recorded form)."""
        self._rows = rows
        self._at = 0

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._readable()
        out, self._at = rows[self._at :], len(rows)
        return out

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._readable()
        if self._at >= len(rows):
            return None
        self._at += 1
        return rows[self._at - 1]

    def _readable(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            raise RuntimeError(
                "no rows: the statement returned none, or the store records its statements "
                "(SQLite's ctx.tx runs them at the commit; read with a connection of your own)"
            )
        return self._rows


class Tx(abc.ABC):
    """A transaction of a store's, as the user's code sees it (the module docstring)."""

    __slots__ = ()

    bus: AsyncBus | None
    """The endpoint whose sends join (set by the endpoint)."""

    @property
    @abc.abstractmethod
    def unit(self) -> Transaction:
        """The unit of work its sends join."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Awaitable[Any]:
        """Run ``sql`` with ``params`` in the transaction (await it)."""

    @abc.abstractmethod
    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Awaitable[Any]:
        """``execute`` once per parameter set (await it)."""

    @abc.abstractmethod
    async def rows(self, sql: str, params: Params = ()) -> BlockingResult:
        """``execute``, with the rows it returns fetched (what a :class:`BlockingTx` calls)."""

    # -- the endpoint's side: how the transaction ends ---------------------------------

    @property
    def live(self) -> bool:
        """Whether it holds a connection of its own, to commit with :meth:`commit`
        (else its unit commits in the store's group commit)."""
        return False

    async def begin(self) -> None:  # noqa: B027 - a recorded one has nothing to do
        """Start it now (``ep.transaction()``); a recorded one has nothing to start."""

    async def commit(self, record: InboxRecord | None) -> None:
        """Commit a live transaction with ``record`` (see the live store's)."""
        raise NotImplementedError(f"{type(self).__name__} commits in the group commit")

    async def abort(self) -> None:  # noqa: B027 - a recorded one has nothing to do
        """Roll a live transaction back; never raises."""

    def retry_for(self, exc: BaseException) -> RetryLater | None:
        """What to answer instead of ``exc``, raised by the code, when the store caused
        it (a lost connection, a lock timeout): the sender retries. ``None``: the
        code's own error."""
        return None

    # -- sends --------------------------------------------------------------------------

    async def send(self, msg: Message, **options: Unpack[SendOptions]) -> DeliveryReport:
        """Send ``msg`` in this transaction: its outbox row commits with it and it is
        transmitted after the commit (never, if the transaction rolls back). Returns a
        pending report at once, whatever ``wait_ack`` says (the ack cannot come before
        the commit): wait for it once the transaction is over."""
        return await self._joined(lambda bus: bus.send(msg, **options))

    async def publish(self, event: Message, **options: Unpack[PublishOptions]) -> DeliveryReport:
        """Publish ``event`` in this transaction (as :meth:`send`)."""
        return await self._joined(lambda bus: bus.publish(event, **options))

    async def request(
        self, msg: Message, response_type: type[R], **options: Unpack[RequestOptions]
    ) -> R:
        """Refused: a response cannot come before the transaction commits."""
        raise TypeError(
            "a request cannot be part of a transaction (its response could only come after "
            "the commit): send it through the endpoint, after the transaction or beside it"
        )

    async def _joined(
        self, call: Callable[[AsyncBus], Coroutine[Any, Any, DeliveryReport]]
    ) -> DeliveryReport:
        unit = self.unit
        if not unit.open:
            raise RuntimeError("send on a transaction that is over: send through the endpoint")
        if self.bus is None:
            raise RuntimeError("this transaction belongs to no endpoint: it cannot send")
        token = CURRENT.set(unit)
        try:
            return await call(self.bus)
        finally:
            CURRENT.reset(token)


class BlockingTx:
    """A :class:`Tx` for a plain thread: each call runs on the endpoint's loop and blocks
    until it is done (up to ``timeout`` seconds). A :class:`~ackbus.BlockingBus`, so a
    generated blocking client binds to it (``TableBlockingClient(ctx.tx)``)."""

    __slots__ = ("_loop", "_timeout", "tx")

    def __init__(self, tx: Tx, loop: asyncio.AbstractEventLoop, timeout: float = 60.0) -> None:
        self.tx = tx
        """The transaction underneath (use it only from the loop's thread)."""
        self._loop = loop
        self._timeout = timeout

    def execute(self, sql: str, params: Params = ()) -> BlockingResult:
        """Run ``sql`` in the transaction; the result holds the rows it returned."""
        return self._call(self.tx.rows(sql, params))

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> None:
        async def run() -> None:
            await self.tx.executemany(sql, list(seq_of_params))

        self._call(run())

    def send(self, msg: Message, **options: Unpack[SendOptions]) -> DeliveryReport:
        """:meth:`Tx.send`, from a thread."""
        return self._call(self.tx.send(msg, **options))

    def publish(self, event: Message, **options: Unpack[PublishOptions]) -> DeliveryReport:
        """:meth:`Tx.publish`, from a thread."""
        return self._call(self.tx.publish(event, **options))

    def request(self, msg: Message, response_type: type[R], **options: Unpack[RequestOptions]) -> R:
        """Refused, as :meth:`Tx.request`."""
        return self._call(self.tx.request(msg, response_type, **options))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the endpoint's loop is closed")
        if _on_loop_thread(self._loop):
            coro.close()
            raise RuntimeError(
                "a blocking transaction used from its endpoint's loop would deadlock: "
                "await the transaction's async form there"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self._timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise WaitTimeout(
                f"a transaction's statement or send did not finish within {self._timeout} s"
            ) from None


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Recorded:
    """What SQLite's recorded ``execute`` returns: nothing to read, and awaitable, so
    that ``await tx.execute(...)`` reads the same on both stores."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Recorded]:
        yield from ()
        return self


RECORDED = Recorded()
