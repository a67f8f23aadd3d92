"""The ``paper`` stage as one call, for the ``09_paper`` notebook: every table, figure, verdict and
the report, rebuilt from the study metrics alone (no training), byte-identical on a rebuild; and the
Markdown the README includes (``generated/verdicts.md``, ``generated/e0.md``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from vlmerge_core.config import load_params, profile_params
from vlmerge_core.io import write_json
from vlmerge_core.paths import resolve
from vlmerge_core.report.build import build_artefacts, e4_context
from vlmerge_core.report.claims import judge_claims
from vlmerge_core.report.generated import write_generated
from vlmerge_core.report.load import load_study
from vlmerge_core.report.macros import write_macros
from vlmerge_core.report.published import headline_gains, load_published
from vlmerge_core.report.render import render_report
from vlmerge_core.report.schema import TASK_NAMES
from vlmerge_core.report.select import configs
from vlmerge_core.report.tableio import not_run_table, write_table
from vlmerge_core.report.validity import ValidityBar, e0_validity

log = logging.getLogger(__name__)


def _numbers(study, validity, verdicts, bar: ValidityBar, cfg: dict[str, Any], published) -> dict[str, str]:
    """The values quoted in prose, as strings, keyed by dotted names (see :mod:`.macros`)."""
    res = study.results
    n: dict[str, str] = {
        "study.rows": str(0 if res is None else len(res)),
        "study.models": str(0 if res is None else res["model_id"].nunique()),
        "study.configs": str(0 if res is None else len(configs(res))),
        "study.tasks": str(0 if res is None else res["task"].nunique()),
        "report.n_bootstrap": str(cfg["n_bootstrap"]),
        "report.rng_seed": str(cfg["rng_seed"]),
        "report.c2_margin": f"{cfg['c2_margin']:g}",
        "published.not_found": str(int((published["status"] == "not found").sum())),
        **{f"e0.bar.{k}": f"{v:g}" for k, v in vars(bar).items()},
    }
    valid = [TASK_NAMES.get(t, t) for t, v in validity.items() if v.status == "valid"]
    other = [f"{TASK_NAMES.get(t, t)} ({v.status})" for t, v in validity.items() if v.status != "valid"]
    n["e0.valid"] = ", ".join(valid) or "none"
    n["e0.not_valid"] = ", ".join(other) or "none"
    n.update({f"e0.{t}.status": v.status for t, v in validity.items()})
    for cid, v in verdicts.items():
        n.update({f"{cid.lower()}.{k}": val for k, val in v.numbers.items()})
    return n


def _copy_published(src: Path, dst: Path) -> None:
    """The paper's published numbers beside the report (nothing when ``dst`` is ``src``)."""
    if dst.resolve() == src.resolve():
        return
    for f in sorted(src.glob("*.csv")):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst / f.name)


def _summary(verdicts: dict, validity: dict, study: Any, built: list, conf: dict) -> dict:
    """What ``generated/summary.json`` and the stage's metrics file hold."""
    return {
        "verdicts": {
            c: {
                "verdict": v.verdict,
                "verdict_valid": v.verdict_valid,
                "invalid_tasks": v.invalid_tasks,
                **({"parts": v.parts} if v.parts else {}),
            }
            for c, v in verdicts.items()
        },
        "e0": {t: v.status for t, v in validity.items()},
        "missing": list(study.missing),
        "artefacts": {f"{b.artefact.kind}:{b.artefact.name}": b.status for b in built},
        "config": conf,
    }


def run_paper_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    metrics_dir: str = "metrics/study",
    out_dir: str = "paper",
    metrics_out: str = "",
    published_dir: str = "paper/published",
) -> dict:
    """Build every artefact of PAPER.md §7, the claim verdicts and the report from the study metrics.

    Args:
        params_file: params file relative to the repo root; empty = the ``profile`` preset. Reads the
            ``report`` section: ``formats``, ``n_bootstrap``, ``rng_seed`` (``seed`` before the
            rename), ``c2_margin`` (C2's margin, and C5's margin of equivalence).
        profile: params profile used when ``params_file`` is empty.
        metrics_dir: folder of ``results.csv``, ``chance.csv``, ``distances.csv``, ``pretrain.csv`` and
            ``design.json``; a missing file makes the experiments that need it "not run".
        out_dir: where ``tables/``, ``figures/``, ``generated/``, ``REPORT.md`` and ``report.html`` go.
        metrics_out: when non-empty, the summary (verdicts, E0 validity) is also written there as JSON.
        published_dir: folder of the paper's published numbers (copied into ``out_dir/published``
            when that is another folder).

    Returns:
        The summary: ``verdicts`` per claim, ``e0`` status per task, ``missing`` files, ``artefacts``
        (as written to ``generated/summary.json``), plus ``out_dir``, the absolute output folder.
    """
    params = load_params(params_file) if params_file else profile_params(profile)
    cfg = params.report
    conf = {
        "formats": list(cfg.formats),
        "n_bootstrap": int(cfg.n_bootstrap),
        "rng_seed": int(getattr(cfg, "rng_seed", getattr(cfg, "seed", 0))),
        "c2_margin": float(cfg.c2_margin),
    }
    out, pub_dir = resolve(out_dir), resolve(published_dir)
    study = load_study(resolve(metrics_dir))
    published = load_published(pub_dir)
    _copy_published(pub_dir, out / "published")
    bar = ValidityBar()
    validity = e0_validity(study, bar)
    context = {**conf, "published": published, "corr": None, "points": None}
    if study.has("results") and study.has("distances") and study.has("design"):
        e4_context(study, context)
    corr = context["corr"]
    built = build_artefacts(study, out, context, conf["formats"])
    verdicts = judge_claims(study, validity, headline_gains(published), c2_margin=conf["c2_margin"],
                            n_bootstrap=conf["n_bootstrap"], rng_seed=conf["rng_seed"], corr=corr)  # fmt: skip
    for cid, v in verdicts.items():
        table = v.table() if v.rows else not_run_table(f"claim_{cid.lower()}", "no metrics for this claim")
        write_table(table, out / "tables", f"claim_{cid.lower()}", caption=f"{cid}: {v.title}")
    numbers = _numbers(study, validity, verdicts, bar, conf, published)
    write_macros(numbers, out / "generated")
    timing_csv = resolve(metrics_dir) / "timing.csv"
    timing = pd.read_csv(timing_csv, keep_default_na=False) if timing_csv.exists() else None
    write_generated(out / "generated", verdicts, built, timing, params.study.workers)
    render_report(out_dir=out, source=metrics_dir, missing=study.missing, built=built, verdicts=verdicts,
                  validity=validity, numbers=numbers, published=published)  # fmt: skip
    summary = _summary(verdicts, validity, study, built, conf)
    write_json(out / "generated" / "summary.json", summary)
    if metrics_out:
        write_json(resolve(metrics_out), summary)
    log.info("paper: %s", {c: v["verdict"] for c, v in summary["verdicts"].items()})
    return {**summary, "out_dir": str(out)}


def report_section(report: str | Path, heading: str) -> str:
    """The text of the ``## <heading>`` section of a generated ``REPORT.md`` (up to the next ``## ``).

    Raises:
        KeyError: the report has no such section (naming the headings it has).
    """
    text = Path(report).read_text()
    sections = {}
    for part in text.split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
    if heading not in sections:
        raise KeyError(f"{report}: no section '## {heading}'; sections: {list(sections)}")
    return sections[heading]
