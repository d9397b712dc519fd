"""Run one fuzz target under atheris (libFuzzer for Python): ``python fuzz/run.py TARGET
[libFuzzer flags]``; ``make fuzz`` runs them all (fuzz/all.py).

Each target is a function of one byte string that raises when a decoder breaks its
contract, a custom mutator that changes inputs the way their format allows (a multipart
field by field, a protobuf field, a JSON value, a store row's column), and seeds: valid
inputs that start the corpus. The ackbus package is instrumented, so libFuzzer's
coverage feedback steers the mutations into the decoders' branches.

Bounds, checked on every input (libFuzzer's ``-malloc_limit_mb`` needs a sanitizer's
malloc hooks, which atheris's wheel does not have):

* time: libFuzzer's ``-timeout`` (a hang is a crash); the slowest input is reported;
* memory: the address space is capped (``RLIMIT_AS``) at what the process had after
  start-up plus ``FUZZ_MEMORY_MB`` (512), so an allocation beyond it raises
  ``MemoryError``: a crash, and so is a refusal raised while handling one (the checks
  look into its ``__context__``); peak RSS must stay within the same margin after every
  input, and libFuzzer's ``-rss_limit_mb`` holds too.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ackbus"]):
    import fuzz_targets

ROOT = Path(__file__).resolve().parent.parent
REPORT_EVERY = 250_000


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


class Guard:
    """Runs the target on each input and keeps the bounds (see the module docstring)."""

    def __init__(
        self, name: str, check: Callable[[bytes], None], memory_mb: int, runs: int = 0
    ) -> None:
        self.name = name
        self.runs = runs
        """libFuzzer's ``-runs``: report once this many inputs ran (libFuzzer then exits
        without running Python's exit handlers)."""
        self.check = check
        self.inputs = 0
        self.slowest = 0.0
        self.margin_kb = memory_mb * 1024
        self.rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        limit = _vm_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    def __call__(self, data: bytes) -> None:
        start = time.perf_counter()
        self.check(data)
        took = time.perf_counter() - start
        self.slowest = max(self.slowest, took)
        self.inputs += 1
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if peak_kb > self.rss_start_kb + self.margin_kb:
            raise MemoryError(f"{self.name}: peak RSS {peak_kb // 1024} MiB after this input")
        if self.inputs % REPORT_EVERY == 0 or self.inputs == self.runs:
            self.report()

    def report(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(
            f"[{self.name}] {self.inputs} inputs checked, slowest {self.slowest * 1000:.1f} ms, "
            f"peak RSS {peak} MiB",
            file=sys.stderr,
            flush=True,
        )


def _byte_mutate(data: bytes, max_size: int) -> bytes:
    """libFuzzer's own mutation (``atheris.Mutate``)."""
    result: bytes = atheris.Mutate(data, max_size)
    return result


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: {argv[0]} TARGET [libFuzzer flags]; targets: {fuzz_targets.names()}")
    name = argv[1]
    target = fuzz_targets.TARGETS[name]
    memory_mb = int(os.environ.get("FUZZ_MEMORY_MB", "512"))
    corpus = ROOT / ".fuzz" / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    artifacts = ROOT / ".fuzz" / "crashes"
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = [f for f in argv[2:] if f.startswith("-")]
    flags.append(f"-artifact_prefix={artifacts}/{name}-")
    paths = [a for a in argv[2:] if not a.startswith("-")] or [str(corpus)]
    runs = [int(f.split("=", 1)[1]) for f in flags if f.startswith("-runs=")]
    guard = Guard(name, target.check, memory_mb, runs[-1] if runs else 0)
    mutator = target.mutator(_byte_mutate)
    atheris.Setup([argv[0], *flags, *paths], guard, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
