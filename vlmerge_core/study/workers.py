"""Run a stage's independent units side by side: ``workers`` spawned processes, one torch thread each.

On 2 CPU cores two one-thread processes do more work per second than one process on two threads (a
micro pre-training step: 0.21 s against 0.29 s; ``benchmarks/throughput.py``), and two processes of
two threads each are 5-30x slower than one. Units are submitted costliest first (longest processing
time first), so no worker is left with a long unit while the other idles at the end; results come back
in the order of the units. Every unit is seeded, so the results do not depend on the order or on the
number of workers (tested); only the wall time does.

A unit may be cached: :func:`cached` keeps its result as JSON under ``runs/cache/<kind>/<key>.json``,
``key`` a hash of everything the result depends on (the unit's arguments and the bytes of its input
files), so re-running a stage after an interruption redoes only the missing units.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.config import StudyConfig
from vlmerge_core.io import dumps_json, read_json, write_json
from vlmerge_core.paths import resolve
from vlmerge_core.study.launch import run_launched

log = logging.getLogger(__name__)

CACHE = "runs/cache"  # from the repo root; not a DVC output, so it survives a stage's re-run


def lpt_order(costs: Sequence[float]) -> list[int]:
    """Indices of ``costs``, costliest first; equal costs keep their order (a stable sort)."""
    return sorted(range(len(costs)), key=lambda i: -costs[i])


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)


def run_units(
    fn: Callable[[Any], Any],
    units: Sequence[Any],
    workers: int,
    costs: Sequence[float] | None = None,
    launch: StudyConfig | None = None,
) -> list:
    """``[fn(u) for u in units]``, on ``workers`` processes when there are several (``fn`` and the
    units must pickle: a module-level function and plain data); with ``launch.launcher ==
    "torchrun"``, each unit in turn as one ``torchrun`` job (:mod:`vlmerge_core.study.launch`)."""
    if launch is not None and launch.launcher == "torchrun":
        return run_launched(fn, units, launch)
    if workers <= 1 or len(units) <= 1:
        return [fn(u) for u in units]
    order = lpt_order(costs or [1.0] * len(units))
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        done = dict(zip(order, pool.map(fn, [units[i] for i in order])))
    return [done[i] for i in range(len(units))]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (``random:<seed>`` and missing paths hash their name).

    Memoised per process on the file's identity (path, size, mtime, inode): a worker reads each
    checkpoint once, not once per task fine-tuned from it.
    """
    p = Path(path)
    if str(path).startswith("random:") or not p.is_file():
        return hashlib.sha256(str(path).encode()).hexdigest()
    st = p.stat()
    return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def unit_key(kind: str, spec: Any, files: Sequence[str | Path] = ()) -> str:
    """A key of a unit: its JSON spec and the digests of its input files."""
    blob = json.dumps(
        {"kind": kind, "spec": spec, "files": [file_digest(resolve(f)) for f in files]}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached(kind: str, key: str, compute: Callable[[], Any], use_cache: bool = True) -> Any:
    """The cached result of a unit, or ``compute()`` written to the cache (atomically). Either way the
    result is what its JSON reads back as (rounded floats), so a stage gives the same bytes whether a
    unit came from the cache or not."""
    path = resolve(CACHE) / kind / f"{key}.json"
    if use_cache and path.exists():
        try:
            return read_json(path)
        except (OSError, ValueError):  # a corrupt entry is recomputed
            log.warning("%s: unreadable cache entry, recomputing", path)
    result = json.loads(dumps_json(compute()))
    if use_cache:
        write_json(path, result)
    return result
