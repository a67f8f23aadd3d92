"""Generate the micro-world once into a folder, and read it back as a :class:`World`.

Layout of a world folder (all bytes deterministic for the generator parameters):
``images_{split}.npy`` uint8 [N,H,W,3], ``masks_{split}.npy`` uint8 [N,H,W], ``labels_{split}.npy``
int64 [N], ``image_only.npy`` uint8 [M,H,W,3], ``codebook.npy`` float32 [K, p*p*3],
``scenes.json`` (scene graphs of every split and of the image-only set), ``captions.json``,
``vqa.json``, ``nlvr2.json``, ``text_cls.json``, ``corpus.json``, ``tokenizer.json``, ``meta.json``
(generator parameters, class names) and ``stats.json`` (sizes, distributions, chance levels).
Generation time and provenance go beside the folder, to ``<folder>.run_info.json``.

Every split and purpose draws from its own RNG stream (``SeedSequence(seed, spawn_key=...)``), and
scenes of val/test (and their texts for the text-only task) are excluded from the other splits, so
that no scene graph repeats across splits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vlmerge_core.config import DataConfig
from vlmerge_core.data import grammar
from vlmerge_core.data.layout import SPLITS, STYLES, WORLD_FORMAT, run_info_path
from vlmerge_core.data.loaders import patchify
from vlmerge_core.data.scenes import (
    COLOURS,
    NUM_IMAGE_CLASSES,
    NUM_SEG_CLASSES,
    SHAPES,
    render_scenes,
    sample_scenes,
    scene_key,
)
from vlmerge_core.data.stats import compute_stats
from vlmerge_core.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_identity, train_tokenizer
from vlmerge_core.io import atomic_write, read_json, write_json, write_run_info
from vlmerge_core.paths import resolve

log = logging.getLogger(__name__)

_STREAM = {"train": 0, "val": 1, "test": 2, "image_only": 3, "corpus": 4}
_PURPOSE = {
    "scenes": 0,
    "render": 1,
    "coco": 2,
    "flickr": 3,
    "vqa": 4,
    "nlvr2": 5,
    "text_cls": 6,
    "corpus": 7,
    "text_noise": 8,
}


def _rng(seed: int, stream: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM[stream], _PURPOSE[purpose])))


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _write_compact_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as fh:
        fh.write(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------- generation
def _alt(rng: np.random.Generator, fn, *args) -> tuple:
    """``fn(rng, *args)`` with paraphrased words and with plain words (same content, same draws)."""
    state = rng.bit_generator.state  # a fresh dict on every access
    rich = fn(rng, *args)
    end = rng.bit_generator.state
    rng.bit_generator.state = state
    with grammar.plain_words():
        plain = fn(rng, *args)
    assert rng.bit_generator.state == end, "plain and rich wording consumed different draws"
    return rich, plain


def _nlvr2(rng: np.random.Generator, scenes: list[dict], n: int) -> list[dict]:
    """``n`` image pairs with statements, balanced over (statement kind, label)."""
    cells = [(k, lab) for k in grammar.NLVR2_KINDS for lab in (False, True)]
    out = []
    for c in rng.permutation(np.arange(n) % len(cells)).tolist():
        kind, target = cells[c]
        k0 = grammar.NLVR2_KINDS.index(kind)
        # a tiny split may lack pairs for a (kind, label); then fall back to the next kinds in turn
        for kind in grammar.NLVR2_KINDS[k0:] + grammar.NLVR2_KINDS[:k0]:
            for _ in range(2000):
                left, right = rng.choice(len(scenes), size=2, replace=len(scenes) < 2).tolist()
                state = rng.bit_generator.state
                text, truth = grammar.nlvr2_statement(rng, scenes[left], scenes[right], kind)
                if truth == target:  # redo from the same state to get the plain wording too
                    rng.bit_generator.state = state
                    (text, truth), (plain, _) = _alt(
                        rng, grammar.nlvr2_statement, scenes[left], scenes[right], kind
                    )
                    break
            if truth == target:
                break
        out.append({"left": left, "right": right, "statement": (text, plain), "label": truth, "kind": kind})
    return out


def _text_cls(
    rng: np.random.Generator,
    n: int,
    split: str,
    taken: set[str],
    noise: float,
    noise_rng: np.random.Generator,
) -> list[dict]:
    """``n`` sentences balanced over the colours, none of them in ``taken`` (other splits); synonyms
    name the colours outside the training split (:func:`grammar.text_cls_item`). A fraction ``noise``
    of the labels, drawn from ``noise_rng``, is another class (annotator error, as in every GLUE set:
    it keeps the best accuracy below the ceiling); ``kind`` keeps the sentence's true colour."""
    out = []
    for c in rng.permutation(np.arange(n) % len(grammar.TEXT_LABELS)).tolist():
        shape = grammar.TEXT_LABELS[c]
        for _ in range(10_000):
            (text, label), (plain, _) = _alt(rng, grammar.text_cls_item, shape, split != "train")
            if text not in taken and plain not in taken:
                break
        else:
            raise ValueError("text_cls: cannot draw a sentence unseen in other splits; lower the split sizes")
        if noise_rng.random() < noise:
            label = (label + 1 + int(noise_rng.integers(len(grammar.TEXT_LABELS) - 1))) % len(
                grammar.TEXT_LABELS
            )
        out.append({"text": (text, plain), "label": int(label), "kind": shape})
    return out


