"""Pre-training data as in-memory tensors and a deterministic, resumable batch order.

Each source (image-caption pairs, image-only images, text-only sentences) is an endless stream:
the concatenation of seeded per-epoch permutations. Batch ``s`` of a stream is a pure function of
``(seed, stream, s)``, so a resumed run sees exactly the batches it would have seen, on any number
of ranks: every rank builds the same *global* batch and keeps its own rows.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch

from vlmerge_core.config import ModelConfig, PretrainConfig
from vlmerge_core.data.augment import augment_images
from vlmerge_core.data.loaders import (
    continuation_pieces,
    encode_text,
    image_to_tensor,
    mask_tokens,
    patch_codes,
    whole_word_mask,
)
from vlmerge_core.data.scenes import kind_tags

__all__ = [
    "PAIR_LOSSES",
    "PretrainData",
    "build_pretrain_data",
    "check_vocab",
    "global_micro_batch",
    "make_global_batch",
    "mix_seed",
    "mlm_inputs",
    "stream_indices",
]

PAIR_LOSSES = ("mlm", "itc", "itc_vl", "itm")
STREAMS = {"pairs": 1, "image_only": 2, "text_only": 3}


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> 1)


@lru_cache(maxsize=64)
def _perm(n: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(mix_seed(seed, stream, epoch))
    return torch.randperm(n, generator=g)


def stream_indices(n: int, batch: int, step: int, seed: int, stream: int) -> torch.Tensor:
    """Indices [batch] of batch ``step`` in the endless seeded stream over ``n`` items."""
    pos = step * batch + torch.arange(batch)
    epochs, within = pos // n, pos % n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        sel = epochs == e
        out[sel] = _perm(n, seed, stream, e)[within[sel]]
    return out


@dataclasses.dataclass
class PretrainData:
    """Tensors of the pre-training sources (None where no active loss needs them)."""

    tokenizer: object
    continuation: torch.Tensor | None = None  # Bool [V]: WordPiece "##" pieces (whole-word masking)
    pair_images: np.ndarray | None = None  # uint8 [Ni, H, W, 3] (augmented and normalised per batch)
    pair_image_index: torch.Tensor | None = None  # Long [P] image of each caption
    pair_ids: torch.Tensor | None = None  # Long [P, T]
    pair_mask: torch.Tensor | None = None  # Bool [P, T]
    io_images: torch.Tensor | None = None  # float [M, 3, H, W] image-only set
    io_codes: torch.Tensor | None = None  # Long [M, N] MIM targets
    io_tags: torch.Tensor | None = None  # float [M, K] multi-hot object kinds (the init's supervised tags)
    txt_ids: torch.Tensor | None = None  # Long [C, T] text-only corpus
    txt_mask: torch.Tensor | None = None  # Bool [C, T]


def check_vocab(tok, model_cfg: ModelConfig) -> None:
    """Refuse a tokenizer with more tokens than the model's embedding rows."""
    if len(tok) > model_cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but model.vocab_size is {model_cfg.vocab_size}")


def global_micro_batch(cfg: PretrainConfig, world_size: int) -> int:
    """Rows of a global micro-batch, ``batch_size / grad_accum``; each of the ranks gets an equal share.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``grad_accum x world_size``.
    """
    A, W = cfg.grad_accum, world_size
    if cfg.batch_size % (A * W):
        raise ValueError(
            f"batch_size {cfg.batch_size} must be divisible by grad_accum ({A}) x world size ({W})"
        )
    return cfg.batch_size // A


