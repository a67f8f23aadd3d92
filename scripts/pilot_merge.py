"""Pilot of the paper's central effect on the micro-world: does seed pre-training make merging work?

Pipeline (CPU, one thread, everything under ``--out``, default ``scratch/pilot``):
  world -> init (image-only MIM, the BEiT stand-in) -> seed (MA, K_seed steps)
        -> MS from the seed checkpoint (K_VL steps)      -> merge: interpolation 0.5, arithmetic (central = seed)
        -> MS from the init checkpoint ("no seed", K_VL) -> merge: interpolation 0.5, arithmetic (central = init)
        -> MA control: the seed run continued (MA) for K_VL more steps, the same total budget as the MS model
Every model is scored by zero-shot image-text retrieval (ITC heads, v/l path) on val and test.
Re-running reuses finished stages (``run_pretrain`` resumes from its folder).

    python scripts/pilot_merge.py --seed-steps 150 --vl-steps 150
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from vlmerge_core.analysis.distance import weight_distances
from vlmerge_core.config import profile_params
from vlmerge_core.data import generate_world, load_world
from vlmerge_core.io import load_safetensors, write_json
from vlmerge_core.merge.methods import get_method
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.model import load_model
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain.evaluate import evaluate_retrieval
from vlmerge_core.pretrain.loop import run_pretrain

MS_ALL = ["attn", "mlp", "norm1", "norm2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="scratch/pilot")
    ap.add_argument("--n-train", type=int, default=3000, help="training scenes of the pilot world")
    ap.add_argument("--init-steps", type=int, default=100)
    ap.add_argument("--seed-steps", type=int, default=200)
    ap.add_argument("--vl-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--lam",
        type=float,
        default=0.75,
        help="modality-arithmetic lambda (README example 0.75; 0.5 equals interpolation 0.5 for two experts)",
    )
    ap.add_argument(
        "--lr", type=float, help="peak learning rate of every stage (default: the micro profile's)"
    )
    ap.add_argument("--no-ma-baseline", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = resolve(args.out)
    t0 = time.perf_counter()
    P = profile_params("micro")
    data_cfg = dataclasses.replace(P.data, n_train=args.n_train)
    world_dir = out / "world"
    if not (world_dir / "stats.json").exists():
        generate_world(data_cfg, world_dir)
    world = load_world(world_dir)
    ma_cfg = dataclasses.replace(
        P.model, vocab_size=data_cfg.vocab_size, mim_vocab=data_cfg.mim_codebook_size
    )
    ms_cfg = dataclasses.replace(ma_cfg, ms_components=MS_ALL)
    common = {
        "batch_size": args.batch_size,
        "eval_batch_size": 256,
        "ckpt_every": 50,
        **({"lr": args.lr} if args.lr else {}),
    }
    timings = {}

    def stage(name: str, cfg, model_cfg, init: Path | None, kind: str, steps: int) -> Path:
        t = time.perf_counter()
        cfg = dataclasses.replace(
            cfg,
            steps=steps,
            warmup_steps=max(1, steps // 10),
            **common,
            **({"save_steps": [steps]} if hasattr(cfg, "save_steps") else {}),
        )
        run_pretrain(cfg, model_cfg, world, out / name, init=init, stage=kind, device="cpu")
        timings[name] = time.perf_counter() - t
        return out / name / "last.safetensors"

    init = stage("init", P.init_pretrain, ma_cfg, None, "init", args.init_steps)
    seed = stage("seed", P.seed_pretrain, ma_cfg, init, "seed", args.seed_steps)
    ms_seed = stage("ms_from_seed", P.ms_pretrain, ms_cfg, seed, "ms", args.vl_steps)
    ms_init = stage("ms_from_init", P.ms_pretrain, ms_cfg, init, "ms", args.vl_steps)
    models = {
        "init": init,
        "seed (MA, K_seed)": seed,
        "MS from seed (unmerged)": ms_seed,
        "MS no seed (unmerged)": ms_init,
    }
    if not args.no_ma_baseline:
        models["MA control (seed + K_VL MA steps)"] = stage(
            "ma_control", P.seed_pretrain, ma_cfg, seed, "seed", args.vl_steps
        )
    for label, ms_path, central in (("seed", ms_seed, seed), ("no seed", ms_init, init)):
        for method, params in (("interpolation", {"ratio": 0.5}), ("arithmetic", {"lam": args.lam})):
            path = out / "merged" / f"{label.replace(' ', '_')}_{method}.safetensors"
            merge_checkpoint(
                ms_path,
                path,
                method,
                central_path=central if get_method(method).needs_central else None,
                task="coco",
                **params,
            )
            models[f"MS {label} -> {method}"] = path
    distances = {}
    for label, ms_path, central in (("seed", ms_seed, seed), ("no seed", ms_init, init)):
        dist = weight_distances(
            load_safetensors(ms_path)[0], load_safetensors(central)[0], 0.5, per_param=False
        )
        distances[label] = {m: dist["total"][m] for m in ("l2", "cosine", "ssd", "tssd", "sign_conflict")}
    rows = {}
    for label, path in models.items():
        model = load_model(path)
        rows[label] = {split: evaluate_retrieval(model, world, split, "coco") for split in ("val", "test")}
    result = {
        "args": vars(args),
        "stage_seconds": timings,
        "total_seconds": time.perf_counter() - t0,
        "retrieval": rows,
        "distances_v_l": distances,
    }
    write_json(out / "pilot_results.json", result)
    print(
        f"\nzero-shot retrieval (coco captions), recall@1/5 in %; chance IR@1 "
        f"{rows['init']['test']['chance_ir_r1']:.1f}, TR@1 {rows['init']['test']['chance_tr_r1']:.1f}"
    )
    print(
        f"{'model':34s} {'val IR@1':>8s} {'val TR@1':>8s} {'test IR@1':>9s} {'test TR@1':>9s} {'test rsum':>9s}"
    )
    for label, r in rows.items():
        v, t = r["val"], r["test"]
        print(
            f"{label:34s} {v['ir_r1']:8.1f} {v['tr_r1']:8.1f} {t['ir_r1']:9.1f} {t['tr_r1']:9.1f} {t['rsum']:9.1f}"
        )
    for label, d in distances.items():
        print(
            f"v-l distances, MS {label} (central = {'seed' if label == 'seed' else 'init'}): "
            + ", ".join(f"{k} {v:.4g}" for k, v in d.items())
        )
    print(json.dumps({k: round(v) for k, v in timings.items()}), f"total {result['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
