"""The fast paths of the merge methods give the plain whole-tensor computation bit for bit.

The element-wise methods merge a tensor slice by slice (``registry.by_slices``); TIES too (its
trimming thresholds keep their tie state across slices); DARE draws its masks slice by slice
(checked against its documented rule, recomputed here). Each is checked against the whole-tensor
formula written out here (the code before these paths), on tensors spanning several slices, in
float32 and float64, with ties straddling the threshold.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from _merge_helpers import make_ma_sd, ms_from_ma

from vlmerge_core.merge.methods import dare as dare_mod
from vlmerge_core.merge.methods import get_method, registry, ties_topk, ties_vector
from vlmerge_core.merge.methods import ties as ties_mod
from vlmerge_core.merge.methods.registry import f64
from vlmerge_core.merge.unify import unify_state_dict


def _experts(n: int, m: int, dtype: torch.dtype, rounded: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(n + m)
    central = torch.randn(n, generator=g).to(dtype)
    taus = [torch.randn(n, generator=g) * 3 for _ in range(m)]
    if rounded:  # few distinct magnitudes: equal m32 at the threshold, broken by position
        taus = [t.round() for t in taus]
    return [central + t.to(dtype) for t in taus], central


def _ties_whole(experts, central, density, lam):
    """TIES on the whole tensors at once, per-tensor thresholds (the pre-slicing code)."""
    c = f64(central).clone()
    trimmed = []
    for t in experts:
        m32 = ties_topk.mag32(t, central)
        tau = f64(t).sub_(c) if t.dtype != torch.float64 else t - c
        trimmed.append(tau.mul_(ties_topk.tensor_threshold(m32, tau, density).keep(m32, tau)))
    sign = trimmed[0].clone()
    for tr in trimmed[1:]:
        sign.add_(tr)
    sign.sign_()
    acc, count = torch.zeros_like(c), torch.zeros(c.shape, dtype=torch.int32)
    for tr in trimmed:
        agree = tr.mul_(sign)
        count += agree > 0
        acc += agree.clamp_(min=0)
    return c.add_(acc.div_(count.clamp_(min=1)).mul_(sign).mul_(lam)).to(experts[0].dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounded", [False, True])
@pytest.mark.parametrize("m", [2, 3])
def test_ties_by_slices_equals_whole_tensor(monkeypatch, dtype, rounded, m):
    monkeypatch.setattr(ties_mod, "SLICE", 37)  # many slices, none aligned to a vector width
    experts, central = _experts(1000, m, dtype, rounded)
    for density in (0.0, 0.31, 0.5, 1.0):
        got = get_method("ties")(experts, central=central, density=density, lam=0.7)
        assert torch.equal(got, _ties_whole(experts, central, density, 0.7)), density
        assert got.dtype == dtype


def test_ties_keeps_its_inputs():
    experts, central = _experts(300, 2, torch.float64, False)
    before = [t.clone() for t in (*experts, central)]
    get_method("ties")(experts, central=central, density=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, (*experts, central)))


def _dare_keep(rng_seed, name, i, n, drop_rate):
    """The documented mask rule, from scratch: PCG64 seeded by sha256([seed, name, i]); entry j takes
    the 32-bit half j % 2 (low first) of 64-bit output j // 2 and is kept iff it is >= round(p 2^32)."""
    digest = hashlib.sha256(json.dumps([rng_seed, name, i]).encode()).digest()
    words = np.random.PCG64(int.from_bytes(digest[:16], "little")).random_raw((n + 1) // 2)
    halves = np.stack([words & 0xFFFFFFFF, words >> np.uint64(32)], axis=1).reshape(-1)[:n]
    return torch.from_numpy(halves >= round(drop_rate * 2**32))


def _dare_whole(experts, central, drop_rate, lam, rng_seed, name):
    """DARE with one whole-tensor mask per expert, drawn by the documented rule."""
    c = f64(central)
    out = c.clone()
    for i, t in enumerate(experts):
        tau = f64(t) - c
        tau.mul_(_dare_keep(rng_seed, name, i, tau.numel(), drop_rate).view(tau.shape))
        out.add_(tau, alpha=lam / (1.0 - drop_rate))
    return out.to(experts[0].dtype)


@pytest.mark.parametrize("drop_rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("slice_size", [43, 44, 1 << 15])
def test_dare_masks_by_slices_equal_one_draw(monkeypatch, drop_rate, m, slice_size):
    monkeypatch.setattr(registry, "SLICE", slice_size)  # odd slices: a half-word spans two slices
    experts, central = _experts(1001, m, torch.float32, False)
    experts = [t.view(7, 143) for t in experts]
    central = central.view(7, 143)
    got = get_method("dare")(experts, central=central, drop_rate=drop_rate, lam=0.7, rng_seed=3, name="w")
    assert torch.equal(got, _dare_whole(experts, central, drop_rate, 0.7, 3, "w"))


def test_dare_keep_probability_exact():
    for p in (0.0, 0.1, 0.25, 0.5, 0.9, 1 - 2**-40):
        assert abs((1 - dare_mod.drop_threshold(p) / 2**32) - (1 - p)) <= 2**-32


def _elementwise_whole(method, experts, central, lam):
    """Interpolation and the two arithmetics on whole tensors (the pre-slicing code)."""
    if method == "interpolation":
        out = torch.zeros(experts[0].shape, dtype=torch.float64)
        for t in experts:
            out.add_(t, alpha=1.0 / len(experts))
    elif method == "arithmetic":
        out = f64(central).clone()
        for t in experts:
            out.add_(f64(t) - out, alpha=lam)
    else:
        out = f64(central) * (1.0 - lam * len(experts))
        for t in experts:
            out.add_(t, alpha=lam)
    return out.to(experts[0].dtype)


@pytest.mark.parametrize("method", ["interpolation", "arithmetic", "arithmetic_formula"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_methods_by_slices_equal_whole_tensor(monkeypatch, method, dtype):
    monkeypatch.setattr(registry, "SLICE", 37)
    experts, central = _experts(1000, 3, dtype, False)
    kw = {"weights": [1 / 3] * 3} if method == "interpolation" else {"central": central, "lam": 0.37}
    got = get_method(method)(experts, **kw)
    assert torch.equal(got, _elementwise_whole(method, experts, central, 0.37)) and got.dtype == dtype


@pytest.mark.parametrize("rounded", [False, True])
def test_vector_trim_passes_by_slices_equal_one_slice(monkeypatch, rounded):
    """The histogram passes of ``trim="vector"`` over many slices select what one slice does."""
    central = make_ma_sd(depth=3, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=7)
    if rounded:
        ms = {k: v.round() for k, v in ms.items()}
        central = {k: v.round() for k, v in central.items()}
    whole = unify_state_dict(ms, "ties", vl_start=1, central=central, density=0.3, lam=0.7)
    monkeypatch.setattr(ties_mod, "SLICE", 5)
    sliced = unify_state_dict(ms, "ties", vl_start=1, central=central, density=0.3, lam=0.7)
    assert all(torch.equal(whole[k], sliced[k]) for k in whole)


@pytest.mark.parametrize("window, cap", [(0, 1 << 22), (1, 1 << 22), (4, 3), (4, 1 << 22)])
@pytest.mark.parametrize("rounded", [False, True])
def test_vector_trim_candidates_equal_a_second_pass(monkeypatch, window, cap, rounded):
    """First-pass candidates (windows that miss the bin, a cap that drops them) select what a full
    second pass does: the same output bit for bit."""
    central = make_ma_sd(depth=3, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=7)
    if rounded:
        ms = {k: v.round() for k, v in ms.items()}
        central = {k: v.round() for k, v in central.items()}
    monkeypatch.setattr(ties_vector, "_MAX_CANDS", -1)  # no candidates: every tensor read in pass 2
    ref = unify_state_dict(ms, "ties", vl_start=1, central=central, density=0.3, lam=0.7)
    monkeypatch.setattr(ties_vector, "_MAX_CANDS", cap)
    monkeypatch.setattr(ties_vector, "_WINDOW", window)
    monkeypatch.setattr(ties_mod, "SLICE", 7)
    got = unify_state_dict(ms, "ties", vl_start=1, central=central, density=0.3, lam=0.7)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_has_nan_by_slices(monkeypatch, dtype):
    monkeypatch.setattr(registry, "SLICE", 4)  # torch's chunks (bfloat16)
    monkeypatch.setattr(registry, "_SUM_CHUNK", 4)  # numpy's (float32, float64)
    x = torch.zeros(10, dtype=dtype)
    assert not registry.has_nan(x)
    x[5], x[6] = float("inf"), float("-inf")  # a NaN sum without a NaN
    assert not registry.has_nan(x)
    x[9] = float("nan")
    assert registry.has_nan(x)


def test_cast_by_slices(monkeypatch):
    monkeypatch.setattr(registry, "SLICE", 7)
    x = torch.randn(5, 9, dtype=torch.float64) * 1e3
    assert torch.equal(registry.cast(x, torch.float32), x.to(torch.float32))
    assert registry.cast(x, torch.float64) is x


class _CountedGrams(list):
    """Gram matrices that count their reads (as a file's ``LazyGrams`` reads each indexing)."""

    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i).clone()


def _grams(g, n, count):
    out = []
    for _ in range(count):
        a = torch.randn(n, 40, generator=g, dtype=torch.float64)
        out.append(a @ a.T)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_regmean_reads_each_gram_once_for_both_sums(alpha):
    from vlmerge_core.merge.methods import regmean as regmean_mod

    g = torch.Generator().manual_seed(0)
    experts = [torch.randn(5, 12, generator=g) for _ in range(3)]
    grams = _CountedGrams(_grams(g, 12, 3))
    num, den = regmean_mod._normal_equations(experts, grams, alpha, "w")
    assert grams.reads == 3
    tilde = [regmean_mod.regmean_gram(list.__getitem__(grams, i), alpha) for i in range(3)]
    whole = torch.zeros(12, 12, dtype=torch.float64)
    want = torch.zeros(5, 12, dtype=torch.float64)
    for w, gt in zip(experts, tilde):  # element-wise in the experts' order, one product per expert
        whole += gt
        want.addmm_(w.double(), gt)
    assert torch.equal(den, whole) and torch.equal(num, want)


def test_regmean_names_the_gram_with_nan():
    from vlmerge_core.merge.methods import regmean as regmean_mod

    g = torch.Generator().manual_seed(1)
    experts = [torch.randn(5, 12, generator=g) for _ in range(3)]
    grams = _grams(g, 12, 3)
    grams[1][3, 4] = float("nan")
    with pytest.raises(regmean_mod.MergeError, match=r"w: Gram matrix 1 contains NaN"):
        regmean_mod._normal_equations(experts, grams, 1.0, "w")


def test_regmean_merges_the_largest_grams_first():
    """fc2 groups first (their Gram matrices are 16x the others'), the same values as key order."""
    from vlmerge_core.merge import unify

    plan = [(f"blocks.0.{k}.weight", ["v", "l"], []) for k in ("attn.qkv", "mlp.fc1", "mlp.fc2")]
    plan += [("blocks.1.mlp.fc2.weight", ["v", "l"], []), ("blocks.1.norm1.bias", ["v", "l"], [])]
    got = [t for t, _, _ in unify._largest_grams_first(plan)]
    assert got == [
        "blocks.0.mlp.fc2.weight",
        "blocks.1.mlp.fc2.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.1.norm1.bias",
    ]


def test_open_tensors_reads_each_tensor(tmp_path):
    from vlmerge_core.io import save_safetensors
    from vlmerge_core.merge.stream import open_tensors

    x = torch.arange(24, dtype=torch.float64).reshape(6, 4)
    empty = torch.zeros(0, 3)
    save_safetensors(tmp_path / "t.safetensors", {"x": x, "s": torch.tensor(3.0), "e": empty})
    with open_tensors(tmp_path / "t.safetensors", "test") as (get, _):
        assert torch.equal(get("x"), x) and get("s").item() == 3.0 and get("s").shape == ()
        assert get("e").shape == (0, 3)
        with pytest.raises(KeyError, match="no tensor y"):
            get("y")


@pytest.mark.parametrize("rounded", [False, True])
def test_kth_largest_equals_kthvalue(monkeypatch, rounded):
    monkeypatch.setattr(ties_mod, "SLICE", 29)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1000, generator=g).abs() * 10
    x = x.round() if rounded else x
    x[:7] = 0.0
    for k in (1, 2, 500, 993, 1000):
        t32, need, count_eq = ties_topk.kth_largest(x, k)
        assert t32 == float(torch.kthvalue(x, 1000 - k + 1).values), k
        assert count_eq == int((x == t32).sum()), k
        assert need == k - int((x > t32).sum()), k
