"""Streaming merge of safetensors checkpoints: MS file -> MA file, one tensor group at a time.

The MS checkpoint, the central checkpoint and the Gram file are read tensor by tensor (positioned
reads; the Gram matrices mapped from the page cache, see :func:`open_tensors`), and each merged
tensor goes to its place in the output file as soon as it is made
(:func:`~vlmerge_core.merge.writer.streamed_safetensors`: the layout is planned from the MS header,
a writer thread writes while the next group is merged), so the peak memory is about the tensors of
a few groups, and the output's bytes are those of ``save_safetensors``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.io import read_safetensors_metadata
from vlmerge_core.merge.methods import MergeError
from vlmerge_core.merge.unify import check_finite, iter_unified, unified_outputs
from vlmerge_core.merge.writer import streamed_safetensors
from vlmerge_core.model.checkpoint import FORMAT, model_config_from_meta

log = logging.getLogger(__name__)


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@contextlib.contextmanager
def open_tensors(
    path: str | Path | None, what: str, *, mapped: bool = False
) -> Iterator[tuple[Callable[[str], Tensor] | None, list[str]]]:
    """Open a safetensors file lazily: yields ``(get(key) -> Tensor, keys)``; ``(None, [])`` for None.

    Tensors are read with plain positioned reads into their own memory, not through ``safe_open``:
    safetensors >= 0.6 returns zero-copy views of one memory map of the whole file, and every page
    of the file that a merge reads would then stay resident until the file is closed (the whole input
    in the peak RSS). ``mapped``: each tensor is instead a private mapping of its own bytes
    (:func:`_mapped`), unmapped when the tensor is freed: no copy out of the page cache (RegMean's
    2.3 GB of ViT-B Gram matrices: 1.2 s of copying), and only the tensors alive are resident.
    """
    if path is None:
        yield None, []
        return
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} checkpoint not found")
    with open(path, "rb") as fh:
        try:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        base, size = 8 + n, path.stat().st_size
        keys = list(header)

        def get(key: str) -> Tensor:
            """Tensor ``key``, read on its own."""
            if key not in header:
                raise KeyError(f"{path}: no tensor {key}")
            entry = header[key]
            start, end = entry["data_offsets"]
            dtype = _DTYPES.get(entry["dtype"])
            if dtype is None or base + end > size:
                raise ValueError(
                    f"{path}: tensor {key}: unsupported dtype {entry['dtype']} or truncated file"
                )
            if mapped and end > start:
                return _mapped(fh.fileno(), base + start, end - start).view(dtype).reshape(entry["shape"])
            buf = torch.empty(end - start, dtype=torch.uint8)  # no zero fill
            got = os.preadv(fh.fileno(), [buf.numpy()], base + start) if end > start else 0
            if got != end - start:
                raise ValueError(f"{path}: tensor {key}: short read ({got} of {end - start} bytes)")
            return buf.view(dtype).reshape(entry["shape"])

        get.has = header.__contains__  # whether the file holds a tensor, without reading it

        def spec(key: str) -> tuple[torch.dtype, list[int]]:
            """``(dtype, shape)`` of tensor ``key``, from the header (nothing read)."""
            if key not in header:
                raise KeyError(f"{path}: no tensor {key}")
            if header[key]["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {key}: unsupported dtype {header[key]['dtype']}")
            return _DTYPES[header[key]["dtype"]], list(header[key]["shape"])

        get.spec = spec
        yield get, keys


_MADV_POPULATE_READ = 22  # linux/mman.h (5.14); not in Python's mmap module before 3.14


def _mapped(fd: int, offset: int, length: int) -> Tensor:
    """``length`` bytes of file ``fd`` from ``offset`` as a uint8 tensor over a private, copy-on-write
    mapping of them (a write changes the tensor, never the file), its page-cache pages mapped up
    front by one call (``MADV_POPULATE_READ``; ``MAP_POPULATE`` would copy every page of a writable
    private mapping), not by a fault per page. The mapping lives as long as the tensor."""
    lead = offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(
        fd,
        length + lead,
        flags=mmap.MAP_PRIVATE,
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
        offset=offset - lead,
    )
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # Linux < 5.14: the pages are mapped on first touch instead
            mm.madvise(_MADV_POPULATE_READ)
    return torch.from_numpy(np.frombuffer(mm, dtype=np.uint8, count=length, offset=lead))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block: a merge makes thousands of short-lived
    tensors (freed by reference counting) and no cycles, and each collection walked every object
    torch's import made (about 8% of a ViT-B TIES merge's CPU time, ``perf``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ma_metadata(ms_meta: dict[str, str], path: str | Path, merge_info: dict[str, Any]) -> dict[str, Any]:
    """Metadata of the merged MA checkpoint: the MS model_config with ``ms_components: []``, its tokenizer."""
    cfg = model_config_from_meta(ms_meta, path)
    cfg["ms_components"] = []
    return {
        "model_config": json.dumps(cfg, sort_keys=True),
        "kind": "ma",
        "format": FORMAT,
        "merge": json.dumps(merge_info, sort_keys=True),
        **({"tokenizer": ms_meta["tokenizer"]} if ms_meta.get("tokenizer") else {}),
    }


def _checked(
    get: Callable[[str], Tensor] | None, source: str, seen: set[str]
) -> Callable[[str], Tensor] | None:
    """``get`` that refuses a tensor with a non-finite value (naming ``source`` and the key)."""
    if get is None:
        return None

    def checked_get(key: str) -> Tensor:
        t = get(key)
        if key not in seen:
            check_finite(t, key, source)
            seen.add(key)
        return t

    if hasattr(get, "has"):
        checked_get.has = get.has
    return checked_get


def _check_central_is_ma(central_path: str | Path | None) -> None:
    """Refuse a modality-specific checkpoint given as the central (seed) one."""
    if central_path is None:
        return
    c_meta = read_safetensors_metadata(central_path)
    if c_meta.get("kind") == "ms" or (
        c_meta.get("model_config") and model_config_from_meta(c_meta, central_path).get("ms_components")
    ):
        raise MergeError(
            f"{central_path}: the central checkpoint must be modality-agnostic (MA), it is modality-specific"
        )


@contextlib.contextmanager
def _checked_inputs(
    ms_path: str | Path, central_path: str | Path | None, gram_path: str | Path | None
) -> Iterator[tuple[list[str], Callable[[str], Tensor], Callable | None, Callable | None]]:
    """Open the MS, central and Gram files: yields ``(ms keys, get_ms, get_central, get_gram)``.

    Each input tensor is checked finite once, when first read; on leaving the block (without an
    error) every tensor that nothing read (unused experts, unused Gram matrices) is read and checked too.
    """
    with (
        open_tensors(ms_path, "MS") as (get, keys),
        open_tensors(central_path, "central") as (get_c, c_keys),
        open_tensors(gram_path, "Gram", mapped=True) as (get_g, g_keys),
    ):
        sources = [
            (str(ms_path), get, keys),
            (str(central_path), get_c, c_keys),
            (str(gram_path), get_g, g_keys),
        ]
        seen: list[set[str]] = [set(), set(), set()]
        get_ms, get_central, get_gram = (_checked(g, src, sn) for (src, g, _), sn in zip(sources, seen))
        yield keys, get_ms, get_central, get_gram
        for (src, g, ks), sn in zip(sources, seen):  # every other tensor of every input: no NaN/inf
            for k in ks if g is not None else ():
                if k not in sn:
                    check_finite(g(k), k, src)


def merge_checkpoint(
    ms_path: str | Path,
    out_path: str | Path,
    method: str,
    *,
    central_path: str | Path | None = None,
    gram_path: str | Path | None = None,
    vl_start: int | None = None,
    task: str | None = None,
    only_used_experts: bool = False,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
    extra_info: Mapping[str, Any] | None = None,
    drop_gramless: bool = False,
    **method_params: Any,
) -> Path:
    """Merge the MS checkpoint ``ms_path`` into an MA checkpoint at ``out_path`` (atomic write).

    ``vl_start`` defaults to the one in the checkpoint's ``model_config``. The output carries the
    MS ``model_config`` with ``ms_components: []`` (loads with ``load_model`` as MA), ``kind: ma``
    and a ``merge`` record (method, parameters, task, experts, plus ``extra_info``). Other arguments
    as :func:`~vlmerge_core.merge.unify.unify_state_dict`.

    Raises:
        MergeError: the MS file holds no expert tensor, the central file is MS, or any tensor of any
            input file (pass-through tensors included) holds NaN/inf; the message names the file
            and tensor, and nothing is written (an existing ``out_path`` is left untouched).
    """
    ms_meta = read_safetensors_metadata(ms_path)
    if vl_start is None:
        vl_start = int(model_config_from_meta(ms_meta, ms_path)["vl_start"])
    _check_central_is_ma(central_path)
    info = {
        "method": method,
        "params": {k: v for k, v in method_params.items() if v is not None},
        "task": task,
        "only_used_experts": only_used_experts,
        "experts": list(experts) if experts else None,
        "unimodal_paths": unimodal_paths,
        "source": Path(ms_path).name,
        "central": Path(central_path).name if central_path else None,
        **(extra_info or {}),
        **({"drop_gramless": True} if drop_gramless else {}),  # recorded only when on (same bytes off)
    }
    rule = {"task": task, "only_used_experts": only_used_experts, "experts": experts}
    with open_tensors(ms_path, "MS") as (get, keys):  # the output's layout, from the MS header
        outputs = unified_outputs(
            keys, method, vl_start=vl_start, source=str(ms_path), unimodal_paths=unimodal_paths, **rule
        )
        specs = {name: get.spec(key) for name, key in outputs.items()}
    # the inputs close (and every tensor nothing read is checked finite) before the output is renamed
    with (
        _gc_paused(),
        streamed_safetensors(out_path, specs, ma_metadata(ms_meta, ms_path, info)) as out,
        _checked_inputs(ms_path, central_path, gram_path) as (keys, get_ms, get_central, get_gram),
    ):
        for name, tensor in iter_unified(
            keys, get_ms, method, get_central=get_central, get_gram=get_gram, source=str(ms_path),
            vl_start=vl_start, unimodal_paths=unimodal_paths, drop_gramless=drop_gramless,
            **rule, **method_params,
        ):  # fmt: skip
            out.put(name, tensor)
    log.info("merged %s by %s: %d tensors", ms_path, method, len(specs))
    return Path(out_path)
