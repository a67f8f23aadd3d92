"""Paper-scale check on a GPU: ViT-B/16 (the paper profile's model) through seed pre-training, MS
pre-training under ``torchrun`` (nccl) with bf16 autocast, merging and the step throughput of MA vs MS.

Runs on a tiny micro-world rendered at 224 px (``--make-world`` writes it here, on a machine with
scikit-learn; the GPU machine only reads it). Prints every figure and writes ``gpu_check.json``.

    python benchmarks/gpu_check.py --make-world scratch/gpu_world          # here, once
    python benchmarks/gpu_check.py --world scratch/gpu_world --out OUT     # on the GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmerge_core.config import profile_params, to_dict  # noqa: E402

SMALL_DATA = {
    "image_size": 224,
    "mim_patch": 16,
    "n_train": 96,
    "n_val": 32,
    "n_test": 32,
    "n_image_only": 32,
    "n_corpus": 64,
    "mim_codebook_size": 64,
}
STEPS = {
    "steps": 8,
    "batch_size": 32,
    "warmup_frac": 0.25,
    "ckpt_every": 4,
    "log_every": 1,
    "eval_batch_size": 64,
}


def params_dict(world: str) -> dict:
    """The paper profile (ViT-B/16, BEiT-form blocks, rel. pos. bias, layer scale) on the tiny world."""
    p = profile_params("paper")
    d = to_dict(p)
    d["data"].update(SMALL_DATA, root=world)
    d["model"]["mim_vocab"] = SMALL_DATA["mim_codebook_size"]
    d["init_pretrain"].update(steps=0, beit_checkpoint="")
    d["seed_pretrain"].update(STEPS)
    d["ms_pretrain"].update(STEPS)
    d["study"].update(seed_lengths=[8], recipe_seed=8, pt_seeds=[0], grid={})
    return d


def sh(cmd: list[str], log: dict, key: str) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log[key] = {"seconds": round(time.perf_counter() - t0, 2), "rc": proc.returncode}
    print(f"$ {' '.join(cmd)}  -> rc {proc.returncode} in {log[key]['seconds']} s", flush=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-world", help="generate the tiny 224 px world into this folder and exit")
    ap.add_argument("--world", default="scratch/gpu_world")
    ap.add_argument("--out", default=os.environ.get("OUT", "scratch/gpu_check"))
    args = ap.parse_args()
    if args.make_world:
        from vlmerge_core.config import params_from_dict
        from vlmerge_core.data import generate_world

        params = params_from_dict(params_dict(args.make_world))
        generate_world(dataclasses.replace(params.data, root=args.make_world), ROOT / args.make_world)
        return 0
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = ROOT / "scratch" / "gpu_run"
    run.mkdir(parents=True, exist_ok=True)
    pfile = run / "params.yaml"
    pfile.write_text(yaml.safe_dump(params_dict(args.world), sort_keys=False))
    rel = str(pfile.relative_to(ROOT))
    log: dict = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    print(log, flush=True)
    from vlmerge_core.config import load_params
    from vlmerge_core.model import MultiwayTransformer, save_model

    params = load_params(rel)
    torch.manual_seed(0)
    save_model(run / "init.safetensors", MultiwayTransformer(params.model))
    cli = [sys.executable, "-m", "vlmerge_core.cli"]
    trun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "vlmerge_core.cli",
    ]
    sh(
        cli
        + [
            "pretrain",
            "seed",
            "--file",
            rel,
            "--init",
            f"{run.relative_to(ROOT)}/init.safetensors",
            "-o",
            f"{run.relative_to(ROOT)}/seed",
            "--world",
            args.world,
            "--restart",
        ],
        log,
        "seed_bf16",
    )
    sh(
        trun
        + [
            "pretrain",
            "ms",
            "--file",
            rel,
            "--variant",
            "all",
            "--init",
            f"{run.relative_to(ROOT)}/seed/last.safetensors",
            "-o",
            f"{run.relative_to(ROOT)}/ms",
            "--world",
            args.world,
            "--restart",
        ],
        log,
        "ms_bf16_torchrun_nccl",
    )
    for name in ("seed", "ms"):
        m = run / name / "metrics.json"
        if m.exists():
            doc = json.loads(m.read_text())
            log[f"{name}_metrics"] = {
                k: doc.get(k) for k in ("loss_start", "loss_end", "device", "retrieval")
            }
    ms = f"{run.relative_to(ROOT)}/ms/last.safetensors"
    sh(
        cli + ["merge", ms, "--method", "interpolation", "-o", f"{run.relative_to(ROOT)}/interp.safetensors"],
        log,
        "merge_interpolation",
    )
    sh(
        cli
        + [
            "merge",
            ms,
            "--method",
            "arithmetic",
            "--central",
            f"{run.relative_to(ROOT)}/seed/last.safetensors",
            "-o",
            f"{run.relative_to(ROOT)}/arith.safetensors",
        ],
        log,
        "merge_arithmetic",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--size",
            "vitb",
            "--batch",
            "64",
            "--steps",
            "10",
            "--warmup",
            "3",
            "--device",
            "cuda",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    log["throughput_vitb_bf16"] = proc.stdout[-2500:] + proc.stderr[-800:]
    print(log["throughput_vitb_bf16"], flush=True)
    (out / "gpu_check.json").write_text(json.dumps(log, indent=1, default=str))
    print(json.dumps({k: v for k, v in log.items() if k != "throughput_vitb_bf16"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