def _caption(rng: np.random.Generator, scene: dict, style: str) -> tuple[str, str, str]:
    (full, compact), (plain, _) = _alt(rng, grammar.caption, scene, style)
    return full, plain, compact


def _vqa(
    rng: np.random.Generator, i: int, scene: dict, annotators: int, agree: float, max_objects: int
) -> dict:
    """A question with its ground truth ``answer`` and ``annotators`` human-like answers: each the truth
    with probability ``agree``, else another answer of the same question type (VQAv2's ten answers,
    from which the official soft scores are computed)."""
    (q, a, t), (plain, _, _) = _alt(rng, grammar.vqa_item, scene)
    others = [x for x in grammar.answers_of_type(t, max_objects) if x != a]
    answers = [a if rng.random() < agree or not others else others[int(rng.integers(len(others)))]
               for _ in range(annotators)]  # fmt: skip
    return {"image": i, "question": (q, plain), "answer": a, "answers": answers, "qtype": t}


def _draw(cfg: DataConfig) -> dict[str, Any]:
    """All scene graphs and texts; a text is a tuple of candidates (paraphrased, plain, compact)."""
    S, M = cfg.image_size, cfg.max_objects
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    scenes: dict[str, list] = {}
    keys: set = set()
    for split in ("test", "val", "train"):  # held-out splits first; later ones avoid their graphs
        scenes[split] = sample_scenes(_rng(cfg.rng_seed, split, "scenes"), sizes[split], M, S, exclude=keys)
        if split != "train":
            keys |= {scene_key(s) for s in scenes[split]}
    scenes["image_only"] = sample_scenes(
        _rng(cfg.rng_seed, "image_only", "scenes"), cfg.n_image_only, M, S, keys
    )
    corpus_scenes = sample_scenes(_rng(cfg.rng_seed, "corpus", "scenes"), cfg.n_corpus, M, S, keys)

    d: dict[str, Any] = {"scenes": scenes, "captions": {}, "vqa": {}, "nlvr2": {}, "text_cls": {}}
    for style in STYLES:
        d["captions"][style] = {}
        for split in SPLITS:
            rng = _rng(cfg.rng_seed, split, style)
            d["captions"][style][split] = [
                [_caption(rng, sc, style) for _ in range(cfg.captions_per_image)] for sc in scenes[split]
            ]
    taken: set[str] = set()
    for split in ("test", "val", "train"):
        rng = _rng(cfg.rng_seed, split, "vqa")
        d["vqa"][split] = [
            _vqa(rng, i, sc, cfg.vqa_annotators, cfg.vqa_agree, M)
            for i, sc in enumerate(scenes[split])
            for _ in range(cfg.vqa_per_image)
        ]
        d["nlvr2"][split] = _nlvr2(
            _rng(cfg.rng_seed, split, "nlvr2"), scenes[split], cfg.nlvr2_per_image * sizes[split]
        )
        d["text_cls"][split] = _text_cls(
            _rng(cfg.rng_seed, split, "text_cls"),
            cfg.text_cls_per_image * sizes[split],
            split,
            taken,
            cfg.text_label_noise,
            _rng(cfg.rng_seed, split, "text_noise"),
        )
        taken |= {t for x in d["text_cls"][split] for t in x["text"]}
    rng = _rng(cfg.rng_seed, "corpus", "corpus")
    d["corpus"] = [
        _alt(rng, grammar.fact_sentence)
        if rng.random() < 0.1
        else _caption(rng, sc, STYLES[int(rng.integers(2))])
        for sc in corpus_scenes
    ]
    return d


def _candidates(obj: Any) -> list[str]:
    """Every candidate text inside a nested structure (tuples hold candidates)."""
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _candidates(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _candidates(v)]
    return []


