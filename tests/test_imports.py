"""Imports go one way: no cycle among the modules of vlmerge_core, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = "vlmerge_core"
ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for f in sorted((root / PKG).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import of ``name`` runs: itself, or its closest enclosing package module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.AST, module: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [_target(a.name, modules) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative import: resolve against the importing module's package
        pkg = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
        pkg = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1])
        base = f"{pkg}.{base}" if base else pkg
    return [_target(f"{base}.{a.name}", modules) for a in node.names]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included)."""
    modules = module_files(root)
    graph = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            deps.update(t for t in _imported(node, module, modules) if t and t != module)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]`` when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_counts_function_level_and_package_imports(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from vlmerge_core.sub.b import f\n")
    (pkg / "sub" / "a.py").write_text("def g():\n    from vlmerge_core.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n\ndef f():\n    pass\n")
    graph = import_graph(tmp_path)
    assert graph["vlmerge_core.sub.a"] == {"vlmerge_core.sub.b"}
    assert graph["vlmerge_core.sub.b"] == {"vlmerge_core.sub.a"}
    assert graph["vlmerge_core.sub"] == {"vlmerge_core.sub.b"}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"vlmerge_core.sub.a", "vlmerge_core.sub.b"}


def test_no_import_cycle_in_vlmerge_core():
    graph = import_graph()
    assert len(graph) > 50 and "vlmerge_core.study.stage" in graph
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)
