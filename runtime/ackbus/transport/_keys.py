"""CURVE keys as ZeroMQ certificate files, and the hub's gate that admits only enrolled keys.

Everything cryptographic is ZeroMQ's and pyzmq's: keypairs come from
``zmq.auth.create_certificates`` (files in the czmq certificate format), are read back
with ``zmq.auth.load_certificate``, and a hub decides who may connect through pyzmq's ZAP
authenticator configured with ``configure_curve(location=...)``. This module only puts
the files in place with the right modes, turns every way of getting them wrong into a
:class:`~ackbus.errors.KeyFileError` naming the file, and counts and logs refusals.

The layout (docs/security.md)::

    DIR/NAME.key            public key (give it away: enroll it at a hub)
    DIR/NAME.key_secret     public and secret key, mode 0600 (keep it)
    HUBDIR/hub.key_secret   the hub's own keypair; clients get HUBDIR/hub.key
    HUBDIR/clients/*.key    the client keys the hub admits (a key's name is its file's stem)
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from .._throttle import MORE_KEYS, Throttle
from ..errors import KeyFileError
from ._base import CurveKeys

__all__ = [
    "CLIENTS",
    "HUB_KEY_ENV",
    "HUB_NAME",
    "KEYS_ENV",
    "HubKeys",
    "KeyGate",
    "RefusalLog",
    "client_keys",
    "generate_keys",
    "load_keypair",
    "load_public_key",
]

log = logging.getLogger("ackbus.hub.keys")

KEYS_ENV = "ACKBUS_KEYS"
"""An endpoint's ``NAME.key_secret`` when ``keys=`` is not given."""
HUB_KEY_ENV = "ACKBUS_HUB_KEY"
"""The hub's public ``hub.key`` when ``hub_key=`` is not given."""
HUB_NAME = "hub"
"""A hub's key folder holds its keypair as ``hub.key_secret`` (and ``hub.key``)."""
CLIENTS = "clients"
"""The sub-folder of a hub's key folder with the client keys it admits."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_MAKE = "make one with `ackbus keys generate NAME --dir DIR`"


# ---------------------------------------------------------------------- files


def generate_keys(
    directory: str | os.PathLike[str], name: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Write a new keypair as ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret``
    (0600) and return their paths. Refuses (:class:`KeyFileError`) to replace either
    file unless ``force``. The secret file is never readable by others, not even for a
    moment: both are made in a private temporary folder and linked (or, with ``force``,
    renamed) into place."""
    if not _NAME.fullmatch(name):
        raise KeyFileError(
            name,
            "not a key name: use letters, digits, '.', '_' and '-' (up to 100), "
            "not starting with '.' or '-'",
        )
    folder = Path(directory)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(str(folder), f"cannot create the folder ({exc.strerror})") from exc
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not force:
        for path in (public, secret):
            if path.exists():
                raise KeyFileError(str(path), "exists; pass --force (force=True) to replace it")
    placed: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}.") as tmp:  # mode 0700
            made_public, made_secret = zmq.auth.create_certificates(tmp, name)
            os.chmod(made_secret, 0o600)
            os.chmod(made_public, 0o644)
            for made, final in ((made_secret, secret), (made_public, public)):
                if force:
                    os.replace(made, final)
                else:
                    os.link(made, final)  # fails if it exists: never overwrites
                placed.append(final)
    except FileExistsError as exc:  # made meanwhile by someone else
        for path in placed:
            path.unlink(missing_ok=True)
        raise KeyFileError(str(exc.filename2 or exc.filename), "exists; pass --force") from exc
    except OSError as exc:
        for path in placed:
            path.unlink(missing_ok=True)
        raise KeyFileError(str(folder), f"cannot write keys there ({exc.strerror})") from exc
    return public, secret


