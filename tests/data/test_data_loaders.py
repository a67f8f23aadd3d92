"""Tokenizer, text encoding, BERT masking, MIM patch codes and the pair dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmerge_core.data import (
    MLM_IGNORE_INDEX,
    PairDataset,
    encode_text,
    image_to_tensor,
    load_tokenizer,
    mask_tokens,
    patch_codes,
    patchify,
)
from vlmerge_core.data.tokenizer import learn_wordpiece_vocab, train_tokenizer


@pytest.fixture(scope="module")
def tok(smoke_world):
    return load_tokenizer(smoke_world.tokenizer_path)


def test_special_tokens(tok):
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.mask_token_id == 4
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_tokenizer_round_trip(tok, smoke_world):
    texts = [c for per in smoke_world.captions("test", "coco") for c in per]
    texts += [q["question"] for q in smoke_world.vqa("test")] + smoke_world.text_corpus()[:50]
    for text, ids in zip(texts, tok(texts)["input_ids"]):
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_load_tokenizer_from_folder_and_errors(smoke_world, tmp_path):
    assert len(load_tokenizer(smoke_world.root)) == len(load_tokenizer(smoke_world.tokenizer_path))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red"]) + "\n"
    )
    bert = load_tokenizer(tmp_path)  # a local BERT vocabulary can be swapped in by path
    assert bert("a red")["input_ids"] == [2, 5, 6, 3]


def test_wordpiece_vocab_deterministic_and_bounded():
    from collections import Counter

    counts = Counter({"circle": 5, "square": 5, "circles": 2, "red": 9})
    v1 = learn_wordpiece_vocab(counts, 30)
    assert v1 == learn_wordpiece_vocab(Counter(dict(reversed(list(counts.items())))), 30)
    assert len(v1) == 30 and v1[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    full = learn_wordpiece_vocab(counts, 1000)  # stops when every word is one token
    assert {"circle", "square", "circles", "red"} <= set(full)
    t1, t2 = train_tokenizer(["b a", "a b c"], 40), train_tokenizer(["a b c", "b a"], 40)
    assert t1.to_str() == t2.to_str()


def test_encode_text_shapes(tok):
    ids, mask = encode_text(tok, ["a red circle", "there is a big blue square at the top"], 24)
    assert ids.shape == mask.shape == (2, 24) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 11] and (ids[~mask] == 0).all()


@settings(max_examples=15, deadline=None)
@given(prob=st.floats(0.1, 0.9), seed=st.integers(0, 2**31 - 1))
def test_mask_tokens_statistics(tok, smoke_world, prob, seed):
    texts = [c for per in smoke_world.captions("train", "coco") for c in per]
    ids, mask = encode_text(tok, texts * 8, 24)
    g = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids, mask, tok, prob, g)
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    chosen = labels != MLM_IGNORE_INDEX
    assert not (chosen & special).any() and not (chosen & ~mask).any()
    assert (labels[chosen] == ids[chosen]).all()
    assert (inputs[~chosen] == ids[~chosen]).all()
    n_cand = (mask & ~special).sum().item()
    assert abs(chosen.sum().item() / n_cand - prob) < 0.05
    frac_mask = (inputs[chosen] == tok.mask_token_id).float().mean().item()
    frac_same = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.06 and 0.05 < frac_same < 0.17
    assert (inputs < len(tok)).all() and (inputs >= 0).all()
    again, labels2 = mask_tokens(ids, mask, tok, prob, torch.Generator().manual_seed(seed))
    assert torch.equal(again, inputs) and torch.equal(labels2, labels)


def test_image_to_tensor(smoke_world):
    x = image_to_tensor(smoke_world.images("val"))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(
        x[0, :, 0, 0], torch.tensor(smoke_world.images("val")[0, 0, 0] / 127.5 - 1.0).float()
    )
    with pytest.raises(ValueError, match="uint8"):
        image_to_tensor(smoke_world.images("val").astype(np.float32))


def test_patch_codes_shape_and_range(smoke_world):
    x = image_to_tensor(smoke_world.images("test")[:4])
    codes = patch_codes(x, smoke_world.codebook, 8)
    assert codes.shape == (4, 16) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < len(smoke_world.codebook)
    with pytest.raises(ValueError, match="codebook"):
        patch_codes(x, smoke_world.codebook, 4)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 12))
def test_patch_codes_recover_codebook_entries(seed, k):
    """An image tiled with codebook entries maps back to their indices; patchify is (row, col, channel)."""
    rng = np.random.default_rng(seed)
    cb = rng.normal(size=(k, 4 * 4 * 3)).astype(np.float32)
    want = rng.integers(k, size=(2, 9))
    patches = cb[want].reshape(2, 3, 3, 4, 4, 3)  # (B, gh, gw, p, p, C)
    img = patches.transpose(0, 1, 3, 2, 4, 5).reshape(2, 12, 12, 3)  # (B, H, W, C)
    assert np.array_equal(patchify(img, 4), cb[want])
    codes = patch_codes(torch.from_numpy(img).permute(0, 3, 1, 2), cb, 4)
    assert codes.tolist() == want.tolist()


def test_pair_dataset(smoke_world, tok):
    ds = PairDataset(smoke_world, "train", tok, 24, "coco")
    n = len(smoke_world.images("train")) * len(smoke_world.captions("train")[0])
    assert len(ds) == n
    item = ds[3]
    assert (
        item["image"].shape == (3, 32, 32) and item["ids"].shape == (24,) and item["mask"].dtype == torch.bool
    )
    assert int(item["index"]) == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["ids"].shape == (5, 24)
    assert len(PairDataset(smoke_world, "val", tok, 24, "both")) == 2 * len(
        PairDataset(smoke_world, "val", tok, 24)
    )
