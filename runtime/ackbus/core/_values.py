"""The core's value types: a message's delivery policy and kind, and an instance's identity.

Plain frozen values with no I/O, so the sans-IO core (and everything above it) can use
them; ``ackbus`` and ``ackbus._types`` re-export them as the public names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SchemaError

__all__ = ["Identity", "Kind", "Policy", "SubscriberPolicy", "capped", "shortened"]


class Kind(enum.Enum):
    """A command goes to one instance of one service; an event to one instance of each
    subscribing service."""

    COMMAND = "command"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class SubscriberPolicy:
    """One declared subscriber's own limits for an event's delivery to it: its rpc's
    schema policy, where that differs from the event's (``None``: the event's own).

    One transmit of an event reaches every subscriber (the hub fans it out), so the
    timing of the re-sends (``ack_timeout``, backoff) and the priority stay the event's;
    how many attempts and how long a subscriber is waited for are its own."""

    service: str
    """The schema service (full name, e.g. ``"poker.Audit"``)."""
    max_attempts: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.service, str) or not self.service:
            problems.append(f"service must be a non-empty name, got {self.service!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.deadline is not None and not self.deadline > 0:
            problems.append(f"deadline must be > 0, got {self.deadline}")
        if problems:
            what = f"invalid policy of subscriber {self.service!r}: "
            raise SchemaError(what + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Policy:
    """How hard ackbus tries to deliver one message. Times are in seconds."""

    ack_timeout: float = 1.0
    max_attempts: int = 10
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    jitter: float = 0.2
    deadline: float = 30.0
    priority: int = 0
    kind: Kind = Kind.COMMAND
    retry_rejected: bool = False
    subscribers: tuple[str, ...] = ()
    """For an event: the schema services (full names, e.g. ``"poker.Audit"``) that must
    each ack it, whether or not one is running when it is published; generated code
    fills it in from the schemas. Empty: the services the hub routes it to."""
    subscriber_policies: tuple[SubscriberPolicy, ...] = ()
    """For an event: the declared subscribers whose own limits (attempts, deadline)
    differ from this policy's; generated code fills it in from each subscriber's rpc
    policy. The others, and run-time subscribers, get this policy's."""
    ordering_key: str = ""
    """A field path of the message (``"table_id"``, ``"hand.table_id"``) whose value
    orders it: messages of one key from one sender are handled in send order, one at a
    time, by one instance of each receiving service. Empty: no order (the default)."""
    compress_above: int = 0
    """Bodies of at least this many bytes are compressed with zstandard (``pip install
    'ackbus[zstd]'``) when the hub takes compressed bodies; 0: never (the default)."""
    life: float = field(init=False, repr=False, compare=False)
    """How long the message lives: ``deadline``, or the longest subscriber deadline if
    that is longer (derived; the envelope's and the tracker's deadline)."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.subscribers, tuple) or not all(
            isinstance(s, str) and s for s in self.subscribers
        ):
            problems.append(f"subscribers must be a tuple of names, got {self.subscribers!r}")
        life = self.deadline
        if self.subscriber_policies:
            named = [getattr(sp, "service", sp) for sp in self.subscriber_policies]
            if not isinstance(self.subscriber_policies, tuple) or not all(
                isinstance(sp, SubscriberPolicy) for sp in self.subscriber_policies
            ):
                problems.append(
                    "subscriber_policies must be a tuple of SubscriberPolicy, got "
                    f"{self.subscriber_policies!r}"
                )
            elif len(set(named)) != len(named) or not set(named) <= set(self.subscribers):
                problems.append(
                    f"subscriber_policies name {named}: each must be one of the subscribers "
                    f"{list(self.subscribers)}, once"
                )
            else:
                for sp in self.subscriber_policies:
                    if sp.deadline is not None and sp.deadline > life:
                        life = sp.deadline
        object.__setattr__(self, "life", life)
        if not isinstance(self.ordering_key, str) or not all(
            part.isidentifier() for part in self.ordering_key.split(".") if self.ordering_key
        ):
            problems.append(
                f"ordering_key must be a field path like 'table_id', got {self.ordering_key!r}"
            )
        if type(self.compress_above) is not int or not 0 <= self.compress_above < 2**32:
            problems.append(f"compress_above must be bytes >= 0, got {self.compress_above!r}")
        if not self.ack_timeout > 0:
            problems.append(f"ack_timeout must be > 0, got {self.ack_timeout}")
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base < 0 or self.backoff_cap < self.backoff_base:
            problems.append(
                f"need 0 <= backoff_base <= backoff_cap, got {self.backoff_base}, "
                f"{self.backoff_cap}"
            )
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be within [0, 1], got {self.jitter}")
        if not self.deadline > 0:
            problems.append(f"deadline must be > 0, got {self.deadline}")
        if problems:
            raise SchemaError("invalid policy: " + "; ".join(problems))

    def with_(
        self,
        *,
        ack_timeout: float | None = None,
        max_attempts: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        jitter: float | None = None,
        deadline: float | None = None,
        priority: int | None = None,
        kind: Kind | None = None,
        retry_rejected: bool | None = None,
        subscribers: tuple[str, ...] | None = None,
        subscriber_policies: tuple[SubscriberPolicy, ...] | None = None,
        ordering_key: str | None = None,
        compress_above: int | None = None,
    ) -> Policy:
        """A copy with the fields given changed (``None`` leaves a field as it is): e.g.
        ``TABLE_START_HAND_POLICY.with_(max_attempts=1)``. Every field is named here, so
        a type checker catches a misspelled one."""
        given: dict[str, Any] = {
            "ack_timeout": ack_timeout,
            "max_attempts": max_attempts,
            "backoff_base": backoff_base,
            "backoff_cap": backoff_cap,
            "jitter": jitter,
            "deadline": deadline,
            "priority": priority,
            "kind": kind,
            "retry_rejected": retry_rejected,
            "subscribers": subscribers,
            "subscriber_policies": subscriber_policies,
            "ordering_key": ordering_key,
            "compress_above": compress_above,
        }
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def limits(self, subscriber: str) -> tuple[int, float]:
        """``(max_attempts, deadline)`` of the delivery to one declared subscriber."""
        for sp in self.subscriber_policies:
            if sp.service == subscriber:
                return (
                    self.max_attempts if sp.max_attempts is None else sp.max_attempts,
                    self.deadline if sp.deadline is None else sp.deadline,
                )
        return self.max_attempts, self.deadline


def capped(policy: Policy, deadline: float) -> Policy:
    """``policy`` with no deadline (its own or a subscriber's) beyond ``deadline``: what
    a call's ``timeout=`` does."""
    if not policy.subscriber_policies:
        return policy.with_(deadline=min(policy.deadline, deadline))
    return policy.with_(
        deadline=min(policy.deadline, deadline),
        subscriber_policies=tuple(
            sp if sp.deadline is None else replace(sp, deadline=min(sp.deadline, deadline))
            for sp in policy.subscriber_policies
        ),
    )


def shortened(policy: Policy, elapsed: float, least: float = 0.001) -> Policy:
    """``policy`` with every deadline ``elapsed`` seconds shorter (at least ``least``):
    what is left of them for a message resumed after ``elapsed`` seconds. An event with
    declared subscribers keeps at least one ``ack_timeout`` for each: which of them acked
    before the restart is not kept, so those whose deadline passed meanwhile get one
    attempt's time to answer the re-send from their dedupe memory."""
    if policy.subscribers:
        least = max(least, policy.ack_timeout)
    return policy.with_(
        deadline=max(policy.deadline - elapsed, least),
        subscriber_policies=tuple(
            sp if sp.deadline is None else replace(sp, deadline=max(sp.deadline - elapsed, least))
            for sp in policy.subscriber_policies
        ),
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """One running instance of a service."""

    service: str
    instance: str

    def __str__(self) -> str:
        return f"{self.service}/{self.instance}"