def _read(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """The Z85 public and secret key of a certificate file; KeyFileError naming it."""
    name = os.fspath(path)
    try:
        with open(name, "rb"):  # the precise reason a file cannot be read
            pass
        public, secret = zmq.auth.load_certificate(name)
    except FileNotFoundError as exc:
        raise KeyFileError(name, f"no such file; {_MAKE}") from exc
    except IsADirectoryError as exc:
        raise KeyFileError(name, "is a folder, not a key file") from exc
    except OSError as exc:
        raise KeyFileError(name, f"cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(name, f"holds no public key: not a ZeroMQ certificate; {_MAKE}") from exc
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _z85_key(key):
            raise KeyFileError(name, f"its {what} key is not a 40-character Z85 CURVE key")
    return public, secret


def _z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def load_keypair(path: str | os.PathLike[str]) -> CurveKeys:
    """The keypair in a ``NAME.key_secret`` file."""
    public, secret = _read(path)
    if secret is None:
        raise KeyFileError(
            os.fspath(path),
            "holds only a public key: give the NAME.key_secret file "
            "(`ackbus keys generate` writes both)",
        )
    mode = os.stat(path).st_mode
    if mode & 0o077:
        log.warning("%s: secret key readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    return CurveKeys(public, secret)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85) in a ``NAME.key`` (or ``NAME.key_secret``) file."""
    return _read(path)[0]


def client_keys(
    keys: str | os.PathLike[str] | None,
    hub_key: str | os.PathLike[str] | None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[CurveKeys, bytes] | None:
    """An endpoint's keypair and its hub's public key, from the arguments or else from
    ``ACKBUS_KEYS`` and ``ACKBUS_HUB_KEY``; None when neither is set (plain ZeroMQ)."""
    keys = keys if keys is not None else environ.get(KEYS_ENV) or None
    hub_key = hub_key if hub_key is not None else environ.get(HUB_KEY_ENV) or None
    if keys is None and hub_key is None:
        return None
    if keys is None:
        raise KeyFileError(
            os.fspath(hub_key or ""),
            f"hub_key= ({HUB_KEY_ENV}) is set but keys= ({KEYS_ENV}) is not: "
            "give this endpoint's NAME.key_secret too",
        )
    if hub_key is None:
        raise KeyFileError(
            os.fspath(keys),
            f"keys= ({KEYS_ENV}) is set but hub_key= ({HUB_KEY_ENV}) is not: "
            "give the hub's public hub.key too",
        )
    return load_keypair(keys), load_public_key(hub_key)


@dataclass(frozen=True, slots=True)
class HubKeys:
    """A hub's key folder: its own keypair and the folder of client keys it admits."""

    folder: Path
    keypair: CurveKeys
    clients: Path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HubKeys:
        folder = Path(directory)
        if not folder.is_dir():
            raise KeyFileError(
                str(folder), "no such folder; make the hub's keys with `ackbus keys generate hub`"
            )
        keypair = load_keypair(folder / f"{HUB_NAME}.key_secret")
        clients = folder / CLIENTS
        if not clients.is_dir():
            raise KeyFileError(
                str(clients),
                "no such folder: make it and enroll each client by copying its NAME.key there",
            )
        keys = cls(folder, keypair, clients)
        keys.enrolled()  # every file readable now, or fail at start
        return keys

    def enrolled(self) -> dict[bytes, str]:
        """The admitted public keys (Z85) and their names (file stems)."""
        try:
            files = sorted(self.clients.glob("*.key"))
        except OSError as exc:
            raise KeyFileError(str(self.clients), f"cannot list it ({exc.strerror})") from exc
        return {_read(path)[0]: path.stem for path in files}


# ---------------------------------------------------------------------- the hub's gate


class RefusalLog:
    """One log line per refused key per ``every`` seconds; the next line says how many
    were held back. Remembers at most ``keys`` keys (the oldest lines are forgotten
    first); beyond that, a flood of distinct keys shares one line per ``every``."""

    def __init__(
        self, every: float = 60.0, keys: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._throttle = Throttle(every, keys, clock)

    @property
    def every(self) -> float:
        return self._throttle.every

    def refused(self, key: str, address: str, clients: Path) -> bool:
        """Count one refusal; log it unless this key had a line less than ``every`` ago.
        True when a line was logged."""
        allowed = self._throttle.allow(key)
        if allowed is None:
            return False
        key, held = allowed
        more = f" ({held} more refusals of it held back in the last minute)" if held else ""
        if key == MORE_KEYS:
            log.warning(
                "refused CURVE clients with keys not enrolled in %s: more than %d distinct "
                "keys this minute; not logging each%s",
                clients,
                self._throttle.capacity,
                more,
            )
        else:
            log.warning(
                "refused a CURVE client from %s: its key %s is not enrolled in %s%s",
                address or "?",
                key,
                clients,
                more,
            )
        return True


class _Quiet(logging.Filter):
    """pyzmq's authenticator logs several debug lines per handshake: keep only its
    warnings and errors (the gate logs refusals itself, rate-limited)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_ZAP_LOG = logging.getLogger("ackbus.hub.zap")
_ZAP_LOG.addFilter(_Quiet())


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's ZAP authenticator on the hub's loop, with the hooks the gate needs."""

    def __init__(self, context: zmq.Context[Any], gate: KeyGate) -> None:
        super().__init__(context, log=_ZAP_LOG)
        self._gate = gate
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        self._gate.reload()
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self._gate.refused(z85.encode(client_key).decode("ascii"), self._address)
        return allowed, reason

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The ZeroMQ User-Id of an admitted connection: its key's name."""
        return self._gate.name_of(z85.encode(client_public_key))


class KeyGate:
    """The hub's ZAP handler on ``context``: CURVE clients whose public key is in the
    clients folder are admitted, every other is refused in the handshake. The folder is
    read again when its files change, so enrolling or removing a key needs no restart
    (connections already admitted stay until they close). ``on_refused`` is called once
    per refused handshake. One gate per ZeroMQ context (ZAP is per context)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        keys: HubKeys,
        on_refused: Callable[[], None],
        refusal_log: RefusalLog | None = None,
    ) -> None:
        self.keys = keys
        self._context = context
        self._on_refused = on_refused
        self._log = refusal_log or RefusalLog()
        self._names: dict[bytes, str] = {}
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._auth: _Authenticator | None = None

    @property
    def enrolled(self) -> int:
        """How many client keys are admitted."""
        return len(self._names)

    def start(self) -> None:
        """Take the context's ZAP endpoint (call inside the running loop, before binding)."""
        auth = _Authenticator(self._context, self)
        try:
            auth.start()
        except zmq.ZMQError as exc:
            auth.stop()
            raise KeyFileError(
                str(self.keys.folder),
                f"cannot start the ZAP handler ({exc}): another one already runs on this "
                "ZeroMQ context; give each hub with keys its own context",
            ) from exc
        self._auth = auth
        self.reload()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def reload(self) -> None:
        """Read the clients folder again if its files changed since the last read."""
        if self._auth is None:
            return
        try:
            seen = tuple(
                sorted(
                    (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                    for e in os.scandir(self.keys.clients)
                    if e.name.endswith(".key")
                )
            )
        except OSError as exc:
            if self._seen is not None:
                log.warning(
                    "cannot read %s (%s); keeping the keys read before", self.keys.clients, exc
                )
            self._seen = None
            return
        if seen == self._seen:
            return
        self._seen = seen
        try:
            names = self.keys.enrolled()
        except KeyFileError as exc:
            log.warning("%s; keeping the keys read before", exc)
            return
        self._auth.configure_curve(domain="*", location=str(self.keys.clients))
        self._names = names
        log.info("%d client keys enrolled in %s", len(names), self.keys.clients)

    def name_of(self, key: bytes) -> str:
        return self._names.get(key, key.decode("ascii"))

    def refused(self, key: str, address: str) -> None:
        self._on_refused()
        self._log.refused(key, address, self.keys.clients)
