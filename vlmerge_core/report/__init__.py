"""The paper builder: every table and figure of PAPER.md §7, the claim verdicts and the report.

Reads only the study metrics (``metrics/study/*.csv`` and ``design.json``, see :mod:`.schema` and
:mod:`.design`) and the published numbers (``paper/published/``); never trains. Entry point:
:func:`run_paper_stage` (the ``paper`` DVC stage, notebook ``09_paper``). One module per artefact:
``e0`` ... ``e6`` (tables), ``figures`` (E1, E2), ``figures_e4``; the verdicts in ``claims``,
``claims_rank``, ``claims_c5``, by the rules of ``outcomes``.
"""

from __future__ import annotations

from vlmerge_core.figstyle import save_figure
from vlmerge_core.report.build import ARTEFACTS, Artefact, build_artefacts
from vlmerge_core.report.claims import judge_claims
from vlmerge_core.report.design import Design, design_from_dict, read_design
from vlmerge_core.report.e0 import table_e0, table_e0_scores, table_e0_zeroshot
from vlmerge_core.report.e1 import table_e1
from vlmerge_core.report.e2 import table_e2
from vlmerge_core.report.e3 import table_e3, table_orderings
from vlmerge_core.report.e4 import e4_correlations, e4_points, table_e4
from vlmerge_core.report.e5 import table_e5
from vlmerge_core.report.e6 import table_methods
from vlmerge_core.report.figures import fig_e1_seed, fig_e2_methods
from vlmerge_core.report.figures_e4 import fig_e4_layers, fig_e4_scatter
from vlmerge_core.report.framework import fig_framework
from vlmerge_core.report.load import Study, StudyError, load_study
from vlmerge_core.report.outcomes import combine, combine_parts, rule_markdown
from vlmerge_core.report.published import headline_gains, load_published
from vlmerge_core.report.stage import report_section, run_paper_stage
from vlmerge_core.report.stats import Cell, Paired, holm, paired
from vlmerge_core.report.synthetic import make_study
from vlmerge_core.report.tableio import to_latex, to_markdown, write_table
from vlmerge_core.report.validity import TaskValidity, ValidityBar, e0_validity
from vlmerge_core.report.verdict import Verdict

__all__ = [
    "ARTEFACTS",
    "Artefact",
    "Cell",
    "Design",
    "Paired",
    "Study",
    "StudyError",
    "TaskValidity",
    "ValidityBar",
    "Verdict",
    "build_artefacts",
    "combine",
    "combine_parts",
    "design_from_dict",
    "e0_validity",
    "e4_correlations",
    "e4_points",
    "fig_e1_seed",
    "fig_e2_methods",
    "fig_e4_layers",
    "fig_e4_scatter",
    "fig_framework",
    "headline_gains",
    "holm",
    "judge_claims",
    "load_published",
    "load_study",
    "make_study",
    "paired",
    "read_design",
    "report_section",
    "rule_markdown",
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
