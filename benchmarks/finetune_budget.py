"""The fine-tuning budget of the study: seconds per task, fine-tunes per task, and their sum.

Fine-tunes each task of ``finetune.tasks`` once (fine-tuning seed 0) from one checkpoint with the
recipe of the params file, on ``study.workers`` spawned processes of one torch thread each, as the
study's stages do. Then counts the study's fine-tunes per task from its grid (``testbed_jobs`` and
``evaluate_jobs``: one per task, model and fine-tuning seed) and prints the
projected fine-tuning wall time, sum(seconds x count) / workers. The issue's figure that matters is
that sum; pre-training and merging come on top of it (`dvc repro`'s stage times).

    python benchmarks/finetune_budget.py                      # micro params.yaml, the recipe seed (RNG 0)
    python benchmarks/finetune_budget.py --checkpoint random:0
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from vlmerge_core.config import load_params
from vlmerge_core.study.plan import MARun, evaluate_jobs, testbed_jobs


def fine_tune(args: tuple[str, str, str]) -> tuple[str, float, float]:
    """(task, seconds, main metric) of one fine-tune in a fresh one-thread worker."""
    import torch

    from vlmerge_core.tasks.stage import run_finetune_stage

    torch.set_num_threads(1)
    params_file, checkpoint, task = args
    t = time.perf_counter()
    rec = run_finetune_stage(params_file, checkpoint=checkpoint, tasks=[task], ft_seeds=[0])["records"][0]
    return task, time.perf_counter() - t, rec["metrics"][rec["main_metric"]]


def grid_counts(params) -> Counter:
    """Fine-tunes per task in the study's grid (E0 and every MS run's rows; untrained rows excluded)."""
    jobs = [j for j in testbed_jobs(params) if j.kind != "untrained"] + evaluate_jobs(params)
    return Counter(t for j in jobs for t in j.tasks for _ in j.ft_seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", default="", help="default: the recipe's seed checkpoint (RNG seed 0)")
    args = ap.parse_args()
    params = load_params(args.params)
    checkpoint = args.checkpoint or MARun(params.study.recipe_seed, params.study.pt_seeds[0]).ckpt()
    workers = params.study.workers
    tasks = list(params.finetune.tasks)
    units = [(args.params, checkpoint, t) for t in tasks]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        done = {task: (s, m) for task, s, m in pool.map(fine_tune, units)}
    wall = time.perf_counter() - t0
    counts = grid_counts(params)
    print(
        f"checkpoint {checkpoint}; {workers} workers x 1 thread; val every {params.finetune.val_every} epochs"
    )
    print(f"{'task':<10}{'s/fine-tune':>12}{'main':>8}{'count':>7}{'task-s':>9}")
    total = 0.0
    for task in tasks:
        s, m = done[task]
        total += s * counts[task]
        print(f"{task:<10}{s:>12.1f}{m:>8.1f}{counts[task]:>7d}{s * counts[task]:>9.0f}")
    n = sum(counts[t] for t in tasks)
    print(f"fine-tunes in the grid: {n}; task-seconds: {total:.0f}")
    print(f"projected fine-tuning wall time: {total / workers:.0f} s ({total / workers / 60:.1f} min)")
    print(f"this benchmark's wall time: {wall:.0f} s for {len(tasks)} fine-tunes")


if __name__ == "__main__":
    main()
