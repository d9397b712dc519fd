"""``make fuzz``: every target under atheris, and a summary.

``python fuzz/all.py [--runs N] [--jobs J] [TARGET ...]`` runs fuzz/run.py per target (J
at once, each in a process of its own) with libFuzzer's bounds (``-timeout``: a hang is
a crash; ``-rss_limit_mb``; inputs up to ``-max_len`` bytes), keeps each log in
``.fuzz/logs/``, and prints per target the inputs run, crashes, hangs and out-of-memory
ends, the time taken, the slowest input and the peak RSS. It exits 1 if any target
found anything (its input is in ``.fuzz/crashes/``: replay it with ``python fuzz/run.py
TARGET .fuzz/crashes/FILE``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fuzz_targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FLAGS = ("-timeout=10", "-rss_limit_mb=1536", "-max_len=65536", "-print_final_stats=1")


def run_target(name: str, runs: int) -> dict[str, str]:
    logs = ROOT / ".fuzz" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, str(HERE / "run.py"), name, f"-runs={runs}", *FLAGS],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    took = time.monotonic() - start
    text = log.read_text(errors="replace")
    done = re.search(r"Done (\d+) runs in (\d+) second", text)
    checked = re.findall(r"\[\S+\] (\d+) inputs checked, slowest ([\d.]+) ms, peak RSS (\d+)", text)
    crash = re.search(r"Uncaught Python exception|==\d+== ERROR|deadly signal", text)
    hang = "ERROR: libFuzzer: timeout" in text
    oom = "out-of-memory" in text or "MemoryError" in text
    return {
        "target": name,
        "inputs": done.group(1) if done else "-",
        "crashes": "1" if crash and not (hang or oom) else "0",
        "hangs": "1" if hang else "0",
        "oom": "1" if oom else "0",
        "time": f"{took:.0f} s",
        "slowest": f"{checked[-1][1]} ms" if checked else "-",
        "peak_rss": f"{checked[-1][2]} MiB" if checked else "-",
        "ok": "yes" if proc.returncode == 0 and done and not (crash or hang or oom) else "NO",
        "log": str(log.relative_to(ROOT)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at once")
    parser.add_argument("targets", nargs="*", default=list(fuzz_targets.TARGETS))
    args = parser.parse_args()
    unknown = set(args.targets) - set(fuzz_targets.TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {fuzz_targets.names()}")
    print(
        f"fuzzing {', '.join(args.targets)}: {args.runs} inputs each, {args.jobs} at a time",
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each target is a process
        done = pool.map(lambda name: run_target(name, args.runs), args.targets)
        rows = []
        for row in done:
            rows.append(row)
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    columns = ["target", "inputs", "crashes", "hangs", "oom", "time", "slowest", "peak_rss", "ok"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print()
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))
    return 0 if all(r["ok"] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
