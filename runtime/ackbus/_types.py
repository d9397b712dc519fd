"""The typed surface that generated code and services program against.

Generated clients call an :class:`AsyncBus` or :class:`BlockingBus` (an endpoint
implements both shapes); generated handler classes derive from :class:`Handler`
and describe their rpcs with :class:`MethodSpec`; generated modules fill a
:class:`Registry` of :class:`MessageSpec`. Nothing here touches a socket.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, TypeVar, Unpack, cast

from google.protobuf.message import Message

from ._report import DeliveryReport, DeliveryStatus
from .core._values import Identity, Kind, Policy, SubscriberPolicy
from .errors import SchemaError

if TYPE_CHECKING:
    from .store import Tx

__all__ = [
    "AsyncBus",
    "BlockingBus",
    "CallOptions",
    "CommandOptions",
    "Context",
    "DeliveryReport",
    "DeliveryStatus",
    "Handler",
    "Identity",
    "Kind",
    "MessageSpec",
    "MethodSpec",
    "Policy",
    "Registry",
    "SubscriberPolicy",
    "Untyped",
    "declare_rpcs",
    "rpcs_taking",
    "unimplemented",
]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """What the runtime knows of one message type."""

    full_name: str
    cls: type[Message]
    policy: Policy
    legacy_name: str | None = None

    @property
    def subscribers(self) -> tuple[str, ...]:
        """For an event type: the schema services its publishers wait for (from the
        schemas the code was generated with)."""
        return self.policy.subscribers

    @property
    def subscriber_policies(self) -> tuple[SubscriberPolicy, ...]:
        """The declared subscribers whose own limits (attempts, deadline) differ from
        the event's policy: each one's rpc policy governs its own delivery."""
        return self.policy.subscriber_policies


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One rpc of a service, as a generated handler class declares it."""

    service: str
    """Full proto name of the service ("poker.Table")."""
    name: str
    """The rpc's name ("StartHand")."""
    handler_attr: str
    """The handler method that runs it ("on_start_hand")."""
    request: type[Message]
    response: type[Message] | None
    """``None`` when the rpc returns google.protobuf.Empty: the handler returns nothing."""
    policy: Policy

    @property
    def request_type(self) -> str:
        return self.request.DESCRIPTOR.full_name

    @property
    def full_name(self) -> str:
        """The rpc as messages name it: "poker.Table/StartHand"."""
        return f"{self.service}/{self.name}"


_RPCS: dict[str, dict[str, None]] = {}
"""Request type → the rpcs taking it (an ordered set), as generated modules declared
them on import (:func:`declare_rpcs`)."""
_TAKING: dict[type[Message], tuple[str, ...]] = {}


def declare_rpcs(*specs: MethodSpec) -> tuple[MethodSpec, ...]:
    """Record the rpcs a generated module declares (which request type each takes), so
    that a dynamic ``send(msg)`` knows the rpcs its type may be for; returns them."""
    for spec in specs:
        _RPCS.setdefault(spec.request_type, {})[spec.full_name] = None
    _TAKING.clear()
    return specs


def rpcs_taking(cls: type[Message]) -> tuple[str, ...]:
    """The rpcs ("package.Service/Method") known to take messages of class ``cls``,
    sorted: those of the services of the file that declares the type, and those
    imported generated modules declared (:func:`declare_rpcs`)."""
    known = _TAKING.get(cls)
    if known is not None:
        return known
    desc = cls.DESCRIPTOR
    names = dict(_RPCS.get(desc.full_name, {}))
    for service in desc.file.services_by_name.values():
        for method in service.methods:
            if method.input_type.full_name == desc.full_name:
                names[f"{service.full_name}/{method.name}"] = None
    known = _TAKING[cls] = tuple(sorted(names))
    return known


class Registry:
    """Message types by name: full proto name and legacy name both map to one spec."""

    def __init__(self, specs: Iterable[MessageSpec] = ()) -> None:
        self._by_name: dict[str, MessageSpec] = {}
        self._by_cls: dict[type[Message], MessageSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: MessageSpec) -> None:
        for name in (spec.full_name, spec.legacy_name):
            if name is None:
                continue
            known = self._by_name.get(name)
            if known is not None and known.cls is not spec.cls:
                raise SchemaError(
                    f"type name {name!r} is claimed by both {known.full_name} and {spec.full_name}"
                )
            self._by_name[name] = spec
        self._by_cls[spec.cls] = spec

    def update(self, other: Registry) -> None:
        for spec in other:
            self.add(spec)

    def get(self, name: str) -> MessageSpec | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> MessageSpec:
        spec = self._by_name.get(name)
        if spec is None:
            raise SchemaError(f"unknown message type {name!r}")
        return spec

    def for_class(self, cls: type[Message]) -> MessageSpec | None:
        return self._by_cls.get(cls)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[MessageSpec]:
        return iter(self._by_cls.values())

    def __len__(self) -> int:
        return len(self._by_cls)


