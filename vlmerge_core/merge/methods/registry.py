"""The merge-method registry: one declaration per method, read by every caller.

A method is a pure tensor function ``fn(experts, *, name, ...) -> Tensor`` registered with
:func:`merge_method` (mergekit's ``@merge_method`` idea). Its registration declares what it needs
(the central/seed checkpoint, Gram matrices), whether its expert choice depends on the task whatever
the ``only_used_experts`` flag (``task_dependent``: the official RegMean rule), and its knobs
(:class:`Knob`: name, type, range, default, the ``params.yaml`` key, the CLI flag). ``method_grid``,
the CLI, :mod:`~vlmerge_core.merge.unify`, the stage, the notebook, the benchmark and the tests read
these declarations; nothing outside a method's own file tests its name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


class MergeError(ValueError):
    """Inputs of a merge are inconsistent; the message names the tensor, file or key."""


@dataclass(frozen=True)
class Knob:
    """A parameter of a merge method, as the params, the CLI and the grid see it."""

    name: str  # keyword argument of the method function
    type: type  # float, int or str
    default: Any  # equals the function's keyword default (checked at registration)
    help: str  # one line for the CLI and the notebook
    lo: float | None = None  # smallest allowed value (inclusive)
    hi: float | None = None  # largest allowed value (inclusive unless hi_open)
    hi_open: bool = False  # the upper bound is excluded
    choices: tuple[str, ...] | None = None  # allowed values of a str knob
    params_key: str | None = None  # params.yaml key, e.g. "merge.ratios"
    sweep: bool = False  # params_key holds a list: one merge per value (the method's headline knob)
    flag: str = ""  # CLI flag; default "--" + name with dashes

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def attr(self) -> str | None:
        """The field of :class:`~vlmerge_core.config.MergeConfig` (``merge.ratios`` -> ``ratios``)."""
        return self.params_key.split(".", 1)[1] if self.params_key else None

    def range_text(self) -> str:
        if self.choices:
            return "{" + ", ".join(self.choices) + "}"
        if self.lo is None and self.hi is None:
            return ""
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"[{lo}, {hi}{')' if self.hi_open else ']'}"

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to the knob's type; :class:`MergeError` naming ``where`` if out of range."""
        try:
            v = self.type(value)
        except (TypeError, ValueError):
            raise MergeError(f"{where}: {self.name} must be {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and v not in self.choices:
            raise MergeError(f"{where}: {self.name} must be one of {list(self.choices)}, got {v!r}")
        if isinstance(v, (int, float)):
            bad = isinstance(v, float) and not math.isfinite(v)
            bad = bad or (self.lo is not None and v < self.lo)
            bad = bad or (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))
            if bad:
                raise MergeError(f"{where}: {self.name} must be in {self.range_text()}, got {v!r}")
        return v


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method (see the module docstring)."""

    name: str  # registry key, used by the CLI and the params
    fn: Callable[..., Tensor]  # fn(experts, *, name, ...) -> merged tensor
    reference: str  # the paper the method comes from
    needs_central: bool = False  # needs the seed ("central") weights
    needs_grams: bool = False  # needs per-expert Gram matrices of linear inputs
    task_dependent: bool = False  # its expert choice follows the task whatever only_used_experts
    symmetric: bool = True  # the result does not depend on the order of the experts
    knobs: tuple[Knob, ...] = ()  # its parameters
    extra_params: tuple[str, ...] = ()  # programmatic parameters that are not knobs
    bind: Callable[[Sequence[str], dict[str, Any]], dict[str, Any]] | None = None  # knobs -> fn kwargs
    prepare: Callable[..., Any] | None = None  # optional first pass over every group (see unify)

    def __call__(self, experts: Sequence[Tensor], **kwargs: Any) -> Tensor:
        return self.fn(experts, **kwargs)

    @property
    def sweep_knob(self) -> Knob | None:
        """The knob swept by the params (one merged checkpoint per value), if any."""
        return next((k for k in self.knobs if k.sweep), None)

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise MergeError(f"merge method {self.name!r} has no knob {name!r}")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The given (non-None) parameters, checked against the knobs; unknown ones are refused."""
        allowed = {k.name for k in self.knobs} | set(self.extra_params)
        given = {k: v for k, v in params.items() if v is not None}
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise MergeError(
                f"merge method {self.name!r} does not take {unknown}; it takes {sorted(allowed)}"
            )
        return {
            k: (self.knob(k).check(v, self.name) if k not in self.extra_params else v)
            for k, v in given.items()
        }


METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str,
    reference: str,
    *,
    needs_central: bool = False,
    needs_grams: bool = False,
    task_dependent: bool = False,
    symmetric: bool = True,
    knobs: Sequence[Knob] = (),
    extra_params: Sequence[str] = (),
    bind: Callable[[Sequence[str], dict[str, Any]], dict[str, Any]] | None = None,
    prepare: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a merge function under ``name``; the declaration is checked against its signature.

    Every knob must be a keyword-only parameter of the function with the knob's default (unless a
    ``bind`` hook translates it), and at most one knob is swept.
    """

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        sig = inspect.signature(fn).parameters
        for k in knobs:
            p = sig.get(k.name)
            if bind is None and (p is None or p.kind is not p.KEYWORD_ONLY):
                raise ValueError(f"merge method {name!r}: knob {k.name!r} is not a keyword of {fn.__name__}")
            if p is not None and p.default is not p.empty and p.default != k.default:
                raise ValueError(
                    f"merge method {name!r}: knob {k.name!r} default {k.default!r} differs from "
                    f"{fn.__name__}'s {p.default!r}"
                )
        if sum(k.sweep for k in knobs) > 1:
            raise ValueError(f"merge method {name!r}: more than one swept knob")
        METHODS[name] = MergeMethod(
            name,
            fn,
            reference,
            needs_central,
            needs_grams,
            task_dependent,
            symmetric,
            tuple(knobs),
            tuple(extra_params),
            bind,
            prepare,
        )
        return fn

    return deco


def get_method(name: str | MergeMethod) -> MergeMethod:
    """The registered method ``name``; an unknown name lists the known ones."""
    if isinstance(name, MergeMethod):
        return name
    try:
        return METHODS[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None


# ------------------------------------------------------------------------------ shared helpers
def check_experts(
    experts: Sequence[Tensor], name: str, central: Tensor | None = None, nan: bool = True
) -> None:
    """Raise :class:`MergeError` naming ``name`` on an empty list, shape/dtype mismatch or (``nan``) NaN."""
    if len(experts) == 0:
        raise MergeError(f"{name}: no expert tensors to merge")
    ref = experts[0]
    for i, t in enumerate(experts):
        if not isinstance(t, Tensor):
            raise MergeError(f"{name}: expert {i} is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape:
            raise MergeError(
                f"{name}: tensor size mismatch between experts: "
                f"{tuple(ref.shape)} vs {tuple(t.shape)} (expert {i})"
            )
        if t.dtype != ref.dtype:
            raise MergeError(f"{name}: dtype mismatch between experts: {ref.dtype} vs {t.dtype} (expert {i})")
        if nan and t.is_floating_point() and has_nan(t):
            raise MergeError(f"{name}: expert {i} contains NaN")
    if central is not None:
        if central.shape != ref.shape:
            raise MergeError(
                f"{name}: central tensor has shape {tuple(central.shape)}, experts have "
                f"{tuple(ref.shape)} (central checkpoint of another architecture?)"
            )
        if nan and central.is_floating_point() and has_nan(central):
            raise MergeError(f"{name}: central tensor contains NaN")


def lambdas(lam: float | Sequence[float], n: int, name: str) -> list[float]:
    """One finite scale per expert from a number or a sequence."""
    lams = [float(lam)] * n if isinstance(lam, (int, float)) else [float(x) for x in lam]
    if len(lams) != n or any(not math.isfinite(x) for x in lams):
        raise MergeError(f"{name}: lambda must be a finite number or one per expert, got {lam}")
    return lams


def f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


SLICE = 1 << 15  # entries per slice of an element-wise merge (see by_slices)


def by_slices(
    experts: Sequence[Tensor], name: str, body: Callable[[slice], Tensor], central: Tensor | None = None
) -> Tensor:
    """The merged tensor built slice by slice: ``body(s)`` merges the flat entries ``s`` in float64.

    For element-wise methods, whose every output entry is the same operations on the inputs at that
    entry, so the result is the whole-tensor one bit for bit. A slice of :data:`SLICE` entries is
    below torch's parallel grain size: each op runs on this thread, on float64 temporaries that stay
    in cache, with no allocation of whole-tensor temporaries and no wait for other threads (on a
    loaded machine a two-thread op on a whole tensor was 7x slower than this). Each slice is cast
    back and checked by :func:`finish`.
    """
    out = torch.empty(experts[0].shape, dtype=experts[0].dtype)
    flat = out.view(-1)
    n = flat.numel()
    for a in range(0, n, SLICE):
        s = slice(a, min(a + SLICE, n))
        flat[s] = finish(body(s), experts, name, central)
    return out


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` (a new tensor unless ``t`` has it), converted slice by slice (see :func:`by_slices`)."""
    if t.dtype == dtype:
        return t
    out = torch.empty(t.shape, dtype=dtype)
    src, dst = t.detach().reshape(-1), out.view(-1)
    for a in range(0, dst.numel(), SLICE):
        dst[a : a + SLICE] = src[a : a + SLICE]
    return out


_SUM_CHUNK = 1 << 18  # entries of one numpy partial sum of chunk_sums (1-2 MiB: in cache)


def chunk_sums(t: Tensor) -> Iterator[float]:
    """The sums of ``t``'s flat chunks (a NaN or inf makes its chunk's sum NaN or inf): float32 and
    float64 in numpy, :data:`_SUM_CHUNK` entries at a time on this thread (a pass at memory speed,
    where torch's per-slice sums cost a dispatch and a sync each); other dtypes in torch by slices."""
    f = t.detach().reshape(-1)
    if f.dtype not in (torch.float32, torch.float64) or f.device.type != "cpu":
        yield from (float(f[a : a + SLICE].sum()) for a in range(0, f.numel(), SLICE))
        return
    x = f.numpy()
    for a in range(0, x.size, _SUM_CHUNK):
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf is a NaN sum, no warning
            s = float(np.add.reduce(x[a : a + _SUM_CHUNK]))
        yield s


def has_nan(t: Tensor) -> bool:
    """Whether ``t`` holds a NaN: summed chunk by chunk first (:func:`chunk_sums`), with no boolean
    temporary; only a NaN sum (a NaN, or inf - inf) calls the element-wise test."""
    if not any(math.isnan(s) for s in chunk_sums(t)):
        return False
    return bool(torch.isnan(t).any())


def flat(t: Tensor) -> Tensor:
    """``t`` flattened (a view of a contiguous tensor), detached."""
    return t.detach().reshape(-1)


def finish(out: Tensor, experts: Sequence[Tensor], name: str, central: Tensor | None = None) -> Tensor:
    """Cast back to the experts' dtype; NaN in the output (0 * NaN is NaN) means a NaN input: name it."""
    if torch.isnan(out.sum()) and torch.isnan(out).any():  # a reduction first: no bool temporary
        check_experts(experts, name, central)
        raise MergeError(f"{name}: merged tensor contains NaN")
    return out.to(experts[0].dtype)
