"""Merge time and peak memory on a ViT-B-size MS checkpoint, against the I/O floor; RegMean solve vs inverse.

Writes a random MS checkpoint (all four components per expert), its central MA checkpoint and a
Gram file under ``--dir``, then runs in a fresh subprocess each: the I/O floor (read every tensor of
the MS file with ``safe_open`` and write an MA-size file of plain copies), and ``merge_checkpoint``
by every method. Peak RSS is the child's own ``ru_maxrss``; "net" subtracts the RSS of a child that
only imports the library. Targets: merge time <= 2x the floor, net peak RSS <= 1.3x the output size.

    python benchmarks/merge.py                       # ViT-B: width 768, 12 blocks, vl from block 10
    python benchmarks/merge.py --width 128 --depth 4 --vl-start 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CENTRAL = ("arithmetic", "ties", "dare")
PARAMS = {
    "interpolation": {"ratio": 0.5},
    "arithmetic": {"lam": 0.5},
    "regmean": {"alpha": 0.9},
    "ties": {"density": 0.5},
    "dare": {"drop_rate": 0.5, "lam": 0.5, "seed": 0},
}


def _cfg(args, ms: bool):
    from vlmerge_core.config import ModelConfig

    return ModelConfig(
        width=args.width,
        depth=args.depth,
        heads=args.heads,
        vl_start=args.vl_start,
        image_size=224,
        patch_size=16,
        vocab_size=30522,
        max_text_len=40,
        layer_scale_init=0.1,
        rel_pos_bias=True,
        mim_vocab=8192,
        ms_components=["attn", "mlp", "norm1", "norm2"] if ms else [],
    )


def _shapes(cfg) -> dict[str, tuple[int, ...]]:
    import torch

    from vlmerge_core.model import MultiwayTransformer

    with torch.device("meta"):
        model = MultiwayTransformer(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_inputs(args, d: Path) -> None:
    """Random MS + central checkpoints and SPD Gram matrices (low rank + diagonal) on disk."""
    import dataclasses

    import torch

    from vlmerge_core.io import save_safetensors

    g = torch.Generator().manual_seed(0)
    for ms, name in ((True, "ms"), (False, "central")):
        cfg = _cfg(args, ms)
        sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in _shapes(cfg).items()}
        save_safetensors(
            d / f"{name}.safetensors",
            sd,
            {
                "model_config": json.dumps(dataclasses.asdict(cfg)),
                "kind": "ms" if ms else "ma",
                "format": "vlmerge-v1",
            },
        )
        del sd
    grams = {}
    for k, s in _shapes(_cfg(args, True)).items():
        for lin in ("qkv", "proj", "fc1", "fc2"):
            if k.endswith(f".{lin}.weight"):
                n = s[1]
                a = torch.randn(n, 32, generator=g, dtype=torch.float64)
                grams[k[: -len(".weight")]] = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    from vlmerge_core.merge.gram import save_grams

    save_grams(d / "grams.safetensors", grams)


def child(what: str, d: Path) -> dict:
    """Run one job in this (fresh) process; report seconds and own peak RSS."""
    import torch

    torch.set_num_threads(1)
    from vlmerge_core.merge.stream import merge_checkpoint, open_tensors

    t0 = time.perf_counter()
    out = d / f"out_{what}.safetensors"
    if what == "import":
        pass
    elif what in ("floor", "floor_central"):
        from vlmerge_core.io import save_safetensors
        from vlmerge_core.merge.unify import split_expert_key

        tensors = {}
        if what == "floor_central":  # methods with a central checkpoint read it too
            with open_tensors(d / "central.safetensors", "central") as (get, keys):
                for k in keys:
                    get(k)
        with open_tensors(d / "ms.safetensors", "MS") as (get, keys):
            for k in keys:
                t = get(k)
                parsed = split_expert_key(k)
                if parsed is None:
                    tensors[k] = t
                elif parsed[2] == "v":
                    tensors[parsed[0]] = t
        save_safetensors(out, tensors)
    else:
        merge_checkpoint(
            d / "ms.safetensors",
            out,
            what,
            central_path=d / "central.safetensors" if what in CENTRAL else None,
            gram_path=d / "grams.safetensors" if what == "regmean" else None,
            **PARAMS[what],
        )
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = out.stat().st_size if out.exists() else 0
    if out.exists():
        out.unlink()
    return {"job": what, "seconds": secs, "peak_rss": rss, "out_bytes": size}


def solve_vs_inverse(n: int, m: int = 3, cond: float = 1e6, out_dim: int = 768) -> dict:
    """RegMean's normal equations with a known answer X: solve vs explicit inverse (time, rel. error)."""
    import torch

    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    den = (q * eig) @ q.T  # SPD, condition number ~cond: the summed Gram matrix
    den = (den + den.T) / 2
    x_true = torch.randn(out_dim, n, generator=g, dtype=torch.float64)
    num = x_true @ den
    t0 = time.perf_counter()
    xs = torch.linalg.solve(den, num, left=False)
    t_solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    xi = num @ torch.inverse(den)
    t_inv = time.perf_counter() - t0
    err = lambda x: float((x - x_true).norm() / x_true.norm())  # noqa: E731
    return {
        "n": n,
        "cond": cond,
        "solve_s": t_solve,
        "inverse_s": t_inv,
        "solve_rel_err": err(xs),
        "inverse_rel_err": err(xi),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vl-start", type=int, default=10)
    ap.add_argument("--dir", default="/tmp/vlmerge_bench")
    ap.add_argument("--methods", default="interpolation,arithmetic,regmean,ties,dare")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = Path(args.dir)
    if args.child == "write":
        import torch

        torch.set_num_threads(1)
        write_inputs(args, d)
        return
    if args.child:
        print(json.dumps(child(args.child, d)))
        return
    # the parent stays small (no torch import): a child's ru_maxrss starts from its parent's RSS at fork
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    geometry = [
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--heads",
        str(args.heads),
        "--vl-start",
        str(args.vl_start),
        "--dir",
        str(d),
    ]
    subprocess.run([sys.executable, __file__, "--child", "write", *geometry], check=True)
    print(
        f"inputs written in {time.perf_counter() - t0:.1f}s: MS {os.path.getsize(d / 'ms.safetensors') / 2**20:.0f} MiB, "
        f"grams {os.path.getsize(d / 'grams.safetensors') / 2**20:.0f} MiB"
    )
    rows = {}
    for job in ["import", "floor", "floor_central", *args.methods.split(",")]:
        res = subprocess.run(
            [sys.executable, __file__, "--child", job, "--dir", str(d)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[job] = json.loads(res.stdout.strip().splitlines()[-1])
    base, floor, floor_c = rows["import"]["peak_rss"], rows["floor"], rows["floor_central"]
    mib = 2**20
    print(
        f"\nwidth {args.width}, depth {args.depth}, vl_start {args.vl_start}; output {floor['out_bytes'] / mib:.0f} MiB; "
        f"import-only RSS {base / mib:.0f} MiB"
    )
    print(
        "x floor: seconds over the floor of the same reads (MS file; MS + central file for arithmetic, "
        "TIES, DARE)"
    )
    print(f"{'job':14s} {'seconds':>8s} {'x floor':>8s} {'peak RSS':>9s} {'net RSS':>8s} {'net/out':>8s}")
    for job, r in rows.items():
        if job == "import":
            continue
        net = r["peak_rss"] - base
        ref = floor_c if job in CENTRAL else floor
        print(
            f"{job:14s} {r['seconds']:8.2f} {r['seconds'] / ref['seconds']:8.2f} {r['peak_rss'] / mib:8.0f}M "
            f"{net / mib:7.0f}M {net / max(r['out_bytes'], 1):8.2f}"
        )
    import torch

    torch.set_num_threads(1)
    print(
        "\nRegMean: torch.linalg.solve vs explicit float64 inverse (known answer X; relative Frobenius error)"
    )
    for n in (args.width, 4 * args.width):
        for cond in (1e4, 1e10):
            r = solve_vs_inverse(n, cond=cond, out_dim=args.width)
            print(
                f"n={n:5d} cond={cond:.0e}: solve {r['solve_s']:.3f}s err {r['solve_rel_err']:.2e} | inverse "
                f"{r['inverse_s']:.3f}s err {r['inverse_rel_err']:.2e} | time ratio inv/solve "
                f"{r['inverse_s'] / r['solve_s']:.2f}"
            )


if __name__ == "__main__":
    main()
