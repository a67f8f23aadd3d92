"""Paper path on a GPU: the rehearsal's real-format files at ViT-B/16 size, under torchrun, in bf16.

Writes the fixtures with a BEiT ViT-B/16 checkpoint in timm's key layout (random weights: the path is
checked, not the numbers), then runs the library's stage functions with ``study.launcher: torchrun``
on ``--nproc`` processes (nccl on CUDA): the init loads the BEiT file, seed and MS pre-training read
the official arrow files through the DataLoader with bf16 autocast, the MS model is merged
(interpolation), and COCO retrieval is fine-tuned and evaluated at 384 px (the official fine-tuning
resolution: the image position bias is interpolated from 224 px) with bf16. Last, samples/s and MFU of
our MA/MS models against timm's ViT-B on the same device (``benchmarks/throughput.py``). Prints every
figure and writes ``gpu_check.json`` to ``--out``.

    python benchmarks/gpu_check.py --out OUT                       # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --out OUT   # the same path, tiny, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmerge_core.config import load_params, profile_params, to_dict  # noqa: E402
from vlmerge_core.data.stage import fixtures_stage  # noqa: E402
from vlmerge_core.merge.stream import merge_checkpoint  # noqa: E402
from vlmerge_core.pretrain.stage import run_pretrain_stage  # noqa: E402
from vlmerge_core.tasks.stage import run_finetune_stage  # noqa: E402

STEPS = {"steps": 8, "batch_size": 16, "warmup_frac": 0.25, "ckpt_every": 4, "log_every": 1}


def params_dict(run: Path, nproc: int, device: str, tiny: bool) -> dict:
    """The rehearsal profile at ViT-B/16 (the paper's model; ``tiny``: the rehearsal's), on ``device``."""
    d = to_dict(profile_params("rehearsal"))
    fx = run.relative_to(ROOT) / "fx"
    if not tiny:
        d["model"] = {**to_dict(profile_params("paper"))["model"], "ms_components": []}
        d["data"].update(image_size=224, mim_patch=16)
    size = 384 if not tiny else 2 * d["model"]["image_size"]
    d["data"].update(root=str(fx), pretrain_path=f"{fx}/arrows", tokenizer=f"{fx}/tokenizer", num_workers=2)
    d["init_pretrain"]["beit_checkpoint"] = f"{fx}/beit.safetensors"
    for stage in ("seed_pretrain", "ms_pretrain"):
        d[stage].update(STEPS, amp=True)
    d["finetune"].update(device=device, amp=True, tasks=["coco"], submission_dir="")
    d["finetune"]["overrides"] = {"coco": {"image_size": size, "batch_size": 8, "epochs": 1}}
    d["finetune"]["real_paths"] = {k: f"{fx}/{k}" for k in d["finetune"]["real_paths"]}
    d["study"].update(launcher="torchrun", nproc_per_node=nproc, sweep_tasks=["coco"])
    return d


def timed(log: dict, key: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    log[key] = {"seconds": round(time.perf_counter() - t0, 2)}
    print(f"{key}: {log[key]['seconds']} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "scratch/gpu_check"))
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes (GPUs)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument(
        "--tiny", action="store_true", help="the rehearsal's model sizes (a CPU check of the path)"
    )
    args = ap.parse_args()
    import torch

    out, run = Path(args.out), ROOT / "scratch" / "gpu_run"
    out.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    pfile = run / "params.yaml"
    pfile.write_text(yaml.safe_dump(params_dict(run, args.nproc, args.device, args.tiny), sort_keys=False))
    rel, r = str(pfile.relative_to(ROOT)), str(run.relative_to(ROOT))
    params = load_params(rel)
    cuda = torch.cuda.is_available()
    log: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    timed(log, "fixtures", fixtures_stage, params, ROOT / params.data.root)
    common = {"params_file": rel, "resume": False}
    init = timed(log, "init_beit", run_pretrain_stage, "init", out_dir=f"{r}/init", **common)
    seed = timed(
        log,
        "seed_bf16",
        run_pretrain_stage,
        "seed",
        init=f"{r}/init/last.safetensors",
        out_dir=f"{r}/seed",
        **common,
    )
    ms = timed(
        log,
        "ms_bf16",
        run_pretrain_stage,
        "ms",
        variant="all",
        init=f"{r}/seed/last.safetensors",
        out_dir=f"{r}/ms",
        **common,
    )
    timed(
        log,
        "merge",
        merge_checkpoint,
        ROOT / r / "ms/last.safetensors",
        ROOT / r / "merged.safetensors",
        "interpolation",
    )
    ft = timed(
        log, "coco_384_bf16", run_finetune_stage, rel, checkpoint=f"{r}/merged.safetensors", tasks=["coco"]
    )
    log["init"] = {k: init.get(k) for k in ("tensors_loaded", "world_size", "data_format")}
    for name, m in (("seed", seed), ("ms", ms)):
        log[name] = {k: m.get(k) for k in ("world_size", "data_format", "samples_per_s", "loss_end")}
    rec = ft["records"][0]
    log["coco"] = {k: rec.get(k) for k in ("world_size", "data_format", "metrics", "seconds")}
    log["coco"]["image_size"] = params.finetune.overrides["coco"]["image_size"]
    if cuda:
        cmd = [sys.executable, "benchmarks/throughput.py", "--size", "vitb", "--batch", "64", "--steps", "10",
               "--warmup", "3", "--device", "cuda", "--skip-vl"]  # fmt: skip
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        log["throughput_vitb_bf16"] = proc.stdout[-2500:] + proc.stderr[-800:]
        print(log["throughput_vitb_bf16"], flush=True)
    (out / "gpu_check.json").write_text(json.dumps(log, indent=1, default=str))
    print(json.dumps({k: v for k, v in log.items() if k != "throughput_vitb_bf16"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
