"""The exceptions ackbus raises. They all derive from one root::

    AckbusError
    ├── DeliveryError            a message was not delivered; carries message_id and message_type
    │   ├── AckTimeout           no ack came back before the attempts or the deadline ran out
    │   ├── Rejected             the receiver's handler raised (remote_type, remote_message)
    │   ├── NoRoute              no live service handles the message's type
    │   ├── Expired              the deadline passed before a handler ran
    │   ├── Unauthorized         the hub's access file does not let this key send it
    │   └── Cancelled            the send was cancelled, or its endpoint closed first
    ├── WaitTimeout              a local wait ran out; says which one
    │   ├── SendWindowTimeout    the in-flight window stayed full (backpressure)
    │   └── ConnectTimeout       no hub answered in time
    ├── ClosedError              the endpoint or hub was closed (by you)
    ├── AddressError             an address cannot be bound or connected to (in use,
    │                            malformed, unknown transport, missing ipc directory);
    │                            also an OSError with the errno; says what to do
    ├── KeyFileError             a CURVE key file or key folder is missing, unreadable
    │                            or not a key; names the file and says what to do
    ├── InsecureBindError        a hub without keys was asked to listen beyond this host
    ├── AccessFileError          a hub's access file cannot be read or is not valid;
    │                            names the file, and the line or key
    ├── Reject                   raised BY A HANDLER: refuse this message (permanent or not)
    ├── RetryLater               raised BY A HANDLER: ask the sender to retry after a pause
    ├── ProtocolError            bytes on the wire break the protocol
    │   ├── LocalProtocolError   we were about to send something invalid (our bug)
    │   └── RemoteProtocolError  the peer sent something invalid (its bug); has a refusal code
    ├── SchemaError              a type is unknown, or a schema or option is invalid
    │   └── AmbiguousMethod      a dynamic send of a type several rpcs take; names them
    └── StoreError               the durable store cannot be opened or written (in use by
                                 another process, foreign or corrupt file, I/O error)

Every error that concerns one message carries its id (16 bytes) and type name, so
a log line always says which message failed and why.
"""

from __future__ import annotations

__all__ = [
    "AccessFileError",
    "AckTimeout",
    "AckbusError",
    "AddressError",
    "AmbiguousMethod",
    "Cancelled",
    "ClosedError",
    "ConnectTimeout",
    "DeliveryError",
    "Expired",
    "InsecureBindError",
    "KeyFileError",
    "LocalProtocolError",
    "NoRoute",
    "OutcomeUnknown",
    "ProtocolError",
    "Reject",
    "Rejected",
    "RemoteProtocolError",
    "RetryLater",
    "SchemaError",
    "SendWindowTimeout",
    "StoreError",
    "Unauthorized",
    "WaitTimeout",
]


class AckbusError(Exception):
    """Root of every exception ackbus raises."""


class DeliveryError(AckbusError):
    """A message was not delivered. ``message_id`` and ``message_type`` say which."""

    def __init__(self, reason: str, *, message_id: bytes = b"", message_type: str = "") -> None:
        self.reason = reason
        self.message_id = message_id
        self.message_type = message_type
        super().__init__(reason)

    def __str__(self) -> str:
        what = self.message_type or "message"
        ident = self.message_id.hex() if self.message_id else "?"
        return f"{what} {ident}: {self.reason}"


class AckTimeout(DeliveryError):
    """No acknowledgement arrived before the attempt budget or the deadline ran out."""


class OutcomeUnknown(AckTimeout):
    """No final answer came, and an attempt may have reached a receiver: its handler may
    have run, once or partly (or may still be running). Never said of a message that no
    attempt could have reached (that is :class:`NoRoute`, or a plain :class:`AckTimeout`
    for a message that never left its queue). docs/guarantees.md states the rule."""


class Rejected(DeliveryError):
    """The receiving handler raised. ``remote_type`` and ``remote_message`` describe it."""

    def __init__(
        self,
        reason: str,
        *,
        message_id: bytes = b"",
        message_type: str = "",
        remote_type: str = "",
        remote_message: str = "",
        permanent: bool = False,
    ) -> None:
        super().__init__(reason, message_id=message_id, message_type=message_type)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.permanent = permanent


class NoRoute(DeliveryError):
    """No live instance of any service handles the message's type."""


class Expired(DeliveryError):
    """The message's deadline passed before a handler ran it."""


class Unauthorized(DeliveryError):
    """The hub refused the message: its access file does not let the key this endpoint
    connected with send (or publish) this type. ``rule`` is the hub's words, naming the
    key and the rule; no handler ran (docs/security.md, "The access file")."""

    def __init__(
        self, reason: str, *, rule: str = "", message_id: bytes = b"", message_type: str = ""
    ) -> None:
        super().__init__(reason, message_id=message_id, message_type=message_type)
        self.rule = rule


class Cancelled(DeliveryError):
    """The send was cancelled, or the endpoint was closed while it was in flight."""


