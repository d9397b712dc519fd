"""Real processes for integration tests: spawned, waited for, and always reaped.

Imported by tests as ``proc_harness`` (tests/support is on pytest's pythonpath)."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "services.py"


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a connection's source port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a listener a test binds later, below the
    ephemeral range: a client that connects (and reconnects) to a port before anything
    listens there can, by TCP simultaneous open, end up connected to itself when the
    kernel picks that very port as its source port, and then holds it; the later bind
    fails. A port outside the range the kernel picks source ports from cannot be taken
    that way."""
    rng = random.Random()
    low = _ephemeral_low()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # crowded: any free port, ephemeral or not
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_hub(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m ackbus.hub ARGV`` to its end (a hub that refuses to start): its exit
    status and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "generated")}
    return subprocess.run(
        [sys.executable, "-m", "ackbus.hub", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


class Procs:
    """Starts processes that print a ready line; kills every one at teardown."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *argv: str,
        ready: bytes,
        timeout: float = 10.0,
        wrap: Sequence[str] = (),
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """``python ARGV`` (after ``wrap``, e.g. ``ip netns exec NS``; ``env`` added to
        the environment; its standard error appended to ``stderr`` if given), once it
        printed a line containing ``ready``."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "generated"), **(env or {})}
        err = stderr.open("ab") if stderr is not None else None
        try:
            proc = subprocess.Popen(
                [*wrap, sys.executable, *argv],
                stdout=subprocess.PIPE,
                stderr=err if err is not None else subprocess.PIPE,
                env=env,
            )
        finally:
            if err is not None:
                err.close()
        self.running.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while ready not in line:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else b""
                self.kill(proc)
                raise AssertionError(f"{argv} not ready in {timeout} s: {line!r} {err!r}")
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if readable:
                line = proc.stdout.readline()
        return proc

    def hub(self, port: int, *extra: str, stderr: Path | None = None) -> subprocess.Popen[bytes]:
        """``ackbus hub`` on 127.0.0.1:``port``, heartbeat 0.25 s, then ``extra`` (a later
        ``--heartbeat`` wins); its stderr to the file ``stderr`` if given."""
        return self.start(
            "-m",
            "ackbus.hub",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--heartbeat",
            "0.25",
            *extra,
            ready=b"listening",
            stderr=stderr,
        )

    def keyed_hub(self, address: str, keys: Path, *extra: str) -> subprocess.Popen[bytes]:
        """``ackbus hub --bind ADDRESS --keys KEYS EXTRA...``, ready once it listens."""
        return self.start(
            "-m",
            "ackbus.cli",
            "hub",
            "--bind",
            address,
            "--keys",
            str(keys),
            *extra,
            ready=b"listening on " + address.encode(),
        )

    def service(self, name: str, hub: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(
            str(SERVICES),
            "--service",
            name,
            "--hub",
            hub,
            "--log",
            str(log),
            *extra,
            ready=b"ready",
        )

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def runs(log: Path) -> list[tuple[str, str, int]]:
    """Handler runs recorded by examples/services.py: (type, message id hex, attempt)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        msg_type, mid, attempt = line.split()
        out.append((msg_type, mid, int(attempt)))
    return out


def type_runs(log: Path, type_name: str) -> Counter[str]:
    """How often each message id of ``type_name`` ran, from a services.py log."""
    return Counter(mid for t, mid, _ in runs(log) if t == type_name)


def counters(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    """Stop a services.py process (SIGCONT first: it may be frozen, then SIGTERM) and
    read the counters it prints last."""
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, out
    parsed: dict[str, int] = json.loads(lines[-1])
    return parsed
