"""The bases of generated clients, and the one builder of their messages.

A generated module says each rpc once: its send (or publish) method, on a private class
generic in what a send returns, so that the async client (``Awaitable[DeliveryReport]``)
and the blocking client (``DeliveryReport``) share it, text and all; only a request's
reply differs in type, so request methods are written on each client. The work those
methods share lives here: :func:`build` (a message from keyword fields, or the one
given), and :class:`Client`'s calls to the bus with the rpc's policy and name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Generic, TypeVar, cast

from google.protobuf.message import Message

from ._fields import field_error
from ._report import DeliveryReport
from ._types import AsyncBus, BlockingBus, CallOptions, CommandOptions, Policy, PublishOptions

__all__ = ["AsyncClient", "BlockingClient", "Client", "build"]

M = TypeVar("M", bound=Message)
R = TypeVar("R", covariant=True)


def build(cls: type[M], msg: M | None, fields: Mapping[str, object]) -> M:
    """The message a generated method sends: ``msg`` as given, or one of class ``cls``
    built from ``fields`` (those at ``None`` left unset). Giving both is a
    ``TypeError``; so is a field the constructor refuses (naming it, what it takes and
    what it got: :func:`~ackbus._fields.field_error`), a ``str`` for a ``repeated
    string`` field, and a proto2 ``required`` field left unset."""
    given = {name: value for name, value in fields.items() if value is not None}
    if msg is not None:
        if given:
            raise TypeError(
                f"{cls.DESCRIPTOR.full_name}: pass a message or its fields, not both "
                f"(got a message and {', '.join(sorted(given))})"
            )
        return msg
    for name, value in given.items():
        if isinstance(value, str):
            field = cls.DESCRIPTOR.fields_by_name.get(name)
            if field is not None and field.is_repeated:
                raise field_error(cls, {name: value})
    try:
        built = cls(**given)
    except (TypeError, ValueError) as exc:
        raise field_error(cls, given, exc) from None
    if not built.IsInitialized():
        missing = ", ".join(cast(Any, built).FindInitializationErrors())
        raise TypeError(f"{cls.DESCRIPTOR.full_name}: required fields unset: {missing}")
    return built


class Client(Generic[R]):
    """Base of a generated client: ``R`` is what a send returns (an awaitable report
    for :class:`AsyncClient`, the report for :class:`BlockingClient`)."""

    __slots__ = ("_bus",)

    def __init__(self, bus: AsyncBus | BlockingBus) -> None:
        self._bus = bus

    def _send(self, msg: Message, policy: Policy, method: str, options: CommandOptions) -> R:
        """Send command ``msg`` to rpc ``method`` under ``policy`` (or the call's)."""
        if options.get("policy") is None:
            options["policy"] = policy
        return cast(R, self._bus.send(msg, method=method, **options))

    def _publish(self, msg: Message, policy: Policy, options: PublishOptions) -> R:
        """Publish event ``msg`` under ``policy`` (or the call's)."""
        if options.get("policy") is None:
            options["policy"] = policy
        return cast(R, self._bus.publish(msg, **options))


class AsyncClient(Client[Awaitable[DeliveryReport]]):
    """Base of a generated async client: ``await`` what its methods return."""

    __slots__ = ()
    _bus: AsyncBus

    def __init__(self, bus: AsyncBus) -> None:
        self._bus = bus

    def _request(
        self, msg: Message, reply: type[M], policy: Policy, method: str, options: CallOptions
    ) -> Awaitable[M]:
        if options.get("policy") is None:
            options["policy"] = policy
        return self._bus.request(msg, reply, method=method, **options)


class BlockingClient(Client[DeliveryReport]):
    """Base of a generated blocking client, for plain threads."""

    __slots__ = ()
    _bus: BlockingBus

    def __init__(self, bus: BlockingBus) -> None:
        self._bus = bus

    def _request(
        self, msg: Message, reply: type[M], policy: Policy, method: str, options: CallOptions
    ) -> M:
        if options.get("policy") is None:
            options["policy"] = policy
        return self._bus.request(msg, reply, method=method, **options)
