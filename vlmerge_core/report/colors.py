"""The report's fixed colours and line styles per method, task and baseline (keyed by the study
schema); the paper style itself, the placeholder and the file writer are :mod:`vlmerge_core.figstyle`."""

from __future__ import annotations

import seaborn as sns

from vlmerge_core.report.schema import METHODS, TASKS

PALETTE = sns.color_palette("colorblind", 10).as_hex()  # a list: no global seaborn state is set
METHOD_COLORS = {m: PALETTE[i] for i, m in enumerate(METHODS)}
TASK_COLORS = {t: PALETTE[i] for i, t in enumerate(TASKS)}
# claim rows drawn as references: the unmerged MS models and both MA controls
BASELINE_COLORS = {
    "ms_recipe": "#555555",
    "ms_naive": "#999999",
    "ma_baseline": "#000000",
    "ma_matched": PALETTE[3],
}
BASELINE_STYLES = {"ms_recipe": "--", "ms_naive": "--", "ma_baseline": ":", "ma_matched": "-."}


def color(key: str, i: int = 0) -> str:
    """The fixed colour of a method or task, else the ``i``-th palette colour."""
    return METHOD_COLORS.get(key) or TASK_COLORS.get(key) or PALETTE[i % len(PALETTE)]
