"""The ackbus demo: a hub and three poker services as separate processes.

    make demo

1. starts a hub (``python -m ackbus.hub``) and the table, audit and lobby services
   (examples/services.py), each its own OS process;
2. a dealer (this process) sends StartHand commands through a typed generated client,
   each acknowledged only after the table's handler ran; the table announces every hand
   with a HandStarted event that audit and lobby both handle;
3. mid-stream it kills the table with SIGKILL and starts a new one: messages in flight
   are retried with backoff and delivered to the new instance;
4. prints a summary and exits 0 only if nothing was lost: every command acked, every
   acked command's handler ran, and every hand reached both event subscribers.

    make demo SECURE=1      (python examples/demo.py --secure)

runs the same over CURVE: it makes a keypair for the hub and one per service (``ackbus keys
generate``), enrolls the services' public keys with the hub (a copy into its ``clients/``
folder), writes an access file saying which services each key may register as and which
types it may send, starts the hub with ``--keys`` and ``--access`` and every service with
``ACKBUS_KEYS`` and ``ACKBUS_HUB_KEY`` in its environment; and shows that a stranger (a
keypair the hub never enrolled) cannot register as the table, and neither can audit's
valid key, which the access file allows only the audit service (docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "generated"))

from ackbus import DeliveryReport, Endpoint  # noqa: E402
from poker import table_ackbus, table_pb2  # noqa: E402

HANDS = 600
KILL_AT = 200
"""Hands dealt, and after how many sends the table is killed (``--hands N`` scales both:
the suite runs a short demo)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process that prints a ready line; stopped (or killed) by the demo."""

    def __init__(
        self, name: str, argv: list[str], ready: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT / "generated")}
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        start = time.monotonic()
        line = ""
        while ready not in line:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() - start > 15:
                self.kill()
                raise SystemExit(f"demo: {name} did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> dict[str, int]:
        """SIGTERM, then the service's last stdout line: its counters."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def log_runs(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines())


KEYS: Path | None = None
"""With --secure: the folder of the demo's keys (``make_keys``)."""


