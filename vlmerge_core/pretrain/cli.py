"""``vlmerge pretrain``: one pre-training stage from the command line (works under ``torchrun``)."""

from __future__ import annotations

import argparse
import logging

from vlmerge_core.config import PROFILES

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train one stage: init (MIM or BEiT weights), seed (MA) or ms")
    p.add_argument("stage", choices=("init", "seed", "ms"))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", choices=PROFILES, default="micro", help="params preset (default: micro)")
    src.add_argument("--file", default="", help="params file, relative to the repo root")
    p.add_argument("--variant", default="", help="ms stage: MS variant (all, attn, ffn, ln)")
    p.add_argument("--init", default="", help="checkpoint to start from (relative to the repo root)")
    p.add_argument(
        "--world", default="", help="micro-world folder (default: data.root; generated if missing)"
    )
    p.add_argument("-o", "--out", required=True, help="run folder (checkpoints, metrics.json)")
    p.add_argument("--metrics", default="", help="also write the metrics JSON there")
    p.add_argument("--steps", type=int, default=0, help="override the stage's steps (> 0)")
    p.add_argument("--restart", action="store_true", help="delete the run files of --out and start over")
    p.add_argument(
        "--rng-seed", type=int, default=-1, help="override the stage's rng_seed (>= 0; default: params)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vlmerge_core.pretrain.stage import run_pretrain_stage  # here: torch loads when the command runs

    m = run_pretrain_stage(
        args.stage,
        profile=args.profile,
        params_file=args.file,
        variant=args.variant,
        init=args.init,
        world_dir=args.world,
        out_dir=args.out,
        metrics_out=args.metrics,
        steps=args.steps,
        resume=not args.restart,
        rng_seed=args.rng_seed,
    )
    log.info("pretrain %s done: %s", args.stage, {k: m.get(k) for k in ("steps", "loss_end", "wall_time_s")})
    return 0
