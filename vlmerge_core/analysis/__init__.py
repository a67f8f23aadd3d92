"""Weight-distance metrics between experts and their correlation with merged performance."""

from __future__ import annotations

from vlmerge_core.analysis.correlation import rank_correlation
from vlmerge_core.analysis.distance import METRICS, layer_table, weight_distances

__all__ = ["METRICS", "layer_table", "rank_correlation", "weight_distances"]
