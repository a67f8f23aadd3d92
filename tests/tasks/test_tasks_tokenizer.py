"""One tokenizer per study: checkpoints record their pre-training tokenizer, fine-tuning checks it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vlmerge_core.data.tokenizer import (
    TokenizerMismatchError,
    load_tokenizer,
    tokenizer_identity,
)
from vlmerge_core.io import read_safetensors_metadata
from vlmerge_core.merge.stream import ma_metadata
from vlmerge_core.model import MultiwayTransformer, load_model, save_model
from vlmerge_core.tasks import run_task
from vlmerge_core.tasks.registry import build_task


@pytest.fixture
def bert_vocab(tmp_path):
    """A BERT ``vocab.txt`` folder whose ids mean other words than the smoke world's."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "red", "blue", "circle", "square"]
    folder = tmp_path / "bert-tiny-uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def model(pico_cfg, smoke_world):
    torch.manual_seed(0)
    return MultiwayTransformer(dataclasses.replace(pico_cfg, vocab_size=len(smoke_world.tokenizer())))


def test_identity_is_the_vocabulary_not_the_file(smoke_world, tmp_path):
    tok = smoke_world.tokenizer()
    copy = tmp_path / "moved.json"
    copy.write_text((smoke_world.root / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    a, b = tokenizer_identity(tok, "a"), tokenizer_identity(load_tokenizer(copy), "b")
    assert a["sha256"] == b["sha256"] and a["vocab_size"] == len(tok)


def test_checkpoint_keeps_the_tokenizer_and_a_mismatch_names_both(model, smoke_world, bert_vocab, tmp_path):
    bert = tokenizer_identity(load_tokenizer(bert_vocab), bert_vocab.name)
    model.tokenizer_info = bert
    path = save_model(tmp_path / "ms.safetensors", model)
    assert json.loads(read_safetensors_metadata(path)["tokenizer"]) == bert
    loaded = load_model(path)
    assert loaded.tokenizer_info == bert
    cfg = dataclasses.replace(smoke_world_cfg(), epochs=0)
    with pytest.raises(TokenizerMismatchError) as err:
        run_task("text", str(path), cfg, smoke_world)
    msg = str(err.value)
    assert "bert-tiny-uncased" in msg and "tokenizer.json" in msg and str(path) in msg


def test_the_same_tokenizer_passes_and_no_record_passes(model, smoke_world):
    cfg = dataclasses.replace(smoke_world_cfg(), epochs=0)
    model.tokenizer_info = smoke_world.tokenizer_identity
    build_task("text", model, cfg, smoke_world)
    model.tokenizer_info = None  # a random model, or a converted file given no tokenizer
    build_task("text", model, cfg, smoke_world)


def test_merged_checkpoint_keeps_the_ms_tokenizer(model, tmp_path):
    meta = read_safetensors_metadata(save_model(tmp_path / "m.safetensors", model))
    assert "tokenizer" not in ma_metadata(meta, "m", {})
    meta["tokenizer"] = json.dumps({"name": "x", "vocab_size": 3, "sha256": "0"})
    assert ma_metadata(meta, "m", {})["tokenizer"] == meta["tokenizer"]


def smoke_world_cfg():
    from vlmerge_core.config import profile_params

    return dataclasses.replace(profile_params("smoke").finetune, train_subsample=8, eval_subsample=8)
