"""How often each op of the official train transform changes what a micro-world image means.

Prints, for the world of ``params.yaml`` (``data.root``, generated if missing): the fraction of captions
and VQA answers that name a side (false after a horizontal flip), of images whose 0.5-scale crop cuts
an object below half its pixels, of objects whose colour name changes under each photometric op and
whose 3x3 cell changes under each geometric op. The ops that change nothing survive in the micro
profile (``augment: photometric``; README, departures table).

    python benchmarks/augment_truth.py [--n 500]
"""

from __future__ import annotations

import argparse

from vlmerge_core.config import load_params
from vlmerge_core.data import ensure_world
from vlmerge_core.data.augment import truth_changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="train images measured")
    args = ap.parse_args()
    world = ensure_world(load_params().data)
    out = truth_changes(world, n=args.n)
    print(f"{'what changes':<28} fraction")
    for k, v in out.items():
        print(f"{k:<28} {v:.3f}")


if __name__ == "__main__":
    main()
