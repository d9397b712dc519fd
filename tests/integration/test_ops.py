"""The operator's CLI (issue 20, section 2) against real processes: an ``ackbus hub``
subprocess, the example services (examples/services.py), and each ``ackbus send``,
``request``, ``status`` and ``tail`` run as a process of its own, as an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from ackbus._version import __version__
from ackbus.transport._keys import generate_keys
from ackbus.wire import PROTOCOL_VERSION
from proc_harness import Procs, free_port, runs

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "generated"
ENV = {**os.environ, "PYTHONPATH": str(GENERATED)}

pytestmark = pytest.mark.timeout(180)


def ackbus(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ackbus ARGV...`` in a process of its own, with generated/ importable."""
    return subprocess.run(
        [sys.executable, "-m", "ackbus.cli", *argv],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=ROOT,
    )


def one_line_error(run: subprocess.CompletedProcess[str], command: str) -> str:
    """The failure's single line, after checking that it is one and no traceback."""
    assert run.returncode != 0, run.stdout
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"ackbus {command}: error: "), lines[0]
    return lines[0]


def start_hub(procs: Procs, *extra: str) -> str:
    port = free_port()
    procs.start(
        "-m",
        "ackbus.cli",
        "hub",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--heartbeat",
        "0.25",
        *extra,
        ready=b"listening",
    )
    return f"tcp://127.0.0.1:{port}"


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


# ---------------------------------------------------------------------- send, request


