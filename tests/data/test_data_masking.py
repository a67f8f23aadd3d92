"""Whole-word masking as the official collator (HF ``DataCollatorForWholeWordMask`` on padded captions)."""

from __future__ import annotations

import random

import pytest
import torch

from vlmerge_core.data import (
    MLM_IGNORE_INDEX,
    continuation_pieces,
    encode_text,
    load_tokenizer,
    mask_tokens,
    whole_word_mask,
)
from vlmerge_core.data.tokenizer import save_tokenizer, train_tokenizer

TEXTS = [
    "a purple triangle beside a yellow diamond",
    "the turquoise rhombus is above the crimson circle",
    "two yellow squares and a purple cross",
    "a little green disk left of a blue triangle",
] * 8


@pytest.fixture(scope="module")
def split_tok(tmp_path_factory):
    """A WordPiece tokenizer with a tiny vocabulary: most words are several ``##`` pieces."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_tokenizer(TEXTS, vocab_size=70), path)
    return load_tokenizer(path)


def _words(tokens: list[str]) -> list[list[int]]:
    """Positions of each WordPiece word (a start piece and its ``##`` pieces), specials excluded."""
    words: list[list[int]] = []
    for i, t in enumerate(tokens):
        if t in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        if t.startswith("##") and words:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def _reference_count(tokens: list[str], prob: float, rng: random.Random) -> int:
    """Real tokens chosen by the official collator's procedure, re-derived from its description:
    candidates are every position but [CLS]/[SEP] (padding included, ``##`` joined to the word
    before), shuffled; whole words are taken while within ``max(1, round(len * prob))``; specials
    and padding are dropped afterwards."""
    cands: list[list[int]] = []
    for i, t in enumerate(tokens):
        if t in ("[CLS]", "[SEP]"):
            continue
        if cands and t.startswith("##"):
            cands[-1].append(i)
        else:
            cands.append([i])
    rng.shuffle(cands)
    budget = max(1, int(round(len(tokens) * prob)))
    taken: list[int] = []
    for c in cands:
        if len(taken) >= budget:
            break
        if len(taken) + len(c) > budget:
            continue
        taken += c
    return sum(tokens[i] != "[PAD]" for i in taken)


def _split_words(ids: torch.Tensor, labels: torch.Tensor, tok) -> int:
    """How many words have some but not all of their pieces chosen."""
    bad = 0
    for row, lab in zip(ids.tolist(), labels.tolist()):
        for w in _words(tok.convert_ids_to_tokens(row)):
            chosen = [lab[i] != MLM_IGNORE_INDEX for i in w]
            bad += any(chosen) and not all(chosen)
    return bad


def test_tokenizer_splits_words(split_tok):
    ids, _ = encode_text(split_tok, TEXTS[:4], 24)
    assert continuation_pieces(split_tok)[ids].sum() > 10


def test_words_are_masked_whole(split_tok):
    ids, mask = encode_text(split_tok, TEXTS, 24)
    for seed in range(20):
        inputs, labels = whole_word_mask(ids, mask, split_tok, 0.25, torch.Generator().manual_seed(seed))
        assert _split_words(ids, labels, split_tok) == 0
        chosen = labels != MLM_IGNORE_INDEX
        assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
        assert (chosen.sum(1) <= round(24 * 0.25)).all()  # the per-caption budget
        special = torch.isin(ids, torch.tensor(split_tok.all_special_ids))
        assert not (chosen & (special | ~mask)).any()
    # the per-token masking of old splits words: the test above would fail on it
    _, labels = mask_tokens(ids, mask, split_tok, 0.25, torch.Generator().manual_seed(0))
    assert _split_words(ids, labels, split_tok) > 0


def test_budget_rule_skips_words_that_do_not_fit(split_tok):
    """Budget 1 (T * p rounds to 1): a word of two or more pieces can never be taken."""
    ids, mask = encode_text(split_tok, TEXTS, 24)
    cont = continuation_pieces(split_tok)
    single = torch.zeros_like(mask)  # real single-piece words
    for b, row in enumerate(ids.tolist()):
        toks = split_tok.convert_ids_to_tokens(row)
        for w in _words(toks):
            if len(w) == 1:
                single[b, w[0]] = True
    for seed in range(10):
        _, labels = whole_word_mask(ids, mask, split_tok, 1 / 24, torch.Generator().manual_seed(seed), cont)
        chosen = labels != MLM_IGNORE_INDEX
        assert (chosen.sum(1) <= 1).all() and not (chosen & ~single).any()


def test_rate_matches_the_official_procedure(split_tok):
    """Mean number of real tokens chosen per caption: ours vs the official procedure re-derived."""
    ids, mask = encode_text(split_tok, TEXTS, 40)  # padded: 10 to 30 real tokens of 40
    n = 100
    ours = torch.stack(
        [
            (whole_word_mask(ids, mask, split_tok, 0.25, torch.Generator().manual_seed(s))[1] != -100).sum(1)
            for s in range(n)
        ]
    ).float()  # (n, B); B = 8 copies of 4 captions
    rng = random.Random(0)
    toks = [split_tok.convert_ids_to_tokens(r) for r in ids.tolist()]
    ref = torch.tensor([[_reference_count(t, 0.25, rng) for t in toks] for _ in range(n)]).float()
    per_caption = lambda x: x.reshape(n, 8, 4).mean((0, 1))  # noqa: E731  (4,) mean over 800 draws
    assert torch.allclose(per_caption(ours), per_caption(ref), atol=0.2)
    # about a quarter of the real, non-special tokens, whatever the caption length
    real = (mask & ~torch.isin(ids, torch.tensor(split_tok.all_special_ids))).sum(1).float()[:4]
    assert ((per_caption(ours) / real - 0.25).abs() < 0.08).all()


def test_corruption_is_80_10_10(split_tok):
    ids, mask = encode_text(split_tok, TEXTS * 8, 24)
    inputs, labels = whole_word_mask(ids, mask, split_tok, 0.25, torch.Generator().manual_seed(1))
    chosen = labels != MLM_IGNORE_INDEX
    frac_mask = (inputs[chosen] == split_tok.mask_token_id).float().mean().item()
    frac_same = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.06 and 0.04 < frac_same < 0.18
    again = whole_word_mask(ids, mask, split_tok, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_pretrain_batches_mask_whole_words(split_tok, smoke_params, smoke_world):
    """The seed/MS MLM batches use whole-word masking by default (official README), per token if off."""
    import dataclasses

    from vlmerge_core.pretrain.batches import build_pretrain_data, make_global_batch

    losses = {"mlm": 1.0}
    data = build_pretrain_data(smoke_world, smoke_params.model, losses)
    ids, mask = encode_text(split_tok, TEXTS, smoke_params.model.max_text_len)
    data.tokenizer, data.continuation = split_tok, continuation_pieces(split_tok)
    data.pair_ids, data.pair_mask = ids, mask
    data.pair_image_index = torch.arange(len(TEXTS)) % len(data.pair_images)
    cfg = smoke_params.seed_pretrain
    assert cfg.whole_word_masking
    batches = [make_global_batch(data, cfg, s, 0, 32, 16, set(losses)) for s in range(10)]
    assert sum(_split_words(b["ids"], b["mlm_labels"], split_tok) for b in batches) == 0
    per_token = dataclasses.replace(cfg, whole_word_masking=False)
    batches = [make_global_batch(data, per_token, s, 0, 32, 16, set(losses)) for s in range(10)]
    assert sum(_split_words(b["ids"], b["mlm_labels"], split_tok) for b in batches) > 0
