"""``ackbus dead-letters list|show|replay|purge`` against a real store and a real hub."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from ackbus import Untyped
from ackbus.cli import main
from ackbus.endpoint import Endpoint
from ackbus.store import SqliteStore
from ackbus.wire_pb2 import Bye
from helpers import FAST
from proc_harness import Procs, free_port

HERE = Path(__file__).resolve().parent
QUICK = FAST.with_(ack_timeout=0.1, deadline=0.4)
"""Gives up within half a second: what nobody handles becomes a dead letter soon."""


async def fail_three(hub: str, db: Path) -> list[bytes]:
    """Three messages nobody handles yet: they fail with no-route and become dead letters."""
    async with Endpoint("dealer", hub, store=SqliteStore(db), policy=QUICK) as ep:
        reports = [
            await ep.send(Bye(reason="first"), wait_ack=False),
            await ep.send(Bye(reason="second"), wait_ack=False),
            await ep.send(Untyped("poker.Note", {"text": "hello"}), wait_ack=False),
        ]
        for r in reports:
            await r.wait(5)
        assert not any(reports)
    return [r.message_id for r in reports]


def test_list_show_replay_purge(
    procs: Procs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    procs.hub(port)
    hub = f"tcp://127.0.0.1:{port}"
    db = tmp_path / "dealer.db"
    url = f"sqlite:///{db}"
    ids = asyncio.run(fail_three(hub, db))

    assert main(["dead-letters", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "3 dead letters" in out
    assert all(mid.hex() in out for mid in ids)
    assert out.count("no-route") == 3
    for line in out.splitlines()[:3]:
        # the error's own words, not "ackbus.Bye <id>: " again after the id and type columns
        assert line.count(line.split()[0]) == 1, line
        assert "no-route  attempts=" in line
        assert line.split("attempts=")[1].split(maxsplit=1)[1].startswith("no "), line

    assert main(["dead-letters", "show", "--store", str(db), ids[2].hex()[:10]]) == 0
    out = capsys.readouterr().out
    assert "type:        poker.Note" in out
    assert "reason:      no-route" in out
    assert "sender:      dealer/" in out
    assert '"text": "hello"' in out, "a JSON body is shown as JSON"

    # A protobuf body: decoded with its type's descriptor when the module is given ...
    assert (
        main(["dead-letters", "show", "--store", url, "--import", "ackbus.wire_pb2", ids[0].hex()])
        == 0
    )
    out = capsys.readouterr().out
    assert "body (protobuf ackbus.Bye, 7 bytes, as JSON):" in out
    assert '"reason": "first"' in out
    # ... and as hex, saying how to decode it, when it is not
    assert main(["dead-letters", "show", "--store", url, ids[0].hex()]) == 0
    out = capsys.readouterr().out
    assert "not decoded: give --import MODULE or -I DIR to decode it" in out
    assert "0a 05 66 69 72 73 74" in out
    assert (
        main(["dead-letters", "show", "--store", url, "--import", "poker.nowhere_pb2", "--all"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("ackbus dead-letters: error: cannot import poker.nowhere_pb2")
    assert len(err.splitlines()) == 1

    assert main(["dead-letters", "show", "--store", url, "ffffffffffff"]) == 1
    assert "no dead letter match" in capsys.readouterr().err
    assert main(["dead-letters", "purge", "--store", url]) == 2, "ids or --all are required"
    capsys.readouterr()

    # A receiver for Bye now exists: replaying the two Byes delivers them (new ids).
    runs = tmp_path / "runs.log"
    procs.start(
        str(HERE / "receiver.py"), "--hub", hub, "--store", str(tmp_path / "r.db"),
        "--runs", str(runs), ready=b"ready",
    )  # fmt: skip
    assert (
        main(["dead-letters", "replay", "--store", url, "--hub", hub, ids[0].hex(), ids[1].hex()])
        == 0
    )
    out = capsys.readouterr().out
    assert "replayed 2: 2 acked, 0 failed" in out
    left = [d.msg_id for d in SqliteStore(db).dead_letters()]
    assert left == [ids[2]]
    with sqlite3.connect(tmp_path / "r.db") as r:
        texts = sorted(t for (t,) in r.execute("SELECT text FROM effects"))
    assert texts == ["first", "second"]

    assert main(["dead-letters", "purge", "--store", url, "--all"]) == 0
    assert "purged 1 dead letter" in capsys.readouterr().out
    assert SqliteStore(db).dead_letters() == []


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database " * 100)
    assert main(["dead-letters", "list", "--store", str(notes)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ackbus dead-letters: error:")
    assert "not a database" in err
    assert main(["dead-letters", "list", "--store", str(tmp_path / "missing.db")]) == 1
    assert "no such ackbus store" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


def test_dead_letters_in_postgresql(
    procs: Procs, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same commands with ``--store postgresql://...`` (a real server)."""
    port = free_port()
    procs.hub(port)
    hub = f"tcp://127.0.0.1:{port}"

    async def fail_two() -> list[bytes]:
        async with Endpoint("dealer", hub, store=pg_url, policy=QUICK) as ep:
            reports = [await ep.send(Bye(reason=r), wait_ack=False) for r in ("one", "two")]
            for r in reports:
                await r.wait(5)
            assert not any(reports)
        return [r.message_id for r in reports]

    ids = asyncio.run(fail_two())
    assert main(["dead-letters", "list", "--store", pg_url]) == 0
    out = capsys.readouterr().out
    assert "2 dead letters" in out
    assert all(mid.hex() in out for mid in ids)
    assert main(["dead-letters", "show", "--store", pg_url, ids[1].hex()[:12]]) == 0
    assert "reason:      no-route" in capsys.readouterr().out
    procs.start(
        str(HERE / "receiver.py"), "--hub", hub, "--store", str(tmp_path / "r.db"),
        "--runs", str(tmp_path / "runs.log"), ready=b"ready",
    )  # fmt: skip
    assert main(["dead-letters", "replay", "--store", pg_url, "--hub", hub, ids[0].hex()]) == 0
    assert "replayed 1: 1 acked, 0 failed" in capsys.readouterr().out
    assert main(["dead-letters", "purge", "--store", pg_url, "--all"]) == 0
    assert "purged 1 dead letter" in capsys.readouterr().out
    assert main(["dead-letters", "list", "--store", pg_url + "&durability=never"]) == 1
    assert "durability must be" in capsys.readouterr().err
