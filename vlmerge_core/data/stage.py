"""The data stage as one call, for the ``01_data`` notebook and the ``vlmerge data`` command."""

from __future__ import annotations

import dataclasses
import logging

from vlmerge_core.config import load_params, profile_params
from vlmerge_core.data.layout import WORLD_FORMAT, run_info_path
from vlmerge_core.data.world import World, generate_world, load_world
from vlmerge_core.io import read_json, write_json
from vlmerge_core.paths import resolve

log = logging.getLogger(__name__)


def run_data_stage(
    profile: str = "smoke",
    params_file: str = "",
    out_dir: str = "",
    metrics_out: str = "",
    force: bool = False,
) -> World:
    """Generate (or reuse) the micro-world and optionally copy its statistics to a metrics file.

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


def world_summary(world: World) -> dict:
    """A few headline numbers of a world (for a notebook or CLI line)."""
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
