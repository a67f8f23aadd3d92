"""The data package has no import cycle (``world`` and ``stats`` both read ``layout``)."""

from __future__ import annotations

from test_imports import find_cycle, import_graph  # tests/ is on the path (its conftest.py)

PKG = "vlmerge_core.data"


def _graph() -> dict[str, set[str]]:
    """Module -> modules of the data package it imports, at any depth of its code (lazy imports too)."""
    inner = {m: d for m, d in import_graph().items() if m.startswith(PKG + ".")}
    return {
        m.rpartition(".")[2]: {d.rpartition(".")[2] for d in deps if d in inner} for m, deps in inner.items()
    }


def test_no_import_cycle_in_data_package():
    graph = _graph()
    assert "world" not in graph["stats"] and "layout" in graph["stats"] and "stats" in graph["world"]
    assert not find_cycle(graph), find_cycle(graph)
