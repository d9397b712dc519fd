"""The benchmark runner works end to end: a tiny profile through every scenario.

Never a performance assertion (figures on a shared machine mean nothing here): only
that every row was measured, nothing failed, the table prints and the JSON is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(250)


def test_tiny_profile_measures_every_row_and_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # eleven processes in seven clusters: 12 s alone, 80+ s at load 16
    )
    assert proc.returncode == 0, proc.stderr
    written = list(tmp_path.glob("*-tiny.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    rows = result["rows"]
    expected = {
        "(a) acked, pipelined",
        "(a) acked, sequential",
        "(b) one-way",
        "bare router, sequential",
        "bare router, pipelined",
        "ackbus sequential, standalone hub",
        "ackbus pipelined, standalone hub",
        "ackbus sequential, embedded hub",
        "ackbus pipelined, embedded hub",
        "ackbus pipelined, 2 senders",
        "ackbus pipelined in groups, memory store",
        "ackbus pipelined in groups, SQLite store",
        "ackbus events, 2 subscriber services each ack",
        "ackbus pipelined, def handler (worker pool)",
        "ackbus def handler sleeping 1 ms, 8 workers",
        "(a) acked, pipelined, CURVE",
        "ackbus pipelined, CURVE hub",
        "ackbus pipelined, 100 ordering keys",
        "(a) acked, pipelined, 100 KB JSON",
        "ackbus pipelined, 100 KB JSON",
        "ackbus pipelined, 100 KB JSON, zstd",
        "ackbus sequential, three hubs",
        "ackbus pipelined, three hubs",
        "ackbus sequential, 2 instances at the hub",
        "ackbus pipelined, 6 instances at the hub",
    }
    assert expected <= set(rows)
    for name, fig in rows.items():
        assert fig["msgs_per_s"] > 0, name
        assert "failed" not in fig, name
        if name.startswith("ackbus"):
            assert fig["ratio_msgs_per_s"] > 0, name
    assert rows["ackbus sequential, standalone hub"]["p99_us"] > 0
    assert rows["ackbus pipelined, CURVE hub"]["compared_with"] == (
        "ackbus pipelined, standalone hub"
    )
    assert rows["ackbus pipelined in groups, SQLite store"]["compared_with"] == (
        "ackbus pipelined in groups, memory store"
    )
    for proc_name in ("sender", "hub", "receiver"):
        assert result["memory"][proc_name]["fds"][1] > 0
    assert rows["ackbus pipelined, three hubs"]["compared_with"] == (
        "ackbus pipelined, standalone hub"
    )
    scale = result["scale"]  # the tiny fleet: 2 and 6 idle instances, then a hub restart
    assert scale["instances"] == [2, 6]
    assert scale["storm"]["instances"] == 6
    assert scale["storm"]["failed"] == 0
    assert 0 < scale["storm"]["settled_s"] < 60
    assert "Scale: the hub with 2 and 6 idle instances" in proc.stdout
    for name in expected:
        assert f"| {name} |" in proc.stdout
    assert str(written[0]) in proc.stdout


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        # a live cluster per tree, every round run on both
        (["bench.ab", "--n", "300", "--warm", "300", "--rounds", "2"], "msgs_per_s median"),
        # the store rows' scenario, a fresh cluster per run
        (["bench.durable", "--n", "400", "--repeat", "2", "--trees"], "sqlite msgs_per_s median"),
    ],
)
def test_side_by_side_runs_each_tree_alternately_and_prints_its_figures(
    tool: list[str], expected: str
) -> None:
    """The side-by-side tools with the same tree twice: a line per tree, with the
    median over both rounds and CPU per message of every process."""
    proc = subprocess.run(
        [sys.executable, "-m", *tool, str(ROOT), f"{ROOT}/."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for line in lines:
        assert expected in line
        assert "2 runs" in line
        for process in ("sender", "receiver", "hub"):
            assert process in line
