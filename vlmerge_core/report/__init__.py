"""The paper builder: every table and figure of PAPER.md §7, the claim verdicts and the report.

Reads only the study metrics (``metrics/study/*.csv``, see :mod:`.schema`) and the published numbers
(``paper/published/``); never trains. Entry point: :func:`run_paper_stage` (the ``paper`` DVC stage,
notebook ``09_paper``).
"""

from __future__ import annotations

from vlmerge_core.report.build import ARTEFACTS, Artefact, build_artefacts
from vlmerge_core.report.claims import Verdict, judge_claims
from vlmerge_core.report.figstyle import save_figure
from vlmerge_core.report.figures import fig_e1_seed, fig_e2_methods, fig_e4_layers, fig_e4_scatter
from vlmerge_core.report.framework import fig_framework
from vlmerge_core.report.load import Study, StudyError, load_study
from vlmerge_core.report.published import headline_gains, load_published
from vlmerge_core.report.stage import run_paper_stage
from vlmerge_core.report.stats import Cell, compare, difference
from vlmerge_core.report.synthetic import make_study
from vlmerge_core.report.tableio import to_latex, to_markdown, write_table
from vlmerge_core.report.tables import (
    table_e0,
    table_e0_scores,
    table_e0_zeroshot,
    table_e1,
    table_e2,
    table_orderings,
)
from vlmerge_core.report.tables_main import table_e3, table_e4, table_e5, table_methods
from vlmerge_core.report.validity import TaskValidity, ValidityBar, e0_validity

__all__ = [
    "ARTEFACTS",
    "Artefact",
    "Cell",
    "Study",
    "StudyError",
    "TaskValidity",
    "ValidityBar",
    "Verdict",
    "build_artefacts",
    "compare",
    "difference",
    "e0_validity",
    "fig_e1_seed",
    "fig_e2_methods",
    "fig_e4_layers",
    "fig_e4_scatter",
    "fig_framework",
    "headline_gains",
    "judge_claims",
    "load_published",
    "load_study",
    "make_study",
    "run_paper_stage",
    "save_figure",
    "table_e0",
    "table_e0_scores",
    "table_e0_zeroshot",
    "table_e1",
    "table_e2",
    "table_e3",
    "table_e4",
    "table_e5",
    "table_methods",
    "table_orderings",
    "to_latex",
    "to_markdown",
    "write_table",
]
