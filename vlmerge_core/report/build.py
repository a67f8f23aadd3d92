"""Every artefact of PAPER.md §7 as a registry entry: what it needs, how it is made, where it goes.

:func:`build_artefacts` makes each table (``tables/<name>.tex|md``) and figure
(``figures/<name>.pdf|png``); an artefact whose metrics are missing is still written, as a "not run"
placeholder that names what is missing, so the set of files never depends on what was run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlmerge_core.figstyle import not_run_figure, save_figure
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
from vlmerge_core.report.load import Study
from vlmerge_core.report.tableio import not_run_table, write_table


def e4_context(study: Study, context: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """The E4 points and correlations of ``context`` (``points``, ``corr``), computed when absent."""
    if context.get("corr") is None or context.get("points") is None:
        pts = e4_points(study.results, study.distances, study.design)
        context["points"], context["corr"] = (
            pts,
            e4_correlations(pts, context["n_bootstrap"], context["rng_seed"]),
        )
    return context["points"], context["corr"]


@dataclass(frozen=True)
class Artefact:
    """One table or figure of the paper.

    Attributes:
        id: the experiment it belongs to (PAPER.md §7: F1, E0-E6).
        name: file stem under ``tables/`` or ``figures/``.
        kind: ``table`` or ``figure``.
        caption: what it shows, in words.
        needs: study files it reads (``results``, ``chance``, ``distances``, ``pretrain``, ``design``).
        experiments: experiment ids of which at least one must have rows (empty: none needed).
        make: ``(study, context) -> DataFrame | Figure``.
    """

    id: str
    name: str
    kind: str
    caption: str
    needs: tuple[str, ...]
    experiments: tuple[str, ...]
    make: Callable[[Study, dict[str, Any]], Any]


@dataclass
class Built:
    """What :func:`build_artefacts` wrote for one artefact."""

    artefact: Artefact
    files: list[Path]
    status: str  # "built" or "not run"
    reason: str = ""
    table: pd.DataFrame | None = field(default=None, repr=False)


ARTEFACTS: tuple[Artefact, ...] = (
    Artefact("F1", "f1_framework", "figure", "the framework of the study (schematic, redrawn)", (), (),
             lambda s, c: fig_framework()),
    Artefact("E0", "e0_validity", "table", "is the micro-world a valid stand-in? (the five checks per task)",
             ("results",), ("E0",), lambda s, c: table_e0(s)),
    Artefact("E0", "e0_scores", "table", "every E0 model fine-tuned on every task (main metric; mean ± sd (units))",
             ("results",), ("E0",), lambda s, c: table_e0_scores(s.results)),
    Artefact("E0", "e0_zeroshot", "table", "zero-shot retrieval of each pre-trained model (one evaluation each: no spread in pretrain.csv)", ("pretrain",), (),
             lambda s, c: table_e0_zeroshot(s.pretrain)),
    Artefact("E1", "e1_seed", "figure", "recipe merge vs K_seed: replicates, mean and 95 % t-interval; MS markers, both MA controls as bands",
             ("results", "design"), ("E1",), lambda s, c: fig_e1_seed(s.results, s.design)),
    Artefact("E1", "e1_seed", "table", "E1 merges per K_seed, MS and both MA controls (mean ± sd (replicates)); drop from merging", ("results", "design"),
             ("E1",), lambda s, c: table_e1(s.results, s.design)),
    Artefact("E2", "e2_methods", "figure", "merged score vs each swept knob (test, val), the knob picked on val starred", ("results", "design"),
             ("E2",), lambda s, c: fig_e2_methods(s.results, s.design)),
    Artefact("E2", "e2_methods", "table", "each merge method at its knob picked on validation (test score) vs MS and both MA controls; E6 rows ours",
             ("results", "design"), ("E2",), lambda s, c: table_e2(s.results, s.design)),
    Artefact("E2", "e2_e3_orderings", "table", "measured ordering of methods and variants vs the paper's",
             ("results", "design"), ("E2", "E3"), lambda s, c: table_orderings(s.results, s.design)),
    Artefact("E3", "e3_architecture", "table", "drop from merging per architecture variant and merge method (MS - that merge, paired by replicate)", ("results",),
             ("E3",), lambda s, c: table_e3(s.results)),
    Artefact("E4", "e4_distances", "figure", "merged score (the recipe's merge) vs each total distance over the E4 grid, rho and permutation p per panel",
             ("results", "distances", "design"), ("E4",), lambda s, c: fig_e4_scatter(*e4_context(s, c))),
    Artefact("E4", "e4_layers", "figure", "rank correlation of per-block distances with the merged score (E4 grid)",
             ("results", "distances", "design"), ("E4",), lambda s, c: fig_e4_layers(s.results, s.distances, s.design)),
    Artefact("E4", "e4_correlations", "table", "Spearman rho of each distance with the merged score over the E4 grid (permutation p), partial rho given K_seed over E1 + E4",
             ("results", "distances", "design"), ("E4",), lambda s, c: table_e4(e4_context(s, c)[1])),
    Artefact("E5", "e5_main", "table", "main results: recipe and naive merges, MS, the paper's MA baseline and the compute-matched MA; gains beside the paper's",
             ("results", "design"), ("E5", "E1"), lambda s, c: table_e5(s.results, s.design, c["published"])),
    Artefact("E6", "e6_merge_forms", "table", "which merge form each number used (official in-place vs formula)",
             ("results",), (), lambda s, c: table_methods(s.results)),
)  # fmt: skip


def missing_reason(art: Artefact, study: Study) -> str:
    """Why ``art`` cannot be built from ``study`` (empty when it can)."""
    absent = [("design.json" if n == "design" else f"{n}.csv") for n in art.needs if not study.has(n)]
    if absent:
        return f"{', '.join(absent)} missing or empty"
    if art.experiments and not any(len(study.experiment(e)) for e in art.experiments):
        return f"no rows tagged {' or '.join(art.experiments)} in results.csv"
    return ""


def build_artefacts(
    study: Study, out_dir: str | Path, context: dict[str, Any], formats: Sequence[str] = ("pdf", "png")
) -> list[Built]:
    """Make and write every artefact of :data:`ARTEFACTS` under ``out_dir`` (``tables/``, ``figures/``)."""
    out = Path(out_dir)
    built = []
    for art in ARTEFACTS:
        reason = missing_reason(art, study)
        if art.kind == "table":
            df = not_run_table(art.name, reason) if reason else art.make(study, context)
            files = write_table(df, out / "tables", art.name, caption=f"{art.id}: {art.caption}")
            built.append(Built(art, files, "not run" if reason else "built", reason, df))
        else:
            fig = not_run_figure(f"{art.id}: {art.caption}", reason) if reason else art.make(study, context)
            files = save_figure(fig, out / "figures", art.name, formats)
            built.append(Built(art, files, "not run" if reason else "built", reason))
    return built
