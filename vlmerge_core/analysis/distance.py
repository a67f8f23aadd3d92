"""Weight-distance metrics between the experts to be merged (PAPER.md §5).

Over the modality vectors ``tau^m = W^m - W0`` (``W0`` the central/seed weights), stacked as the
rows of ``T`` (shape ``[M, D]``, one row per expert, the parameter flattened):

- **L2** ``||tau^a - tau^b||_2`` (= ``||W^a - W^b||_2``), and **L2 per parameter** ``l2_rms`` =
  ``L2 / sqrt(D)`` (the root-mean-square difference, comparable across parameter counts: the LN
  variant's 1,024 norm parameters and the full model's 200k), and **cosine dissimilarity**
  ``1 - cos(tau^a, tau^b)``, for every pair of experts; the headline value is the mean over pairs
  (the ``v``-``l`` pair when there are two experts);
- **SSD** (soft sign dissimilarity) ``1 - mean_j |sum_m T[m, j]| / sum_m |T[m, j]|`` over the
  coordinates ``j`` with ``sum_m |T[m, j]| > 0``;
- **TSSD** (truncated SSD): SSD after keeping in each row only its top-``k`` fraction by magnitude
  (TIES trimming; ties broken by position);
- **sign conflict** (TIES, Yadav et al. 2023): among the coordinates with at least one non-zero entry
  after the same trimming, the fraction where both signs occur.

Without a central checkpoint, L2 and cosine are computed between the raw expert weights, and SSD,
TSSD and sign conflict (which are about the directions of moves away from a common origin) are
``None``. Metrics are given per parameter, per block and in total (all parameters flattened into one
row per expert); blocks and the total use the experts present in all of their parameters.
Which two of these metrics the paper proposes is not known (PAPER.md §5: our reading is L2 and TSSD).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmerge_core.merge.methods import MergeError, topk_mask
from vlmerge_core.merge.unify import plan_groups
from vlmerge_core.model.experts import EXPERTS

METRICS = ("l2", "l2_rms", "cosine", "ssd", "tssd", "sign_conflict")


def infer_vl_start(keys: Sequence[str]) -> int:
    """The first block with a ``vl`` expert (the number of blocks if none)."""
    blocks = [int(k.split(".")[1]) for k in keys if k.startswith("blocks.")]
    vl = [int(k.split(".")[1]) for k in keys if k.startswith("blocks.") and ".vl." in k]
    return min(vl) if vl else (max(blocks) + 1 if blocks else 0)


def _ssd(t: Tensor) -> float | None:
    den = t.abs().sum(dim=0)
    valid = den > 0
    if not valid.any():
        return None
    return float(1.0 - (t.sum(dim=0).abs()[valid] / den[valid]).mean())


def _sign_conflict(t: Tensor) -> float | None:
    nonzero = (t != 0).any(dim=0)
    if not nonzero.any():
        return None
    both = (t > 0).any(dim=0) & (t < 0).any(dim=0)
    return float(both.sum() / nonzero.sum())


def row_metrics(
    rows: Tensor, names: Sequence[str], *, k: float = 0.5, centred: bool = True
) -> dict[str, Any]:
    """All metrics of the stacked rows ``[M, D]`` (modality vectors, or raw weights if not ``centred``)."""
    rows = rows.to(torch.float64)
    pairs = {}
    for a, b in itertools.combinations(range(len(names)), 2):
        ra, rb = rows[a], rows[b]
        na, nb = ra.norm(), rb.norm()
        cos = float(1.0 - (ra @ rb) / (na * nb)) if na > 0 and nb > 0 else None
        pairs[f"{names[a]}-{names[b]}"] = {"l2": float((ra - rb).norm()), "cosine": cos}
    out: dict[str, Any] = {"experts": list(names), "numel": int(rows.shape[1]), "pairs": pairs}
    out["l2"] = sum(p["l2"] for p in pairs.values()) / len(pairs) if pairs else None
    out["l2_rms"] = out["l2"] / rows.shape[1] ** 0.5 if out["l2"] is not None and rows.shape[1] else None
    coss = [p["cosine"] for p in pairs.values()]
    out["cosine"] = sum(coss) / len(coss) if coss and None not in coss else None
    if centred:
        trimmed = torch.stack([r * topk_mask(r, k) for r in rows])
        out.update(ssd=_ssd(rows), tssd=_ssd(trimmed), sign_conflict=_sign_conflict(trimmed))
    else:
        out.update(ssd=None, tssd=None, sign_conflict=None)
    return out


def weight_distances(
    ms_sd: Mapping[str, Tensor],
    central_sd: Mapping[str, Tensor] | None = None,
    k: float = 0.5,
    *,
    experts: Sequence[str] | None = ("v", "l"),
    vl_start: int | None = None,
    per_param: bool = True,
) -> dict[str, Any]:
    """Distance metrics of an MS state dict's experts, per parameter, per block and in total.

    Args:
        ms_sd: modality-specific state dict.
        central_sd: the seed (MA) state dict; None computes L2/cosine on raw weights only.
        k: TSSD / sign-conflict trimming keeps this top fraction of each row.
        experts: experts compared (default the ``v``-``l`` pair present in every block);
            None = every expert present.
        vl_start: first fusion block; inferred from the keys when None.
        per_param: include the per-parameter table.
    """
    if not 0.0 < k <= 1.0:
        raise MergeError(f"TSSD k must be in (0, 1], got {k}")
    keys = list(ms_sd)
    groups, _ = plan_groups(keys, infer_vl_start(keys) if vl_start is None else vl_start)
    wanted = tuple(EXPERTS if experts is None else experts)
    centred = central_sd is not None
    rows_by_param: dict[str, tuple[list[str], Tensor]] = {}
    for target in sorted(groups):
        names = [e for e in EXPERTS if e in groups[target] and e in wanted]
        if len(names) < 2:
            continue
        ts = [ms_sd[groups[target][e]].detach().to(torch.float64).reshape(-1) for e in names]
        if centred:
            if target not in central_sd:
                raise MergeError(f"central checkpoint has no tensor {target} (another architecture?)")
            c = central_sd[target].detach().to(torch.float64).reshape(-1)
            if c.numel() != ts[0].numel():
                raise MergeError(
                    f"{target}: central tensor has {c.numel()} elements, experts {ts[0].numel()}"
                )
            ts = [t - c for t in ts]
        rows_by_param[target] = (names, torch.stack(ts))
    if not rows_by_param:
        raise MergeError(f"no parameter has two of the experts {list(wanted)}")

    def aggregate(targets: list[str]) -> dict[str, Any]:
        common = [e for e in EXPERTS if all(e in rows_by_param[t][0] for t in targets)]
        rows = torch.cat(
            [rows_by_param[t][1][[rows_by_param[t][0].index(e) for e in common]] for t in targets], dim=1
        )
        return row_metrics(rows, common, k=k, centred=centred)

    by_block: dict[int, list[str]] = {}
    for t in rows_by_param:
        by_block.setdefault(int(t.split(".")[1]), []).append(t)
    out: dict[str, Any] = {
        "k": k,
        "central": centred,
        "experts": list(wanted),
        "total": aggregate(sorted(rows_by_param)),
        "blocks": {str(b): aggregate(ts) for b, ts in sorted(by_block.items())},
    }
    if per_param:
        out["params"] = {t: row_metrics(r, n, k=k, centred=centred) for t, (n, r) in rows_by_param.items()}
    return out


def layer_table(dist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows ``{block, metric, value}`` of the per-block metrics (for a DataFrame / plot)."""
    rows = []
    for block, m in dist["blocks"].items():
        for metric in METRICS:
            if m.get(metric) is not None:
                rows.append({"block": int(block), "metric": metric, "value": m[metric]})
    return rows
