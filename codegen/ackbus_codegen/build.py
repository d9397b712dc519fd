"""``python -m ackbus_codegen.build``: regenerate this repository's generated code.

Two outputs, both committed:

* the runtime's own protos (``schemas/ackbus/*.proto``) become ``runtime/ackbus/*_pb2.py``
  and ``.pyi``, with a copy of each ``.proto`` beside them so that an installed ackbus
  can put them on protoc's include path;
* the example schemas (every other folder under ``schemas/``) become ``generated/``.

``--check`` regenerates into a temporary folder and fails, listing the differences,
when the committed files are stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from . import protoc

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
RUNTIME = ROOT / "runtime"
GENERATED = ROOT / "generated"
RUNTIME_PROTO_DIR = "ackbus"


def _runtime_protos() -> list[str]:
    return sorted(p.relative_to(SCHEMAS).as_posix() for p in (SCHEMAS / "ackbus").glob("*.proto"))


def _example_protos() -> list[str]:
    return sorted(
        p.relative_to(SCHEMAS).as_posix()
        for p in SCHEMAS.rglob("*.proto")
        if p.relative_to(SCHEMAS).parts[0] != RUNTIME_PROTO_DIR
    )


def build(runtime_out: Path, generated_out: Path) -> None:
    """Write every generated file under the two output roots."""
    runtime_files = _runtime_protos()
    protoc.run(runtime_files, include=[SCHEMAS], out=runtime_out, ackbus=False)
    for name in runtime_files:
        shutil.copyfile(SCHEMAS / name, runtime_out / name)
    examples = _example_protos()
    if examples:
        protoc.run(examples, include=[SCHEMAS], out=generated_out, ackbus=True)


def _generated_files(root: Path, sub: str | None = None) -> set[str]:
    base = root / sub if sub else root
    if not base.exists():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in base.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix in {".py", ".pyi", ".proto"}
        and (p.name.endswith(("_pb2.py", "_pb2.pyi", "_ackbus.py", ".proto")) or sub is None)
    }


def _diff(fresh: Path, committed: Path, sub: str | None) -> list[str]:
    want = _generated_files(fresh, sub)
    have = _generated_files(committed, sub)
    problems = [f"missing: {name}" for name in sorted(want - have)]
    problems += [f"not generated any more: {name}" for name in sorted(have - want)]
    problems += [
        f"stale: {name}"
        for name in sorted(want & have)
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ackbus_codegen.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed output is stale")
    args = parser.parse_args(argv)
    if not args.check:
        build(RUNTIME, GENERATED)
        print(f"generated {RUNTIME.relative_to(ROOT)}/ackbus and {GENERATED.relative_to(ROOT)}/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_runtime, fresh_generated = Path(tmp, "runtime"), Path(tmp, "generated")
        build(fresh_runtime, fresh_generated)
        problems = [f"runtime/{p}" for p in _diff(fresh_runtime, RUNTIME, RUNTIME_PROTO_DIR)]
        problems += [f"generated/{p}" for p in _diff(fresh_generated, GENERATED, None)]
    if problems:
        print(
            "generated code is stale; run `make generate` and commit the result:", file=sys.stderr
        )
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
