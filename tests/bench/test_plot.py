"""The bench's picture is drawn from a result's JSON, and its absence is said, not fatal.

Canned figures, no processes: only that a PNG is written and names what it should.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

RESULT: dict[str, Any] = {
    "profile": "tiny",
    "when": "2026-12-03 12:00:00 UTC",
    "load_before": "1.00 1.00 1.00",
    "load_after": "1.50 1.10 1.00",
    "machine": {"cpus": 2},
    "reps": 3,
    "rows": {
        "(a) acked, pipelined": {"msgs_per_s": 50_000.0, "msgs_per_s_min": 45_000.0},
        "(a) acked, sequential": {"msgs_per_s": 4_000.0, "p50_us": 240.0, "p99_us": 400.0},
        "ackbus pipelined, standalone hub": {"msgs_per_s": 40_000.0, "ratio_msgs_per_s": 0.8},
        "ackbus sequential, standalone hub": {"msgs_per_s": 1_500.0, "p50_us": 600.0},
        "Redis Streams, pipelined, 100 B": {"msgs_per_s": 20_000.0, "system": "Redis Streams"},
        "a row that did not run": {"error": "no server"},
    },
}


@pytest.fixture
def plot(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench/plot.py`` (bench/ is beside the package, not in it)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.plot")


def test_a_png_is_written_beside_the_json(plot: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    line = plot.written(tmp_path / "20261203T120000Z-tiny.json", RESULT)
    png = tmp_path / "20261203T120000Z-tiny.png"
    assert line == f"plot written to {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_skipped_and_says_how_to_get_it(
    plot: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    line = plot.written(tmp_path / "r.json", RESULT)
    assert line.startswith("plot skipped: matplotlib is not installed")
    assert "ackbus[plot]" in line
    assert not list(tmp_path.iterdir())


def test_rows_are_coloured_by_the_system_that_carried_them(plot: ModuleType) -> None:
    rows = RESULT["rows"]
    assert plot.system("(a) acked, pipelined", rows["(a) acked, pipelined"]) == "raw pyzmq"
    assert plot.system("ackbus sequential, standalone hub", {}) == "ackbus"
    name = "Redis Streams, pipelined, 100 B"
    assert plot.system(name, rows[name]) == "Redis Streams"
