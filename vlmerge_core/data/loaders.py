"""Tensors from the micro-world: image normalisation, text encoding, MLM masking, MIM targets.

Conventions shared with the model and the tasks:
- images are float32 [B, 3, H, W], normalised with mean 0.5 and std 0.5 (range [-1, 1]);
- texts are ``[CLS] ... [SEP]`` padded with [PAD] to ``max_len``; the mask is True on real tokens;
- a patch is flattened in (row, column, channel) order, ``p*p*3`` values, patches row-major.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

MLM_IGNORE_INDEX = -100  # MLM label of the positions not predicted (``F.cross_entropy``'s ignore_index)


def image_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] normalised to [-1, 1] (mean .5, std .5)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"image_to_tensor: expected uint8 [N,H,W,3], got {images.dtype} {list(images.shape)}"
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    return x.div_(127.5).sub_(1.0)


def patchify(x: np.ndarray | torch.Tensor, patch: int) -> np.ndarray | torch.Tensor:
    """Channels-last images [N, H, W, C] -> patches [N, (H/p)*(W/p), p*p*C] (row, column, channel)."""
    N, H, W, C = x.shape
    if H % patch or W % patch:
        raise ValueError(f"patchify: image size {H}x{W} is not divisible by patch {patch}")
    x = x.reshape(N, H // patch, patch, W // patch, patch, C)  # (N, gh, p, gw, p, C)
    x = x.transpose(2, 3) if isinstance(x, torch.Tensor) else x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(N, (H // patch) * (W // patch), patch * patch * C)


def patch_codes(images: torch.Tensor, codebook: np.ndarray | torch.Tensor, patch: int) -> torch.Tensor:
    """MIM targets: index of the nearest codebook entry of every patch, Long [B, N].

    Args:
        images: normalised float images [B, 3, H, W] (as from :func:`image_to_tensor`).
        codebook: [K, patch*patch*3] k-means centres (``world.codebook``).
        patch: patch side.
    """
    cb = torch.as_tensor(codebook, dtype=torch.float32, device=images.device)
    if cb.shape[1] != patch * patch * images.shape[1]:
        raise ValueError(
            f"patch_codes: codebook has {cb.shape[1]} values per entry, "
            f"patches of side {patch} have {patch * patch * images.shape[1]}"
        )
    x = patchify(images.detach().float().permute(0, 2, 3, 1), patch)  # (B, N, p*p*3)
    d = x.pow(2).sum(-1, keepdim=True) - 2 * x @ cb.T + cb.pow(2).sum(-1)  # (B, N, K) squared distances
    return d.argmin(-1)


def encode_text(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids Long [B, max_len] and attention mask Bool [B, max_len] (True = real token)."""
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return enc["input_ids"].long(), enc["attention_mask"].bool()


def _replace_chosen(
    ids: torch.Tensor, chosen: torch.Tensor, tokenizer, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the chosen positions: 80% [MASK], 10% a random token, 10% kept.

    Returns (input ids, labels with :data:`MLM_IGNORE_INDEX` where not chosen). The random token
    is drawn from the non-special ids.
    """
    labels = torch.where(chosen, ids, torch.full_like(ids, MLM_IGNORE_INDEX))
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
    n_special = len(set(tokenizer.all_special_ids))
    rand_ids = torch.randint(n_special, len(tokenizer), ids.shape, generator=generator, device=ids.device)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    inputs[to_random] = rand_ids[to_random]
    return inputs, labels


def _maskable(ids: torch.Tensor, mask: torch.Tensor, tokenizer) -> torch.Tensor:
    """Real tokens that are not special ([CLS], [SEP], [PAD], [UNK], [MASK] are never chosen)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=ids.device)
    return mask & ~torch.isin(ids, special)


