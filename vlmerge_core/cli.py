"""The ``vlmerge`` command. Each subcommand lives in the module that owns it and registers here.

Subcommands: ``params`` (print or write resolved params), ``data`` (generate the micro-world),
and those added by the merge, analysis and tasks modules (``merge``, ``distance``, ``convert``...).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

# module path -> function(subparsers) that adds its subcommands; each sets `func` on its parser
_REGISTRARS: list[str] = [
    "vlmerge_core.cli_params:register",
    "vlmerge_core.data.cli:register",
    "vlmerge_core.tasks.registry:register",
    "vlmerge_core.merge.cli:register",
    "vlmerge_core.pretrain.cli:register",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmerge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in _REGISTRARS:
        mod_name, fn_name = spec.split(":")
        register: Callable = getattr(importlib.import_module(mod_name), fn_name)
        register(sub)
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
        print(f"vlmerge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
