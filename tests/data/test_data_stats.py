"""Chance levels: the one retrieval chance function (``data.stats.random_recall``)."""

from __future__ import annotations

import itertools
from math import isclose

from vlmerge_core.data.stats import random_recall


def _brute_i2t(caps: list[int], k: int) -> float:
    """Mean over images of P(one of its captions in the top k of a uniformly random text ranking)."""
    owner = [i for i, c in enumerate(caps) for _ in range(c)]
    perms = list(itertools.permutations(range(len(owner))))
    hits = [sum(any(owner[t] == i for t in p[:k]) for p in perms) / len(perms) for i in range(len(caps))]
    return sum(hits) / len(caps)


def test_random_recall_unequal_caption_counts():
    caps = [1, 2, 3]
    for k in (1, 2, 4):
        r = random_recall(caps, k)
        assert isclose(r["t2i"], min(k, 3) / 3)
        assert isclose(r["i2t"], _brute_i2t(caps, k))


def test_random_recall_equal_counts():
    r = random_recall([2] * 500, 1)
    assert isclose(r["t2i"], 0.002) and isclose(r["i2t"], 0.002)
