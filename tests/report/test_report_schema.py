"""The report's display lists name what the library owns: the tasks of ``model/experts.py``, the
methods of the merge registry, the variants of ``MS_VARIANTS`` (the report keeps only their order)."""

from vlmerge_core.merge.methods import METHODS as REGISTERED
from vlmerge_core.model import MS_VARIANTS
from vlmerge_core.model.experts import TASKS as MODEL_TASKS
from vlmerge_core.report import schema


def test_report_lists_agree_with_their_owners():
    assert schema.TASKS == tuple(MODEL_TASKS)
    assert sorted(schema.METHODS) == sorted(REGISTERED)
    assert set(schema.METHOD_NAMES) == set(REGISTERED)
    assert set(schema.TASK_NAMES) == set(MODEL_TASKS)
    assert set(schema.OURS_METHODS) <= set(REGISTERED)
    assert set(schema.VARIANTS) == set(MS_VARIANTS)
