"""Units of a study stage launched under ``torchrun`` (``study.launcher``), or run in this process.

``inprocess`` (micro default): :func:`~vlmerge_core.study.workers.run_units` runs the units side by side
on one-thread worker processes. ``torchrun`` (paper, rehearsal): the units of a call are one ``torchrun``
job of ``study.nproc_per_node`` processes per node on ``study.nnodes`` nodes (one start-up and
rendezvous, not one per unit); every rank runs the units in turn (pre-training and fine-tuning are
DDP-aware: :mod:`vlmerge_core.pretrain.distributed`, :mod:`vlmerge_core.tasks.parallel`; the first
unit sets up the process group and the job keeps it), and rank 0's results come back. Units and results
travel as pickles under ``runs/launch/`` (inside the repository, so a file system shared by the nodes sees them).
With several nodes, start the same stage on every node with ``VLMERGE_NODE_RANK`` set; the rendezvous
is ``study.rdzv_endpoint``. The merge stage stays in-process (its Gram matrices and merges are single-
process work).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vlmerge_core.config import ParamsError, StudyConfig
from vlmerge_core.io import atomic_write
from vlmerge_core.paths import repo_root, resolve

__all__ = [
    "LAUNCHERS",
    "LaunchError",
    "is_rank_zero",
    "launch_call",
    "run_launched",
    "torchrun_command",
    "world_probe",
]

LAUNCHERS = ("inprocess", "torchrun")
LAUNCH_DIR = "runs/launch"


class LaunchError(RuntimeError):
    """A launched unit failed (its exit code and command are in the message)."""


def _write(path: Path, obj: Any) -> None:
    with atomic_write(path, "wb") as fh:
        pickle.dump(obj, fh)


def torchrun_command(study: StudyConfig, target: str, unit_file: Path, result_file: Path) -> list[str]:
    """The ``torchrun`` command line of one unit (``target`` = ``module:function``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(study.nproc_per_node)]
    if study.nnodes == 1:
        cmd.append("--standalone")
    elif not study.rdzv_endpoint:
        raise ParamsError(f"study.rdzv_endpoint: needed (host:port) with study.nnodes = {study.nnodes}")
    else:
        node_rank = os.environ.get("VLMERGE_NODE_RANK", "0")
        cmd += ["--nnodes", str(study.nnodes), "--node_rank", node_rank, "--rdzv_backend", "c10d"]
        cmd += ["--rdzv_endpoint", study.rdzv_endpoint]
    return cmd + ["-m", __name__, target, str(unit_file), str(result_file)]


def _env() -> dict[str, str]:
    """This process's environment, with this checkout's package first on the path of every rank."""
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "VLMERGE_ROOT": str(repo_root())}


def run_launched(fn: Callable[[Any], Any], units: Sequence[Any], study: StudyConfig) -> list:
    """``[fn(u) for u in units]`` as one ``torchrun`` job; rank 0's results, in order.

    Raises:
        LaunchError: the job exits non-zero (the message names the unit that failed) or writes no result.
    """
    if not units:
        return []
    target = f"{fn.__module__}:{fn.__qualname__}"
    folder = resolve(LAUNCH_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    unit_file, result_file = folder / f"{os.getpid()}.units.pkl", folder / f"{os.getpid()}.results.pkl"
    failed = folder / f"{os.getpid()}.failed.txt"
    _write(unit_file, list(units))
    cmd = torchrun_command(study, target, unit_file, result_file)
    try:
        done = subprocess.run(cmd, env=_env(), check=False)
        if done.returncode != 0 or not result_file.is_file():
            which = failed.read_text().strip() if failed.is_file() else "a unit"
            raise LaunchError(
                f"{which} of {target} failed under torchrun (exit {done.returncode}): {' '.join(cmd)}"
            )
        return pickle.loads(result_file.read_bytes())
    finally:
        for f in (unit_file, result_file, failed):
            f.unlink(missing_ok=True)


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its ``torchrun`` job (or runs alone): the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def _resolve(target: str) -> Callable[..., Any]:
    """The function ``module:name``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _call(unit: tuple[str, tuple, dict]) -> Any:
    """A unit of :func:`launch_call`: ``(module:function, args, kwargs)``."""
    target, args, kwargs = unit
    return _resolve(target)(*args, **kwargs)


def launch_call(fn: Callable[..., Any], study: StudyConfig, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``: here, or with ``study.launcher: torchrun`` as one job of
    ``study.nproc_per_node`` processes (rank 0's result); inside a launched job it just runs here."""
    if study.launcher != "torchrun" or "WORLD_SIZE" in os.environ:
        return fn(*args, **kwargs)
    return run_launched(_call, [(f"{fn.__module__}:{fn.__qualname__}", args, kwargs)], study)[0]


def world_probe(unit: Any) -> dict[str, Any]:
    """A unit that reports the process group it ran in: world size, rank 0's view of the sum of
    ``rank + 1`` over the ranks (all-reduced), and the unit back."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    total = torch.tensor([int(os.environ.get("RANK", "0")) + 1.0])
    if size > 1:
        if not dist.is_initialized():  # the job's group, kept for its next units
            dist.init_process_group("gloo")
        dist.all_reduce(total)
    return {"world_size": size, "rank_sum": float(total.item()), "unit": unit}


def main(argv: Sequence[str]) -> int:
    """One rank: load the units, run ``module:function`` on each in turn, rank 0 writes the results.

    A unit that raises is named in ``<pid>.failed.txt`` beside the units (for the launcher's error).
    """
    target, unit_file, result_file = argv
    fn = _resolve(target)
    results = []
    for i, unit in enumerate(pickle.loads(Path(unit_file).read_bytes())):
        try:
            results.append(fn(unit))
        except BaseException:
            with atomic_write(
                Path(unit_file).with_name(Path(unit_file).name.replace(".units.pkl", ".failed.txt")), "w"
            ) as fh:
                fh.write(f"unit {i}")
            raise
    if is_rank_zero():
        _write(Path(result_file), results)
    if dist.is_initialized():  # gloo's threads abort a process that exits with its group alive
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
