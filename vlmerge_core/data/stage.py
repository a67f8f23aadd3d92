"""The data stage as one call, for the ``01_data`` notebook and the ``vlmerge data`` command."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from vlmerge_core.config import Params, load_params, profile_params
from vlmerge_core.data.fixtures import fixture_paths, write_fixtures
from vlmerge_core.data.layout import WORLD_FORMAT, run_info_path
from vlmerge_core.data.real_stats import real_stats
from vlmerge_core.data.world import World, generate_world, load_world
from vlmerge_core.io import read_json, write_json, write_run_info
from vlmerge_core.paths import resolve

FIXTURES_FORMAT = "vlmerge-fixtures-1"  # fixtures.json's format tag


@dataclasses.dataclass
class FixtureSet:
    """Real-format datasets the data stage wrote (the rehearsal's fixtures under ``root``) or read
    (``data.source: real``: the paper's, at ``finetune.real_paths``), with their statistics."""

    root: Path
    paths: dict[str, Path]  # dataset -> folder (finetune.real_paths keys, arrows, tokenizer, beit)
    stats: dict[str, Any]  # counts and chance levels (real_stats)


log = logging.getLogger(__name__)


def run_data_stage(
    profile: str = "smoke",
    params_file: str = "",
    out_dir: str = "",
    metrics_out: str = "",
    force: bool = False,
) -> World | FixtureSet:
    """Generate (or reuse) the micro-world (``data.source: fixtures``: the real-format fixtures) and optionally copy its statistics to a metrics file.

    Args:
        profile: params profile used when ``params_file`` is empty.
        params_file: params file, relative to the repo root; when given, the world goes to its
            ``data.root`` (unless ``out_dir`` is given too).
        out_dir: output folder relative to the repo root; empty = ``data.root`` of the params.
        metrics_out: when non-empty, ``stats.json`` is also written there (relative to the repo root).
        force: regenerate even when the folder already holds a world of the same parameters.
    """
    params = load_params(params_file) if params_file else profile_params(profile)
    cfg = params.data
    out = resolve(out_dir or cfg.root)
    if cfg.source == "fixtures":
        return fixtures_stage(params, out, metrics_out, force)
    if cfg.source == "real":
        return real_data_stage(params, out, metrics_out)
    meta = read_json(out / "meta.json") if (out / "meta.json").exists() else {}
    same = (
        (out / "stats.json").exists()
        and meta.get("format") == WORLD_FORMAT
        and meta.get("config") == dataclasses.asdict(cfg)  # a world of older field names is regenerated
    )
    if force or not same:
        generate_world(cfg, out)
    else:
        log.info("reusing the micro-world in %s (same parameters)", out)
    world = load_world(out)
    if metrics_out:
        write_json(resolve(metrics_out), world.stats)
    return world


def fixtures_stage(params: Params, out: Path, metrics_out: str = "", force: bool = False) -> FixtureSet:
    """Write (or reuse) the real-format fixtures of ``params`` under ``out`` and their statistics.

    The fixtures' BEiT checkpoint is sized by ``params.model``; ``fixtures.json`` records the seed and
    that config, and a folder written with other ones is written again.
    """
    cfg = params.data
    want = {"format": FIXTURES_FORMAT, "seed": cfg.rng_seed, "model": dataclasses.asdict(params.model)}
    meta = out / "fixtures.json"
    if force or not meta.exists() or read_json(meta) != want:
        t0 = time.perf_counter()
        write_fixtures(out, cfg.rng_seed, params.model)
        write_json(meta, want)
        write_run_info(run_info_path(out), cfg, generation_seconds=round(time.perf_counter() - t0, 3))
    else:
        log.info("reusing the fixtures in %s (same seed and model)", out)
    return _real_set(params, out, fixture_paths(out), metrics_out)


def real_data_stage(params: Params, out: Path, metrics_out: str = "") -> FixtureSet:
    """The paper's datasets (``finetune.real_paths``) read for their statistics; nothing is written
    but ``<out>/stats.json`` (and ``metrics_out``), so a missing or malformed dataset fails here first."""
    t0 = time.perf_counter()
    paths = {k: resolve(v) for k, v in params.finetune.real_paths.items() if v}
    data = _real_set(params, out, paths, metrics_out)
    write_run_info(run_info_path(out), params.data, read_seconds=round(time.perf_counter() - t0, 3))
    return data


def _real_set(params: Params, out: Path, paths: dict[str, Path], metrics_out: str) -> FixtureSet:
    """The statistics of the real-format datasets at ``paths``, written to ``<out>/stats.json`` (and
    ``metrics_out``)."""
    stats = real_stats(paths, params.data.image_size, params.finetune)
    write_json(out / "stats.json", stats)
    if metrics_out:
        write_json(resolve(metrics_out), stats)
    return FixtureSet(root=out, paths=paths, stats=stats)


def world_summary(world: World | FixtureSet) -> dict:
    """A few headline numbers of a world (for a notebook or CLI line)."""
    if isinstance(world, FixtureSet):
        return {"root": str(world.root), "datasets": sorted(world.paths), **world.stats["counts"]}
    st = world.stats
    info_path = run_info_path(world.root)
    seconds = read_json(info_path).get("generation_seconds") if info_path.exists() else None
    return {
        "root": str(world.root),
        "train_images": st["counts"]["train"]["images"],
        "vocab_size": st["counts"]["vocab_size"],
        "megabytes": round(st["total_bytes"] / 1e6, 2),
        "generation_seconds": seconds,
    }