class WaitTimeout(AckbusError, TimeoutError):
    """A local wait ran out of time. Subclasses say which wait."""


class SendWindowTimeout(WaitTimeout):
    """The in-flight window to a destination stayed full for the whole timeout."""


class ConnectTimeout(WaitTimeout):
    """No hub answered the endpoint's hello in time."""


class ClosedError(AckbusError):
    """The endpoint or hub was closed by its owner; it cannot be used any more."""


class AddressError(AckbusError, OSError):
    """An address cannot be bound or connected to: another process listens on it, it is
    malformed, its transport is unknown, an ipc path's directory does not exist, or the
    host has no such interface. Raised by ``Hub(bind=...)`` and listeners when they
    bind, by endpoints and links when they connect (an address that merely does not
    answer yet is not an error: the link keeps retrying, see :class:`ConnectTimeout`).

    ``address`` is the address as given, ``op`` ``"bind"`` or ``"connect"``,
    ``reason`` the system's words for ``errno``, ``hint`` what to do about it. It is
    an ``OSError`` too, so ``except OSError`` around a bind keeps working.
    """

    def __init__(
        self,
        address: str,
        reason: str,
        *,
        op: str = "bind",
        hint: str = "",
        errno: int | None = None,
    ) -> None:
        super().__init__(errno, reason)
        self.address = address
        self.op = op
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        text = f"cannot {self.op} {self.address}: {self.reason}"
        return f"{text}; {self.hint}" if self.hint else text


class KeyFileError(AckbusError):
    """A CURVE key file (``NAME.key``, ``NAME.key_secret``) or a hub's key folder cannot
    be used: it is missing, unreadable, holds no key, or holds only the public half where
    the secret one is needed. ``path`` names it, ``reason`` says what is wrong and what to
    do (docs/security.md)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class AccessFileError(AckbusError):
    """A hub's access file (``Hub(access=...)``, ``ackbus hub --access FILE``) cannot be
    used: missing, not TOML, or a value of the wrong kind or an unknown key. ``path``
    names the file, ``where`` the line or the key (``clients.orders.send``), ``reason``
    what is wrong."""

    def __init__(self, path: str, where: str, reason: str) -> None:
        super().__init__(f"{path}: {where}: {reason}" if where else f"{path}: {reason}")
        self.path = path
        self.where = where
        self.reason = reason


class InsecureBindError(AckbusError):
    """A hub was asked to listen beyond this host (``tcp://`` on an address other than
    loopback) without CURVE keys: anyone who reaches the port could register as any
    service and ack what it never ran. Give it keys (``keys=DIR``, ``ackbus hub --keys
    DIR``), or say it may run insecure on a network you trust (``insecure=True``,
    ``--insecure``). ``addresses`` are the exposed ones (docs/security.md)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        super().__init__(
            f"refusing to listen on {', '.join(addresses)} without keys: anyone who reaches "
            "it could register as any service. Make keys (`ackbus keys generate hub --dir "
            "DIR`, and one per client into DIR/clients/: docs/security.md) and start the hub "
            "with keys=DIR (--keys DIR), or pass insecure=True (--insecure) on a network you "
            "trust; loopback, ipc:// and inproc:// addresses need neither"
        )


class Reject(AckbusError):
    """Raise in a handler to refuse a message with a reason.

    ``permanent=True`` tells the sender that retrying cannot help: it fails at once
    and is not retried even under a ``retry_rejected`` policy. Any other exception a
    handler raises is a transient rejection.
    """

    def __init__(self, reason: str, *, permanent: bool = True) -> None:
        self.reason = reason
        self.permanent = permanent
        super().__init__(reason)


class RetryLater(AckbusError):
    """Raise in a handler to ask the sender to try again after ``after`` seconds
    (for example while a resource it needs is busy). It is not a failure: the
    attempt budget and the deadline still apply."""

    def __init__(self, after: float = 0.0, reason: str = "") -> None:
        self.after = after
        self.reason = reason
        super().__init__(reason or f"retry after {after} s")


class ProtocolError(AckbusError):
    """Bytes on the wire break the ackbus protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids: a bug on this side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids. ``code`` names the refusal."""

    def __init__(self, reason: str, *, code: str = "MALFORMED", message_id: bytes = b"") -> None:
        self.reason = reason
        self.code = code
        self.message_id = message_id
        super().__init__(f"{code}: {reason}")


class SchemaError(AckbusError):
    """A message type is unknown, or a schema or option is invalid."""


class AmbiguousMethod(SchemaError):
    """A message sent without naming its rpc (``send(msg)``) whose type several rpcs
    take: which handler should run is the sender's choice. ``candidates`` are the rpcs
    ("package.Service/Method"); the message says how to choose one."""

    def __init__(self, message: str, candidates: tuple[str, ...]) -> None:
        super().__init__(message)
        self.candidates = candidates


class StoreError(AckbusError):
    """The durable store cannot be opened or written: the database is in use by another
    live process, is not an ackbus database, is corrupt, or the disk failed. The message
    names the file and what to do."""
