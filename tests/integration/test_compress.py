"""Compressed bodies end to end over real ZeroMQ sockets (issue 21, item 2;
docs/protocol.md, "Compressed bodies"): a sender compresses what its policy asks for
when the hub takes it; the hub forwards it compressed to receivers that decompress, and
decompresses it for one that cannot (one without zstandard, or of an older version).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ackbus.endpoint._receive as receive_module
import ackbus.hub as hub_module
import pytest
from ackbus.endpoint import Endpoint
from ackbus.wire import FLAG_ZSTD, MessageItem, PackedRun, _compress
from ackbus.wire_pb2 import Bye
from helpers import FAST, HEARTBEAT, HubBus, byes_handled, running_hub

PAYLOAD = json.dumps([{"id": i, "name": f"player-{i}", "seat": i % 9} for i in range(2500)])
ZIPPING = FAST.with_(ack_timeout=5.0, deadline=15.0, compress_above=1024)


class Seen:
    """Whether each item the hub and the receiver decoded was compressed."""

    def __init__(self) -> None:
        self.hub: list[bool] = []
        self.receiver: list[bool] = []


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    out = Seen()
    scan, decode = hub_module.scan_messages, receive_module.decode_messages

    def hub_scan(*args: Any) -> list[PackedRun | MessageItem]:
        entries = scan(*args)
        out.hub += [bool(e.flags & FLAG_ZSTD) for e in entries if isinstance(e, MessageItem)]
        return entries

    def receiver_decode(*args: Any) -> list[MessageItem]:
        items = decode(*args)
        out.receiver += [bool(i.flags & FLAG_ZSTD) for i in items]
        return items

    monkeypatch.setattr(hub_module, "scan_messages", hub_scan)
    monkeypatch.setattr(receive_module, "decode_messages", receiver_decode)
    return out


async def exchange(bus: HubBus, *, receiver_codecs: tuple[str, ...] | None = None) -> list[str]:
    """A big compressible command and a small one, from a sender whose policy
    compresses above 1 KiB; what the handler got."""
    server = Endpoint("table", bus.address, backend=bus.backend, heartbeat=HEARTBEAT)
    client = Endpoint(
        "lobby", bus.address, backend=bus.backend, heartbeat=HEARTBEAT, policy=ZIPPING
    )
    if receiver_codecs is not None:
        server._codecs = receiver_codecs  # as an endpoint without zstandard says HELLO
    return await byes_handled(server, client, (PAYLOAD, "small"))


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_a_compressed_body_crosses_the_hub_compressed(
    seen: Seen, transport: str, tmp_path: Path
) -> None:
    async with running_hub(transport, tmp_path) as bus:
        assert await exchange(bus) == [PAYLOAD, "small"]
    assert seen.hub == [True]  # the small one rode in a packed run, uncompressed
    assert seen.receiver == [True, False]


async def test_a_receiver_without_zstandard_gets_it_decompressed_by_the_hub(
    seen: Seen, tmp_path: Path
) -> None:
    async with running_hub("ipc", tmp_path) as bus:
        assert await exchange(bus, receiver_codecs=()) == [PAYLOAD, "small"]
    assert seen.hub == [True]
    assert seen.receiver == [False, False]  # never sent a compressed body


async def test_a_version_2_receiver_gets_it_decompressed_and_joined(
    seen: Seen, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    decode = hub_module.decode_hello

    def as_version_2(*args: Any) -> Any:  # an older peer: no version 3, no codecs
        hello = decode(*args)
        if hello.identity.service == "table":
            del hello.versions[:]
            hello.versions.extend([1, 2])
            del hello.codecs[:]
        return hello

    monkeypatch.setattr(hub_module, "decode_hello", as_version_2)
    async with running_hub("ipc", tmp_path) as bus:
        assert await exchange(bus) == [PAYLOAD, "small"]
    assert seen.receiver == [False, False]


async def test_a_hub_without_zstandard_is_sent_nothing_compressed(
    seen: Seen, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hub_module, "_CODECS", ())  # its WELCOME lists no codec
    async with running_hub("ipc", tmp_path) as bus:
        assert await exchange(bus) == [PAYLOAD, "small"]
    assert seen.hub == [False]  # the big one, as its own frame; the small one packed
    assert seen.receiver == [False, False]


async def test_a_policy_asking_for_compression_without_zstandard_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with running_hub("ipc", tmp_path) as bus:
        monkeypatch.setattr(_compress, "_zstd", lambda: None)
        client = Endpoint(
            "lobby", bus.address, backend=bus.backend, heartbeat=HEARTBEAT, policy=ZIPPING
        )
        async with client:
            with pytest.raises(ModuleNotFoundError, match=r"pip install 'ackbus\[zstd\]'"):
                await client.send(Bye(reason=PAYLOAD), timeout=5)
