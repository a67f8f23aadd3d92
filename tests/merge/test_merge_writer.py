"""The streamed safetensors writer of merges: io.save_safetensors' bytes, atomic, checked puts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmerge_core.io import save_safetensors
from vlmerge_core.merge.writer import streamed_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(7, 5, generator=g),
        "a.bias": torch.randn(5, generator=g, dtype=torch.float64),
        "c.index": torch.arange(9, dtype=torch.int64).reshape(3, 3),
        "d.mask": torch.rand(4, generator=g) > 0.5,
        "e.half": torch.randn(3, generator=g).to(torch.bfloat16),
        "f.empty": torch.zeros(0, 4),
    }


def _specs(tensors):
    return {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}


def test_streamed_file_has_the_bytes_of_save_safetensors_in_any_put_order(tmp_path):
    tensors, meta = _tensors(), {"kind": "ma", "merge": {"method": "ties", "density": 0.5}}
    save_safetensors(tmp_path / "ref.safetensors", tensors, meta)
    with streamed_safetensors(tmp_path / "out.safetensors", _specs(tensors), meta) as out:
        for name in ["e.half", "a.bias", "f.empty", "d.mask", "b.weight", "c.index"]:
            out.put(name, tensors[name])
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    back = load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(back[k], t) for k, t in tensors.items())


def test_a_tensor_never_put_fails_and_leaves_the_old_file(tmp_path):
    tensors, path = _tensors(), tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="never written, e.g. 'f.empty'"):
        with streamed_safetensors(path, _specs(tensors)) as out:
            for name in list(tensors)[:-1]:
                out.put(name, tensors[name])
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temporary left


@pytest.mark.parametrize(
    ("name", "tensor", "match"),
    [
        ("b.weight", torch.zeros(5, 7), r"'b.weight' is torch.float32 \(5, 7\), the layout planned"),
        ("b.weight", torch.zeros(7, 5, dtype=torch.float64), "'b.weight' is torch.float64"),
        ("z.extra", torch.zeros(1), "'z.extra' is not in the planned layout"),
    ],
)
def test_a_put_that_does_not_fit_the_layout_is_refused(tmp_path, name, tensor, match):
    path = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=match):
        with streamed_safetensors(path, _specs(_tensors())) as out:
            out.put(name, tensor)
    assert not path.exists()


def test_a_tensor_put_twice_is_refused(tmp_path):
    tensors = _tensors()
    with pytest.raises(ValueError, match="'a.bias' given twice"):
        with streamed_safetensors(tmp_path / "out.safetensors", _specs(tensors)) as out:
            out.put("a.bias", tensors["a.bias"])
            out.put("a.bias", tensors["a.bias"])


def test_an_error_in_the_block_leaves_the_old_file(tmp_path):
    tensors, path = _tensors(), tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="merge failed"):
        with streamed_safetensors(path, _specs(tensors)) as out:
            out.put("b.weight", tensors["b.weight"])
            raise RuntimeError("merge failed")
    assert path.read_bytes() == b"old"
    assert len(list(tmp_path.iterdir())) == 1


def test_a_dtype_safetensors_cannot_store_is_named(tmp_path):
    with pytest.raises(ValueError, match="'c' has dtype torch.complex64"):
        with streamed_safetensors(tmp_path / "o.safetensors", {"c": (torch.complex64, (2,))}):
            pass


def test_a_merge_names_an_input_tensor_of_a_dtype_it_cannot_write(tmp_path):
    """The output's layout is planned from the MS header before anything is read: a tensor whose
    dtype the merge cannot carry is named there, and the old output is left as it was."""
    from _merge_helpers import make_ma_sd, ms_from_ma, ms_model_config
    from safetensors.torch import save_file

    from vlmerge_core.merge.stream import merge_checkpoint

    ms = ms_from_ma(make_ma_sd(depth=2, width=8, seed=0), vl_start=1, noise=1.0, seed=1)
    ms["extra.scale"] = torch.ones(2).to(torch.float8_e4m3fn)
    cfg = ms_model_config()
    save_file(ms, str(tmp_path / "ms.safetensors"), {"model_config": json.dumps(cfg), "kind": "ms"})
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="tensor extra.scale: unsupported dtype F8_E4M3"):
        merge_checkpoint(tmp_path / "ms.safetensors", out, "interpolation")
    assert out.read_bytes() == b"old"
