"""``vlmerge merge``, ``vlmerge gram`` and ``vlmerge convert``.

The options of ``vlmerge merge`` are built from the method registry: ``--method`` lists the
registered methods and every knob adds its flag (shared by the methods that declare it), with its
range and default in the help.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from vlmerge_core.data import load_world
from vlmerge_core.merge.convert import convert_file
from vlmerge_core.merge.gram import collect_grams, save_grams
from vlmerge_core.merge.methods import METHODS, get_method
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.model import load_model
from vlmerge_core.model.experts import TASKS, merge_groups, parse_experts

log = logging.getLogger(__name__)


def knob_flags() -> dict[str, dict[str, Any]]:
    """``{flag: {"dest", "type", "choices", "methods", "help"}}`` over every registered method's knobs."""

    flags: dict[str, dict[str, Any]] = {}
    for m in METHODS.values():
        for k in m.knobs:
            f = flags.setdefault(
                k.cli_flag, {"dest": k.name, "type": k.type, "choices": k.choices, "methods": [], "help": []}
            )
            if f["dest"] != k.name or f["type"] is not k.type:
                raise ValueError(f"{k.cli_flag}: knob {k.name!r} of {m.name!r} clashes with {f['dest']!r}")
            f["methods"].append(m.name)
            rng = k.range_text()
            f["help"].append(
                f"{m.name}: {k.help.split(': ', 1)[-1]}{'; ' + rng if rng else ''}; default {k.default}"
            )
    return flags


def _stem_with_group(output: str, group: str) -> Path:
    out = Path(output)
    return out.with_name(f"{out.stem}__{group}{out.suffix or '.safetensors'}")


def cmd_merge(args: argparse.Namespace) -> int:

    method = get_method(args.method)
    params = {f["dest"]: getattr(args, f["dest"]) for f in knob_flags().values()}
    common = dict(
        central_path=args.central,
        gram_path=args.gram,
        vl_start=args.vl_start,
        only_used_experts=args.only_used_experts,
        experts=parse_experts(args.experts),
        unimodal_paths=args.unimodal_paths,
        **params,
    )
    groups = merge_groups(
        task_dependent=method.task_dependent,
        only_used_experts=args.only_used_experts,
        unimodal_paths=args.unimodal_paths,
    )
    if args.task or args.experts or list(groups) == ["all"]:
        print(merge_checkpoint(args.ms_ckpt, args.output, args.method, task=args.task or None, **common))
        return 0
    # a task-dependent merge without --task: one checkpoint per task group
    written = {}
    for group, tasks in groups.items():
        path = _stem_with_group(args.output, group)
        merge_checkpoint(
            args.ms_ckpt,
            path,
            args.method,
            task=tasks[0],
            extra_info={"group": group, "tasks": list(tasks)},
            **common,
        )
        written[group] = {"path": str(path), "tasks": list(tasks)}
    print(json.dumps(written, sort_keys=True))
    return 0


def cmd_gram(args: argparse.Namespace) -> int:

    model = load_model(args.ms_ckpt)
    grams = collect_grams(
        model,
        load_world(args.world),
        args.batches,
        batch_size=args.batch_size,
        exclude_padding=args.exclude_padding,
    )
    meta = {"source": str(args.ms_ckpt), "batches": args.batches, "exclude_padding": args.exclude_padding}
    print(save_grams(args.output, grams, meta))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:

    rep = convert_file(
        args.input,
        args.output,
        heads=args.heads,
        vl_start=args.vl_start,
        image_size=args.image_size,
        allow_lossy=args.allow_lossy,
        trust_pickle=args.trust_pickle,
        tokenizer=args.tokenizer,
    )
    summary = {k: (len(v) if isinstance(v, list) else v) for k, v in rep.items() if k != "model_config"}
    print(json.dumps(summary, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the merge-area subcommands to the ``vlmerge`` parser."""

    p = sub.add_parser("merge", help="merge a modality-specific checkpoint into a modality-agnostic one")
    p.add_argument("ms_ckpt", help="MS checkpoint (.safetensors; `vlmerge convert` official ones first)")
    p.add_argument(
        "--method",
        required=True,
        choices=list(METHODS),
        help="; ".join(f"{m.name}: {m.reference.split(',')[0]}" for m in METHODS.values()),
    )
    for flag, f in knob_flags().items():
        p.add_argument(flag, dest=f["dest"], type=f["type"], choices=f["choices"], help=" | ".join(f["help"]))
    needs = [m.name for m in METHODS.values() if m.needs_central]
    p.add_argument(
        "--central", help=f"seed (MA) checkpoint, origin of the modality vectors ({', '.join(needs)})"
    )
    grams = [m.name for m in METHODS.values() if m.needs_grams]
    p.add_argument(
        "--gram", help=f"Gram matrices from `vlmerge gram` or `vlmerge convert` ({', '.join(grams)})"
    )
    p.add_argument("--experts", help="merge only these experts in every block, e.g. v,l")
    p.add_argument(
        "--task",
        choices=TASKS,
        help="downstream task; without it a task-dependent merge writes one file per task group "
        "(<output stem>__<group>.safetensors)",
    )
    p.add_argument(
        "--only-used-experts",
        action="store_true",
        help="only_activate_used_experts of the official code (default off, as the official config)",
    )
    p.add_argument(
        "--unimodal-paths", action="store_true", help="image-only tasks from v, text-only from l (ours)"
    )
    p.add_argument("--vl-start", type=int, help="first fusion block (default: from the checkpoint metadata)")
    p.add_argument("-o", "--output", required=True, help="output MA checkpoint (.safetensors)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("gram", help="collect RegMean Gram matrices of an MS checkpoint on a micro-world")
    p.add_argument("ms_ckpt")
    p.add_argument("--world", required=True, help="micro-world folder")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--exclude-padding",
        action="store_true",
        help="sum over real tokens only (ours); default every token, as cache_gram_matrices.py",
    )
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
        "--tokenizer",
        help="the checkpoint's tokenizer (vocab.txt folder or tokenizer.json), recorded and checked at fine-tuning",
    )
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
