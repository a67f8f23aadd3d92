"""The layout of a micro-world folder: splits, caption styles, format tag and file names.

Read by the generator (:mod:`vlmerge_core.data.world`) and by the statistics
(:mod:`vlmerge_core.data.stats`), which therefore do not import each other.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SPLITS", "STYLES", "WORLD_FORMAT", "run_info_path", "world_files"]

SPLITS = ("train", "val", "test")
STYLES = ("coco", "flickr")  # caption styles: COCO-like (short) and Flickr30k-like (longer)
WORLD_FORMAT = "vlmerge-world-v1"  # "format" of a world's meta.json (checkpoints: model.checkpoint.FORMAT)


def run_info_path(root: str | Path) -> Path:
    """Provenance of a world (``<root>.run_info.json``), kept beside the folder, not in it, so that the
    folder's bytes, and hence its DVC hash, depend on the parameters alone."""
    root = Path(root)
    return root.with_name(root.name + ".run_info.json")


def world_files() -> list[str]:
    """Names of the deterministic files of a world folder (all but ``stats.json``)."""
    names = [f"{k}_{s}.npy" for k in ("images", "masks", "labels") for s in SPLITS]
    names += ["image_only.npy", "codebook.npy", "tokenizer.json", "meta.json"]
    return sorted(names + [f"{k}.json" for k in ("scenes", "captions", "vqa", "nlvr2", "text_cls", "corpus")])
