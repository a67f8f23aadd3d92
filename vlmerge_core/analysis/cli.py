"""``vlmerge distance``: weight-distance metrics between the experts of an MS checkpoint."""

from __future__ import annotations

import argparse
import json

from vlmerge_core.analysis.distance import METRICS, weight_distances
from vlmerge_core.io import load_safetensors, write_json
from vlmerge_core.model.experts import parse_experts


def cmd_distance(args: argparse.Namespace) -> int:

    ms, _ = load_safetensors(args.ms_ckpt)
    central = load_safetensors(args.central)[0] if args.central else None
    dist = weight_distances(
        ms, central, args.k, experts=parse_experts(args.experts) or ("v", "l"), per_param=not args.no_params
    )
    write_json(args.output, dist)
    print(json.dumps({m: dist["total"][m] for m in METRICS}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the analysis subcommands to the ``vlmerge`` parser."""
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
