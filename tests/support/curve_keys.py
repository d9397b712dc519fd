"""CURVE keys for tests of a keyed hub: a hub key folder with enrolled clients, and
clients (endpoints, or raw DEALER sockets that speak the wire by hand) that use them."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from ackbus.endpoint import Endpoint
from ackbus.transport._keys import generate_keys, load_keypair, load_public_key
from ackbus.wire import Command, decode_command, decode_refusal


def enroll(root: Path, clients: Iterable[str]) -> tuple[Path, Path, dict[str, Path]]:
    """The hub's key folder (``root/hub``, as ``ackbus hub --keys`` takes it), its public
    key file, and each client's secret key file (``root/NAME``), enrolled in the hub's
    ``clients/``."""
    hub_dir = root / "hub"
    hub_public, _ = generate_keys(hub_dir, "hub")
    (hub_dir / "clients").mkdir()
    secrets = {}
    for name in clients:
        public, secrets[name] = generate_keys(root / name, name)
        shutil.copy(public, hub_dir / "clients" / public.name)
    return hub_dir, hub_public, secrets


@dataclass
class Keys:
    """A keyed hub's address and keys, and its clients."""

    address: str
    hub_dir: Path
    hub_key: Path
    secrets: dict[str, Path]

    def endpoint(self, service: str, key: str, **kw: object) -> Endpoint:
        return Endpoint(
            service,
            self.address,
            keys=self.secrets[key],
            hub_key=self.hub_key,
            heartbeat=0.25,
            **kw,  # type: ignore[arg-type]
        )

    def raw(self, ctx: zmq.asyncio.Context, key: str) -> zmq.asyncio.Socket:
        """A DEALER connected with client ``key``'s keypair."""
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        pair = load_keypair(self.secrets[key])
        sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret
        sock.curve_serverkey = load_public_key(self.hub_key)
        sock.connect(self.address)
        return sock


def refusal_of(answer: list[bytes] | None) -> tuple[str, str]:
    """The code and text of the REFUSAL a raw client got."""
    assert answer is not None, "no answer"
    assert decode_command(answer) is Command.REFUSAL, "welcomed"
    refusal = decode_refusal(answer)
    return refusal.code, str(refusal)
