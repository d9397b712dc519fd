"""Secure by default (issue 18, item 5): a hub without keys listens only on this host.

An exposed address (``tcp://`` other than loopback) without keys is refused before
anything is bound, with an error that says how to make keys or how to run insecure on
purpose; loopback, ``ipc://``, ``inproc://`` and ``inmem://`` stay plain and easy. No
test here binds beyond loopback: the refusal comes before binding, and an insecure hub
is only constructed, never started, on an exposed address.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ackbus import InsecureBindError
from ackbus.hub import Hub
from ackbus.transport._address import exposed
from ackbus.transport._keys import generate_keys
from helpers import eventually
from proc_harness import run_hub

EXPOSED = "tcp://198.51.100.7:5555"
"""A documentation-range address: never bound by these tests."""


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://127.0.0.1:5555", False),
        ("tcp://127.8.9.10:5555", False),
        ("tcp://[::1]:5555", False),
        ("tcp://localhost:5555", False),
        ("tcp://127.0.0.1:0", False),
        ("tcp://0.0.0.0:5555", True),
        ("tcp://*:5555", True),
        ("tcp://[::]:5555", True),
        (EXPOSED, True),
        ("tcp://eth0:5555", True),
        ("tcp://no-such-host.invalid:5555", True),
        ("tcp://192.0.2.1;127.0.0.1:5555", False),
        ("ipc:///tmp/ackbus-hub", False),
        ("inproc://hub", False),
        ("inmem://hub", False),
        ("ws://127.0.0.1:5555", True),
    ],
)
def test_exposed_means_reachable_from_other_hosts(address: str, expected: bool) -> None:
    assert exposed(address) is expected


def test_a_hub_without_keys_refuses_an_exposed_address_before_binding() -> None:
    with pytest.raises(InsecureBindError) as caught:
        Hub(["tcp://127.0.0.1:0", EXPOSED, "tcp://*:5556"])
    err = caught.value
    assert err.addresses == [EXPOSED, "tcp://*:5556"]
    text = str(err)
    assert text.startswith(f"refusing to listen on {EXPOSED}, tcp://*:5556 without keys")
    assert "ackbus keys generate hub --dir DIR" in text
    assert "--insecure" in text
    assert "--keys DIR" in text


def test_insecure_true_is_allowed_and_said_once_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ackbus.hub"):
        Hub(EXPOSED, insecure=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "ackbus.hub"]
    assert lines == [
        f"hub hub listens on {EXPOSED} without keys (insecure=True): anyone who reaches it "
        "may register as any service"
    ]


async def test_keys_make_an_exposed_address_acceptable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    generate_keys(tmp_path, "hub")
    (tmp_path / "clients").mkdir()
    with caplog.at_level(logging.WARNING, logger="ackbus.hub"):
        hub = Hub(EXPOSED, keys=tmp_path)
    await hub.close()  # never started: releases its key gate
    assert not [r for r in caplog.records if r.name == "ackbus.hub"]


async def test_loopback_needs_neither_keys_nor_insecure() -> None:
    async with Hub(["tcp://127.0.0.1:0", "inmem://secure-default"]) as hub:
        await eventually(lambda: bool(hub.addresses))
        assert hub.addresses[0].startswith("tcp://127.0.0.1:")


def test_ackbus_hub_on_an_exposed_address_without_keys_prints_one_line_and_exits_1() -> None:
    done = run_hub("--bind", EXPOSED)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"ackbus hub: error: refusing to listen on {EXPOSED} without keys")
    assert "(--insecure)" in lines[0]