def build_pretrain_data(
    world, model_cfg: ModelConfig, losses: dict[str, float], style: str = "coco"
) -> PretrainData:
    """Encode the sources the active losses need (pairs of the train split, image-only, text-only)."""
    tok = world.tokenizer()
    check_vocab(tok, model_cfg)
    data = PretrainData(tokenizer=tok, continuation=continuation_pieces(tok))
    active = {k for k, w in losses.items() if w > 0}
    T = model_cfg.max_text_len
    if active & set(PAIR_LOSSES):
        caps = world.captions("train", style)
        data.pair_images = np.ascontiguousarray(world.images("train"))
        data.pair_image_index = torch.tensor([i for i, per in enumerate(caps) for _ in per])
        data.pair_ids, data.pair_mask = encode_text(tok, [t for per in caps for t in per], T)
    if "mim" in active:
        codebook = world.codebook
        if codebook.shape[0] != model_cfg.mim_vocab:
            raise ValueError(
                f"world codebook has {codebook.shape[0]} entries but model.mim_vocab is {model_cfg.mim_vocab}"
            )
        data.io_images = image_to_tensor(world.image_only())
        data.io_codes = torch.cat(
            [
                patch_codes(data.io_images[i : i + 1024], codebook, model_cfg.patch_size)
                for i in range(0, len(data.io_images), 1024)
            ]
        )
    if "tags" in active:
        if data.io_images is None:
            data.io_images = image_to_tensor(world.image_only())
        data.io_tags = torch.from_numpy(kind_tags(world.scenes("image_only"))).float()
        if data.io_tags.shape[1] != model_cfg.num_tags:
            raise ValueError(
                f"world has {data.io_tags.shape[1]} tags but model.num_tags is {model_cfg.num_tags}"
            )
    if "text_mlm" in active:
        data.txt_ids, data.txt_mask = encode_text(tok, world.text_corpus(), T)
    return data


def mlm_inputs(
    tokenizer, continuation: torch.Tensor | None, cfg: PretrainConfig, ids: torch.Tensor, mask: torch.Tensor,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """MLM inputs and labels of ``ids``: whole words masked unless ``cfg.whole_word_masking`` is off."""
    if cfg.whole_word_masking:
        return whole_word_mask(ids, mask, tokenizer, cfg.mlm_prob, g, continuation)
    return mask_tokens(ids, mask, tokenizer, cfg.mlm_prob, g)


def make_global_batch(
    data: PretrainData,
    cfg: PretrainConfig,
    step: int,
    micro: int,
    size: int,
    n_patches: int,
    losses: set[str],
) -> dict[str, torch.Tensor]:
    """The global micro-batch ``micro`` of optimisation step ``step`` (``size`` rows per source).

    All randomness (order, augmentation (``cfg.augment``, :mod:`vlmerge_core.data.augment`), MLM
    masking, MIM patch masks) derives from ``(cfg.rng_seed, step, micro)``,
    so the batch is the same on every rank and after a resume. MLM masks whole words
    (:func:`~vlmerge_core.data.loaders.whole_word_mask`) unless ``cfg.whole_word_masking`` is off.
    """

    def mlm_mask(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mlm_inputs(data.tokenizer, data.continuation, cfg, ids, mask, g)

    A, seed = cfg.grad_accum, cfg.rng_seed
    g = torch.Generator().manual_seed(mix_seed(seed, 7, step, micro))
    out: dict[str, torch.Tensor] = {}
    if losses & set(PAIR_LOSSES):
        idx = stream_indices(len(data.pair_ids), size * A, step, seed, STREAMS["pairs"])
        idx = idx[micro * size : (micro + 1) * size]
        img_index = data.pair_image_index[idx]
        images = augment_images(data.pair_images[img_index.numpy()], cfg.augment, g)
        out.update(
            images=image_to_tensor(images),
            image_index=img_index,
            ids=data.pair_ids[idx],
            mask=data.pair_mask[idx],
        )
        if "mlm" in losses:
            out["mlm_ids"], out["mlm_labels"] = mlm_mask(out["ids"], out["mask"])
    if losses & {"mim", "tags"}:
        idx = stream_indices(len(data.io_images), size * A, step, seed, STREAMS["image_only"])
        idx = idx[micro * size : (micro + 1) * size]
        out["io_images"] = data.io_images[idx]
    if "mim" in losses:
        n_mask = max(1, round(cfg.mim_mask_ratio * n_patches))
        order = torch.rand(size, n_patches, generator=g).argsort(dim=1)
        patch_mask = torch.zeros(size, n_patches, dtype=torch.bool)
        patch_mask.scatter_(1, order[:, :n_mask], True)
        out.update(io_codes=data.io_codes[idx], patch_mask=patch_mask)
    if "tags" in losses:
        out["io_tags"] = data.io_tags[idx]
    if "text_mlm" in losses:
        idx = stream_indices(len(data.txt_ids), size * A, step, seed, STREAMS["text_only"])
        idx = idx[micro * size : (micro + 1) * size]
        ids, mask = data.txt_ids[idx], data.txt_mask[idx]
        out["txt_ids"], out["txt_mask"] = ids, mask
        out["txt_mlm_ids"], out["txt_mlm_labels"] = mlm_mask(ids, mask)
    out["itm_seed"] = torch.tensor(mix_seed(seed, 11, step, micro))
    return out
