"""``vlmerge finetune``: fine-tune and evaluate a checkpoint on downstream tasks from the command line.

One line per task on stdout; with ``--out``, the metrics of each task in ``<out>/<task>.json`` and,
with ``--metrics-out``, the stage's one JSON file (:func:`~vlmerge_core.tasks.stage.run_finetune_stage`).
"""

from __future__ import annotations

import argparse
import sys

import torch

from vlmerge_core.config import PROFILES
from vlmerge_core.io import write_json
from vlmerge_core.model.experts import TASKS
from vlmerge_core.paths import resolve
from vlmerge_core.tasks.stage import run_finetune_stage


def _cli(args: argparse.Namespace) -> int:

    torch.set_num_threads(args.threads)
    out = run_finetune_stage(
        args.file or "",
        profile=args.profile or "",
        checkpoint=args.checkpoint,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] or None,
        ft_seeds=[args.rng_seed] if args.rng_seed is not None else None,
        world_dir=args.world or "",
        epochs=args.epochs,
        model_info={"checkpoint": args.checkpoint},
        metrics_out=args.metrics_out,
    )
    for rec in out["records"]:
        m = rec["metrics"]
        if args.out:
            flat = {**m, **{k: rec[k] for k in ("task", "ft_seed", "main_metric", "ci", "val_last_gain")}}
            write_json(resolve(args.out) / f"{rec['task']}.json", flat)
        lo, hi = rec["ci"][rec["main_metric"]]
        sys.stdout.write(
            f"{rec['task']}: {rec['main_metric']} = {m[rec['main_metric']]:.2f} "
            f"[{lo:.2f}, {hi:.2f}] ({rec['seconds']:.1f} s)\n"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand."""
    p = sub.add_parser("finetune", help="fine-tune and evaluate a checkpoint on downstream tasks")
    p.add_argument(
        "checkpoint",
        help="MS / MA / merged checkpoint (.safetensors), or random:<rng_seed> for a random model",
    )
    p.add_argument(
        "--tasks", default="", help=f"comma-separated subset of {','.join(TASKS)} (default: params)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--profile", default=None, choices=PROFILES, help="use this profile's params instead of params.yaml"
    )
    which.add_argument("--file", default=None, help="params file (default: <repo root>/params.yaml)")
    p.add_argument("--world", default=None, help="micro-world folder (default: params data.root)")
    p.add_argument("--out", default=None, help="write <out>/<task>.json")
    p.add_argument("--metrics-out", default="", help="write the stage's one metrics JSON file here")
    p.add_argument("--rng-seed", type=int, default=None, help="fine-tuning RNG seed (default: params)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every task (0: evaluate only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_cli)
