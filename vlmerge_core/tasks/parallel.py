"""Where a task runs: its device, its data-parallel group, autocast, and the gathers of the task engine.

One process (the default), or N processes under ``torchrun`` (``torch.distributed`` initialised by the
caller, or here from the ``env://`` variables that ``torchrun`` sets: gloo on CPU, nccl on CUDA). Under
N processes every rank draws the same global batch (the same data order and augmentation), takes its
contiguous share of it (:func:`split_rows`) and DDP averages the gradients, so the global batch and the
optimizer step are those of one process; evaluation splits the examples the same way and all-gathers
the per-example results in rank order (:func:`gather_parts`), so every rank computes the same metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from vlmerge_core.pretrain.distributed import gather_with_grad, init_distributed, resolve_device


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The device and process group a task runs on."""

    device: torch.device = torch.device("cpu")  # this process's device
    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    amp: bool = False  # bf16 autocast of forward passes (cuda only)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``amp`` is on, else nothing at all (no change to any kernel)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def task_runtime(device: str, amp: bool) -> Runtime:
    """The runtime of this process: ``device`` resolved, the process group of ``torchrun`` if any
    (initialised here when ``WORLD_SIZE > 1`` and nobody did), bf16 autocast on cuda when ``amp``."""
    kind = resolve_device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_distributed(kind)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dev = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
    return Runtime(device=dev, rank=rank, world_size=world, amp=amp and kind == "cuda")


def split_rows(n: int, parts: int) -> tuple[torch.Tensor, ...]:
    """``0..n`` cut into ``parts`` contiguous ranges whose sizes differ by at most one (first ones larger)."""
    return torch.tensor_split(torch.arange(n), parts)


def micro_rows(n: int, rt: Runtime, accum: int) -> list[list[torch.Tensor]]:
    """Positions in a global batch of ``n`` rows: ``[k][r]`` = micro-batch ``k`` of rank ``r``.

    The batch is cut into the ranks' shares (:func:`split_rows`), each share into ``accum``
    micro-batches; a piece may be empty when ``n < world_size * accum``.
    """
    shares = split_rows(n, rt.world_size)
    per_rank = [torch.tensor_split(share, accum) for share in shares]
    return [[per_rank[r][k] for r in range(rt.world_size)] for k in range(accum)]


def gather_parts(parts: list[Any], rt: Runtime) -> list[Any]:
    """Every rank's list of (CPU) evaluation parts, concatenated in rank order (one process: ``parts``)."""
    if not rt.distributed:
        return parts
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, parts)
    return [p for rank_parts in out for p in rank_parts]


def gather_rows_with_grad(x: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    """The first ``counts[r]`` rows of ``x`` of every rank ``r``, concatenated in rank order, gradients
    flowing back to each rank's rows (``all_gather_with_grad`` of the official code; ranks may hold
    different counts, so rows are padded to the largest and the padding dropped)."""
    m = max(counts)
    own = x[: counts[rank]]
    if len(own) < m:
        own = torch.cat([own, own.new_zeros(m - len(own), *own.shape[1:])])
    full = gather_with_grad(own)  # (W*m, ...)
    keep = torch.cat([torch.arange(r * m, r * m + c) for r, c in enumerate(counts)])
    return full[keep.to(full.device)]


def all_mean(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """The mean of ``x`` over ranks (no gradient); one process: ``x`` itself."""
    if not rt.distributed:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / rt.world_size


@contextlib.contextmanager
def no_sync(ddp: Any, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` (no gradient all-reduce) when ``skip`` and a DDP module is given."""
    if ddp is None or not skip:
        yield
        return
    with ddp.no_sync():
        yield
