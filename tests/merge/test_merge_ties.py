"""TIES trimming per whole modality vector (Yadav et al.'s reference, the default) and per tensor.

The reference is re-derived here by brute force: concatenate each expert's modality vector over every
parameter it is merged in (sorted names, flattened), sort the float64 magnitudes stably in descending
order, keep the first ``k``; the streaming radix selection must give exactly that.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _merge_helpers import make_ma_sd, ms_from_ma, ms_model_config

from vlmerge_core.io import save_safetensors
from vlmerge_core.merge.methods import get_method, topk_mask
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.merge.unify import plan_groups, unify_state_dict, used_experts


def _stable_topk(v: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, int(density * v.numel()))
    order = torch.sort(v.abs().double(), descending=True, stable=True).indices
    mask = torch.zeros(v.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def _reference(ms, central, vl_start, density, lam, per_tensor=False, **rule):
    groups, passthrough = plan_groups(list(ms), vl_start)
    plan = []
    for t in sorted(groups):
        use = used_experts(int(t.split(".")[1]), list(groups[t]), vl_start=vl_start, method="ties", **rule)
        plan.append((t, use))
    taus = {t: {e: ms[groups[t][e]].double() - central[t].double() for e in use} for t, use in plan}
    masks: dict[str, dict[str, torch.Tensor]] = {t: {} for t, _ in plan}
    for e in ("v", "l", "vl"):
        members = [t for t, use in plan if e in use and len(use) > 1]
        if not members:
            continue
        if per_tensor:
            for t in members:
                masks[t][e] = _stable_topk(taus[t][e].reshape(-1), density).view(taus[t][e].shape)
            continue
        whole = _stable_topk(torch.cat([taus[t][e].reshape(-1) for t in members]), density)
        start = 0
        for t in members:
            n = taus[t][e].numel()
            masks[t][e] = whole[start : start + n].view(taus[t][e].shape)
            start += n
    out = {k: ms[k] for k in passthrough}
    for t, use in plan:
        if len(use) == 1:
            out[t] = ms[groups[t][use[0]]]
            continue
        trimmed = [taus[t][e] * masks[t][e] for e in use]
        sign = torch.sign(sum(trimmed))
        agree = [(torch.sign(x) == sign) & (x != 0) for x in trimmed]
        num = sum(x * a for x, a in zip(trimmed, agree))
        cnt = sum(a.long() for a in agree).clamp(min=1)
        out[t] = (central[t].double() + lam * num / cnt).to(ms[groups[t][use[0]]].dtype)
    return out


def _assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_vector_and_tensor_trimming_hand_computed():
    """Two parameters of one expert: the vector keeps the 2 largest of 4, per tensor 1 of each."""
    c = {"blocks.0.norm1.weight": torch.zeros(2), "blocks.0.norm1.bias": torch.zeros(2)}
    ms = {
        "blocks.0.norm1.v.weight": torch.tensor([10.0, 9.0]),
        "blocks.0.norm1.l.weight": torch.tensor([0.0, 0.0]),
        "blocks.0.norm1.v.bias": torch.tensor([1.0, 2.0]),
        "blocks.0.norm1.l.bias": torch.tensor([0.0, 0.0]),
    }
    vec = unify_state_dict(ms, "ties", vl_start=1, central=c, density=0.5)
    assert vec["blocks.0.norm1.weight"].tolist() == [10.0, 9.0] and vec["blocks.0.norm1.bias"].tolist() == [
        0,
        0,
    ]
    ten = unify_state_dict(ms, "ties", vl_start=1, central=c, density=0.5, trim="tensor")
    assert ten["blocks.0.norm1.weight"].tolist() == [10.0, 0.0] and ten["blocks.0.norm1.bias"].tolist() == [
        0,
        2,
    ]


@pytest.mark.parametrize("density", [0.1, 0.5, 0.93])
@pytest.mark.parametrize("ties_in_values", [False, True])
@pytest.mark.parametrize("trim", ["vector", "tensor"])
def test_trimming_equals_a_stable_sort_of_float64_magnitudes(density, ties_in_values, trim):
    central = make_ma_sd(depth=3, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=7)
    if ties_in_values:  # few distinct magnitudes: ties straddle the threshold (third pass, by position)
        ms = {
            k: (central[k.replace(".v.", ".").replace(".l.", ".").replace(".vl.", ".")] + v.round())
            if any(f".{e}." in k for e in ("v", "l", "vl"))
            else v
            for k, v in ms.items()
        }
    got = unify_state_dict(ms, "ties", vl_start=1, central=central, density=density, lam=0.7, trim=trim)
    ref = _reference(ms, central, 1, density, 0.7, per_tensor=trim == "tensor")
    _assert_same(got, ref)


def test_vector_trimming_streams_from_files(tmp_path):
    central = make_ma_sd(depth=2, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=3)
    cfg = ms_model_config()
    save_safetensors(tmp_path / "ms.safetensors", ms, {"model_config": cfg, "kind": "ms"})
    save_safetensors(tmp_path / "c.safetensors", central, {"model_config": {**cfg, "ms_components": []}})
    out = merge_checkpoint(
        tmp_path / "ms.safetensors",
        tmp_path / "o.safetensors",
        "ties",
        central_path=tmp_path / "c.safetensors",
        density=0.3,
        task="coco",
        only_used_experts=True,
    )
    from vlmerge_core.io import load_safetensors

    got, _ = load_safetensors(out)
    _assert_same(got, _reference(ms, central, 1, 0.3, 1.0, task="coco", only_used_experts=True))


def test_float32_magnitudes_rank_like_float64():
    """Distinct float64 differences that round to one float32 value are still ordered exactly."""
    c = torch.zeros(4)
    x = torch.tensor([1.0, 1.0 + 2**-23, 1.0, 0.5])  # float32 inputs: their differences are exact
    m = get_method("ties")([x, torch.zeros(4)], central=c, density=0.5, lam=1.0)
    assert m.tolist() == [1.0, 1.0 + 2**-23, 0.0, 0.0]
    assert topk_mask(torch.tensor([3.0, -3.0, 3.0, 1.0]), 0.5).tolist() == [True, True, False, False]
    big = torch.randn(10_000, dtype=torch.float64)
    ref = _stable_topk(big, 0.37)
    assert torch.equal(topk_mask(big, 0.37), ref)


def test_ties_dataclass_threshold_keeps_state_in_order():
    from vlmerge_core.merge.methods.ties_topk import Threshold

    thr = Threshold(t32=1.0, t64=1.0, ties_left=1)
    a = thr.keep(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64))
    b = thr.keep(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert a.tolist() == [True, True, False] and b.tolist() == [False]
    assert dataclasses.asdict(thr)["ties_left"] == 0


@pytest.fixture
def two_threads():
    """torch at two threads: iter_unified merges element-wise groups side by side, one per thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("density", [0.1, 0.5])
