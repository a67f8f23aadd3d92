"""The ``vlmerge`` command. Each subcommand lives in the ``cli.py`` of the package that owns it.

Subcommands: ``params`` (here: print or write the resolved params of a profile or a params file),
``data``, ``pretrain``, and those of the merge, analysis and tasks packages (``merge``, ``distance``,
``convert``, ``finetune``...).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import yaml

from vlmerge_core.config import PROFILES, load_params, profile_params, to_dict
from vlmerge_core.io import atomic_write

# module path -> function(subparsers) that adds its subcommands; each sets `func` on its parser
_REGISTRARS: list[str] = [
    "vlmerge_core.cli:register",
    "vlmerge_core.data.cli:register",
    "vlmerge_core.tasks.cli:register",
    "vlmerge_core.merge.cli:register",
    "vlmerge_core.analysis.cli:register",
    "vlmerge_core.pretrain.cli:register",
]


# ------------------------------------------------------------------------------------------ params
class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of scalars (``betas: [0.9, 0.98]``)."""


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def dump_params(params) -> str:
    """The params as YAML text in the layout of ``params.yaml``."""
    return yaml.dump(to_dict(params), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


def _run_params(args: argparse.Namespace) -> int:
    params = profile_params(args.profile) if args.profile else load_params(args.file)
    text = dump_params(params)
    if args.output:
        with atomic_write(args.output) as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The subcommands of the top-level package: ``params``."""
    p = sub.add_parser("params", help="print the resolved params (validates params.yaml)")
    p.add_argument("--profile", choices=PROFILES, help="resolve a profile preset instead of a file")
    p.add_argument("--file", default=None, help="params file (default: <repo root>/params.yaml)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_run_params)


# -------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmerge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in _REGISTRARS:
        mod_name, fn_name = spec.split(":")
        register_fn: Callable = getattr(importlib.import_module(mod_name), fn_name)
        register_fn(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        sys.stderr.write(f"vlmerge {args.command}: error: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
