"""The core's value types: a message's delivery policy and kind, and an instance's identity.

Plain frozen values with no I/O, so the sans-IO core (and everything above it) can use
them; ``ackbus`` and ``ackbus._types`` re-export them as the public names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from ..errors import SchemaError

__all__ = ["Identity", "Kind", "Policy"]


class Kind(enum.Enum):
    """A command goes to one instance of one service; an event to one instance of each
    subscribing service."""

    COMMAND = "command"
    EVENT = "event"


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

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.subscribers, tuple) or not all(
            isinstance(s, str) and s for s in self.subscribers
        ):
            problems.append(f"subscribers must be a tuple of names, got {self.subscribers!r}")
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
        }
        return replace(self, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True, slots=True)
class Identity:
    """One running instance of a service."""

    service: str
    instance: str

    def __str__(self) -> str:
        return f"{self.service}/{self.instance}"
