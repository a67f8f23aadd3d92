"""Expert distances of an MS checkpoint on parsed params (the study's workers, ``analysis.merge_tool`` for notebook 03, the CLI)."""

from __future__ import annotations

from pathlib import Path

from vlmerge_core.analysis.distance import METRICS, weight_distances
from vlmerge_core.config import Params
from vlmerge_core.io import load_safetensors, write_json
from vlmerge_core.paths import resolve

__all__ = ["distance_rows", "expert_distances"]


def distance_rows(dist: dict) -> list[dict]:
    """Tidy rows ``{metric, scope, value}`` (scope ``total`` or ``block<i>``) of a distance result."""
    scopes = {"total": dist["total"], **{f"block{b}": m for b, m in dist["blocks"].items()}}
    return [
        {"metric": metric, "scope": scope, "value": m[metric]}
        for scope, m in scopes.items()
        for metric in METRICS
        if m.get(metric) is not None
    ]


def expert_distances(
    params: Params,
    *,
    ms_ckpt: str,
    central_ckpt: str = "",
    metrics_out: str = "",
) -> dict:
    """Distance metrics (L2, cosine, SSD, TSSD, sign conflicts) of the experts of ``ms_ckpt``.

    Over the ``v``-``l`` pair of every block, in total and per block (PAPER.md §5), with the TSSD
    trimming fraction ``merge.tssd_k``. Without ``central_ckpt`` only L2 and cosine (raw weights).

    Returns:
        ``{"ms_ckpt", "central_ckpt", "k", "total", "blocks", "rows"}`` (``rows``: tidy
        ``{metric, scope, value}``); written to ``metrics_out`` when given.
    """
    ms, _ = load_safetensors(resolve(ms_ckpt))
    central = load_safetensors(resolve(central_ckpt))[0] if central_ckpt else None
    dist = weight_distances(ms, central, params.merge.tssd_k, per_param=False)
    result = {
        "ms_ckpt": Path(ms_ckpt).name,
        "central_ckpt": Path(central_ckpt).name if central_ckpt else None,
        **dist,
        "rows": distance_rows(dist),
    }
    if metrics_out:
        write_json(resolve(metrics_out), result)
    return result
