"""The data package has no import cycle (``world`` and ``stats`` both read ``layout``)."""

from __future__ import annotations

import ast
from pathlib import Path

import vlmerge_core.data

PKG = "vlmerge_core.data"


def _graph() -> dict[str, set[str]]:
    """Module -> modules of the data package it imports, at any depth of its code (lazy imports too)."""
    folder = Path(vlmerge_core.data.__file__).parent
    mods = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t.split(".")[2] for t in targets if t.startswith(PKG + ".") and t.split(".")[2] in mods}
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_in_data_package():
    graph = _graph()
    assert "world" not in graph["stats"] and "layout" in graph["stats"] and "stats" in graph["world"]
    assert _cycle(graph) is None, _cycle(graph)
