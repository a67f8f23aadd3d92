"""Property and hand-computed tests of the merge methods (vlmerge_core.merge.methods)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmerge_core.merge.methods import (
    METHODS,
    MergeError,
    get_method,
    interpolation_weights,
    regmean_gram,
    topk_mask,
)

SETTINGS = settings(max_examples=25, deadline=None)
shapes = st.sampled_from([(3,), (4, 5), (2, 3, 2), (6, 4)])


def _tensors(shape, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(n)]


def _gram(d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    return x.T @ x


def _run(name, experts, central=None, seed=0, **kw):
    m = get_method(name)
    if m.needs_central:
        kw["central"] = central
    if m.needs_grams and experts[0].dim() == 2:
        kw.setdefault("grams", [_gram(experts[0].shape[1], seed + i) for i in range(len(experts))])
    return m(experts, name="p", **kw)


# knobs under which identical experts must come back (lam per method: see the test)
IDENTITY_KW = {
    "interpolation": {},
    "regmean": {"alpha": 0.7},
    "ties": {"density": 1.0, "lam": 1.0},
    "dare": {"drop_rate": 0.0},
    "arithmetic": {"lam": 1.0},  # official in-place form: w <- w + 1 (x - w) = x after one step
    "arithmetic_formula": {},
}


def test_every_registered_method_is_covered_and_cites_its_paper():
    assert set(IDENTITY_KW) == set(METHODS)  # a new method needs its entry here
    for m in METHODS.values():
        assert "20" in m.reference  # a year: every method cites its paper
    with pytest.raises(MergeError, match="unknown merge method 'nope'"):
        get_method("nope")


@SETTINGS
@given(
    shape=shapes, n=st.integers(1, 3), seed=st.integers(0, 1000), name=st.sampled_from(sorted(IDENTITY_KW))
)
def test_identical_experts_are_returned(shape, n, seed, name):
    x = _tensors(shape, 1, seed)[0]
    central = _tensors(shape, 1, seed + 1)[0]
    kw = dict(IDENTITY_KW[name])
    if "lam" not in kw and any(k.name == "lam" for k in get_method(name).knobs):
        kw["lam"] = 1.0 / n  # summed modality vectors: 1/n of each gives x back
    out = _run(name, [x.clone() for _ in range(n)], central, seed, **kw)
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 1000), ratio=st.sampled_from([0.0, 1.0]))
def test_ratio_0_and_1_return_an_input(shape, seed, ratio):
    tv, tl = _tensors(shape, 2, seed)
    out = _run("interpolation", [tv, tl], weights=interpolation_weights(["v", "l"], ratio))
    assert torch.equal(out, tv if ratio == 1.0 else tl)


@SETTINGS
@given(
    shape=shapes,
    n=st.integers(2, 3),
    seed=st.integers(0, 1000),
    name=st.sampled_from(sorted(m.name for m in METHODS.values() if m.symmetric)),
    perm_seed=st.integers(0, 100),
)
def test_permuting_experts_gives_the_same_result(shape, n, seed, name, perm_seed):
    xs = _tensors(shape, n, seed)
    central = _tensors(shape, 1, seed + 7)[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed)).tolist()
    kw = {
        "interpolation": {"weights": [0.2, 0.8] if n == 2 else [0.2, 0.5, 0.3]},
        "arithmetic_formula": {"lam": 0.4},
        "regmean": {"alpha": 0.6},
        "ties": {"density": 0.5},
        "dare": {"drop_rate": 0.0},
    }[name]
    grams = [_gram(shape[-1], seed + i) for i in range(n)] if name == "regmean" and len(shape) == 2 else None
    kw_p = dict(kw)
    if "weights" in kw:
        kw_p["weights"] = [kw["weights"][i] for i in perm]
    if grams is not None:
        kw["grams"], kw_p["grams"] = grams, [grams[i] for i in perm]
    a = _run(name, xs, central, seed, **kw)
    b = _run(name, [xs[i] for i in perm], central, seed, **kw_p)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(
    shape=shapes,
    seed=st.integers(0, 1000),
    name=st.sampled_from(sorted(IDENTITY_KW)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_shape_and_dtype_kept_no_nan(shape, seed, name, dtype):
    xs = _tensors(shape, 3, seed, dtype)
    central = _tensors(shape, 1, seed + 1, dtype)[0]
    out = _run(name, xs, central, seed, **({"drop_rate": 0.3} if name == "dare" else {}))
    assert out.shape == xs[0].shape and out.dtype == dtype
    assert not torch.isnan(out).any()


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 1000), dseed=st.integers(0, 5))
def test_dare_reproducible_for_a_seed(shape, seed, dseed):
    xs = _tensors(shape, 2, seed)
    c = _tensors(shape, 1, seed + 3)[0]
    a = _run("dare", xs, c, drop_rate=0.5, rng_seed=dseed)
    b = _run("dare", [x.clone() for x in xs], c.clone(), drop_rate=0.5, rng_seed=dseed)
    assert torch.equal(a, b)


def test_dare_seed_and_name_change_masks():
    xs = _tensors((50, 40), 2, 0)
    c = torch.zeros(50, 40)
    m = get_method("dare")
    a = m(xs, central=c, drop_rate=0.5, rng_seed=0, name="a")
    assert not torch.equal(a, m(xs, central=c, drop_rate=0.5, rng_seed=1, name="a"))
    assert not torch.equal(a, m(xs, central=c, drop_rate=0.5, rng_seed=0, name="b"))


# ------------------------------------------------------------------- hand-computed small examples
def test_interpolation_weights_official():
    assert interpolation_weights(["v", "l"], 0.3) == pytest.approx([0.3, 0.7])
    assert interpolation_weights(["v", "l", "vl"], 0.3) == pytest.approx([0.2, 2 / 3 * 0.7, 1 / 3])
    assert interpolation_weights(["vl"], 0.3) == [1.0]
    with pytest.raises(MergeError, match=r"ratio must be in \[0, 1\]"):
        interpolation_weights(["v", "l"], 1.5)


def test_interpolation_hand_computed():
    tv, tl, tvl = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.0, 6.0])
    out = get_method("interpolation")([tv, tl, tvl], weights=interpolation_weights(["v", "l", "vl"], 0.5))
    assert torch.allclose(out, torch.tensor([(1 + 3) / 3, (2 - 1 + 6) / 3]))


def test_arithmetic_formula_hand_computed():
    c = torch.tensor([1.0, 1.0])
    experts = [torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0])]
    out = get_method("arithmetic_formula")(experts, central=c, lam=0.5)
    assert torch.allclose(out, torch.tensor([1 + 0.5 * (1 + 3), 1 + 0.5 * (-1 + 0)]))


def test_regmean_matches_closed_form_and_explicit_inverse():
    ws = _tensors((4, 3), 2, 5, torch.float64)
    gs = [_gram(3, 1), _gram(3, 2)]
    alpha = 0.5
    gt = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in gs]
    ref = (ws[0] @ gt[0] + ws[1] @ gt[1]) @ torch.inverse(gt[0] + gt[1])
    out = get_method("regmean")(ws, grams=gs, alpha=alpha)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(regmean_gram(gs[0], alpha), gt[0])
    # alpha = 0 with diagonal Grams: per input column weighted average
    d0, d1 = torch.diag(torch.tensor([1.0, 3.0, 1.0])), torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    out0 = get_method("regmean")(ws, grams=[d0, d1], alpha=0.0)
    expect = torch.stack(
        [(ws[0][:, j] * d0[j, j] + ws[1][:, j] * d1[j, j]) / (d0[j, j] + d1[j, j]) for j in range(3)], dim=1
    )
    torch.testing.assert_close(out0, expect)


def test_regmean_without_grams_is_average():
    a, b = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 5.0])
    assert torch.allclose(get_method("regmean")([a, b]), torch.tensor([2.0, 4.0]))


def test_ties_hand_computed():
    c = torch.zeros(4)
    t1 = torch.tensor([3.0, -2.0, 0.5, 1.0])
    t2 = torch.tensor([-1.0, -4.0, 2.0, 0.1])
    # density 0.5 keeps 2 entries each: t1 -> [3, -2, 0, 0]; t2 -> [0, -4, 2, 0]
    # elected signs: [+, -, +, 0]; disjoint means: [3, -3, 2, 0]
    out = get_method("ties")([t1, t2], central=c, density=0.5, lam=1.0)
    assert torch.allclose(out, torch.tensor([3.0, -3.0, 2.0, 0.0]))
    out2 = get_method("ties")([t1 + 1, t2 + 1], central=c + 1, density=0.5, lam=2.0)
    assert torch.allclose(out2, 1 + 2 * torch.tensor([3.0, -3.0, 2.0, 0.0]))


def test_topk_mask_is_stable():
    x = torch.tensor([1.0, -1.0, 1.0, 0.5])
    assert topk_mask(x, 0.5).tolist() == [True, True, False, False]
    assert topk_mask(x, 1.0).all() and not topk_mask(x, 0.0).any()


def test_dare_expectation_and_rescale():
    c = torch.zeros(20000)
    t = torch.ones(20000)
    out = get_method("dare")([t], central=c, drop_rate=0.25, lam=1.0, rng_seed=3, name="w")
    vals = out.unique()
    assert len(vals) == 2 and vals[0] == 0 and torch.isclose(vals[1], torch.tensor(1 / 0.75))
    assert abs(out.mean().item() - 1.0) < 0.03
    assert abs((out == 0).float().mean().item() - 0.25) < 0.02


# ----------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_tensor():
    m = get_method("interpolation")
    with pytest.raises(MergeError, match=r"blocks.0.x: tensor size mismatch"):
        m([torch.zeros(2), torch.zeros(3)], name="blocks.0.x")
    with pytest.raises(MergeError, match=r"blocks.0.x: expert 1 contains NaN"):
        m([torch.zeros(2), torch.tensor([0.0, float("nan")])], name="blocks.0.x")
    with pytest.raises(MergeError, match=r"blocks.0.x: weights must sum to 1"):
        m([torch.zeros(2), torch.zeros(2)], weights=[0.5, 0.6], name="blocks.0.x")
    with pytest.raises(MergeError, match=r"w: Gram matrix 1 has shape \(4, 4\), expected \(3, 3\)"):
        get_method("regmean")([torch.zeros(2, 3)] * 2, grams=[torch.eye(3), torch.eye(4)], name="w")
    with pytest.raises(MergeError, match=r"w: central tensor has shape"):
        get_method("arithmetic")([torch.zeros(2)], central=torch.zeros(3), name="w")
    for dtype in (torch.float32, torch.float64):  # TIES' numpy pass (float32) and its torch reference
        nan = torch.tensor([0.0, float("nan"), 1.0], dtype=dtype)
        with pytest.raises(MergeError, match=r"w: expert 1 contains NaN"):
            get_method("ties")(
                [torch.ones(3, dtype=dtype), nan], central=torch.zeros(3, dtype=dtype), name="w"
            )
    with pytest.raises(MergeError, match=r"drop rate must be in \[0, 1\)"):
        get_method("dare")([torch.zeros(2)], central=torch.zeros(2), drop_rate=1.0)
    with pytest.raises(MergeError, match="singular"):
        get_method("regmean")([torch.ones(2, 2)], grams=[torch.zeros(2, 2)], name="w")
    with pytest.raises(MergeError, match="trim must be one of"):
        get_method("ties")([torch.zeros(2)], central=torch.zeros(2), trim="row")
