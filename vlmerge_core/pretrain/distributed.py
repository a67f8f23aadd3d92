"""Data-parallel helpers: process-group setup under ``torchrun`` and differentiable gathers.

One process per device; ``torch.distributed`` is initialised from the ``env://`` variables that
``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when
``WORLD_SIZE > 1``: gloo on CPU, nccl on GPU. A single process needs no process group at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "cleanup_distributed",
    "gather_with_grad",
    "init_distributed",
    "repeatable",
    "repeatable_on_cpu",
]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the GPU)
    device: str = "cpu"  # torch device of this process

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICES = ("auto", "cpu", "cuda")  # values of finetune.device and merge.gram_device


def resolve_device(name: str, what: str = "finetune.device") -> str:
    """``"cpu"`` or ``"cuda"`` for the setting ``what`` (``"auto"``: cuda when available).

    Raises:
        ValueError: an unknown name, or ``"cuda"`` without a CUDA device.
    """
    if name not in DEVICES:
        raise ValueError(f"{what} must be one of {list(DEVICES)}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} is 'cuda' but torch sees no CUDA device")
    return name


def init_distributed(device: str | None = None) -> DistInfo:
    """Set up the process group from the environment (no-op for a single process).

    Args:
        device: ``"cpu"``/``"cuda"``; default: CUDA when available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method="env://")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


@contextlib.contextmanager
def repeatable_on_cpu(device: str | torch.device | None) -> Iterator[None]:
    """Deterministic kernels while a multi-threaded CPU job runs; the previous setting is restored.

    On two or more threads some CPU backward kernels (the word-embedding gradient among them) sum in
    a thread-dependent order, so two runs of the same code and data differed (the micro seed's
    zero-shot rsum 292.5 vs 291.6). With ``torch.use_deterministic_algorithms`` they repeat bitwise
    at a given thread count. One thread is deterministic already and is left alone (no cost to the
    study's one-thread fine-tunes), and so is a GPU (its deterministic mode needs
    ``CUBLAS_WORKSPACE_CONFIG`` and is slower).

    Args:
        device: the job's device; ``None`` is CUDA when available, as in :func:`init_distributed`.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cpu" or torch.get_num_threads() < 2:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _device_keyword(*args: Any, **kwargs: Any) -> Any:
    return kwargs.get("device")


def repeatable(
    device_of: Callable[..., Any] = _device_keyword,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function under :func:`repeatable_on_cpu` for the device that
    ``device_of(*args, **kwargs)`` names (default: its ``device`` keyword, ``None`` when absent)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with repeatable_on_cpu(device_of(*args, **kwargs)):
                return fn(*args, **kwargs)

        return run

    return wrap


def cleanup_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, ...] of every rank in rank order -> [W*b, ...], gradients flowing back.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward sums the gradients of all
    ranks into each rank's slice (the CLIP/VLMo trick for negatives across devices).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # here: needs a torch built with distributed

    return torch.cat(all_gather(x), dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor; no gradient)."""
    x = x.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