def test_send_and_request(procs: Procs, tmp_path: Path) -> None:
    hub = start_hub(procs)
    log = tmp_path / "table.log"
    procs.service("table", hub, log)

    sent = ackbus(
        "send", "poker.StartHand", '{"table_id": "t1"}', "--hub", hub,
        "--import", "poker.table_pb2", "--wait-ack",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert report["type"] == "poker.StartHand"
    assert report["status"] == "acked"
    assert report["attempts"] == 1
    assert report["acked_by"][0].startswith("table/")
    assert report["latency_s"] > 0
    assert [r[:2] for r in runs(log)] == [("poker.StartHand", report["message_id"])]

    # without --wait-ack: back once it left; the table still runs it
    sent = ackbus(
        "send", "poker.StartHand", '{"tableId": "t1"}', "--hub", hub,
        "--import", "poker.table_pb2",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    quick = json.loads(sent.stdout)
    assert quick["status"] == "sent"
    wait_for(lambda: quick["message_id"] in {mid for _, mid, _ in runs(log)})

    # request: the reply type is the one the rpc declares (GetTableState -> TableState)
    asked = ackbus(
        "request", "poker.GetTableState", '{"table_id": "t1"}', "--hub", hub,
        "--import", "poker.table_pb2", "--timeout", "10",
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    # proto3's JSON mapping: every field shown, a 64-bit integer as a string
    assert json.loads(asked.stdout) == {
        "table_id": "t1",
        "hand_number": "2",
        "pots": {},
        "seats": [],
    }

    # the same with the .proto files compiled on the fly instead of generated modules
    asked = ackbus(
        "request", "poker.GetTableState", '{"table_id": "t9"}', "--hub", hub, "-I", "schemas",
        "--to", "table",
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["table_id"] == "t9"


def test_send_failures_are_one_line(procs: Procs, tmp_path: Path) -> None:
    hub = start_hub(procs)
    imp = ("--import", "poker.table_pb2")

    line = one_line_error(ackbus("send", "poker.Nope", "{}", "--hub", hub, *imp), "send")
    assert "unknown message type 'poker.Nope'" in line
    assert "--import poker.table_pb2" in line
    line = one_line_error(ackbus("send", "poker.StartHand", "{", "--hub", hub, *imp), "send")
    assert "cannot build poker.StartHand" in line
    line = one_line_error(
        ackbus("send", "poker.StartHand", '{"seat": 3}', "--hub", hub, *imp), "send"
    )
    assert '"seat"' in line
    line = one_line_error(
        ackbus("send", "poker.StartHand", "{}", "--hub", hub, "--import", "nowhere_pb2"), "send"
    )
    assert "cannot import nowhere_pb2" in line
    line = one_line_error(ackbus("request", "poker.StartHand", "{}", "--hub", hub, *imp), "request")
    assert "--reply TYPE" in line

    # nobody handles it: the report says no-route, exit 1
    failed = ackbus(
        "send", "poker.StartHand", "{}", "--hub", hub, *imp, "--wait-ack", "--timeout", "1"
    )
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["status"] == "failed"
    assert report["error_type"] == "NoRoute"

    # no hub there: one line within the timeout, saying what to check
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    line = one_line_error(
        ackbus("send", "poker.StartHand", "{}", "--hub", nowhere, *imp, "--timeout", "1"), "send"
    )
    assert "ackbus hub --bind" in line
    line = one_line_error(ackbus("status", "--hub", nowhere, "--timeout", "1"), "status")
    assert f"no answer from {nowhere} within 1 s" in line


# ---------------------------------------------------------------------- status


def test_status(procs: Procs, tmp_path: Path) -> None:
    hub = start_hub(procs)
    procs.service("table", hub, tmp_path / "table.log", "--instance", "t-1")
    procs.service("audit", hub, tmp_path / "audit.log", "--instance", "a-1")
    for _ in range(3):
        sent = ackbus(
            "send", "poker.StartHand", '{"table_id": "t1"}', "--hub", hub,
            "--import", "poker.table_pb2", "--wait-ack",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    # a peer sending junk: refused, and the status says so
    ctx = zmq.Context()
    junk = ctx.socket(zmq.DEALER)
    junk.linger = 0
    junk.connect(hub)
    junk.send_multipart([b"AB\x01\x63", b"junk"])
    assert junk.poll(10_000)
    junk.recv_multipart()
    junk.close()
    ctx.term()

    run = ackbus("status", "--hub", hub, "--json")
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["format"] == 1
    assert status["hub"]["version"] == __version__
    services = {s["name"]: s for s in status["services"]}
    assert {"table", "audit"} <= set(services)
    table = services["table"]["instances"][0]
    assert table["instance"] == "t-1"
    assert table["agent"] == f"ackbus-python/{__version__}"
    assert table["protocol"] == PROTOCOL_VERSION  # the highest both speak
    assert table["in_flight"] == 0
    assert "poker.StartHand" in table["commands"]
    assert table["acked"] >= 3
    assert status["totals"]["routed"] >= 6  # 3 commands, 3 HandStarted events to audit
    assert status["refused"]["by_code"]["MALFORMED"] == 1
    assert "unknown command 99" in status["refused"]["recent"][0]["reason"]

    plain = ackbus("status", "--hub", hub)  # not a terminal: plain text
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout
    assert f"ackbus {__version__}" in out
    assert "SERVICE" in out
    assert "IN FLIGHT" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("table "))
    assert "t-1" in line
    assert f"ackbus-python/{__version__}" in line
    assert "0/" in line
    assert "poker.StartHand" in line
    assert "MALFORMED 1" in out
    assert "unknown command 99" in out


def test_status_in_rich_on_a_terminal(procs: Procs, tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) the table is drawn by rich."""
    pytest.importorskip("rich")
    import pty

    hub = start_hub(procs)
    procs.service("table", hub, tmp_path / "table.log", "--instance", "t-1")
    pid, fd = pty.fork()
    if pid == 0:  # the child: ackbus status on the pseudo-terminal
        os.environ["PYTHONPATH"] = str(GENERATED)
        os.environ["COLUMNS"] = "200"
        os.execv(sys.executable, [sys.executable, "-m", "ackbus.cli", "status", "--hub", hub])
    out = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        _, code = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(code) == 0, out
    text = out.decode()
    assert "┃ SERVICE" in text or "│ table" in text, text  # rich's box drawing
    assert "t-1" in text


# ---------------------------------------------------------------------- keys: admins only


ACCESS = """\
[clients.table]
services = ["table"]

[clients.ops]
admin = true
"""


def test_status_and_tail_need_an_admin_key(procs: Procs, tmp_path: Path) -> None:
    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    hub_dir = tmp_path / "hub"
    hub_key, _ = generate_keys(hub_dir, "hub")
    (hub_dir / "clients").mkdir()
    secrets = {}
    for name in ("table", "ops"):
        public, secrets[name] = generate_keys(tmp_path / name, name)
        shutil.copy(public, hub_dir / "clients" / public.name)
    access = tmp_path / "access.toml"
    access.write_text(ACCESS)
    address = f"tcp://127.0.0.1:{free_port()}"
    procs.keyed_hub(address, hub_dir, "--access", str(access))

    def as_key(name: str) -> list[str]:
        return ["--keys", str(secrets[name]), "--hub-key", str(hub_key)]

    line = one_line_error(ackbus("status", "--hub", address, *as_key("table")), "status")
    assert "key 'table' may not ask the hub for its status or traffic" in line
    assert "admin = true" in line
    line = one_line_error(ackbus("tail", "--hub", address, *as_key("table")), "tail")
    assert "key 'table' may not ask" in line
    # no keys at all: the handshake fails, nothing answers
    line = one_line_error(ackbus("status", "--hub", address, "--timeout", "1"), "status")
    assert "give --keys and --hub-key" in line

    run = ackbus("status", "--hub", address, *as_key("ops"), "--json")
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["hub"]["keys"] is True
    assert status["hub"]["access"] == str(access)
    run = ackbus("tail", "--hub", address, *as_key("ops"), "--duration", "0.5")
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------------- tail


def start_tail(hub: str, *argv: str) -> subprocess.Popen[str]:
    """``ackbus tail`` in a process of its own, once it tails."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "ackbus.cli", "tail", "--hub", hub, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert tail.stderr is not None
    assert "tailing" in tail.stderr.readline()
    return tail


def send_hand(hub: str, table_id: str) -> str:
    sent = ackbus(
        "send", "poker.StartHand", json.dumps({"table_id": table_id}), "--hub", hub,
        "--import", "poker.table_pb2", "--wait-ack",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    message_id: str = json.loads(sent.stdout)["message_id"]
    return message_id


def test_tail(procs: Procs, tmp_path: Path) -> None:
    hub = start_hub(procs)
    procs.service("table", hub, tmp_path / "table.log", "--instance", "t-1")
    procs.service("audit", hub, tmp_path / "audit.log", "--instance", "a-1")
    tail = start_tail(hub, "--count", "2", "--type", "poker.Start*")
    procs.running.append(tail)  # type: ignore[arg-type]
    ids = [send_hand(hub, "t1"), send_hand(hub, "t2")]
    out, _ = tail.communicate(timeout=60)
    assert tail.returncode == 0
    lines = out.splitlines()
    assert [ln.split()[1] for ln in lines] == [mid[:12] for mid in ids], out
    for ln in lines:
        assert " poker.StartHand ackbus-cli/" in ln.replace("  ", " ")
        assert "-> table/t-1  ok  " in ln
        assert ln.split("  ok  ")[1].split()[1] == "ms"

    # by service: the table's HandStarted events as audit answers them
    tail = start_tail(hub, "--count", "1", "--service", "audit", "--json")
    procs.running.append(tail)  # type: ignore[arg-type]
    send_hand(hub, "t3")
    out, _ = tail.communicate(timeout=60)
    assert tail.returncode == 0
    record = json.loads(out)
    assert record["type"] == "poker.HandStarted"
    assert (record["sender"], record["receiver"]) == ("table/t-1", "audit/a-1")
    # ok, or duplicate: the schema also names poker.Lobby a subscriber, none runs here,
    # and the publisher sends the event again until the lobby answers or time runs out
    assert record["outcome"] in ("ok", "duplicate")
    assert record["latency_s"] > 0

    # a filter that matches nothing prints nothing
    quiet = ackbus("tail", "--hub", hub, "--type", "nothing.*", "--duration", "1", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""


async def test_tail_costs_nothing_when_nobody_tails() -> None:
    """Without a tail the hub's protocol talks to the hub itself; a tail puts the tap
    between them, and it goes when the tail stops (UNTAIL) or stops renewing."""
    import asyncio

    from ackbus._admin import Tap
    from ackbus._admin_client import AdminClient
    from ackbus.hub import Hub
    from helpers import eventually

    async with Hub("tcp://127.0.0.1:0") as hub:
        assert hub._proto.io is hub
        seen = []

        def tail(stop: bool) -> None:
            with AdminClient(hub.addresses[0], timeout=10) as client:
                replies = client.tail([], [], lease=0.5)
                next(replies)
                seen.append(type(hub._proto.io))
                if stop:
                    replies.close()  # says UNTAIL
                # else: the socket closes, the lease runs out

        await asyncio.wait_for(asyncio.to_thread(tail, True), 20)
        assert seen == [Tap]
        await eventually(lambda: hub._proto.io is hub, timeout=10)
        await asyncio.wait_for(asyncio.to_thread(tail, False), 20)
        assert seen == [Tap, Tap]
        await asyncio.sleep(0.6)
        hub._admin.tick(hub.loop.time())
        assert hub._proto.io is hub
