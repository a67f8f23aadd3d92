"""The merge methods against the official vl-merging semantics (issue 9), re-derived in the tests.

The official ``sum_task_vectors`` (vilt_module.py) starts from ``w = central[k]`` and, for the experts
in the order v, l (, vl), does ``w += lam * (W^m - central[k])`` where ``central[k]`` *is* ``w``:
each step starts from the previous result. A lone used expert gets weight 1 in every official merge.
"""

from __future__ import annotations

import logging

import pytest
import torch
from _merge_helpers import make_ma_sd, ms_from_ma

from vlmerge_core.merge.methods import METHODS, get_method, solve_normal
from vlmerge_core.merge.unify import unify_state_dict
from vlmerge_core.model.experts import COMPONENTS


def _official_in_place(central, experts, lam):
    """The official loop, re-derived: ``w`` aliases the central tensor and is updated in place."""
    w = central.clone().double()
    for x in experts:
        w += lam * (x.double() - w)  # (W^m - central[k]) with central[k] already == w
    return w


def test_arithmetic_two_experts_hand_computed():
    c, v, lang = torch.tensor([4.0, 0.0]), torch.tensor([8.0, 2.0]), torch.tensor([0.0, -4.0])
    out = get_method("arithmetic")([v, lang], central=c, lam=0.5)
    torch.testing.assert_close(out, 0.25 * c + 0.25 * v + 0.5 * lang)  # (1-l)^2 W0 + l(1-l) Wv + l Wl
    lam = 0.75
    out = get_method("arithmetic")([v, lang], central=c, lam=lam)
    torch.testing.assert_close(out, (1 - lam) ** 2 * c + lam * (1 - lam) * v + lam * lang)
    # the published formula is another method: W0 + lam (tau_v + tau_l)
    formula = get_method("arithmetic_formula")([v, lang], central=c, lam=0.5)
    torch.testing.assert_close(formula, c + 0.5 * ((v - c) + (lang - c)))
    assert not torch.allclose(out, formula)


def test_arithmetic_three_experts_in_the_order_v_l_vl():
    ms, central = ms_from_ma(make_ma_sd(depth=2, width=8), vl_start=1, noise=1.0), make_ma_sd(2, 8, seed=3)
    lam = 0.6
    out = unify_state_dict(ms, "arithmetic", vl_start=1, central=central, lam=lam)
    for k in ("blocks.1.mlp.fc1.weight", "blocks.1.norm1.bias", "blocks.0.attn.qkv.weight"):
        block, comp, rest = k.split(".", 3)[1], k.split(".")[2], k.split(".", 3)[3]
        names = ("v", "l", "vl") if block == "1" else ("v", "l")
        xs = [ms[f"blocks.{block}.{comp}.{e}.{rest}"] for e in names]
        expect = _official_in_place(central[k], xs, lam)
        torch.testing.assert_close(out[k], expect.float(), rtol=0, atol=1e-6)
        if block == "1":  # one more step with vl: (1-l) w2 + l Wvl
            w2 = (1 - lam) ** 2 * central[k] + lam * (1 - lam) * xs[0] + lam * xs[1]
            torch.testing.assert_close(out[k], (1 - lam) * w2 + lam * xs[2], rtol=1e-5, atol=1e-5)
            other = _official_in_place(central[k], [xs[2], xs[1], xs[0]], lam).float()
            assert not torch.allclose(out[k], other)  # the order matters, and it is v, l, vl


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_lone_expert_passes_through_in_every_method(method):
    """Issue 9.9: the official code returns W^vl with weight 1 (TIES/DARE used to rebuild W0 + tau)."""
    ma = make_ma_sd(depth=2, width=8)
    ms = ms_from_ma(ma, vl_start=1, noise=1.0, seed=4)
    m = get_method(method)
    kw = {}
    if m.needs_central:
        kw["central"] = make_ma_sd(depth=2, width=8, seed=9)
    if m.needs_grams:
        g = torch.Generator().manual_seed(0)
        kw["grams"] = {}
        for k, v in ms.items():
            if k.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")):
                x = torch.randn(3 * v.shape[1], v.shape[1], generator=g, dtype=torch.float64)
                kw["grams"][k[: -len(".weight")]] = x.T @ x
    out = unify_state_dict(ms, method, vl_start=1, task="vqa", only_used_experts=True, **kw)
    lone = 0
    for k in ma:
        parts = k.split(".")
        if parts[:2] == ["blocks", "1"] and parts[2] in COMPONENTS:  # fusion block: vqa uses vl alone
            assert torch.equal(out[k], ms[".".join([*parts[:3], "vl", *parts[3:]])]), k
            lone += 1
    assert lone == 13
    explicit = unify_state_dict(ms, method, vl_start=1, experts=["l"], **kw)
    assert torch.equal(explicit["blocks.0.mlp.fc2.bias"], ms["blocks.0.mlp.l.fc2.bias"])


def test_regmean_solvers_agree_and_cholesky_falls_back(caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    den = x.T @ x
    num = torch.randn(5, 6, generator=g, dtype=torch.float64)
    ref = num @ torch.inverse(den)  # the official explicit inverse
    for solver in ("cholesky", "lu", "inverse"):
        torch.testing.assert_close(solve_normal(num, den, "w", solver), ref, rtol=1e-10, atol=1e-10)
    indefinite = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    with caplog.at_level(logging.WARNING):
        out = solve_normal(num[:, :3], indefinite, "blocks.0.mlp.fc1.weight")
    assert "blocks.0.mlp.fc1.weight: summed Gram matrix is not positive definite" in caplog.text
    torch.testing.assert_close(out, num[:, :3] @ torch.inverse(indefinite))
    ws = [torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    grams = [den, den + torch.eye(6, dtype=torch.float64)]
    a = get_method("regmean")(ws, grams=grams, solver="cholesky")
    b = get_method("regmean")(ws, grams=grams, solver="inverse")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    indefinite_grams = [
        torch.diag(torch.tensor(d, dtype=torch.float64)) for d in ([2.0, -1.0, 3.0], [1.0, -1.0, 1.0])
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = get_method("regmean")(
            [w[:, :3] for w in ws], grams=indefinite_grams, name="blocks.0.attn.qkv.weight"
        )
    assert "blocks.0.attn.qkv.weight: summed Gram matrix is not positive definite" in caplog.text
    ref = (ws[0][:, :3] @ indefinite_grams[0] + ws[1][:, :3] @ indefinite_grams[1]) @ torch.inverse(
        indefinite_grams[0] + indefinite_grams[1]
    )
    torch.testing.assert_close(out, ref)
