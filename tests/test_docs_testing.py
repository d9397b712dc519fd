"""docs/testing.md runs as written: the worked example of the pytest plugin (its blocks
together, as one test file) and every other block that holds a test (each a file of its
own), run by pytest in a child process whose only configuration is an empty ini file, so
the plugin comes from its ``pytest11`` entry point and pytest-asyncio runs in its default
(strict) mode, as in a user's project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "testing.md").read_text()
MARKER = "<!-- the worked example: tests/test_docs_testing.py runs the next blocks as written -->"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _files() -> dict[str, str]:
    """Test files made of the doc's blocks: the worked example's (from the marker to the
    next ``## `` heading) in one, each later block with a test in its own."""
    start = DOC.index(MARKER)
    end = DOC.index("\n## ", start)
    worked = [m.group(1) for m in BLOCK.finditer(DOC, start, end)]
    others = [m.group(1) for m in BLOCK.finditer(DOC, end) if "def test_" in m.group(1)]
    files = {"test_worked_example.py": "\n\n".join(worked)}
    for i, block in enumerate(others):
        files[f"test_block_{i}.py"] = block
    return files


def test_the_docs_test_blocks_run_as_written(tmp_path: Path) -> None:
    files = _files()
    assert len(files) >= 3, files.keys()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    tests = sum(len(re.findall(r"^(?:async )?def test_", t, re.M)) for t in files.values())
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        cwd=ROOT,  # the worked example's ackbus_service finds tests/run/table_app.py
        env={**os.environ, "PYTHONPATH": str(ROOT / "generated")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert re.search(rf"\b{tests} passed\b", run.stdout), run.stdout[-2000:]
    assert " warning" not in run.stdout.splitlines()[-1], run.stdout[-3000:]
