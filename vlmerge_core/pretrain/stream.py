"""Real pre-training data as the loop's global micro-batches: a DataLoader per rank, all-gathered.

The micro path (:mod:`vlmerge_core.pretrain.batches`) builds every global batch on every rank from
tensors in memory. Real data cannot be held so: here each rank reads its own share of the pairs
through :func:`~vlmerge_core.data.pretrain_loader.make_pretrain_loader` (workers decode and augment,
a ``DistributedSampler`` deals the shares), and the shares are all-gathered into the global
micro-batch the objectives expect, interleaved so that it equals the batch of one process: N
processes train on the batches of one (each then computes its :class:`~vlmerge_core.pretrain.
objectives.Shard` of the rows). ITM's negatives come from the whole global batch, as the official
``compute_itm_hardneg`` gathers the features of every rank. What depends on randomness beyond the
order (MLM masks, the ITM draw) derives from ``(rng_seed, step, micro-step)`` as on the micro path.

The stream is resumable: micro-batch ``p = step * grad_accum + micro`` is batch ``p mod E`` of epoch
``p div E`` (``E`` batches per epoch), and a jump (a resume) starts the epoch's loader at that batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from vlmerge_core.config import PretrainConfig
from vlmerge_core.data.loaders import continuation_pieces
from vlmerge_core.data.pretrain_data import PretrainPairs
from vlmerge_core.data.pretrain_loader import make_pretrain_loader
from vlmerge_core.pretrain.batches import PAIR_LOSSES, global_micro_batch, mix_seed, mlm_inputs

__all__ = ["LoaderStream"]

_FIELDS = {"image": "images", "ids": "ids", "mask": "mask", "index": "image_index"}


def _gather(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The ranks' shares of ``x`` interleaved, row ``k * W + r`` = rank ``r``'s row ``k``.

    ``DistributedSampler`` deals a permutation round-robin (rank ``r`` gets its items ``r, r + W,
    ...``), so the interleaved rows are the permutation in order: the global batch of one process.
    (gloo has no bool: sent as uint8.)
    """
    if world_size == 1:
        return x
    send = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()
    parts = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(parts, send)
    out = torch.stack(parts, dim=1).reshape(-1, *send.shape[1:])
    return out.bool() if x.dtype == torch.bool else out


class LoaderStream:
    """The global micro-batches of a :class:`PretrainPairs` source for one rank of a run."""

    def __init__(
        self, pairs: PretrainPairs, cfg: PretrainConfig, rank: int, world_size: int, num_workers: int = 0
    ):
        self.pairs, self.cfg, self.rank, self.world_size = pairs, cfg, rank, world_size
        self.per_rank = global_micro_batch(cfg, world_size) // world_size
        self.num_workers = num_workers
        self.tokenizer = pairs.tokenizer
        self.continuation = continuation_pieces(pairs.tokenizer)
        self.per_epoch = len(pairs) // (self.per_rank * world_size)
        if self.per_epoch == 0:
            raise ValueError(
                f"{pairs.data_format} pre-training data: {len(pairs)} pairs make no batch of "
                f"{self.per_rank} x {world_size} ranks (data.pretrain_path holds too few pairs)"
            )
        self._loader: Any = None
        self._iter: Any = None
        self._next = -1  # the micro-batch position the open iterator yields next

    def _open(self, position: int) -> None:
        epoch, within = divmod(position, self.per_epoch)
        self._loader = make_pretrain_loader(
            self.pairs, self.per_rank, self.cfg.rng_seed, epoch=epoch, num_workers=self.num_workers,
            num_replicas=self.world_size, rank=self.rank, start=within,
        )  # fmt: skip
        self._iter, self._next = iter(self._loader), position

    def local_batch(self, position: int) -> dict[str, torch.Tensor]:
        """This rank's share of micro-batch ``position`` (``step * grad_accum + micro``)."""
        if position != self._next or position % self.per_epoch == 0:
            self._open(position)
        batch = next(self._iter)
        self._next = position + 1
        return batch

    def describe(self) -> dict[str, Any]:
        """What the stream reads (metrics): the source, world size, per-rank batch, workers."""
        return {
            **self.pairs.describe(),
            "world_size": self.world_size,
            "per_rank_batch": self.per_rank,
            "num_workers": self.num_workers,
            "batches_per_epoch": self.per_epoch,
        }

    def global_batch(self, step: int, micro: int, losses: set[str]) -> dict[str, torch.Tensor]:
        """Global micro-batch ``micro`` of step ``step``: the ranks' shares gathered, MLM-masked."""
        unknown = sorted(losses - set(PAIR_LOSSES))
        if unknown:
            raise ValueError(
                f"{self.pairs.data_format} pre-training data holds image-text pairs only; loss(es) "
                f"{unknown} need the micro-world's image-only or text-only sets"
            )
        local = self.local_batch(step * self.cfg.grad_accum + micro)
        out = {name: _gather(local[key], self.world_size) for key, name in _FIELDS.items()}
        g = torch.Generator().manual_seed(mix_seed(self.cfg.rng_seed, 7, step, micro))
        if "mlm" in losses:
            out["mlm_ids"], out["mlm_labels"] = mlm_inputs(
                self.tokenizer, self.continuation, self.cfg, out["ids"], out["mask"], g
            )
        out["itm_seed"] = torch.tensor(mix_seed(self.cfg.rng_seed, 11, step, micro))
        return out
