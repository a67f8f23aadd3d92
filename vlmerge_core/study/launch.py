"""Units of a study stage launched under ``torchrun`` (``study.launcher``), or run in this process.

``inprocess`` (micro default): :func:`~vlmerge_core.study.workers.run_units` runs the units side by side
on one-thread worker processes. ``torchrun`` (paper): each unit in turn is one ``torchrun`` job of
``study.nproc_per_node`` processes per node on ``study.nnodes`` nodes; every rank runs the unit's
function (pre-training and fine-tuning are DDP-aware: :mod:`vlmerge_core.pretrain.distributed`,
:mod:`vlmerge_core.tasks.parallel`), and rank 0's result comes back. The unit and its result travel as
pickles under ``runs/launch/`` (inside the repository, so a file system shared by the nodes sees them).
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

__all__ = ["LAUNCHERS", "LaunchError", "run_launched", "torchrun_command", "world_probe"]

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
    """``[fn(u) for u in units]``, each unit one ``torchrun`` job; rank 0's results, in order.

    Raises:
        LaunchError: a job exits non-zero or writes no result.
    """
    target = f"{fn.__module__}:{fn.__qualname__}"
    folder = resolve(LAUNCH_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for i, unit in enumerate(units):
        unit_file, result_file = (
            folder / f"{os.getpid()}_{i}.unit.pkl",
            folder / f"{os.getpid()}_{i}.result.pkl",
        )
        _write(unit_file, unit)
        cmd = torchrun_command(study, target, unit_file, result_file)
        done = subprocess.run(cmd, env=_env(), check=False)
        if done.returncode != 0 or not result_file.is_file():
            raise LaunchError(
                f"unit {i} of {target} failed under torchrun (exit {done.returncode}): {' '.join(cmd)}"
            )
        results.append(pickle.loads(result_file.read_bytes()))
        unit_file.unlink()
        result_file.unlink()
    return results


def world_probe(unit: Any) -> dict[str, Any]:
    """A unit that reports the process group it ran in: world size, rank 0's view of the sum of
    ``rank + 1`` over the ranks (all-reduced), and the unit back."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    total = torch.tensor([int(os.environ.get("RANK", "0")) + 1.0])
    if size > 1:
        dist.init_process_group("gloo")
        dist.all_reduce(total)
        dist.destroy_process_group()
    return {"world_size": size, "rank_sum": float(total.item()), "unit": unit}


def main(argv: Sequence[str]) -> int:
    """One rank: load the unit, run ``module:function`` on it, rank 0 writes the result."""
    target, unit_file, result_file = argv
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    result = fn(pickle.loads(Path(unit_file).read_bytes()))
    if int(os.environ.get("RANK", "0")) == 0:
        _write(Path(result_file), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
