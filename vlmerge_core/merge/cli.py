"""``vlmerge merge``, ``vlmerge distance``, ``vlmerge gram`` and ``vlmerge convert``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def _experts(text: str | None) -> list[str] | None:
    if not text:
        return None
    out = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in out if e not in ("v", "l", "vl")]
    if bad:
        raise ValueError(f"--experts: unknown expert(s) {bad}; use v, l, vl")
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    from vlmerge_core.merge.stream import merge_checkpoint

    params = {
        "ratio": args.ratio,
        "lam": args.lam,
        "alpha": args.alpha,
        "density": args.density,
        "drop_rate": args.drop_rate,
        "seed": args.seed,
    }
    out = merge_checkpoint(
        args.ms_ckpt,
        args.output,
        args.method,
        central_path=args.central,
        gram_path=args.gram,
        vl_start=args.vl_start,
        task=args.task,
        only_used_experts=not args.all_experts,
        experts=_experts(args.experts),
        unimodal_paths=args.unimodal_paths,
        **params,
    )
    print(out)
    return 0


def cmd_distance(args: argparse.Namespace) -> int:
    from vlmerge_core.analysis.distance import weight_distances
    from vlmerge_core.io import load_safetensors, write_json

    ms, _ = load_safetensors(args.ms_ckpt)
    central = load_safetensors(args.central)[0] if args.central else None
    dist = weight_distances(
        ms, central, args.k, experts=_experts(args.experts) or ("v", "l"), per_param=not args.no_params
    )
    write_json(args.output, dist)
    tot = dist["total"]
    print(json.dumps({m: tot[m] for m in ("l2", "cosine", "ssd", "tssd", "sign_conflict")}))
    return 0


def cmd_gram(args: argparse.Namespace) -> int:
    from vlmerge_core.data import load_world
    from vlmerge_core.merge.gram import collect_grams, save_grams
    from vlmerge_core.model import load_model

    model = load_model(args.ms_ckpt)
    grams = collect_grams(model, load_world(args.world), args.batches, batch_size=args.batch_size)
    print(save_grams(args.output, grams, {"source": str(args.ms_ckpt), "batches": args.batches}))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vlmerge_core.merge.convert import convert_file

    rep = convert_file(
        args.input,
        args.output,
        heads=args.heads,
        vl_start=args.vl_start,
        image_size=args.image_size,
        allow_lossy=args.allow_lossy,
        trust_pickle=args.trust_pickle,
    )
    summary = {k: (len(v) if isinstance(v, list) else v) for k, v in rep.items() if k != "model_config"}
    print(json.dumps(summary, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the merge-area subcommands to the ``vlmerge`` parser."""
    from vlmerge_core.merge.methods import METHODS

    p = sub.add_parser("merge", help="merge a modality-specific checkpoint into a modality-agnostic one")
    p.add_argument("ms_ckpt", help="MS checkpoint (.safetensors; `vlmerge convert` official ones first)")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument(
        "--ratio", type=float, help="interpolation: weight of v against l (paper's ratio, default 0.5)"
    )
    p.add_argument(
        "--lambda", dest="lam", type=float, help="arithmetic/ties/dare: scale of the modality vectors"
    )
    p.add_argument("--central", help="seed (MA) checkpoint: origin of the modality vectors")
    p.add_argument("--gram", help="Gram matrices (.safetensors from `vlmerge gram` or `vlmerge convert`)")
    p.add_argument("--alpha", type=float, help="regmean: scale of the off-diagonal Gram entries")
    p.add_argument("--density", type=float, help="ties: fraction of each modality vector kept")
    p.add_argument("--drop-rate", type=float, help="dare: drop probability")
    p.add_argument("--seed", type=int, help="dare: seed of the drop masks")
    p.add_argument("--experts", help="merge only these experts in every block, e.g. v,l")
    p.add_argument("--task", help="downstream task (vqa, coco, flickr, nlvr2, imagenet, ade20k, text)")
    p.add_argument("--all-experts", action="store_true", help="turn off only_activate_used_experts")
    p.add_argument(
        "--unimodal-paths", action="store_true", help="image-only tasks from v, text-only from l (ours)"
    )
    p.add_argument("--vl-start", type=int, help="first fusion block (default: from the checkpoint metadata)")
    p.add_argument("-o", "--output", required=True, help="output MA checkpoint (.safetensors)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("distance", help="weight-distance metrics between the experts of an MS checkpoint")
    p.add_argument("ms_ckpt")
    p.add_argument("--central", help="seed (MA) checkpoint; without it SSD/TSSD are not computed")
    p.add_argument(
        "--k", type=float, default=0.5, help="TSSD keeps this top fraction of each modality vector"
    )
    p.add_argument("--experts", help="experts compared (default v,l)")
    p.add_argument("--no-params", action="store_true", help="leave out the per-parameter table")
    p.add_argument("-o", "--output", required=True, help="output JSON")
    p.set_defaults(func=cmd_distance)

    p = sub.add_parser("gram", help="collect RegMean Gram matrices of an MS checkpoint on a micro-world")
    p.add_argument("ms_ckpt")
    p.add_argument("--world", required=True, help="micro-world folder")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_gram)

    p = sub.add_parser(
        "convert", help="convert an official vl-merging checkpoint or Gram file to safetensors"
    )
    p.add_argument("input", help="Lightning .ckpt, torch state dict, or cache_gram_matrices.py output")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--heads", type=int, help="attention heads, when the shapes do not tell")
    p.add_argument("--vl-start", type=int, help="first fusion block (needed for MA/ufo checkpoints)")
    p.add_argument("--image-size", type=int, help="input image side, when the shapes do not tell")
    p.add_argument(
        "--allow-lossy", action="store_true", help="drop tensors with no place here (listed in metadata)"
    )
    p.add_argument(
        "--trust-pickle", action="store_true", help="torch.load with weights_only=False (trusted files only)"
    )
    p.set_defaults(func=cmd_convert)


if __name__ == "__main__":  # pragma: no cover
    from vlmerge_core.cli import main

    sys.exit(main())