@dataclass(slots=True)
class Context:
    """What a handler knows of the message it runs for.

    Read-only by convention: the runtime never reads a context back, so changing one
    changes nothing but the handler's own view. (Not a frozen dataclass: a frozen
    ``__init__`` sets each field through ``object.__setattr__``, once per message.)
    """

    message_id: bytes
    message_type: str
    sender: Identity
    attempt: int
    created_at: float
    """Unix time the sender accepted the message."""
    sent_at: float
    """Unix time of this attempt."""
    received_at: float
    headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: bytes = b""
    priority: int = 0
    tx: Tx | None = None
    """With a durable store: the transaction this message's inbox record commits in,
    with the handler's writes (``await ctx.tx.execute(sql, params)``) and the messages
    it sends (``await ctx.tx.send(msg)``, ``TableClient(ctx.tx)``), exactly once
    (docs/durable.md). Live on PostgreSQL, recorded on SQLite. In a plain ``def``
    handler it is a :class:`~ackbus.store.BlockingTx` (the same calls, without
    ``await``). ``None`` in memory mode."""


@dataclass(frozen=True, slots=True)
class Untyped:
    """A message given as a type name and a JSON-able payload, for code that has no
    generated classes (the counterpart of ``MessageEnvelope.Create("Type", payload)``).

    It is delivered, acknowledged, retried and deduplicated like a typed message. When
    the sending endpoint's registry knows ``type_name`` (full proto name or legacy name)
    the payload is converted with protobuf's JSON mapping and sent typed; otherwise it
    travels as JSON under ``type_name``.
    """

    type_name: str
    payload: Mapping[str, Any]


class SendOptionsBase(TypedDict, total=False):
    """The options every send takes; :class:`PublishOptions`, :class:`RequestOptions`
    and :class:`SendOptions` add theirs. Each option is declared once, here or there.

    :class:`ackbus.Endpoint` spells them out in its own signatures (a test checks that
    they match these); the protocols below and :class:`ackbus.BlockingEndpoint` take
    them as ``**options``."""

    timeout: float | None
    """Cap the message's whole life (its deadline), in seconds."""
    priority: int | None
    headers: Mapping[str, str] | None
    policy: Policy | None
    """The delivery policy (generated clients pass their type's)."""
    key: str | bytes | int | None
    """The ordering key, where the policy's ``ordering_key`` does not give one (or to
    replace it): messages of one key are handled in send order, one at a time."""


class PublishOptions(SendOptionsBase, total=False):
    """An event's options."""

    wait_ack: bool
    """Return once the message was acked or failed (default), or at once with a
    pending report."""


class CallOptions(SendOptionsBase, total=False):
    """A request's options in a generated client (a request always waits for its
    response; the client names the rpc)."""

    to: str | None
    """The service to send to, when several handle the type."""


class RequestOptions(CallOptions, total=False):
    """A request's options."""

    method: str | None
    """The rpc it is for ("poker.Table/StartHand"): generated clients name theirs; a
    dynamic send of a type several rpcs take must (:class:`~ackbus.AmbiguousMethod`)."""


class CommandOptions(PublishOptions, CallOptions, total=False):
    """A command's options in a generated client: an event's, and a recipient."""


class SendOptions(CommandOptions, RequestOptions, total=False):
    """A command's options: an event's, a recipient and the rpc."""


class AsyncBus(Protocol):
    """What generated async clients call; :class:`ackbus.Endpoint` implements it."""

    async def send(self, msg: Message, **options: Unpack[SendOptions]) -> DeliveryReport: ...

    async def publish(
        self, event: Message, **options: Unpack[PublishOptions]
    ) -> DeliveryReport: ...

    async def request(
        self, msg: Message, response_type: type[R], **options: Unpack[RequestOptions]
    ) -> R: ...


class BlockingBus(Protocol):
    """The blocking twin of :class:`AsyncBus`, for plain threads."""

    def send(self, msg: Message, **options: Unpack[SendOptions]) -> DeliveryReport: ...

    def publish(self, event: Message, **options: Unpack[PublishOptions]) -> DeliveryReport: ...

    def request(
        self, msg: Message, response_type: type[R], **options: Unpack[RequestOptions]
    ) -> R: ...


class Handler:
    """Base of generated handler classes. A subclass overrides ``on_<rpc>`` methods;
    the endpoint registers only the ones it overrides."""

    __ackbus_service__: ClassVar[str] = ""
    __ackbus_methods__: ClassVar[tuple[MethodSpec, ...]] = ()

    @classmethod
    def implemented_methods(cls) -> tuple[MethodSpec, ...]:
        """The rpcs this class (or a subclass below the generated base) implements."""
        out = []
        for spec in cls.__ackbus_methods__:
            impl = getattr(cls, spec.handler_attr, None)
            if getattr(impl, "__ackbus_unimplemented__", False):
                continue
            out.append(spec)
        return tuple(out)


F = TypeVar("F", bound=Callable[..., Any])


def unimplemented(fn: F) -> F:
    """Marks a generated base method that a subclass has not overridden (the dispatcher
    registers no route for it); called anyway, it raises ``NotImplementedError`` naming
    the class, the method and its rpc."""

    def why(self: Handler) -> NotImplementedError:
        rpc = next(
            (m.full_name for m in self.__ackbus_methods__ if m.handler_attr == fn.__name__),
            "its rpc",
        )
        return NotImplementedError(
            f"{fn.__qualname__} is not implemented: override it to handle {rpc}"
        )

    if inspect.iscoroutinefunction(fn):

        async def stub(self: Handler, *args: Any) -> Any:
            raise why(self)

    else:

        def stub(self: Handler, *args: Any) -> Any:  # type: ignore[misc]
            raise why(self)

    functools.update_wrapper(stub, fn)
    stub.__ackbus_unimplemented__ = True  # type: ignore[attr-defined]
    return cast(F, stub)