def _all_texts(d: dict[str, Any]) -> list[str]:
    texts = _candidates({k: v for k, v in d.items() if k != "scenes"})
    for split in SPLITS:
        texts += [q["answer"] for q in d["vqa"][split]]
    return texts


def _fit(obj: Any, tok, max_len: int, where: str = "") -> Any:
    """Replace every candidate tuple by its first text of at most ``max_len`` tokens."""
    if isinstance(obj, tuple):
        for text in obj:
            if len(tok.encode(text).ids) <= max_len:
                return text
        raise ValueError(
            f"{where}: {obj[-1]!r} has more than max_text_len={max_len} tokens even in its "
            "shortest form; raise data.vocab_size or data.max_text_len"
        )
    if isinstance(obj, dict):
        return {k: _fit(v, tok, max_len, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fit(v, tok, max_len, where) for v in obj]
    return obj


def fit_codebook(images: np.ndarray, patch: int, k: int, seed: int) -> np.ndarray:
    """k-means codebook float32 [k, patch*patch*3] over the normalised patches of ``images``.

    The MIM target of BEiT (Bao et al., 2022) is a discrete visual token; as a stand-in for the
    dVAE tokenizer we quantise patches with k-means (scikit-learn, fixed seed, one thread).
    """
    from sklearn.cluster import KMeans  # heavy, only when a world is generated
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    x = patchify(images.astype(np.float32) / 127.5 - 1.0, patch)  # (N, P, p*p*3)
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if len(x) < k:
        raise ValueError(f"mim_codebook_size={k} is larger than the {len(x)} patches of the image-only set")
    with threadpool_limits(1):
        km = KMeans(n_clusters=k, n_init=2, max_iter=100, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32)


def generate_world(cfg: DataConfig, out_dir: str | Path | None = None) -> Path:
    """Generate the micro-world of ``cfg`` into ``out_dir`` (default: ``resolve(cfg.root)``)."""

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else resolve(cfg.root)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.image_size % cfg.mim_patch:
        raise ValueError(
            f"data.image_size={cfg.image_size} must be divisible by data.mim_patch={cfg.mim_patch}"
        )
    d = _draw(cfg)
    tok = train_tokenizer(_all_texts(d), cfg.vocab_size)
    d = _fit(d, tok, cfg.max_text_len)
    save_tokenizer(tok, out / "tokenizer.json")

    labels = {}
    for split in (*SPLITS, "image_only"):
        images, masks = render_scenes(
            d["scenes"][split], cfg.image_size, _rng(cfg.rng_seed, split, "render"), cfg.noise_std
        )
        if split == "image_only":
            _write_npy(out / "image_only.npy", images)
            _write_npy(
                out / "codebook.npy", fit_codebook(images, cfg.mim_patch, cfg.mim_codebook_size, cfg.rng_seed)
            )
            continue
        labels[split] = np.array([s["label"] for s in d["scenes"][split]], dtype=np.int64)
        _write_npy(out / f"images_{split}.npy", images)
        _write_npy(out / f"masks_{split}.npy", masks)
        _write_npy(out / f"labels_{split}.npy", labels[split])
    _write_compact_json(out / "scenes.json", d["scenes"])
    _write_compact_json(out / "captions.json", d["captions"])
    _write_compact_json(out / "vqa.json", {"answers": grammar.answer_vocab(cfg.max_objects), **d["vqa"]})
    _write_compact_json(out / "nlvr2.json", d["nlvr2"])
    _write_compact_json(out / "text_cls.json", d["text_cls"])
    _write_compact_json(out / "corpus.json", d["corpus"])
    meta = {
        "format": WORLD_FORMAT,
        "config": dataclasses.asdict(cfg),
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "num_image_classes": NUM_IMAGE_CLASSES,
        "num_seg_classes": NUM_SEG_CLASSES,
        "image_class": "shape_index * len(colours) + colour_index of the large object",
        "seg_class": "0 background, 1 + shape_index of the covering object",
    }
    _write_compact_json(out / "meta.json", meta)
    stats = compute_stats(load_world(out))
    write_json(out / "stats.json", stats)
    seconds = time.perf_counter() - t0
    write_run_info(run_info_path(out), cfg, generation_seconds=round(seconds, 3))
    log.info("micro-world written to %s in %.1f s", out, seconds)
    return out


# ---------------------------------------------------------------------------------------- reading
def data_config_of(config: dict[str, Any]) -> DataConfig:
    """The :class:`DataConfig` of a world's ``meta.json`` (a world written before the RNG seed field
    was named ``rng_seed`` stores it as ``seed``; the generated data are the same)."""
    config = dict(config)
    if "seed" in config and "rng_seed" not in config:
        config["rng_seed"] = config.pop("seed")
    return DataConfig(**config)


class World:
    """Read access to a generated micro-world folder (arrays and annotations load lazily)."""

    data_format = "micro"  # what a pre-training run on it read (metrics' data_format)

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = read_json(self.root / "meta.json")
        if self.meta.get("format") != WORLD_FORMAT:
            raise ValueError(
                f"{self.root / 'meta.json'}: format {self.meta.get('format')!r}, expected {WORLD_FORMAT!r}"
            )
        self.config = data_config_of(self.meta["config"])
        self.num_seg_classes: int = self.meta["num_seg_classes"]  # mask values 0..C (background included)
        self.num_image_classes: int = self.meta["num_image_classes"]
        self.tokenizer_path = self.root / "tokenizer.json"
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"World({str(self.root)!r})"

    def _npy(self, name: str) -> np.ndarray:
        if name not in self._cache:
            path = self.root / f"{name}.npy"
            if not path.exists():
                raise FileNotFoundError(f"{path}: world array not found")
            self._cache[name] = np.load(path, allow_pickle=False)
        return self._cache[name]

    def _json(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = read_json(self.root / f"{name}.json")
        return self._cache[name]

    @staticmethod
    def _check(split: str) -> str:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return split

    def images(self, split: str) -> np.ndarray:
        """uint8 [N, H, W, 3]."""
        return self._npy(f"images_{self._check(split)}")

    def masks(self, split: str) -> np.ndarray:
        """uint8 [N, H, W], 0 = background, 1..num_seg_classes-1 = shapes."""
        return self._npy(f"masks_{self._check(split)}")

    def labels(self, split: str) -> np.ndarray:
        """int64 [N] image classes."""
        return self._npy(f"labels_{self._check(split)}")

    def scenes(self, split: str) -> list[dict]:
        """Scene graphs of a split (or of ``"image_only"``)."""
        return self._json("scenes")[split if split == "image_only" else self._check(split)]

    def captions(self, split: str, style: str = "coco") -> list[list[str]]:
        if style not in STYLES:
            raise KeyError(f"unknown caption style {style!r}; expected one of {list(STYLES)}")
        return self._json("captions")[style][self._check(split)]

    def vqa(self, split: str) -> list[dict]:
        return self._json("vqa")[self._check(split)]

    @property
    def answers(self) -> list[str]:
        return self._json("vqa")["answers"]

    def nlvr2(self, split: str) -> list[dict]:
        return self._json("nlvr2")[self._check(split)]

    def text_cls(self, split: str) -> list[dict]:
        return self._json("text_cls")[self._check(split)]

    def text_corpus(self) -> list[str]:
        return self._json("corpus")

    def image_only(self) -> np.ndarray:
        return self._npy("image_only")

    @property
    def tokenizer_identity(self) -> dict:
        """The tokenizer's identity as checkpoints record it (``tokenizer_identity``), computed once."""
        if "tokenizer_identity" not in self._cache:
            name = f"{Path(self.root).name}/tokenizer.json"
            self._cache["tokenizer_identity"] = tokenizer_identity(self.tokenizer(), name)
        return self._cache["tokenizer_identity"]

    @property
    def codebook(self) -> np.ndarray:
        """float32 [K, patch*patch*3] k-means centres of normalised patches (MIM targets)."""
        return self._npy("codebook")

    @cached_property
    def stats(self) -> dict:
        return read_json(self.root / "stats.json")

    def tokenizer(self):
        """The world's tokenizer (``PreTrainedTokenizerFast``), loaded once."""
        if "tokenizer" not in self._cache:
            self._cache["tokenizer"] = load_tokenizer(self.tokenizer_path)
        return self._cache["tokenizer"]


def load_world(root: str | Path) -> World:
    """Open a world folder written by :func:`generate_world`."""
    root = Path(root)
    if not (root / "meta.json").exists():
        raise FileNotFoundError(f"{root}: not a micro-world folder (no meta.json); run `vlmerge data` first")
    return World(root)


def ensure_world(data_cfg: DataConfig, root: str | Path | None = None) -> World:
    """Open the micro-world at ``root`` (default ``data_cfg.root``, from the repo root), generating it
    first if missing."""

    folder = resolve(root or data_cfg.root)
    if not (folder / "meta.json").exists():
        log.info("generating the micro-world into %s", folder)
        generate_world(data_cfg, folder)
    return load_world(folder)
