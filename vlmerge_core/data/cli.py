"""``vlmerge data``: generate the micro-world from a params file or a profile."""

from __future__ import annotations

import argparse
import sys

from vlmerge_core.config import PROFILES
from vlmerge_core.data.stage import run_data_stage, world_summary


def _run(args: argparse.Namespace) -> int:

    params_file = args.file or ("" if args.profile else "params.yaml")
    world = run_data_stage(
        profile=args.profile or "micro",
        params_file=params_file,
        out_dir=args.out or "",
        metrics_out=args.metrics or "",
        force=not args.reuse,
    )
    s = world_summary(world)
    if "train_images" in s:
        sys.stdout.write(
            f"{s['root']}: {s['train_images']} train scenes, vocabulary {s['vocab_size']}, "
            f"{s['megabytes']} MB, {s['generation_seconds']} s\n"
        )
    else:
        sys.stdout.write(f"{s['root']}: real-format fixtures of {', '.join(s['datasets'])}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="generate the micro-world (data.source: fixtures: the rehearsal's real-format files)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", choices=PROFILES, help="use a profile preset instead of a params file")
    src.add_argument(
        "--file", default=None, help="params file relative to the repo root (default: params.yaml)"
    )
    p.add_argument(
        "-o",
        "--out",
        default=None,
        help="output folder (default: data.root of the params); a relative path is taken from the repo root",
    )
    p.add_argument("--metrics", default=None, help="also write stats.json to this path")
    p.add_argument("--reuse", action="store_true", help="keep an existing world of the same parameters")
    p.set_defaults(func=_run)
