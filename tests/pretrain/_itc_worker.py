"""Run by ``torchrun --nproc_per_node 2`` in test_pretrain_itc_grad: the ITC gradients of one step."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from vlmerge_core.pretrain.objectives import Shard, contrastive_loss


def itc_gradients(itc_grad: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Summed over ranks (what the loop's x W and DDP's mean give) gradients of a linear ITC on rank rows."""
    g = torch.Generator().manual_seed(0)  # every rank: the same global batch and weights
    x, y = (
        torch.randn(8, 5, generator=g, dtype=torch.float64),
        torch.randn(8, 5, generator=g, dtype=torch.float64),
    )
    w = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    shard = Shard(lo=rank * 8 // world, hi=(rank + 1) * 8 // world, size=8)
    rows = slice(shard.lo, shard.hi)
    img = torch.nn.functional.normalize(x[rows] @ w, dim=-1)
    txt = torch.nn.functional.normalize(y[rows] @ w.flip(0), dim=-1)
    loss, _ = contrastive_loss(img, txt, scale, shard, itc_grad)
    loss.backward()
    out = {"w": w.grad, "scale": scale.grad.reshape(1), "loss": loss.detach().reshape(1)}
    if world > 1:
        for t in out.values():
            dist.all_reduce(t)
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    res = {m: itc_gradients(m, dist.get_rank(), dist.get_world_size()) for m in ("exact", "official")}
    if dist.get_rank() == 0:
        torch.save(res, sys.argv[1])
    dist.destroy_process_group()
