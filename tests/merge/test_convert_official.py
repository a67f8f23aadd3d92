"""Conversion of official vl-merging checkpoints and Gram files (vlmerge_core.merge.convert)."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from vlmerge_core.io import load_safetensors
from vlmerge_core.merge.convert import ConvertError, convert_file

D, L, H, VL, V, T, P, IMG = 8, 2, 2, 1, 20, 6, 8, 32
VARIANTS = {
    "all_moe": ("attn", "mlp", "norm1", "norm2"),
    "attn_moe": ("attn", "norm1"),
    "ffn_moe": ("mlp", "norm2"),
    "ln_moe": ("norm1", "norm2"),
    "ufo": (),
}


def official_sd(variant="all_moe", backbone_only=False, seed=0):
    """Every key of a tiny official ViLTransformerSS (pre-training heads, layer scale, rel. position bias)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    comps = VARIANTS[variant]
    sd = {
        "transformer.patch_embed.proj.weight": r(D, 3, P, P),
        "transformer.patch_embed.proj.bias": r(D),
        "transformer.cls_token": r(1, 1, D),
        "transformer.mask_token": r(1, 1, D),
        "transformer.norm.weight": r(D),
        "transformer.norm.bias": r(D),
    }
    params = {
        "attn": {
            "qkv.weight": (3 * D, D),
            "q_bias": (D,),
            "v_bias": (D,),
            "proj.weight": (D, D),
            "proj.bias": (D,),
        },
        "mlp": {"fc1.weight": (4 * D, D), "fc1.bias": (4 * D,), "fc2.weight": (D, 4 * D), "fc2.bias": (D,)},
        "norm1": {"weight": (D,), "bias": (D,)},
        "norm2": {"weight": (D,), "bias": (D,)},
    }
    for i in range(L):
        experts = ("v", "l") if i < VL else ("v", "l", "vl")
        for comp, ps in params.items():
            for p, shape in ps.items():
                for e in experts if comp in comps else (None,):
                    name = (
                        f"transformer.blocks.{i}.{comp}.{e}.{p}"
                        if e
                        else f"transformer.blocks.{i}.{comp}.{p}"
                    )
                    sd[name] = r(*shape)
        sd[f"transformer.blocks.{i}.gamma_1"] = r(D)
        sd[f"transformer.blocks.{i}.gamma_2"] = r(D)
    if backbone_only:
        return sd
    n_rel = (2 * (IMG // P) - 1) ** 2 + 3
    sd.update(
        {
            "text_embeddings.word_embeddings.weight": r(V, D),
            "text_embeddings.position_embeddings.weight": r(T, D),
            "text_embeddings.token_type_embeddings.weight": r(2, D),
            "text_embeddings.LayerNorm.weight": r(D),
            "text_embeddings.LayerNorm.bias": r(D),
            "text_embeddings.position_ids": torch.arange(T)[None],
            "token_type_embeddings.weight": r(2, D),
            "pooler.dense.weight": r(D, D),
            "pooler.dense.bias": r(D),
            "mlm_score.transform.dense.weight": r(D, D),
            "mlm_score.transform.dense.bias": r(D),
            "mlm_score.transform.LayerNorm.weight": r(D),
            "mlm_score.transform.LayerNorm.bias": r(D),
            "mlm_score.decoder.weight": r(V, D),
            "mlm_score.bias": r(V),
            "itm_score.fc.weight": r(2, D),
            "itm_score.fc.bias": r(2),
            "ifm_text_proj.fc.weight": r(D, D),
            "ifm_image_proj.fc.weight": r(D, D),
            "ifm_vl_text_proj.fc.weight": r(D, D),
            "ifm_vl_image_proj.fc.weight": r(D, D),
            "mim_score.weight": r(16, D),
            "mim_score.bias": r(16),
            "logit_scale": r(()),
            "logit_vl_scale": r(()),
            "relative_position_bias_table": r(n_rel + 2 * 196 + 2, H * L),
            "relative_position_index": torch.zeros(17, 17, dtype=torch.long),
            "text_relative_position_index": torch.zeros(T, T, dtype=torch.long),
            "text_imag_relative_position_index": torch.zeros(T + 17, T + 17),
            "temporal_relative_position_bias_table": r(2, H * L),
            "temporal_relative_position_index": torch.zeros(34, 34, dtype=torch.long),
            "mask_for_combining_temporal": torch.ones(1, 17, 17),
        }
    )
    return sd


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_convert_lightning_checkpoint_loads(tmp_path, variant):
    from vlmerge_core.model import load_model

    sd = official_sd(variant)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, tmp_path / "in.ckpt")
    rep = convert_file(
        tmp_path / "in.ckpt",
        tmp_path / "out.safetensors",
        allow_lossy=True,
        vl_start=VL if variant == "ufo" else None,
    )
    model = load_model(tmp_path / "out.safetensors")
    assert model.kind == ("ma" if variant == "ufo" else "ms")
    cfg = model.cfg
    assert (cfg.width, cfg.depth, cfg.heads, cfg.vl_start, cfg.image_size, cfg.patch_size) == (
        D,
        L,
        H,
        VL,
        IMG,
        P,
    )
    assert sorted(cfg.ms_components) == sorted(VARIANTS[variant])
    ours = model.state_dict()
    pairs = {
        "transformer.blocks.1.gamma_2": "blocks.1.gamma_2",
        "pooler.dense.weight": "heads.pooler.dense.weight",
        "mlm_score.transform.LayerNorm.bias": "heads.mlm.transform.norm.bias",
        "logit_vl_scale": "logit_scale_vl",
        "ifm_vl_image_proj.fc.weight": "heads.itc_vl_image.weight",
        "transformer.norm.bias": "norm.bias",
        "text_embeddings.LayerNorm.weight": "text_embed.norm.weight",
        "mim_score.bias": "heads.mim.bias",
    }
    if variant == "all_moe":
        pairs.update(
            {
                "transformer.blocks.1.attn.vl.qkv.weight": "blocks.1.attn.vl.qkv.weight",
                "transformer.blocks.0.norm2.l.bias": "blocks.0.norm2.l.bias",
                "transformer.blocks.1.mlp.v.fc2.weight": "blocks.1.mlp.v.fc2.weight",
            }
        )
    if variant == "ufo":
        pairs["transformer.blocks.1.attn.q_bias"] = "blocks.1.attn.q_bias"
    for src, dst in pairs.items():
        assert torch.equal(ours[dst], sd[src]), dst
    # the official table as it is: image, text (T_0 = 196) and text<->image buckets
    assert torch.equal(ours["rel_pos_bias.relative_position_bias_table"], sd["relative_position_bias_table"])
    assert cfg.rel_pos_text_span == 196 and not cfg.abs_pos_embed and "pos_embed" not in ours
    tt0 = sd["text_embeddings.token_type_embeddings.weight"][0]  # BERT's token type 0, before its LayerNorm
    assert torch.equal(
        ours["text_embed.word_embeddings.weight"], sd["text_embeddings.word_embeddings.weight"] + tt0
    )
    assert "temporal_relative_position_bias_table" in rep["dropped"] and not rep["lossy"]
    assert rep["unused"] == ["text_embeddings.position_embeddings.weight"]
    assert sorted(rep["initialised"]) == ["heads.tags.bias", "heads.tags.weight"]  # ours: the init's tag head
    _, meta = load_safetensors(tmp_path / "out.safetensors")
    assert json.loads(meta["convert"])["dropped"] == rep["dropped"]


def test_refuses_unplaceable_tensors(tmp_path):
    sd = official_sd("all_moe")
    sd["vqa_classifier.0.weight"] = torch.zeros(4, D)
    torch.save(sd, tmp_path / "in.pt")
    with pytest.raises(ConvertError, match=r"temporal_relative_position_bias_table.*vqa_classifier.0.weight"):
        convert_file(tmp_path / "in.pt", tmp_path / "out.safetensors")
    with pytest.raises(ConvertError, match="--vl-start"):
        torch.save(official_sd("ufo"), tmp_path / "ufo.pt")
        convert_file(tmp_path / "ufo.pt", tmp_path / "out.safetensors", allow_lossy=True)


def test_backbone_only_and_official_regmean_float64(tmp_path):
    from vlmerge_core.model import load_model

    sd = official_sd("ufo", backbone_only=True)
    sd = {k: v.double() for k, v in sd.items()}  # the official regmean leaves float64 tensors
    torch.save(sd, tmp_path / "bb.pt")
    with pytest.raises(ConvertError, match="--heads"):
        convert_file(tmp_path / "bb.pt", tmp_path / "o.safetensors", vl_start=1, image_size=IMG)
    rep = convert_file(tmp_path / "bb.pt", tmp_path / "o.safetensors", vl_start=1, image_size=IMG, heads=H)
    model = load_model(tmp_path / "o.safetensors")
    assert "heads.itm.weight" in rep["initialised"] and "blocks.0.attn.qkv.weight" not in rep["initialised"]
    torch.testing.assert_close(
        model.state_dict()["blocks.1.mlp.fc1.weight"], sd["transformer.blocks.1.mlp.fc1.weight"].float()
    )


def test_convert_official_gram_file(tmp_path):
    grams = collections.defaultdict(float)
    names = [
        "transformer.blocks.0.attn.v",
        "transformer.blocks.0.attn.l.proj",
        "transformer.blocks.1.mlp.vl.fc1",
        "transformer.blocks.1.mlp.fc2",
        "transformer.blocks.1.attn",
    ]
    for i, n in enumerate(names):
        grams[n] += torch.eye(4, dtype=torch.float64) * (i + 1)
    torch.save(grams, tmp_path / "g.pth")
    rep = convert_file(tmp_path / "g.pth", tmp_path / "g.safetensors")  # no --trust-pickle needed
    assert rep["kind"] == "gram"
    out, _ = load_safetensors(tmp_path / "g.safetensors")
    expect = {
        "blocks.0.attn.v.qkv": 1,
        "blocks.0.attn.l.proj": 2,
        "blocks.1.mlp.vl.fc1": 3,
        "blocks.1.mlp.fc2": 4,
        "blocks.1.attn.qkv": 5,
    }
    assert set(out) == set(expect)
    for k, s in expect.items():
        assert torch.equal(out[k], torch.eye(4, dtype=torch.float64) * s)
    torch.save({"transformer.blocks.0.norm1.v": torch.eye(4)}, tmp_path / "n.pth")
    with pytest.raises(ConvertError, match="cannot place Gram entries"):
        convert_file(tmp_path / "n.pth", tmp_path / "n.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_untrusted_pickle_is_refused(tmp_path, capsys):
    torch.save({"transformer.blocks.0.attn.v": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConvertError, match="--trust-pickle"):
        convert_file(tmp_path / "evil.pth", tmp_path / "o.safetensors")
    assert "must never run" not in capsys.readouterr().out
    assert not (tmp_path / "o.safetensors").exists()


def _to_official(model) -> dict[str, torch.Tensor]:
    """Our model's weights in the official naming, as the official code would hold them (the inverse of
    the converter: BERT's token-type row 0 split off the word embeddings, the table as it is)."""
    inv = {
        "patch_embed.proj.weight": "transformer.patch_embed.proj.weight",
        "patch_embed.proj.bias": "transformer.patch_embed.proj.bias",
        "cls_token": "transformer.cls_token",
        "mask_token": "transformer.mask_token",
        "norm.weight": "transformer.norm.weight",
        "norm.bias": "transformer.norm.bias",
        "text_embed.norm.weight": "text_embeddings.LayerNorm.weight",
        "text_embed.norm.bias": "text_embeddings.LayerNorm.bias",
        "token_type_embed.weight": "token_type_embeddings.weight",
        "rel_pos_bias.relative_position_bias_table": "relative_position_bias_table",
        "heads.pooler.dense.weight": "pooler.dense.weight",
        "heads.pooler.dense.bias": "pooler.dense.bias",
        "heads.itm.weight": "itm_score.fc.weight",
        "heads.itm.bias": "itm_score.fc.bias",
        "heads.mlm.transform.dense.weight": "mlm_score.transform.dense.weight",
        "heads.mlm.transform.dense.bias": "mlm_score.transform.dense.bias",
        "heads.mlm.transform.norm.weight": "mlm_score.transform.LayerNorm.weight",
        "heads.mlm.transform.norm.bias": "mlm_score.transform.LayerNorm.bias",
        "heads.mlm.decoder.weight": "mlm_score.decoder.weight",
        "heads.mlm.bias": "mlm_score.bias",
        "heads.mim.weight": "mim_score.weight",
        "heads.mim.bias": "mim_score.bias",
        "heads.itc_image.weight": "ifm_image_proj.fc.weight",
        "heads.itc_text.weight": "ifm_text_proj.fc.weight",
        "heads.itc_vl_image.weight": "ifm_vl_image_proj.fc.weight",
        "heads.itc_vl_text.weight": "ifm_vl_text_proj.fc.weight",
        "logit_scale": "logit_scale",
        "logit_scale_vl": "logit_vl_scale",
    }
    ours = model.state_dict()
    tt = torch.randn(2, ours["cls_token"].shape[-1])
    sd = {"text_embeddings.token_type_embeddings.weight": tt}
    sd["text_embeddings.word_embeddings.weight"] = ours["text_embed.word_embeddings.weight"] - tt[0]
    sd["text_embeddings.position_embeddings.weight"] = torch.randn(model.cfg.max_text_len, tt.shape[1])
    for k, v in ours.items():
        if k.startswith("blocks."):
            sd["transformer." + k] = v
        elif k in inv:
            sd[inv[k]] = v
    return sd


@pytest.mark.parametrize("variant", ["all_moe", "ufo"])
def test_official_layout_converts_exactly(tmp_path, variant):
    """An official-layout checkpoint (text relative position bias included, no video tables) converts
    without allow_lossy, and the converted model computes what the same weights built directly do."""
    import dataclasses

    from vlmerge_core.config import ModelConfig
    from vlmerge_core.model import MultiwayTransformer, load_model

    comps = list(VARIANTS[variant])
    cfg = ModelConfig(width=D, depth=L, heads=H, vl_start=VL, image_size=IMG, patch_size=P, vocab_size=V,
                      max_text_len=T, mim_vocab=16, ms_components=comps)  # fmt: skip
    torch.manual_seed(0)
    direct = MultiwayTransformer(cfg).eval()
    with torch.no_grad():
        direct.rel_pos_bias.relative_position_bias_table.normal_()  # the text and cross buckets matter
    torch.save({"state_dict": _to_official(direct)}, tmp_path / "official.ckpt")
    rep = convert_file(tmp_path / "official.ckpt", tmp_path / "ours.safetensors", vl_start=VL)
    assert (
        not rep["lossy"]
        and not rep["dropped"]
        and sorted(rep["initialised"]) == ["heads.tags.bias", "heads.tags.weight"]
    )
    conv = load_model(tmp_path / "ours.safetensors").eval()
    assert dataclasses.replace(conv.cfg, rel_pos_text_span=0) == cfg
    images, ids = torch.randn(2, 3, IMG, IMG), torch.randint(0, V, (2, T))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, -2:] = False
    for path in ("forward_fused", "forward_text"):
        args = (images, ids, mask) if path == "forward_fused" else (ids, mask)
        a, b = getattr(direct, path)(*args), getattr(conv, path)(*args)
        torch.testing.assert_close(b["tokens"], a["tokens"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.forward_image(images)["cls"], direct.forward_image(images)["cls"])


def test_convert_records_the_tokenizer(tmp_path):
    """``--tokenizer`` is recorded in the converted checkpoint (checked when it is fine-tuned)."""
    from vlmerge_core.config import ModelConfig
    from vlmerge_core.data.tokenizer import load_tokenizer, tokenizer_identity
    from vlmerge_core.model import MultiwayTransformer, load_model

    cfg = ModelConfig(width=D, depth=L, heads=H, vl_start=VL, image_size=IMG, patch_size=P, vocab_size=V,
                      max_text_len=T, mim_vocab=16, ms_components=list(VARIANTS["all_moe"]))  # fmt: skip
    torch.save({"state_dict": _to_official(MultiwayTransformer(cfg))}, tmp_path / "official.ckpt")
    vocab = tmp_path / "bert-base-uncased"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    convert_file(tmp_path / "official.ckpt", tmp_path / "ours.safetensors", vl_start=VL, tokenizer=vocab)
    want = tokenizer_identity(load_tokenizer(vocab), "bert-base-uncased")
    assert load_model(tmp_path / "ours.safetensors").tokenizer_info == want