def mask_tokens(
    ids: torch.Tensor, mask: torch.Tensor, tokenizer, prob: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token BERT masking (Devlin et al., 2019): every real, non-special token is chosen with
    probability ``prob``; chosen tokens are corrupted 80/10/10 (:func:`_replace_chosen`).

    Returns (input_ids, labels) with labels :data:`MLM_IGNORE_INDEX` on every position not chosen.
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = _maskable(ids, mask, tokenizer) & (u < prob)
    return _replace_chosen(ids, chosen, tokenizer, generator)


def continuation_pieces(tokenizer) -> torch.Tensor:
    """Bool [len(tokenizer)]: True for the WordPiece continuation pieces (``##`` prefix)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([t is not None and t.startswith("##") for t in tokens], dtype=torch.bool)


def whole_word_mask(
    ids: torch.Tensor,
    mask: torch.Tensor,
    tokenizer,
    prob: float,
    generator: torch.Generator | None = None,
    continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking as the official collator (``whole_word_masking=True``: HuggingFace's
    ``DataCollatorForWholeWordMask`` on captions padded to ``max_text_len``; BERT's WWM).

    Per caption of ``T`` (padded) positions: the candidates are the positions other than [CLS] and
    [SEP], a ``##`` continuation piece joined to the candidate before it (so a word is one
    candidate); they are visited in a random order and a word is taken whole while the count of
    taken positions stays within the budget ``max(1, round(T * prob))`` (a word that would exceed
    it is skipped). Padding positions are candidates too, as in the official padded batches, and
    are dropped afterwards with every special token, so about ``prob`` of the real tokens are
    predicted whatever the caption length. The chosen positions are corrupted 80/10/10.

    Args:
        ids: token ids Long [B, T] (``[CLS] … [SEP] [PAD] …``).
        mask: Bool [B, T], True on real tokens.
        tokenizer: the tokenizer of ``ids``.
        prob: the masking budget per caption position (official ``vl_mlm_prob`` 0.25).
        generator: the RNG of the word order and of the corruption.
        continuation: :func:`continuation_pieces` of ``tokenizer`` (computed when None).

    Returns:
        (input_ids, labels) with labels :data:`MLM_IGNORE_INDEX` where not chosen.
    """
    if continuation is None:
        continuation = continuation_pieces(tokenizer)
    B, T = ids.shape
    budget = min(512, max(1, int(round(T * prob))))  # HF: max_predictions = 512
    skip = torch.isin(ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id], device=ids.device))
    cont = continuation.to(ids.device)[ids.clamp(0, len(continuation) - 1)]
    skip_rows, cont_rows = skip.tolist(), cont.tolist()
    chosen_rows = [[False] * T for _ in range(B)]
    for b in range(B):
        words: list[list[int]] = []
        for i in range(T):
            if skip_rows[b][i]:
                continue
            if words and cont_rows[b][i]:
                words[-1].append(i)
            else:
                words.append([i])
        taken = 0
        for w in torch.randperm(len(words), generator=generator).tolist():
            if taken >= budget:
                break
            if taken + len(words[w]) > budget:
                continue
            for i in words[w]:
                chosen_rows[b][i] = True
            taken += len(words[w])
    chosen = torch.tensor(chosen_rows, dtype=torch.bool, device=ids.device) & _maskable(ids, mask, tokenizer)
    return _replace_chosen(ids, chosen, tokenizer, generator)


class PairDataset(Dataset):
    """Image-caption pairs of one split: every caption of every image is one item.

    Items are dicts ``{"image": float [3,H,W], "ids": Long [T], "mask": Bool [T], "index": image index}``
    (the default collate stacks them). ``style`` is ``"coco"``, ``"flickr"`` or ``"both"``.
    """

    def __init__(self, world, split: str, tokenizer, max_len: int, style: str = "coco"):
        styles = ("coco", "flickr") if style == "both" else (style,)
        caps = [world.captions(split, s) for s in styles]
        self.image_index = [i for c in caps for i, per in enumerate(c) for _ in per]
        texts = [t for c in caps for per in c for t in per]
        self.images = image_to_tensor(world.images(split))
        self.ids, self.mask = encode_text(tokenizer, texts, max_len)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.image_index[i]
        return {"image": self.images[j], "ids": self.ids[i], "mask": self.mask[i], "index": torch.tensor(j)}
