"""A hub's access file: what each client key may do (issue 18, item 3; docs/security.md).

A TOML file (read with the standard library's ``tomllib``), one table per client key, by
the key's name (its file's stem in the hub's ``clients/`` folder)::

    [clients.orders]                        # the key in DIR/clients/orders.key
    services = ["orders"]                   # may register (say HELLO) as these services
    send = ["orders.*", "billing.Charge"]   # may send and publish these types (optional: all)
    handles = ["orders.*"]                  # may declare handlers for these (optional: all)
    admin = true                            # may ask for status and tail (optional: false)

Patterns are shell-style (``fnmatch``, case-sensitive) over full type names. A key with
no table may do nothing. :meth:`Access.load` checks the whole file and raises
:class:`~ackbus.errors.AccessFileError` naming the file and the line or key of the first
thing wrong; the hub asks :meth:`Access.may_serve`, :meth:`Access.may_send` and
:meth:`Access.may_handle`, each ``None`` when allowed, else the refusal's words, naming
the key and the rule.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import AccessFileError

__all__ = ["Access", "Grant"]

_FIELDS = ("services", "send", "handles", "admin")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
"""Key names, as ``ackbus keys generate`` makes them."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one key may do. ``send`` and ``handles``: ``None`` is any type."""

    key: str
    services: tuple[str, ...]
    send: tuple[str, ...] | None
    handles: tuple[str, ...] | None
    admin: bool = False
    """May ask the hub for its status and traffic (``ackbus status``, ``ackbus tail``)."""


class Access:
    """The rules of one access file (immutable: a reload makes a new one)."""

    def __init__(self, path: str, grants: dict[str, Grant]) -> None:
        self.path = path
        self.grants = grants
        self._send: dict[tuple[str, str], str | None] = {}
        """(key, type) → the answer: a sender sends few types, each checked once."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Access:
        """Read and check ``path``; :class:`AccessFileError` for the first thing wrong."""
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AccessFileError(name, "", "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessFileError(name, "", f"cannot read it: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message ends "(at line N, column M)": the line is in it.
            raise AccessFileError(name, "", f"not valid TOML: {exc}") from None
        return cls(name, _grants(name, text, data))

    def may_serve(self, key: str, service: str) -> str | None:
        grant = self.grants.get(key)
        if grant is None:
            return self._stranger(key)
        if service in grant.services:
            return None
        allowed = ", ".join(grant.services) or "none"
        return (
            f"key {key!r} may not register as service {service!r}: "
            f"clients.{key}.services in {self.path} allows {allowed}"
        )

    def may_send(self, key: str, msg_type: str) -> str | None:
        answer = self._send.get((key, msg_type), "?")
        if answer != "?":
            return answer
        grant = self.grants.get(key)
        if grant is None:
            answer = self._stranger(key)
        elif grant.send is None or _matches(msg_type, grant.send):
            answer = None
        else:
            answer = (
                f"key {key!r} may not send {msg_type}: clients.{key}.send in {self.path} "
                f"allows {', '.join(grant.send) or 'nothing'}"
            )
        if len(self._send) >= 65_536:  # bounded, whatever types peers invent
            self._send.clear()
        self._send[(key, msg_type)] = answer
        return answer

    def may_handle(self, key: str, msg_type: str) -> str | None:
        grant = self.grants.get(key)
        if grant is None:
            return self._stranger(key)
        if grant.handles is None or _matches(msg_type, grant.handles):
            return None
        return (
            f"key {key!r} may not handle {msg_type}: clients.{key}.handles in {self.path} "
            f"allows {', '.join(grant.handles) or 'nothing'}"
        )

    def may_admin(self, key: str) -> str | None:
        grant = self.grants.get(key)
        if grant is not None and grant.admin:
            return None
        return (
            f"key {key!r} may not ask the hub for its status or traffic: only keys marked "
            f"admin = true in {self.path} may"
        )

    def _stranger(self, key: str) -> str:
        return f"key {key!r} has no [clients.{key}] table in {self.path}: it may do nothing"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _grants(path: str, text: str, data: dict[str, object]) -> dict[str, Grant]:
    for key in data:
        if key != "clients":
            raise AccessFileError(
                path,
                _where(text, key, None),
                f"unknown key {key!r}: the file has [clients.NAME] tables",
            )
    clients = data.get("clients", {})
    if not isinstance(clients, dict):
        raise AccessFileError(path, _where(text, "clients", None), "clients must be a table")
    grants = {}
    for name, table in clients.items():
        where = f"clients.{name}"
        if not _NAME.match(name):
            raise AccessFileError(
                path,
                _where(text, where, None),
                f"{name!r} is not a key name (letters, digits, . _ -)",
            )
        if not isinstance(table, dict):
            raise AccessFileError(path, _where(text, where, None), f"{where} must be a table")
        for field in table:
            if field not in _FIELDS:
                raise AccessFileError(
                    path,
                    _where(text, where, field),
                    f"unknown key {where}.{field} (known: {', '.join(_FIELDS)})",
                )
        admin = table.get("admin", False)
        if not isinstance(admin, bool):
            raise AccessFileError(
                path, _where(text, where, "admin"), f"{where}.admin must be true or false"
            )
        lists = {}
        for field in _FIELDS[:3]:
            value = table.get(field)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise AccessFileError(
                    path,
                    _where(text, where, field),
                    f"{where}.{field} must be a list of non-empty strings, not {value!r}",
                )
            lists[field] = tuple(value)
        grants[name] = Grant(
            name, lists.get("services", ()), lists.get("send"), lists.get("handles"), admin
        )
    return grants


def _where(text: str, table: str, field: str | None) -> str:
    """``line N (key)`` for ``table`` (``clients.orders``) or its ``field``, found in the
    file's text (tomllib gives no positions for values); the key alone if not found."""
    name = f"{table}.{field}" if field else table
    lines = text.splitlines()
    parts = [re.escape(part) for part in table.split(".", 1)]
    header = re.compile(r"^\s*\[\s*" + r'\s*\.\s*"?'.join(parts) + r'"?\s*\]')
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if field is None:
        if start is not None:
            return f"line {start + 1} ({name})"
        if "." in table:  # a key of its parent table: ``[clients]`` then ``orders = ...``
            parent, child = table.rsplit(".", 1)
            return _where(text, parent, child).replace(f"({parent}.{child})", f"({name})")
        plain = re.compile(r"^\s*\[?\s*" + re.escape(table) + r"\b")
        found = next((i for i, line in enumerate(lines) if plain.match(line)), None)
        return f"line {found + 1} ({name})" if found is not None else name
    if start is not None:
        assign = re.compile(r"^\s*" + re.escape(field) + r"\s*=")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if assign.match(lines[i]):
                return f"line {i + 1} ({name})"
    return name
