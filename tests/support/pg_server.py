"""A real, throwaway PostgreSQL server for the tests: one per test session (per xdist
worker), a fresh database per test.

``initdb`` into a temp folder, then ``postgres`` run as a child process of the test
session (as the ``postgres`` user when the tests run as root: initdb and postgres refuse
root), listening on a unix socket in that folder and on 127.0.0.1 at a free port, never
elsewhere. It is stopped (SIGINT, then SIGKILL), reaped and its folder removed at the end;
if the test process dies first (a timeout, kill -9), the kernel sends the server SIGQUIT
(PR_SET_PDEATHSIG), so no server outlives its session.
Where no PostgreSQL server can be found the tests that need it fail, with a sentence
saying what to install; they do not skip.

Imported by tests as ``pg_server`` (tests/support is on pytest's pythonpath).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from proc_harness import free_port

MISSING = (
    "the PostgreSQL tests need a PostgreSQL server's binaries (initdb, postgres): "
    "run `make setup` (as root it installs the Debian package: apt-get install -y "
    "postgresql), or install PostgreSQL 13+ yourself and put its bin folder on PATH"
)
PASSWORD_ROLE = "ackbus_pw"
"""A role that must log in with a password (the refused-login tests use it)."""
PASSWORD = "right-password"


def find_bin() -> Path | None:
    """The folder holding initdb and postgres: on PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _die_with_parent() -> None:
    """In the server's child before exec (after it took the postgres user): SIGQUIT, an
    immediate shutdown, when the test process dies, so that a test session killed by a
    timeout or with -9 leaves no server behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG


class PgServer:
    """One running server (see the module docstring)."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        """Whether commits reach the disk (the bench's server); the tests' server runs
        with ``fsync=off``: what they check does not depend on it, and it is faster."""
        bindir = find_bin()
        if bindir is None:
            raise RuntimeError(MISSING)
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ackbus-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._user = "postgres"
            try:
                entry = pwd.getpwnam(self._user)
            except KeyError:
                raise RuntimeError(
                    "running as root, the PostgreSQL tests need a `postgres` user to run "
                    "the server as (the Debian package postgresql creates it)"
                ) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.dbs = 0

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            argv, user=self._user, cwd=self.root, capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip
            hba = self.data / "pg_hba.conf"
            hba.write_text(
                f"local all {PASSWORD_ROLE} scram-sha-256\n"
                f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
            )
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the child's stderr
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.root),
                "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                *(() if self.fsync else ("-c", "fsync=off", "-c", "full_page_writes=off")),
                "-c", "max_connections=200",
                "-c", "shared_buffers=32MB",
            ],
            user=self._user, cwd=self.root, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            # The signal follows the *thread* that started the server: only the main
            # thread's (a restart from a worker thread, test_pg_restart's, goes without).
            preexec_fn=(
                _die_with_parent if threading.current_thread() is threading.main_thread() else None
            ),
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"PostgreSQL did not start: {exc}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"'{PASSWORD_ROLE}') THEN CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER "
                f"PASSWORD '{PASSWORD}'; END IF; END $$"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self, db: str, *, user: str = "postgres", password: str | None = None) -> str:
        """A URL over the unix socket in the server's folder."""
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@/{db}?host={self.root}&port={self.port}"

    def tcp_url(self, db: str, *, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database's name."""
        self.dbs += 1
        name = f"t{os.getpid()}_{self.dbs}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} STRATEGY = FILE_COPY")
        return name

    def kill(self, sig: int = signal.SIGQUIT) -> None:
        """Stop the server: SIGINT is a fast shutdown, SIGQUIT an immediate one (a crash:
        recovery at the next start). Waits for it; SIGKILL after 30 s."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop, reap, and remove the folder."""
        self.kill(signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)
