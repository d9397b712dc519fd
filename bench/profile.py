"""Where the time goes: py-spy samples of the sender, hub and receiver during a run.

Starts a :class:`~bench.cluster.Cluster` (standalone hub), runs a pipelined or a
sequential scenario long enough for ``--seconds`` of samples, attaches ``py-spy record``
to each of the three processes meanwhile, and prints per process the functions with
the most samples: *self* (the function itself was running) and *total* (it was on the
stack). Needs ``py-spy`` (``.venv/bin/pip install -e '.[profile]'``) and permission
to attach (root, or ptrace allowed).

``.venv/bin/python -m bench.profile [--kind sequential] [--seconds 8] [--top 25]``
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .cluster import Cluster


def summarize(raw: str, top: int) -> str:
    """py-spy's collapsed stacks (``frame;frame;... count``) as self/total tables."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"  {samples} samples; self:"]
    out += [f"    {n / samples:6.1%}  {name}" for name, n in own.most_common(top)]
    out.append("  total (on the stack):")
    out += [f"    {n / samples:6.1%}  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``; lines differ, functions not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("pipelined", "sequential"), default="pipelined")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--n", type=int, default=0, help="messages (default: enough)")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    n = args.n or (60_000 if args.kind == "pipelined" else 4_000) * args.seconds // 2
    with Cluster(hub="standalone") as cluster, tempfile.TemporaryDirectory() as tmp:
        pids = dict(cluster.pids)
        sender = cluster.workers[0][0].pid
        pids["sender"] = sender
        result: dict[str, object] = {}
        run = threading.Thread(target=lambda: result.update(cluster.run(args.kind, n)))
        run.start()
        spies = {
            name: subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(pid), "--duration", str(args.seconds)),
                    *("--rate", str(args.rate), "--format", "raw", "--nonblocking"),
                    *("--output", f"{tmp}/{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        }
        for proc in spies.values():
            proc.wait(args.seconds + 30)
        run.join(600)
        print(f"{args.kind}: {n:,} messages; {result.get('msgs_per_s', 0):,.0f} msgs/s", end="")
        if "p50_us" in result:
            print(f", p50 {result['p50_us']:.0f} µs, p99 {result['p99_us']:.0f} µs", end="")
        print(" (under the profiler)")
        for name in ("sender", "hub", "receiver"):
            path = Path(f"{tmp}/{name}.txt")
            print(f"\n{name}:")
            print(summarize(path.read_text(), args.top) if path.exists() else "  no samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
