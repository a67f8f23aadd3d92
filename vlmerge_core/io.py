"""Atomic writes, deterministic JSON, safetensors checkpoints and run provenance.

Every file the suite writes goes through :func:`atomic_write`: the bytes go to a temporary file in
the same folder, are flushed and fsynced, then renamed over the target, so a crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata as md
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vlmerge_core.paths import repo_root

JSON_DIGITS = 6


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path of ``path`` to write to; fsynced and renamed over ``path`` on success.

    For writers that want a path (e.g. ``safetensors.save_file``). On an exception inside the block
    the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing (:func:`atomic_path`); rename it over ``path``
    on success.

    On an exception inside the block the temporary file is removed and ``path`` is untouched.
    """
    binary = "b" in mode
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if binary else encoding) as fh:
        yield fh


def _round(obj: Any, digits: int) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return None
        return round(obj, digits)
    if isinstance(obj, Mapping):
        return {str(k): _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _round(obj.item(), digits)
    if hasattr(obj, "tolist"):
        return _round(obj.tolist(), digits)
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def dumps_json(obj: Any, digits: int = JSON_DIGITS) -> str:
    """Deterministic JSON: sorted keys, floats rounded to ``digits``, NaN/inf as null, newline."""
    return json.dumps(_round(obj, digits), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj: Any, digits: int = JSON_DIGITS) -> Path:
    """Write ``obj`` as deterministic JSON, atomically."""
    with atomic_write(path) as fh:
        fh.write(dumps_json(obj, digits))
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or corrupt file raises an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None


# -------------------------------------------------------------------------------------- checkpoints
_ST_DTYPES = {  # torch dtype name -> safetensors dtype tag
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def safetensors_layout(
    path: str | Path, specs: Mapping[str, tuple[torch.dtype, Any]], metadata: Mapping[str, Any] | None
) -> tuple[bytes, dict[str, int]]:
    """The first bytes of the safetensors file of tensors ``{name: (dtype, shape)}`` (header length,
    header) and each tensor's byte offset in it, in file order: the layout of :func:`save_safetensors`
    (also written tensor by tensor, :mod:`vlmerge_core.merge.writer`). ``metadata`` values that are not
    strings are stored as JSON strings. The header's keys are sorted, and the tensors are laid out by
    decreasing element size, then name (each stays aligned to its element size, as ``save_file``
    does), the data 8-byte aligned."""
    meta = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()
    }
    tags = {name: _ST_DTYPES.get(str(dtype).removeprefix("torch.")) for name, (dtype, _) in specs.items()}
    for name, tag in tags.items():
        if tag is None:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {specs[name][0]}, which safetensors cannot store"
            )
    itemsize = {name: torch.empty(0, dtype=dtype).element_size() for name, (dtype, _) in specs.items()}
    order = sorted(specs, key=lambda k: (-itemsize[k], k))
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    offset = 0
    for name in order:
        shape = specs[name][1]
        size = math.prod(shape) * itemsize[name]
        header[name] = {"dtype": tags[name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    head = len(text).to_bytes(8, "little") + text
    return head, {name: len(head) + header[name]["data_offsets"][0] for name in order}


def save_safetensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save a flat ``{name: tensor}`` dict as safetensors, atomically and byte-deterministically.

    Written here, not by ``safetensors.save_file``, whose header follows a hash map's order (so two
    saves of the same tensors differ in bytes between processes): the layout is
    :func:`safetensors_layout`'s (sorted header keys). Any safetensors reader reads the result.
    """

    flat = {name: t.detach() for name, t in tensors.items()}
    head, offsets = safetensors_layout(path, {n: (t.dtype, t.shape) for n, t in flat.items()}, metadata)
    with atomic_write(path, "wb") as fh:
        fh.write(head)
        for name in offsets:  # in file order
            t = flat[name].cpu().contiguous().reshape(-1)
            if t.numel():
                fh.write(t.view(torch.uint8).numpy().data)
    return Path(path)


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensor is read)."""

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def load_safetensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load every tensor and the metadata of a safetensors file; errors name the file."""

    meta = read_safetensors_metadata(path)
    try:
        return load_file(str(path), device=device), meta
    except Exception as exc:
        raise ValueError(f"{path}: corrupt safetensors file ({exc})") from None


# ------------------------------------------------------------------------------------- provenance
def git_sha(root: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        cwd = str(root) if root else None
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the interpreter and the main libraries."""

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "timm", "transformers", "tokenizers", "safetensors", "numpy", "vlmerge"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_info(path: str | Path, config: Any, **extra: Any) -> Path:
    """Write ``run_info.json`` beside results: resolved config, git sha, versions, extra fields.

    Kept apart from metrics files so that metrics stay deterministic.
    """

    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    info = {
        "config": cfg,
        "git_sha": git_sha(repo_root()),
        "versions": versions(),
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    return write_json(path, info)
