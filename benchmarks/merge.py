"""Merge time and peak memory on a ViT-B-size MS checkpoint, against each method's floor; RegMean solvers.

Writes a random MS checkpoint (all four components per expert), its central MA checkpoint and a
Gram file under ``--dir``, then runs in a fresh subprocess each (torch with ``--threads`` threads):
the I/O floor (read every tensor of the MS file with positioned reads and write an MA-size file of
plain copies; ``floor_central`` reads the central file too, ``floor_two_pass`` also the MS file once
more, as TIES' vector trim must), and ``merge_checkpoint`` by every
registered method with its knob defaults (plus ``ties:trim=tensor``). Peak RSS is the child's own
``ru_maxrss``; "net" subtracts the RSS of a child that only imports the library. Every job runs
``--repeats`` times (default 3), in rounds of all jobs, after a ``sync``: the table gives the least
seconds (the disk's write speed, which the fsync of every output meets, varies from run to run on a
shared machine: a single run's floor swung 0.85-2.0 s) and whether all runs wrote identical files.
``--keep`` leaves the output files (``out_<job>.safetensors``) under ``--dir``, e.g. to ``cmp`` them
with another commit's outputs for the same inputs.

Floors: RegMean against its floating-point floor, i.e. its float64 FLOPs (``M`` products
``W^m G~^m`` of ``2 out in^2``, a Cholesky factor ``in^3 / 3`` and two triangular solves
``2 out in^2`` per linear weight) at this machine's measured float64 matmul rate; every other method
against the I/O floor of the files it reads. Targets (issue 22): RegMean <= 2x its FLOP floor,
the others <= 3x their I/O floor, net peak RSS <= 1.3x the output size.

    python benchmarks/merge.py                       # ViT-B: width 768, 12 blocks, vl from block 10
    python benchmarks/merge.py --width 128 --heads 4 --depth 4 --vl-start 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path


def _cfg(args, ms: bool):
    from vlmerge_core.config import ModelConfig
    from vlmerge_core.model.experts import COMPONENTS

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
        ms_components=list(COMPONENTS) if ms else [],
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
    from vlmerge_core.merge.gram import save_grams
    from vlmerge_core.merge.unify import gram_key, split_expert_key
    from vlmerge_core.model.checkpoint import FORMAT

    g = torch.Generator().manual_seed(0)
    for ms, name in ((True, "ms"), (False, "central")):
        cfg = _cfg(args, ms)
        sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in _shapes(cfg).items()}
        meta = {
            "model_config": json.dumps(dataclasses.asdict(cfg)),
            "kind": "ms" if ms else "ma",
            "format": FORMAT,
        }
        save_safetensors(d / f"{name}.safetensors", sd, meta)
        del sd
    grams = {}
    for k, s in _shapes(_cfg(args, True)).items():
        parsed = split_expert_key(k)
        key = gram_key(parsed[0], parsed[2]) if parsed else None
        if key is not None:
            n = s[1]
            a = torch.randn(n, 32, generator=g, dtype=torch.float64)
            grams[key] = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    save_grams(d / "grams.safetensors", grams)


def _job(what: str) -> tuple[str, dict]:
    """``"ties:trim=tensor"`` -> (``"ties"``, ``{"trim": "tensor"}``), typed by the knob."""
    from vlmerge_core.merge.methods import get_method

    method, _, opts = what.partition(":")
    m = get_method(method)
    params = {}
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        params[key] = m.knob(key).type(value)
    return method, params


def child(what: str, d: Path, threads: int, keep: bool = False) -> dict:
    """Run one job in this (fresh) process; report seconds and own peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from vlmerge_core.merge.methods import get_method
    from vlmerge_core.merge.stream import merge_checkpoint, open_tensors

    t0 = time.perf_counter()
    out = d / f"out_{what.replace(':', '_').replace('=', '_')}.safetensors"
    if what == "import":
        pass
    elif what == "matmul":  # float64 matmul rate (FLOP/s) at this thread count
        n = 1536
        a = torch.randn(n, n, dtype=torch.float64)
        best = min(_timed(lambda: a @ a) for _ in range(3))
        return {"job": what, "flops_per_s": 2 * n**3 / best}
    elif what in FLOORS:
        from vlmerge_core.io import save_safetensors
        from vlmerge_core.merge.unify import split_expert_key

        tensors = {}
        if what != "floor":  # methods with a central checkpoint read it too
            with open_tensors(d / "central.safetensors", "central") as (get, keys):
                for k in keys:
                    get(k)
        if what == "floor_two_pass":  # TIES' vector trim: a first pass over the MS file before the merge
            with open_tensors(d / "ms.safetensors", "MS") as (get, keys):
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
        method, params = _job(what)
        m = get_method(method)
        merge_checkpoint(
            d / "ms.safetensors",
            out,
            method,
            central_path=d / "central.safetensors" if m.needs_central else None,
            gram_path=d / "grams.safetensors" if m.needs_grams else None,
            **params,
        )
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = out.stat().st_size if out.exists() else 0
    digest = ""
    if out.exists():
        import hashlib

        with open(out, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if not keep:
            out.unlink()
    return {"job": what, "seconds": secs, "peak_rss": rss, "out_bytes": size, "sha256": digest}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def regmean_flops(ms_path: Path, vl_start: int) -> float:
    """Float64 FLOPs of RegMean over every expert (no task): products, Cholesky, triangular solves."""
    with open(ms_path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    from vlmerge_core.model.experts import EXPERT_KEY  # pure Python

    flops = 0.0
    for key, entry in header.items():
        match = EXPERT_KEY.match(key)
        if (
            match
            and match.group(3) == "v"
            and match.group(4) in ("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")
        ):
            out_dim, in_dim = entry["shape"]
            m = 3 if int(match.group(1)) >= vl_start else 2
            flops += m * 2 * out_dim * in_dim**2 + in_dim**3 / 3 + 2 * out_dim * in_dim**2
    return flops


def solvers(n: int, cond: float, out_dim: int) -> dict:
    """RegMean's normal equations with a known answer X: Cholesky, LU solve, explicit inverse."""
    import torch

    from vlmerge_core.merge.methods import solve_normal

    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    den = (q * eig) @ q.T  # SPD, condition number ~cond: the summed Gram matrix
    den = (den + den.T) / 2
    x_true = torch.randn(out_dim, n, generator=g, dtype=torch.float64)
    num = x_true @ den
    res = {}
    for solver in ("cholesky", "lu", "inverse"):
        best, x = float("inf"), None
        for _ in range(3):
            t0 = time.perf_counter()
            x = solve_normal(num, den, "bench", solver)
            best = min(best, time.perf_counter() - t0)
        res[solver] = (best, float((x - x_true).norm() / x_true.norm()))
    return res


FLOORS = ("floor", "floor_central", "floor_two_pass")


def _run_child(args, d: Path, job: str) -> dict:
    cmd = [sys.executable, __file__, "--child", job, "--dir", str(d), "--threads", str(args.threads)]
    res = subprocess.run(
        [*cmd, *(["--keep"] if args.keep else [])], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_jobs(args, d: Path, jobs: list[str]) -> dict[str, dict]:
    """Every job in a fresh child process, ``--repeats`` rounds of all of them (floors included, so that
    a slow spell of the machine's disk hits the floors and the methods alike), dirty pages written
    back (``sync``) before each run: per job the least seconds (the run least disturbed), the most
    seconds, the largest peak RSS, and whether every round wrote the same bytes; the float64 matmul
    rate is measured in every round too, and its best sets RegMean's floor."""
    rows = {"import": _run_child(args, d, "import")}
    for _ in range(args.repeats):
        rate = _run_child(args, d, "matmul")  # the floor of RegMean: the best rate of the rounds
        rows["matmul"] = max(rows.get("matmul", rate), rate, key=lambda r: r["flops_per_s"])
        for job in (*FLOORS, *jobs):
            os.sync()
            res = _run_child(args, d, job)
            row = rows.setdefault(job, {**res, "max_seconds": 0.0, "digests": set()})
            row["seconds"] = min(row["seconds"], res["seconds"])
            row["max_seconds"] = max(row["max_seconds"], res["seconds"])
            row["peak_rss"] = max(row["peak_rss"], res["peak_rss"])
            row["digests"].add(res["sha256"])
    for job in (*FLOORS, *jobs):
        rows[job]["same_bytes"] = len(rows[job]["digests"]) == 1
    return rows


def print_table(args, d: Path, rows: dict[str, dict]) -> None:
    """One row per job: seconds against its floor, peak RSS against the output size."""
    mib = 2**20
    base, floor, floor_c = rows["import"]["peak_rss"], rows["floor"], rows["floor_central"]
    rate = rows["matmul"]["flops_per_s"]
    flop_floor = regmean_flops(d / "ms.safetensors", args.vl_start) / rate
    print(
        f"\nwidth {args.width}, depth {args.depth}, vl_start {args.vl_start}; output {floor['out_bytes'] / mib:.0f} MiB; "
        f"import-only RSS {base / mib:.0f} MiB; float64 matmul {rate / 1e9:.1f} GFLOP/s"
    )
    print(
        f"floor: RegMean = its FLOPs at that rate ({flop_floor:.2f}s); others = the I/O floor of the same "
        "reads (MS file; MS + central file for methods that need it)"
    )
    print(f"seconds: the least of {args.repeats} runs (in brackets the most); x floor: least over least")
    print(
        f"{'job':18s} {'seconds':>8s} {'[most]':>8s} {'floor':>7s} {'x floor':>8s} {'peak RSS':>9s} {'net RSS':>8s} "
        f"{'net/out':>8s} {'same bytes':>10s}"
    )
    from vlmerge_core.merge.methods import METHODS as methods  # after the children (their RSS is measured)

    for job, r in rows.items():
        if job in ("import", "matmul"):
            continue
        m = methods.get(job.partition(":")[0])
        central = m.needs_central if m else job != "floor"
        ref = flop_floor if m is not None and m.needs_grams else (floor_c if central else floor)
        ref_s = ref if isinstance(ref, float) else ref["seconds"]
        net = r["peak_rss"] - base
        print(
            f"{job:18s} {r['seconds']:8.2f} {'[' + format(r['max_seconds'], '.2f') + ']':>8s} {ref_s:7.2f} "
            f"{r['seconds'] / ref_s:8.2f} {r['peak_rss'] / mib:8.0f}M "
            f"{net / mib:7.0f}M {net / max(r['out_bytes'], 1):8.2f} {'yes' if r['same_bytes'] else 'NO':>10s}"
        )
    two = rows["floor_two_pass"]["seconds"]
    for job in (j for j in rows if j.startswith("ties") and "trim=tensor" not in j):
        print(
            f"{job}: {rows[job]['seconds'] / two:.2f}x floor_two_pass ({two:.2f}s: the exact top-k of a whole "
            "modality vector reads the MS file before merging, so the MS file twice and the central once)"
        )


def print_solvers(args) -> None:
    """RegMean's three solvers on matrices of known solution."""
    import torch  # the parent imports torch only after the children ran

    torch.set_num_threads(args.threads)
    print("\nRegMean solve X @ G = B (float64, known X; best of 3; relative Frobenius error)")
    for n in (args.width, 4 * args.width):
        for cond in (1e4, 1e10):
            r = solvers(n, cond, args.width)
            text = " | ".join(f"{s} {t:.3f}s err {e:.1e}" for s, (t, e) in r.items())
            print(f"n={n:5d} cond={cond:.0e}: {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vl-start", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every child")
    ap.add_argument("--dir", default="/tmp/vlmerge_bench")
    ap.add_argument("--methods", default="", help="jobs, e.g. regmean,ties:trim=tensor; default every method")
    ap.add_argument("--keep", action="store_true", help="leave the output files under --dir")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every job (>= 2: the same bytes?)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 2:
        ap.error("--repeats must be at least 2 (two runs tell whether the bytes are the same)")
    d = Path(args.dir)
    if args.child == "write":
        import torch

        torch.set_num_threads(args.threads)
        write_inputs(args, d)
        return
    if args.child:
        print(json.dumps(child(args.child, d, args.threads, args.keep)))
        return
    # the parent stays small (no torch import): a child's ru_maxrss starts from its parent's RSS at fork
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    geometry = ["--width", str(args.width), "--depth", str(args.depth), "--heads", str(args.heads)]
    geometry += ["--vl-start", str(args.vl_start), "--dir", str(d), "--threads", str(args.threads)]
    subprocess.run([sys.executable, __file__, "--child", "write", *geometry], check=True)
    mib = 2**20
    print(
        f"inputs written in {time.perf_counter() - t0:.1f}s: MS {os.path.getsize(d / 'ms.safetensors') / mib:.0f} MiB, "
        f"grams {os.path.getsize(d / 'grams.safetensors') / mib:.0f} MiB; torch threads {args.threads}"
    )
    jobs = args.methods.split(",") if args.methods else None
    if jobs is None:
        listing = "from vlmerge_core.merge.methods import METHODS; print(','.join(METHODS))"
        names = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, check=True)
        jobs = [*names.stdout.strip().split(","), "ties:trim=tensor"]
    rows = run_jobs(args, d, jobs)
    print_table(args, d, rows)
    print_solvers(args)


if __name__ == "__main__":
    main()
