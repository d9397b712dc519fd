"""What became of one sent message: :class:`DeliveryReport` and its :class:`DeliveryStatus`.

Below the store (a message a handler sends inside its unit of work holds its report) and
re-exported by ``ackbus`` and ``ackbus._types``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from .core._values import Identity
from .errors import DeliveryError

__all__ = ["DeliveryReport", "DeliveryStatus"]


class DeliveryStatus(enum.Enum):
    PENDING = "pending"
    ACKED = "acked"
    FAILED = "failed"


class DeliveryReport:
    """What became of one sent message. Truthy only once it was acknowledged.

    A report from ``send(..., wait_ack=False)`` starts pending; ``await report.wait()``
    waits for it to settle. The runtime settles it exactly once with :meth:`_settle`.
    """

    __slots__ = (
        "_body",
        "_callbacks",
        "_frame",
        "_note",
        "acked_at",
        "acked_by",
        "attempts",
        "error",
        "first_sent_at",
        "message_id",
        "message_type",
        "response",
        "status",
    )

    def __init__(self, message_id: bytes, message_type: str) -> None:
        self.message_id = message_id
        self.message_type = message_type
        self.status = DeliveryStatus.PENDING
        self.attempts = 0
        self.first_sent_at: float | None = None
        self.acked_at: float | None = None
        self.acked_by: tuple[Identity, ...] = ()
        self.error: DeliveryError | None = None
        self.response: bytes | None = None
        self._callbacks: list[Callable[[DeliveryReport], None]] | None = None
        self._frame = b""
        """While pending: the encoded message, as the sender re-sends it."""
        self._body: bytes | None = None
        """While pending, for a big body: the body, sent as a frame of its own after
        :attr:`_frame` (flagged ``FLAG_BODY_FRAME``; docs/protocol.md, "Body frames")."""
        self._note = ""
        """While pending: the hub's last word on why it found no route."""

    def __bool__(self) -> bool:
        return self.status is DeliveryStatus.ACKED

    @property
    def done(self) -> bool:
        return self.status is not DeliveryStatus.PENDING

    @property
    def latency(self) -> float | None:
        """Seconds from the first send to the ack, once acked."""
        if self.acked_at is None or self.first_sent_at is None:
            return None
        return self.acked_at - self.first_sent_at

    def __repr__(self) -> str:
        extra = f" error={self.error}" if self.error else ""
        return (
            f"<DeliveryReport {self.message_type} {self.message_id.hex()} "
            f"{self.status.value} attempts={self.attempts}{extra}>"
        )

    def raise_for_status(self) -> DeliveryReport:
        """Raise the delivery error if the message failed; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def add_done_callback(self, fn: Callable[[DeliveryReport], None]) -> None:
        """Call ``fn(self)`` once settled (at once if it already is)."""
        if self.done:
            fn(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(fn)

    async def wait(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until settled; on timeout return the report still pending."""
        if self.done:
            return self
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not fut.done():
                fut.set_result(None)

        self.add_done_callback(wake)
        # A timer handle, not asyncio.wait_for: no task per wait on the hot path.
        timer = loop.call_later(timeout, wake) if timeout is not None else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
        return self

    def _settle(
        self,
        status: DeliveryStatus,
        attempts: int,
        first_sent_at: float | None,
        acked_at: float | None = None,
        acked_by: tuple[Identity, ...] = (),
        error: DeliveryError | None = None,
        response: bytes | None = None,
    ) -> None:
        if self.done:
            return
        self.status = status
        self.attempts = attempts
        self.first_sent_at = first_sent_at
        self.acked_at = acked_at
        self.acked_by = acked_by
        self.error = error
        self.response = response
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            fn(self)