def test_vector_trim_with_float64_ties_is_exact_when_groups_run_side_by_side(two_threads, density):
    """The float64 tie at the threshold is shared out per tensor in the vector's order (first come
    first kept), so merging the groups on two threads in any interleaving keeps the same entries."""
    central = make_ma_sd(depth=3, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=7)
    ms = {
        k: (central[k.replace(".v.", ".").replace(".l.", ".").replace(".vl.", ".")] + v.round())
        if any(f".{e}." in k for e in ("v", "l", "vl"))
        else v
        for k, v in ms.items()
    }
    got = unify_state_dict(ms, "ties", vl_start=1, central=central, density=density, lam=0.7)
    _assert_same(got, _reference(ms, central, 1, density, 0.7))


@pytest.mark.parametrize("method", ["interpolation", "arithmetic", "dare", "ties"])
def test_groups_merged_side_by_side_equal_the_one_thread_merge(two_threads, method):
    central = make_ma_sd(depth=3, width=8, seed=2)
    ms = ms_from_ma(central, vl_start=1, noise=1.0, seed=5)
    two = unify_state_dict(ms, method, vl_start=1, central=central)
    torch.set_num_threads(1)
    _assert_same(two, unify_state_dict(ms, method, vl_start=1, central=central))


_EDGES = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1e-45, -1e-45, 3e38, -3e38, 1.5, 0.25]


@pytest.mark.parametrize("n_experts", [2, 3, 4])
@pytest.mark.parametrize("values", ["edges", "grid", "normal"])
def test_float32_merge_pass_has_the_bits_of_the_reference(n_experts, values):
    """The numpy merge pass (the two-expert form included) against the torch reference slice, bit for
    bit in float64, on signed zeros, subnormals, overflowing differences, equal magnitudes of opposite
    signs and entries equal to the threshold, with every kind of threshold and lam."""
    from vlmerge_core.merge.methods.ties import _Float32Pass, _ties_chunk
    from vlmerge_core.merge.methods.ties_topk import Threshold, mag32

    g = torch.Generator().manual_seed(n_experts)
    n = 3001
    for _ in range(20):
        if values == "edges":
            draws = [
                torch.tensor(_EDGES)[torch.randint(len(_EDGES), (n,), generator=g)]
                for _ in range(n_experts + 1)
            ]
        elif values == "grid":
            draws = [(torch.randint(-3, 4, (n,), generator=g) * 0.125).float() for _ in range(n_experts + 1)]
        else:
            c = torch.randn(n, generator=g) * 0.02
            draws = [c, *(c + torch.randn(n, generator=g) * 1e-3 for _ in range(n_experts))]
        central, experts = draws[0], draws[1:]
        for lam in (1.0, 0.3):
            for kinds in (("median",), ("none",), ("all",), ("median", "none", "all")):
                thresholds = []
                for i, t in enumerate(experts):
                    kind = kinds[i % len(kinds)]
                    t32 = {"none": float("inf"), "all": -1.0}.get(kind, float(mag32(t, central).median()))
                    thresholds.append(Threshold(t32))
                assert _Float32Pass.applies(experts, central, thresholds)
                want = _ties_chunk(experts, central, thresholds, lam)
                got = _Float32Pass(n_experts, 4096)(
                    [t.numpy() for t in experts], central.numpy(), thresholds, lam
                )
                assert want.numpy().tobytes() == got.tobytes(), (values, lam, kinds)
