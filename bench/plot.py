"""The picture of a bench result: each row's throughput and latency beside the raw baseline.

``write(result, path)`` draws one PNG from the JSON that ``python -m bench`` or ``python -m
bench.peers`` writes: an upper panel with the msgs/s of every row measured in throughput
(the median as a bar, min to max as a whisker) and a lower one with the round-trip p50 and
p99 of every row measured one message at a time. Both axes are logarithmic; a dashed line
marks baseline (a), raw pyzmq acked, at 100 bytes, and each bar is coloured by the system
that carried it (raw pyzmq, ackbus, or a broker). It uses matplotlib's ``Figure`` with the
Agg canvas (no display, no ``pyplot`` state), which comes with ``pip install
'ackbus[plot]'``; without it ``write`` returns ``None`` and the runner says so.

Alone: ``python -m bench.plot bench/results/<file>.json`` writes ``<file>.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HINT = "pip install 'ackbus[plot]' (make setup installs it)"
"""How to get the plot when matplotlib is missing."""

COLOURS = {
    "raw pyzmq": "#8c8c8c",
    "ackbus": "#1f5fa8",
    "ackbus, SQLite store": "#6fa3dc",
    "NATS core": "#2e9e3e",
    "NATS JetStream": "#8fd18a",
    "Redis Streams": "#c8332b",
    "RabbitMQ": "#f08a24",
}
_OTHER = "#8e6bbf"
BASE_RATE = "(a) acked, pipelined"
BASE_LATENCY = "(a) acked, sequential"


def system(name: str, fig: dict[str, Any]) -> str:
    """Who carried a row: the ``system`` a peers row names, else its name's prefix."""
    if "system" in fig:
        return str(fig["system"])
    if name.startswith("ackbus"):
        return "ackbus"
    return "raw pyzmq"


def write(result: dict[str, Any], path: Path) -> Path | None:
    """Draw ``result`` to ``path`` (PNG); ``None`` when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = {n: f for n, f in result["rows"].items() if f.get("msgs_per_s")}
    rates = [n for n, f in rows.items() if "p50_us" not in f]
    latencies = [n for n, f in rows.items() if "p50_us" in f]
    heights = [max(len(rates), 1), max(len(latencies), 1)]
    fig = Figure(figsize=(11, 1.6 + 0.26 * sum(heights)), dpi=90, layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=heights)
    _rates(top, rows, rates)
    _latencies(bottom, rows, latencies)
    seen = {system(n, rows[n]) for n in rows}
    handles = [_patch(COLOURS.get(s, _OTHER), s) for s in [*COLOURS, *sorted(seen)] if s in seen]
    handles = list({h.get_label(): h for h in handles}.values())
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(_title(result), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _title(result: dict[str, Any]) -> str:
    machine = result.get("machine", {})
    return (
        f"{result.get('title', 'ackbus bench')}, {result.get('profile', '')} profile, "
        f"{result.get('when', '')}; load {result.get('load_before', '?')} → "
        f"{result.get('load_after', '?')}, {machine.get('cpus', '?')} cores; "
        f"median of {result.get('reps', '?')} (whiskers: min-max)"
    )


def _patch(colour: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def _colours(rows: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    return [COLOURS.get(system(n, rows[n]), _OTHER) for n in names]


def _rates(ax: Any, rows: dict[str, dict[str, Any]], names: list[str]) -> None:
    values = [rows[n]["msgs_per_s"] for n in names]
    lows = [v - rows[n].get("msgs_per_s_min", v) for n, v in zip(names, values, strict=True)]
    highs = [rows[n].get("msgs_per_s_max", v) - v for n, v in zip(names, values, strict=True)]
    ys = range(len(names))
    ax.barh(ys, values, xerr=[lows, highs], color=_colours(rows, names), capsize=2)
    for y, n, v, high in zip(ys, names, values, highs, strict=True):
        ratio = rows[n].get("ratio_msgs_per_s")
        note = f"{v:,.0f}" + (f"  ({ratio:.2f} x (a))" if ratio else "")
        ax.text((v + high) * 1.05, y, note, va="center", fontsize=7)
    _axis(ax, names, "msgs/s (log scale), acknowledged end to end")
    if BASE_RATE in rows:
        ax.axvline(rows[BASE_RATE]["msgs_per_s"], color="#555555", ls="--", lw=0.8)


def _latencies(ax: Any, rows: dict[str, dict[str, Any]], names: list[str]) -> None:
    p50 = [rows[n]["p50_us"] for n in names]
    p99 = [rows[n].get("p99_us", v) for n, v in zip(names, p50, strict=True)]
    ys = range(len(names))
    colours = _colours(rows, names)
    ax.barh(ys, p99, color=colours, alpha=0.35, label="p99")
    ax.barh(ys, p50, color=colours, height=0.5, label="p50")
    for y, n, a, b in zip(ys, names, p50, p99, strict=True):
        ratio = rows[n].get("ratio_p50")
        note = f"p50 {a:,.0f} / p99 {b:,.0f} µs" + (f"  ({ratio:.2f} x (a))" if ratio else "")
        ax.text(b * 1.04, y, note, va="center", fontsize=7)
    _axis(ax, names, "round trip µs, one at a time (log scale): p50 dark, p99 light")
    if BASE_LATENCY in rows:
        ax.axvline(rows[BASE_LATENCY]["p50_us"], color="#555555", ls="--", lw=0.8)


def _axis(ax: Any, names: list[str], label: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(label, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    low, high = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if high / low < 2_000 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25)
    ax.grid(axis="x", which="major", lw=0.3)


def written(result_path: Path, result: dict[str, Any]) -> str:
    """Write the PNG beside ``result_path``; the line the runner prints about it."""
    png = write(result, result_path.with_suffix(".png"))
    if png is None:
        return f"plot skipped: matplotlib is not installed; {HINT}"
    return f"plot written to {png}"


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=doc)
    parser.add_argument("result", type=Path, help="a JSON file from bench/results")
    args = parser.parse_args(argv)
    print(written(args.result, json.loads(args.result.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
