"""The demo as a user runs it (``make demo``, ``make demo SECURE=1``), with fewer hands:
it exits 0 only if nothing was lost, and the secure one also only if the hub refused a
stranger's key, and (its access file) audit's key registering as the table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import zmq
from proc_harness import ROOT


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_the_demo_loses_nothing(secure: bool) -> None:
    if secure and not zmq.has("curve"):
        pytest.fail("libzmq was built without CURVE: the secure demo needs it")
    argv = [sys.executable, str(ROOT / "examples" / "demo.py"), "--hands", "90"]
    done = subprocess.run(
        argv + (["--secure"] if secure else []),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing lost." in done.stdout
    assert "acked                90" in done.stdout
    if secure:
        assert "a stranger's key registering as table: refused" in done.stdout
        assert "audit's key registering as table: refused" in done.stdout
        assert "access file" in done.stdout
