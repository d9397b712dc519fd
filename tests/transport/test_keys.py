"""CURVE key files (written and read with pyzmq's zmq.auth), the errors that name a bad
file, the environment fallback, and the rate limit on refusal log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from ackbus.errors import KeyFileError
from ackbus.transport._keys import (
    HubKeys,
    KeyGate,
    RefusalLog,
    client_keys,
    generate_keys,
    load_keypair,
    load_public_key,
)

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


def test_generate_writes_a_zmq_certificate_pair_with_a_private_secret(tmp_path: Path) -> None:
    public, secret = generate_keys(tmp_path / "keys", "orders")
    assert (public, secret) == (tmp_path / "keys/orders.key", tmp_path / "keys/orders.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [public.name, secret.name]
    pub, none = zmq.auth.load_certificate(public)
    pub2, sec = zmq.auth.load_certificate(secret)
    assert none is None
    assert pub == pub2
    assert sec is not None
    assert zmq.curve_public(sec) == pub  # a real keypair
    assert load_keypair(secret).public == load_public_key(public) == pub


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    _, secret = generate_keys(tmp_path, "a")
    before = secret.read_bytes()
    with pytest.raises(KeyFileError, match=r"a\.key: exists; pass --force"):
        generate_keys(tmp_path, "a")
    assert secret.read_bytes() == before
    generate_keys(tmp_path, "a", force=True)
    assert secret.read_bytes() != before
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key", "a.key_secret"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-x"])
def test_generate_refuses_names_that_are_not_file_stems(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="not a key name"):
        generate_keys(tmp_path, name)


def test_bad_key_files_raise_key_file_error_naming_the_file(tmp_path: Path) -> None:
    public, _ = generate_keys(tmp_path, "c")
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(KeyFileError, match=f"{missing}: no such file; make one with") as info:
        load_keypair(missing)
    assert info.value.path == str(missing)
    with pytest.raises(KeyFileError, match=r"c\.key: holds only a public key"):
        load_keypair(public)
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(KeyFileError, match=r"junk\.key: holds no public key"):
        load_public_key(junk)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(KeyFileError, match="not a 40-character Z85 CURVE key"):
        load_public_key(short)
    with pytest.raises(KeyFileError, match="is a folder"):
        load_public_key(tmp_path)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.key"
        locked.write_bytes(public.read_bytes())
        locked.chmod(0)
        with pytest.raises(KeyFileError, match="cannot read it"):
            load_public_key(locked)


def test_client_keys_come_from_arguments_or_the_environment(tmp_path: Path) -> None:
    _, secret = generate_keys(tmp_path, "svc")
    hub_public, _ = generate_keys(tmp_path, "hub")
    assert client_keys(None, None, {}) is None
    assert client_keys(None, None, {"ACKBUS_KEYS": "", "ACKBUS_HUB_KEY": ""}) is None
    env = {"ACKBUS_KEYS": str(secret), "ACKBUS_HUB_KEY": str(hub_public)}
    from_env = client_keys(None, None, env)
    assert from_env == (load_keypair(secret), load_public_key(hub_public))
    assert client_keys(secret, hub_public, {}) == from_env
    with pytest.raises(KeyFileError, match="hub_key= \\(ACKBUS_HUB_KEY\\) is not"):
        client_keys(secret, None, {})
    with pytest.raises(KeyFileError, match="keys= \\(ACKBUS_KEYS\\) is not"):
        client_keys(None, None, {"ACKBUS_HUB_KEY": str(hub_public)})


def test_a_hub_key_folder_needs_its_keypair_and_a_clients_folder(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such folder"):
        HubKeys.load(tmp_path / "absent")
    with pytest.raises(KeyFileError, match=r"hub\.key_secret: no such file"):
        HubKeys.load(tmp_path)
    generate_keys(tmp_path, "hub")
    with pytest.raises(KeyFileError, match=r"clients: no such folder"):
        HubKeys.load(tmp_path)
    generate_keys(tmp_path / "clients", "orders")
    keys = HubKeys.load(tmp_path)
    orders = load_public_key(tmp_path / "clients/orders.key")
    assert keys.enrolled() == {orders: "orders"}  # the .key_secret beside it is not a client
    (tmp_path / "clients/broken.key").write_text("not a certificate")
    with pytest.raises(KeyFileError, match=r"broken\.key: holds no public key"):
        HubKeys.load(tmp_path)


def test_refusals_log_one_line_per_key_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = RefusalLog(clock=lambda: now[0], keys=3)
    clients = Path("/k/clients")
    caplog.set_level(logging.INFO, "ackbus.hub.keys")
    logged = []
    for t in range(0, 130, 2):  # key A every 2 s for 130 s, key B once
        now[0] = float(t)
        logged.append(limiter.refused("A", "10.0.0.1", clients))
    now[0] = 5.0
    assert limiter.refused("B", "10.0.0.2", clients)
    assert [i * 2 for i, x in enumerate(logged) if x] == [0, 60, 120]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "refused a CURVE client from 10.0.0.1: its key A is not enrolled in /k/clients"
    )
    assert lines[2].endswith("(29 more refusals of it held back in the last minute)")
    assert len(lines) == 4  # A three times, B once


def test_refusal_lines_stay_bounded_under_a_flood_of_distinct_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = RefusalLog(clock=lambda: now[0], keys=10)
    caplog.set_level(logging.INFO, "ackbus.hub.keys")
    for i in range(1000):
        limiter.refused(f"key{i}", "", Path("c"))
    assert len(caplog.records) == 11  # 10 keys, then one line for the rest
    assert "more than 10 distinct keys this minute" in caplog.records[-1].getMessage()
    now[0] = 61.0  # a minute later the old entries make room again
    assert limiter.refused("key-new", "", Path("c"))


async def test_the_gate_names_each_admitted_connection_after_its_key(tmp_path: Path) -> None:
    """The ZeroMQ User-Id of an admitted connection is its key file's stem (what an
    access file will name); the gate refuses a second start on the same context."""
    generate_keys(tmp_path, "hub")
    public, secret = generate_keys(tmp_path / "clients", "orders")
    keys = HubKeys.load(tmp_path)
    ctx: zmq.asyncio.Context = zmq.asyncio.Context()
    refused: list[None] = []
    gate = KeyGate(ctx, keys, lambda: refused.append(None))
    gate.start()
    server = ctx.socket(zmq.ROUTER)
    client = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(KeyFileError, match="another one already runs on this ZeroMQ context"):
            KeyGate(ctx, keys, lambda: None).start()
        server.curve_server = True
        server.curve_secretkey = keys.keypair.secret
        port = server.bind_to_random_port("tcp://127.0.0.1")
        mine = load_keypair(secret)
        client.curve_publickey, client.curve_secretkey = mine.public, mine.secret
        client.curve_serverkey = keys.keypair.public
        client.connect(f"tcp://127.0.0.1:{port}")
        await client.send(b"hi")
        _, frame = await asyncio.wait_for(server.recv_multipart(copy=False), 5)
        assert frame.bytes == b"hi"
        assert frame.get("User-Id") == "orders"
        assert load_public_key(public) == mine.public
        assert refused == []
    finally:
        client.close(0)
        server.close(0)
        gate.stop()
        ctx.term()
