"""Training throughput of our multiway transformer (MA and MS) against timm's VisionTransformer.

One process, same width, depth, heads, MLP ratio and token count (1 + N patches). A training step
is forward + backward + AdamW step on the image-only path (our ``forward_image``, timm's
``forward_features``) with the same loss (mean square of the tokens). Also times a full VL
pre-training step (MLM + ITC + ITC-vl + ITM with hard negatives) of our MA and MS models.
Prints samples/s, the ratios (goal: MA >= timm, MS within 10% of MA), peak memory and, where the
device's peak bf16 rate is known (``--peak-tflops`` or :data:`PEAK_BF16_TFLOPS`), the model FLOP
utilisation (MFU): the FLOPs of one step (``torch.utils.flop_counter``) x steps/s / the peak.

    python benchmarks/throughput.py --size micro
    python benchmarks/throughput.py --size vitb --steps 3 --batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import timm
import torch

from vlmerge_core.config import ModelConfig, PretrainConfig
from vlmerge_core.model import MS_VARIANTS, MultiwayTransformer
from vlmerge_core.pretrain import objectives
from vlmerge_core.pretrain.optim import make_optimizer

SIZES = {
    "micro": ModelConfig(width=64, depth=4, heads=4, vl_start=3, image_size=32, patch_size=8, vocab_size=512),
    "vitb": ModelConfig(
        width=768,
        depth=12,
        heads=12,
        vl_start=10,
        image_size=224,
        patch_size=16,
        vocab_size=30522,
        max_text_len=40,
        layer_scale_init=0.1,
    ),
}


# dense bf16 peak of a GPU, TFLOP/s, by a substring of its name (vendor datasheets)
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device: str, given: float | None) -> float | None:
    """The peak bf16 rate of ``device``: ``given``, else the table's entry for the GPU's name."""
    if given or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` (forward, backward; matmuls and convolutions, as counted by
    ``torch.utils.flop_counter``; the optimizer's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode  # on use: only for the MFU line

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_interleaved(steps_by_name: dict, steps: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per step of each named step function, timed in interleaved rounds.

    Interleaving (A, B, C, A, B, C, ...) makes the comparison fair on a shared, noisy machine.
    """
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def image_step(model, forward, opt, images):
    def step():
        out = forward(images)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # AdamW skips parameters without gradient (text side, heads)

    return step


def vl_step(model, opt, batch, losses, device):
    shard = objectives.Shard(0, len(batch["ids"]), len(batch["ids"]))

    def step():
        parts = objectives.compute_losses(model, batch, losses, shard, device)
        sum(parts.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="micro")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-vl", action="store_true", help="skip the full VL pre-training step")
    ap.add_argument("--image-size", type=int, default=0, help="input side (default: the size's)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s (MFU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, dev, B = SIZES[args.size], args.device, args.batch
    if args.image_size:
        cfg = dataclasses.replace(cfg, image_size=args.image_size)
    pcfg = PretrainConfig()
    images = torch.randn(B, 3, cfg.image_size, cfg.image_size, device=dev)
    n_tokens = 1 + (cfg.image_size // cfg.patch_size) ** 2
    print(
        f"size={args.size} D={cfg.width} L={cfg.depth} H={cfg.heads} tokens={n_tokens} batch={B} "
        f"device={dev} threads={args.threads}"
    )
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.startswith("cuda"))
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        num_classes=0,
        qkv_bias=True,
    ).to(dev)
    steps = {
        "timm ViT": image_step(
            vit, vit.forward_features, torch.optim.AdamW(vit.parameters(), lr=1e-4), images
        )
    }
    T = cfg.max_text_len
    batch = {
        "images": images,
        "image_index": torch.arange(B),
        "ids": torch.randint(5, cfg.vocab_size, (B, T)),
        "mask": torch.ones(B, T, dtype=torch.bool),
        "itm_seed": torch.tensor(0),
    }
    batch["mlm_ids"] = batch["ids"].clone()
    batch["mlm_labels"] = torch.where(torch.rand(B, T) < 0.25, batch["ids"], -100)
    losses = {"mlm": 1.0, "itc": 1.0, "itc_vl": 1.0, "itm": 1.0}
    for name, comps in (("ours MA", []), ("ours MS(all)", MS_VARIANTS["all"])):
        model = MultiwayTransformer(dataclasses.replace(cfg, ms_components=comps)).to(dev)
        opt = make_optimizer(model, pcfg)
        steps[name] = image_step(model, lambda x, m=model: m.forward_image(x)["tokens"], opt, images)
        if not args.skip_vl:
            steps[name + " VL step"] = vl_step(model, opt, batch, losses, dev)
    with amp:
        sec = time_interleaved(steps, args.steps, args.warmup, dev)
        peak = peak_tflops(dev, args.peak_tflops)
        flops = {k: step_flops(s) for k, s in steps.items()} if peak else {}
    res = {k: B / v for k, v in sec.items()}
    for k, v in res.items():
        mfu = f"  MFU {100 * flops[k] / sec[k] / (peak * 1e12):.1f} %" if peak else ""
        print(f"{k:>22}: {v:10.4g} samples/s  ({B / v:.3f} s/step){mfu}")
    print(f"ratio MA / timm (image path): {res['ours MA'] / res['timm ViT']:.3f}   (goal >= 1)")
    print(f"ratio MS / MA (image path):   {res['ours MS(all)'] / res['ours MA']:.3f}   (goal >= 0.9)")
    if not args.skip_vl:
        print(
            f"ratio MS / MA (VL step):      {res['ours MS(all) VL step'] / res['ours MA VL step']:.3f}   (goal >= 0.9)"
        )
    print(
        f"peak memory: {peak_memory_mb(dev):.0f} MiB ({'max allocated' if dev.startswith('cuda') else 'max RSS'})"
    )


if __name__ == "__main__":
    main()