def make_keys(folder: Path) -> Path:
    """The hub's keypair and one per service (and the dealer), as ``ackbus keys
    generate`` makes them; each service's public key enrolled with the hub."""
    for name in ("hub", "table", "audit", "lobby", "dealer", "stranger"):
        subprocess.run(
            [sys.executable, "-m", "ackbus.cli", "keys", "generate", name, "--dir", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        )
    (folder / "clients").mkdir()
    for name in ("table", "audit", "lobby", "dealer"):  # enroll: copy the PUBLIC half
        (folder / "clients" / f"{name}.key").write_bytes((folder / f"{name}.key").read_bytes())
    (folder / "access.toml").write_text(ACCESS)
    return folder


ACCESS = """\
# What each enrolled key may do (ackbus hub --access; docs/security.md).
[clients.table]
services = ["table"]
send = ["poker.HandStarted"]        # the event it publishes

[clients.audit]
services = ["audit"]
send = []                           # it only listens

[clients.lobby]
services = ["lobby"]
send = []

[clients.dealer]
services = ["dealer"]
send = ["poker.StartHand", "poker.GetTableState"]
"""


def key_env(name: str) -> dict[str, str]:
    """What a service's environment says about its keys (nothing without --secure)."""
    if KEYS is None:
        return {}
    return {
        "ACKBUS_KEYS": str(KEYS / f"{name}.key_secret"),
        "ACKBUS_HUB_KEY": str(KEYS / "hub.key"),
    }


def service(name: str, hub: str, log: Path, instance: str) -> Process:
    argv = [str(ROOT / "examples" / "services.py"), "--service", name, "--hub", hub]
    return Process(
        f"{name} ({instance})",
        [*argv, "--log", str(log), "--instance", instance],
        "ready",
        env=key_env(name),
    )


async def refused_as_table(hub: str, key: str) -> bool:
    """``key`` tries to register as the table: the stranger's (never enrolled) is refused
    in the CURVE handshake, audit's (enrolled, allowed only the audit service) by the
    access file; either way it never gets a WELCOME (ConnectTimeout)."""
    from ackbus import ConnectTimeout

    assert KEYS is not None
    try:
        async with Endpoint(
            "table",
            hub,
            keys=KEYS / f"{key}.key_secret",
            hub_key=KEYS / "hub.key",
            connect_timeout=1.5,
        ):
            return False
    except ConnectTimeout:
        return True


async def dealer(
    hub: str, restart_table: object, restarts: list[asyncio.Future[None]]
) -> list[DeliveryReport]:
    reports: list[DeliveryReport] = []
    keys = {} if KEYS is None else {"keys": KEYS / "dealer.key_secret", "hub_key": KEYS / "hub.key"}
    async with Endpoint("dealer", hub, heartbeat=0.25, **keys) as ep:
        client = table_ackbus.TableClient(ep)
        for i in range(HANDS):
            msg = table_pb2.StartHand(table_id=f"table-{i % 8}", seats=6, button_seat=i % 6)
            reports.append(await client.send_start_hand(msg, wait_ack=False))
            if i == KILL_AT:
                await restart_table()  # type: ignore[operator]
            await asyncio.sleep(0.004)
        async with asyncio.timeout(30):
            for report in reports:
                await report.wait(30)
            await asyncio.gather(*restarts)
        state = await client.request_get_table_state(table_id="table-0", timeout=5)
        print(f"  request/reply: table-0 reports {state.hand_number} hands dealt by its instance")
    return reports


def main() -> int:
    global KEYS, HANDS, KILL_AT
    parser = argparse.ArgumentParser(description="the ackbus demo (module docstring)")
    parser.add_argument("--secure", action="store_true", help="CURVE keys on every process")
    parser.add_argument("--hands", type=int, default=HANDS, help=f"default {HANDS}")
    args = parser.parse_args()
    secure = args.secure
    HANDS, KILL_AT = args.hands, args.hands // 3
    port = free_port()
    hub_address = f"tcp://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="ackbus-demo-"))
    logs = {name: work / f"{name}.log" for name in ("table-1", "table-2", "audit", "lobby")}
    print(f"ackbus demo: hub on {hub_address}, logs in {work}")
    started = time.monotonic()
    hub_argv = ["-m", "ackbus.hub", "--bind", hub_address, "--heartbeat", "0.25"]
    if secure:
        KEYS = make_keys(work / "keys")
        hub_argv += ["--keys", str(KEYS), "--access", str(KEYS / "access.toml")]
        print(f"  CURVE: keys in {KEYS}; table, audit, lobby and the dealer enrolled")
        print(f"  access file {KEYS / 'access.toml'}: each key its own service")
    hub = Process("hub", hub_argv, "listening")
    audit = service("audit", hub_address, logs["audit"], "audit-1")
    lobby = service("lobby", hub_address, logs["lobby"], "lobby-1")
    tables = [service("table", hub_address, logs["table-1"], "table-1")]

    pending: list[asyncio.Future[None]] = []

    async def restart_table() -> None:
        print(f"  after {KILL_AT} sends: kill -9 table-1; table-2 starts 0.3 s later")
        tables[0].kill()

        async def replace() -> None:
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(service, "table", hub_address, logs["table-2"], "table-2")
            tables.append(new)

        # The dealer keeps sending meanwhile: the hub answers no-route, and the
        # messages are retried until table-2 takes them.
        pending.append(asyncio.ensure_future(replace()))

    refused = None
    try:
        if secure:
            stranger = asyncio.run(refused_as_table(hub_address, "stranger"))
            print(
                f"  a stranger's key registering as table: {'refused' if stranger else 'ADMITTED'}"
            )
            other = asyncio.run(refused_as_table(hub_address, "audit"))
            print(f"  audit's key registering as table: {'refused' if other else 'ADMITTED'}")
            refused = stranger and other
        reports = asyncio.run(dealer(hub_address, restart_table, pending))
        time.sleep(0.5)  # let the last HandStarted events reach their subscribers
        counters = [tables[-1].stop(), audit.stop(), lobby.stop()]
    finally:
        for p in (*tables, audit, lobby, hub):
            p.kill()

    acked = [r for r in reports if r]
    failed = Counter(type(r.error).__name__ + ": " + str(r.error) for r in reports if not r)
    retried = sum(1 for r in reports if r.attempts > 1)
    attempts = sum(r.attempts for r in reports)
    latencies = sorted(r.latency * 1000 for r in acked if r.latency is not None)
    ran = log_runs(logs["table-1"]) + log_runs(logs["table-2"])
    acked_ids = {r.message_id.hex() for r in acked}
    not_run = acked_ids - set(ran)
    ran_twice = sum(1 for n in ran.values() if n > 1)
    audit_seen, lobby_seen = (
        sum(log_runs(logs["audit"]).values()),
        sum(log_runs(logs["lobby"]).values()),
    )
    suppressed = sum(c.get("duplicates", 0) for c in counters)

    print()
    print(f"  sent                 {len(reports)}")
    print(f"  acked                {len(acked)}")
    print(f"  retried              {retried} messages ({attempts - len(reports)} extra attempts)")
    print(f"  duplicates suppressed {suppressed} (re-acked without running the handler again)")
    print(f"  ran on both tables   {ran_twice} (in flight when table-1 was killed)")
    print(f"  failed               {sum(failed.values())}")
    for reason, n in failed.most_common():
        print(f"    {n} x {reason}")
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"  latency              p50 {p50:.2f} ms, p99 {p99:.2f} ms (send to ack)")
    print(f"  events               audit handled {audit_seen}, lobby handled {lobby_seen}")
    print(f"  took                 {time.monotonic() - started:.1f} s")
    lost = len(reports) - len(acked) + len(not_run)
    if refused is False:
        print("\nFAILED: the hub let a key register as a service it may not serve")
        return 1
    if lost or audit_seen < HANDS or lobby_seen < HANDS:
        print(f"\nFAILED: {lost} commands lost; events {audit_seen}/{lobby_seen} of {HANDS}")
        return 1
    print("\nnothing lost.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
