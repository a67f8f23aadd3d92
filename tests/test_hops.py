"""The notebook-to-method path of the merge stage is short (issue 22: at most 5 hops).

The rule (static, on the source), counted as the issue counts the old path ("nine hops from notebook
06 to a merge function: run_merge_grid_stage -> ... -> merge_group -> the method"): every call from
the notebook to the registered method function is a hop, the notebook's stage call the first and the
call into the method (``method.fn(...)``, e.g. ``ties`` of ``vlmerge_core/merge/methods/ties.py``) the
last. Each function on the path must name the next one in its source (``inspect.getsource``): a call
``next(`` or, through the generic runner ``run_units`` (a process ``map``), ``run_units(next``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import nbformat
import pytest

from vlmerge_core.analysis.merge_tool import run_merge_tool_stage
from vlmerge_core.merge.methods import METHODS, get_method
from vlmerge_core.merge.methods.ties import ties
from vlmerge_core.merge.stage import write_merges
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.merge.unify import iter_unified
from vlmerge_core.study.execute import merge_ms_run
from vlmerge_core.study.stage import run_merge_grid_stage

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAX_HOPS = 5
MAX_LINES = 80
METHOD_CALL = "method.fn("  # the call into the registered method function

# (notebook, [(function, how its source calls the next one)]); the last calls the method: the hops
# are the notebook's call of the first function and each function's call of the next
PATHS = {
    "06_study_merge.ipynb": [
        (run_merge_grid_stage, "run_units(merge_ms_run"),
        (merge_ms_run, "merge_checkpoint("),
        (merge_checkpoint, "iter_unified("),
        (iter_unified, METHOD_CALL),
    ],
    "03_merge.ipynb": [
        (run_merge_tool_stage, "write_merges("),
        (write_merges, "merge_checkpoint("),
        (merge_checkpoint, "iter_unified("),
        (iter_unified, METHOD_CALL),
    ],
}


def _source(fn) -> str:
    return inspect.getsource(inspect.unwrap(fn))


@pytest.mark.parametrize("notebook", sorted(PATHS))
def test_notebook_calls_the_first_hop(notebook):
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f"{PATHS[notebook][0][0].__name__}(" in code


@pytest.mark.parametrize("notebook", sorted(PATHS))
def test_merge_path_is_at_most_five_hops(notebook):
    path = PATHS[notebook]
    for (fn, call), nxt in zip(path, [*(f for f, _ in path[1:]), None]):
        src = _source(fn)
        assert call in src, f"{fn.__qualname__} does not call {call!r}"
        if nxt is not None:
            assert call.rstrip("(").endswith(nxt.__name__), (fn.__qualname__, call, nxt.__name__)
        assert len(src.splitlines()) <= MAX_LINES, f"{fn.__qualname__}: over {MAX_LINES} lines"
    hops = len(path) + 1  # the notebook's call, then one call per function (the last into the method)
    assert hops <= MAX_HOPS, [f.__qualname__ for f, _ in path]


def test_the_last_hop_enters_the_registered_function():
    """``method.fn`` in ``iter_unified`` is the registered function: ``ties(...)`` for TIES."""
    assert get_method("ties").fn is ties
    assert all(callable(m.fn) for m in METHODS.values())
