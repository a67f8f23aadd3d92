"""merge.gram_source = coco_retrieval (the official Gram source): COCO retrieval's training pairs,
image and text passes only (no vl Grams), and RegMean then merges each linear weight over the experts
that have Grams (vl dropped) while biases and norms are averaged over every expert."""

import dataclasses

import pytest
import torch

from vlmerge_core.config import profile_params
from vlmerge_core.io import load_safetensors
from vlmerge_core.merge.gram import collect_grams, load_grams, save_grams
from vlmerge_core.merge.stage import make_demo_checkpoints, write_grams
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.model import load_model
from vlmerge_core.tasks.registry import gram_inputs


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_checkpoints(tmp_path_factory.mktemp("demo"))


def test_coco_retrieval_source_has_no_vl_grams(demo, smoke_world, tmp_path):
    params = profile_params("smoke")
    params = dataclasses.replace(
        params, merge=dataclasses.replace(params.merge, gram_source="coco_retrieval")
    )
    source = gram_inputs(params, str(smoke_world.root))
    assert source["passes"] == ("image", "text")
    first = next(iter(gram_inputs(params, str(smoke_world.root))["batches"]))
    assert first["images"].shape[1:] == (3, params.model.image_size, params.model.image_size)
    res = write_grams(params, ms_ckpt=str(demo["ms"]), out=str(tmp_path / "g.safetensors"), **source)
    keys = list(load_grams(tmp_path / "g.safetensors"))
    assert res["matrices"] == len(keys) and keys
    assert (
        not [k for k in keys if ".vl." in k]
        and [k for k in keys if ".v." in k]
        and [k for k in keys if ".l." in k]
    )
    assert gram_inputs(profile_params("smoke"), str(smoke_world.root)) == {}  # pairs: the world, every pass


def test_collect_grams_on_a_device_returns_cpu_float64(demo):
    from vlmerge_core.merge.stage import random_batches

    ms = load_model(demo["ms"])
    a = collect_grams(ms, random_batches(ms.cfg, 2, rng_seed=3), 2)
    b = collect_grams(ms, random_batches(ms.cfg, 2, rng_seed=3), 2, device="cpu")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and b[k].dtype == torch.float64 for k in a)


def _regmean(ws, gs):
    num = sum(w.double() @ g for w, g in zip(ws, gs))
    return (num @ torch.linalg.inv(sum(gs))).float()


def test_regmean_drops_gramless_vl_from_linear_weights_only(demo, tmp_path):
    grams = load_grams(demo["grams"])
    no_vl = {k: v for k, v in grams.items() if ".vl." not in k}
    save_grams(tmp_path / "novl.safetensors", no_vl)
    out = merge_checkpoint(demo["ms"], tmp_path / "m.safetensors", "regmean", gram_path=tmp_path / "novl.safetensors",
                           task="nlvr2", drop_gramless=True)  # fmt: skip
    ms, _ = load_safetensors(demo["ms"])
    merged, meta = load_safetensors(out)
    b = load_model(demo["ms"]).vl_start  # a fusion block: v, l and vl experts
    w = f"blocks.{b}.mlp.{{}}.fc1.weight"
    want = _regmean(
        [ms[w.format(e)] for e in ("v", "l")], [grams[f"blocks.{b}.mlp.{e}.fc1"] for e in ("v", "l")]
    )
    torch.testing.assert_close(merged[f"blocks.{b}.mlp.fc1.weight"], want, rtol=1e-5, atol=1e-6)
    bias = f"blocks.{b}.mlp.{{}}.fc1.bias"
    mean = torch.stack([ms[bias.format(e)] for e in ("v", "l", "vl")]).mean(0)
    torch.testing.assert_close(merged[f"blocks.{b}.mlp.fc1.bias"], mean)
    assert '"drop_gramless": true' in meta["merge"]
    with pytest.raises(Exception, match="vl"):  # without the drop a missing vl Gram is an error
        merge_checkpoint(demo["ms"], tmp_path / "x.safetensors", "regmean", gram_path=tmp_path / "novl.safetensors",
                         task="nlvr2")  # fmt: skip
