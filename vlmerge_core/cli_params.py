"""``vlmerge params``: print or write the resolved parameters of a profile or a params file."""

from __future__ import annotations

import argparse
import sys

import yaml

from vlmerge_core.config import PROFILES, load_params, profile_params, to_dict
from vlmerge_core.io import atomic_write


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of scalars (``betas: [0.9, 0.98]``)."""


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def dump_params(params) -> str:
    """The params as YAML text in the layout of ``params.yaml``."""
    return yaml.dump(to_dict(params), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


def _run(args: argparse.Namespace) -> int:
    params = profile_params(args.profile) if args.profile else load_params(args.file)
    text = dump_params(params)
    if args.output:
        with atomic_write(args.output) as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="print the resolved params (validates params.yaml)")
    p.add_argument("--profile", choices=PROFILES, help="resolve a profile preset instead of a file")
    p.add_argument("--file", default=None, help="params file (default: <repo root>/params.yaml)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_run)
