"""No import cycle inside ``mtoframe/``: read from the source (every ``import`` statement, at module
level or inside functions, except those under ``if TYPE_CHECKING:``), not by importing, so a cycle
that happens to resolve because of today's import order still fails."""

from __future__ import annotations

import ast
from pathlib import Path

import mtoframe

ROOT = Path(mtoframe.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = ["mtoframe", *f.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & known
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
        if node.level else (node.module or "")
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names} & known


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports at run time`` (package ``__init__`` edges included)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        todo: list[ast.AST] = [ast.parse(path.read_text())]
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                todo.extend(node.orelse)
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(node, name, path.name == "__init__.py", known)
            todo.extend(ast.iter_child_nodes(node))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # importing ``mtoframe.x`` runs ``mtoframe/__init__`` first, which re-exports from its
    # submodules: that edge back to the package is how every package works, not a cycle of ours
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    return {m: {d for d in deps if d not in packages or not m.startswith(d + ".")} for m, deps in graph.items()}


def test_the_analysis_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_inside_mtoframe() -> None:
    graph = _without_package_inits(import_graph())
    assert "mtoframe.stack" in graph and "mtoframe.context" in graph["mtoframe.stack"]
    assert cycles(graph) == []
