"""``make bench-peers`` writes its table from the result: canned JSON, no servers.

The run itself needs real brokers and stays out of the suite; this checks only the
Markdown it writes: every row, what "done" means for each system, what was left out.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.peers")


def result(peers: ModuleType) -> dict[str, Any]:
    return {
        "title": "ackbus and brokers",
        "profile": "peers",
        "note": "",
        "when": "2026-12-03 13:00:00 UTC",
        "seconds": 120.0,
        "load_before": "0.50 0.40 0.30",
        "load_after": "1.20 0.60 0.40",
        "machine": {
            "cpus": 2,
            "python": "3.11.7",
            "pyzmq": "27.3.0",
            "libzmq": "4.3.5",
            "nats-server": "2.9.10-1+b3",
            "nats-py": "2.16.0",
        },
        "reps": 3,
        "rows": {
            "(a) acked, sequential": {
                "msgs_per_s": 4000.0,
                "msgs_per_s_min": 3900.0,
                "msgs_per_s_max": 4100.0,
                "p50_us": 240.0,
                "p99_us": 400.0,
                "system": "raw pyzmq",
            },
            "NATS JetStream, pipelined, 10 KB": {
                "msgs_per_s": 30000.0,
                "msgs_per_s_min": 29000.0,
                "msgs_per_s_max": 31000.0,
                "ratio_msgs_per_s": 0.5,
                "system": "NATS JetStream",
            },
            "RabbitMQ, sequential": {
                "system": "RabbitMQ",
                "errors": ["TimeoutError: 2 of 50 confirmed"],
                "reps": 0,
            },
        },
        "done": {"raw pyzmq": peers.DONE["raw pyzmq"], "NATS JetStream": "stored and acked"},
        "skipped": {"Redis Streams": "redis-server did not start: port in use"},
    }


def test_the_table_has_every_row_what_done_means_and_what_was_left_out(
    peers: ModuleType,
) -> None:
    text = peers.table(result(peers))
    assert "load 0.50 0.40 0.30 → 1.20 0.60 0.40" in text
    assert "nats-server 2.9.10-1+b3; nats-py 2.16.0" in text
    assert "| (a) acked, sequential | handled | 4,000 (3,900-4,100) |  | 240 | 400 |  |" in text
    assert (
        "| NATS JetStream, pipelined, 10 KB | stored, acked, replied | 30,000 (29,000-31,000) "
        "| 0.50 |" in text
    )
    assert "RabbitMQ, sequential (1 runs in error: TimeoutError: 2 of 50 confirmed)" in text
    assert "- **NATS JetStream**: stored and acked." in text
    assert "- Redis Streams: redis-server did not start: port in use." in text


def test_every_system_says_what_done_means(peers: ModuleType) -> None:
    for label, _broker in peers.SYSTEMS.values():
        assert label in peers.DONE
        assert label in peers.SHORT
