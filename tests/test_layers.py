"""The runtime's imports, read from its sources: no import cycles, and a sans-IO core.

Every module under runtime/ackbus is parsed with ``ast``. An import counts wherever it is
written (module level or inside a function: both run at run time), relative or absolute,
except under ``if TYPE_CHECKING:`` (never runs) and ``if __name__ == "__main__":`` (runs only
when the module is the program, not when it is imported). ``make layers`` checks the layer
order itself (import-linter, pyproject.toml); this file checks what a layers contract does
not: cycles inside a layer, and what the core reaches transitively.
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections.abc import Iterator

import ackbus

ROOT = pathlib.Path(ackbus.__file__).parent
PACKAGE = "ackbus"

_CORE_FORBIDDEN = {
    "asyncio",
    "zmq",
    "sqlite3",
    "google",
    "socket",
    "threading",
    "time",
    "selectors",
    "trio",
}
"""What the sans-IO core must not reach, directly or through another ackbus module."""


def _module_name(path: pathlib.Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except the bodies of TYPE_CHECKING and __main__ guards."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and (
            _is_type_checking(child.test) or _is_main_guard(child.test)
        ):
            for orelse in child.orelse:
                yield orelse
                yield from _run_time_nodes(orelse)
            continue
        yield child
        yield from _run_time_nodes(child)


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> tuple[set[str], set[str]]:
    """The ackbus modules ``name`` imports at run time, and the other top-level modules."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    targets: list[str] = []
    for node in _run_time_nodes(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, node)
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
            targets += subs or [module]
            if subs and len(subs) < len(node.names):
                targets.append(module)
    internal, external = set(), set()
    for target in targets:
        if target.split(".")[0] != PACKAGE:
            external.add(target.split(".")[0])
            continue
        # Importing a.b.c runs the __init__ of a.b first (unless the importer is inside it).
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and not (name + ".").startswith(prefix + "."):
                internal.add(prefix)
    internal.discard(name)
    return internal, external


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v][0]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_function_level_and_package_imports() -> None:
    # Guards on the parser itself, with imports known to be written each way.
    assert "ackbus.errors" in GRAPH["ackbus.core._values"][0]  # from ..errors import
    assert "ackbus.endpoint" in GRAPH["ackbus._dead_letters"][0]  # inside a function
    assert "ackbus.envelope_pb2" in GRAPH["ackbus.wire._codec"][0]  # from .. import envelope_pb2
    assert "ackbus.store" not in GRAPH["ackbus._types"][0]  # only under TYPE_CHECKING
    assert "ackbus.cli" not in GRAPH["ackbus.hub"][0]  # only under __name__ == "__main__"
    assert "ackbus.core" in GRAPH["ackbus.testing.simactors"][0]  # the package's __init__ runs


def test_no_import_cycles_at_run_time() -> None:
    assert _cycles() == []


def _reach(start: str) -> dict[str, list[str]]:
    """Every ackbus module ``start`` imports transitively, with one chain to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        name = todo.pop()
        for nxt in sorted(GRAPH[name][0]):
            if nxt not in chains:
                chains[nxt] = [*chains[name], nxt]
                todo.append(nxt)
    return chains


def test_the_core_reaches_no_io_module_directly_or_through_another() -> None:
    problems = []
    for name in sorted(n for n in MODULES if n == "ackbus.core" or n.startswith("ackbus.core.")):
        for reached, chain in _reach(name).items():
            for bad in sorted(GRAPH[reached][1] & _CORE_FORBIDDEN):
                problems.append(" -> ".join([*chain, bad]))
    assert problems == [], "\n".join(problems)
