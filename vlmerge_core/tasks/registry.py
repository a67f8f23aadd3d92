"""The task registry and the one entry point of a fine-tuning: :func:`finetune_task`.

``finetune_task(task, backbone, cfg, world)`` loads an MS, MA or merged MA checkpoint with
``load_model`` (or builds a seeded random model from ``"random:<rng_seed>"``, or copies a model
object; the caller's model is never changed), builds the task (data adapter for the micro-world, or
the real dataset when ``cfg.real_paths[task]`` is set, and the head), fine-tunes with
:func:`~vlmerge_core.tasks.engine.run_finetune` under the task's resolved config
(``cfg.overrides[task]`` applied; a task ``image_size`` other than the checkpoint's resizes the position
bias first, :func:`~vlmerge_core.model.resolution.at_resolution`) and returns flat metrics::

    {"task", "main", "main_metric", "select_metric", <test metrics>, "val_<metric>"..., "ci": {metric:
     [low, high]}, "val_last_gain", "best_epoch", "epochs", "steps", "n_train", "seconds",
     "curve": {"step", "loss", "val_epoch", "val_step", "val_select"}}

Test metrics carry the paper's names (``vqa_score``, ``ir_r1`` ... ``tr_r10``, ``r_mean``, ``accuracy``
(NLVR2 test-P; ``val_accuracy`` is dev), ``top1``, ``miou``, ``pixel_acc``, ``accuracy`` (text)).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig, ModelConfig, Params, profile_params
from vlmerge_core.data import load_world
from vlmerge_core.data.real_source import task_world
from vlmerge_core.data.tokenizer import check_tokenizer, load_identified_tokenizer
from vlmerge_core.io import write_json
from vlmerge_core.model import MultiwayTransformer, load_model
from vlmerge_core.model.experts import RETRIEVAL_TASKS, TASKS
from vlmerge_core.model.resolution import at_resolution
from vlmerge_core.paths import resolve
from vlmerge_core.tasks import classification, nlvr2, retrieval, segmentation, text_cls, vqa
from vlmerge_core.tasks.base import SPLITS, BaseTask
from vlmerge_core.tasks.bootstrap import bootstrap_ci
from vlmerge_core.tasks.engine import run_finetune, task_config

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"  # backbone spec of a seeded random-init model: "random:<rng_seed>"


def _retrieval(name: str) -> tuple[Callable[..., dict], Callable[..., BaseTask]]:
    return (
        lambda w, c, s, sp: retrieval.load_split(w, c, s, sp, name),
        lambda *a: retrieval.RetrievalTask(*a, name=name),
    )


# task -> (raw split loader(world, cfg, image_size, split), task class builder)
_REGISTRY: dict[str, tuple[Callable[..., dict], Callable[..., BaseTask]]] = {
    "vqa": (vqa.load_split, vqa.VQATask),
    **{name: _retrieval(name) for name in RETRIEVAL_TASKS},
    "nlvr2": (nlvr2.load_split, nlvr2.NLVR2Task),
    "imagenet": (classification.load_split, classification.ClassificationTask),
    "ade20k": (segmentation.load_split, segmentation.SegmentationTask),
    "text": (text_cls.load_split, text_cls.TextClsTask),
}
if set(_REGISTRY) != set(TASKS):  # experts.TASKS is the one list of tasks
    raise ImportError(f"tasks registry {sorted(_REGISTRY)} does not cover model.experts.TASKS {list(TASKS)}")

# The paper's fine-tuning recipe of every task (PAPER.md section 6 and the official ``config.py``): the
# paper profile's ``finetune.overrides``, its one definition (``profiles/paper.yaml`` cites the named
# configs; ADE20k and the text task have no official recipe and say which one they borrow).
PAPER_RECIPES: dict[str, dict[str, Any]] = profile_params("paper").finetune.overrides


@dataclasses.dataclass
class TaskRun:
    """A finished fine-tuning: its flat metrics (module docstring), the test and best-epoch val metrics,
    the fine-tuned model and the task (head, data)."""

    metrics: dict[str, Any]
    model: nn.Module
    task: BaseTask
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    val: dict[str, float] = dataclasses.field(default_factory=dict)


def random_model(model_cfg: ModelConfig, rng_seed: int) -> nn.Module:
    """A random-init model of ``model_cfg`` drawn with ``rng_seed`` (global RNG state left untouched)."""

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        return MultiwayTransformer(model_cfg)


def load_backbone(backbone: str | Path | nn.Module, model_cfg: ModelConfig | None = None) -> nn.Module:
    """The model to fine-tune: a copy of a model, a checkpoint file, or ``"random:<rng_seed>"``.

    Args:
        backbone: a model object (deep-copied), a checkpoint path (absolute or from the repo root),
            or ``"random:<rng_seed>"``: a random-init model of ``model_cfg``.
        model_cfg: the architecture of a random model.

    Raises:
        FileNotFoundError: the checkpoint file does not exist (names it).
        ValueError: a malformed ``random:`` spec, or one without ``model_cfg``.
    """
    if isinstance(backbone, nn.Module):
        return copy.deepcopy(backbone)
    spec = str(backbone)
    if spec.startswith(RANDOM_PREFIX):
        seed = spec[len(RANDOM_PREFIX) :]
        if not seed.isdigit():
            raise ValueError(f"backbone {spec!r}: expected {RANDOM_PREFIX}<rng_seed> with an integer seed")
        if model_cfg is None:
            raise ValueError(f"backbone {spec!r}: a random model needs the model config (params.model)")
        return random_model(model_cfg, int(seed))

    path = resolve(spec)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_model(path)


# what a task reads from its finetune.real_paths entry (a task without one reads the micro-world)
REAL_FORMATS = {
    "vqa": "vqav2_json", "coco": "coco_karpathy", "flickr": "flickr30k_karpathy", "nlvr2": "nlvr2_jsonl",
    "imagenet": "imagenet_folders", "ade20k": "ade20k_folders", "text": "glue_tsv",
}  # fmt: skip


def data_format(task: str, cfg: FinetuneConfig) -> str:
    """The format ``task`` reads under ``cfg``: its real format when ``real_paths`` names it, else micro."""
    return REAL_FORMATS[task] if cfg.real_paths.get(task) else "micro"


def _tokenizer(world: Any, cfg: FinetuneConfig) -> tuple[Any, dict[str, Any]]:
    """The fine-tuning tokenizer and its identity: ``finetune.real_paths.tokenizer``, else the world's."""

    if cfg.real_paths.get("tokenizer"):
        return load_identified_tokenizer(resolve(cfg.real_paths["tokenizer"]))
    if world is None:
        raise ValueError("finetune: no world given and no finetune.real_paths.tokenizer")
    return world.tokenizer(), world.tokenizer_identity  # loaded once per world


def _world(world: Any) -> Any:
    if world is None or not isinstance(world, (str, Path)):
        return world

    return load_world(resolve(world))


def with_resolved_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with its ``real_paths`` from the repo root (never the cwd: papermill runs the
    notebooks in ``notebooks/``)."""
    return dataclasses.replace(cfg, real_paths={k: str(resolve(v)) for k, v in cfg.real_paths.items() if v})


def build_task(
    task: str, model: nn.Module, cfg: FinetuneConfig, world: Any, source: str = "the backbone"
) -> BaseTask:
    """The task object (splits, head) for ``model``; ``cfg`` must already be resolved for ``task``.

    Raises:
        TokenizerMismatchError: ``model`` (read from ``source``) records another pre-training tokenizer.
    """
    if task not in _REGISTRY:
        raise KeyError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    load_split, cls = _REGISTRY[task]
    cfg = with_resolved_paths(cfg)
    world = _world(world)
    if world is None and not cfg.real_paths.get(task):
        raise ValueError(f"finetune {task}: no world given and no finetune.real_paths.{task}")
    tok, tok_id = _tokenizer(world, cfg)
    check_tokenizer(getattr(model, "tokenizer_info", None), tok_id, source)
    if world is not None and not cfg.real_paths.get(task) and world.config.image_size != model.cfg.image_size:
        raise ValueError(
            f"finetune {task}: the model's image_size {model.cfg.image_size} differs from the world's "
            f"data.image_size {world.config.image_size} (model and data configs disagree)"
        )
    if len(tok) > model.cfg.vocab_size:
        raise ValueError(
            f"finetune {task}: the tokenizer has {len(tok)} tokens, more than the model's "
            f"vocab_size {model.cfg.vocab_size} (model and data configs disagree)"
        )
    data = {split: load_split(world, cfg, model.cfg.image_size, split) for split in SPLITS}
    return cls(model, data, cfg, tok)


def file_stem(backbone: Any) -> str:
    """A backbone as a file-name part: its path (from the repo root, without the suffix) with "/" as
    "__" (``random:0`` -> ``random0``), so that two backbones never share a name."""
    spec = str(backbone) if isinstance(backbone, str | Path) else "model"
    return str(Path(spec).with_suffix("")).replace("/", "__").replace(":", "")


def run_task(
    task: str,
    backbone: str | Path | nn.Module,
    cfg: FinetuneConfig,
    world: Any,
    *,
    epochs: int | None = None,
    model_cfg: ModelConfig | None = None,
    n_bootstrap: int = 0,
    bootstrap_seed: int = 0,
) -> TaskRun:
    """Fine-tune and evaluate one task; see the module docstring for the metrics.

    Args:
        task: one of :data:`~vlmerge_core.model.experts.TASKS`.
        backbone: see :func:`load_backbone`.
        cfg: the ``finetune`` section; ``cfg.overrides[task]`` is applied here.
        world: the micro-world (a ``World`` or its folder), or None for real data only.
        epochs: when given, replaces the task's resolved epochs (0: evaluate without training).
        model_cfg: the architecture of a ``"random:<rng_seed>"`` backbone.
        n_bootstrap: resamples of the test examples for the confidence intervals (0: none, NaN).
        bootstrap_seed: seed of the resampling (``report.rng_seed``).
    """
    t0 = time.perf_counter()
    tcfg = task_config(cfg, task)
    if epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=epochs)
    model = at_resolution(load_backbone(backbone, model_cfg), tcfg.image_size)  # the task's resolution
    model.set_dropout(tcfg.drop_path, tcfg.text_dropout)  # fine-tuning regularisation (official drop_rate)
    torch.manual_seed(tcfg.rng_seed)  # head init and drop-path draws
    obj = build_task(
        task, model, tcfg, world, source=backbone if isinstance(backbone, str | Path) else "the backbone"
    )
    res = run_finetune(model, obj, tcfg)
    obj.write_submission(model, file_stem(backbone))  # e.g. VQA's test-dev answers for EvalAI
    ci = bootstrap_ci(res["test_outcomes"], n_bootstrap, bootstrap_seed)
    metrics: dict[str, Any] = {
        "task": task,
        "main_metric": obj.main_metric,
        "select_metric": obj.select_metric,
        "main": res["test"][obj.main_metric],
    }
    metrics.update(res["test"])
    metrics.update({f"val_{k}": v for k, v in res["val"].items()})
    metrics.update(
        {
            "ci": {k: list(v) for k, v in ci.items()},
            "val_last_gain": res["val_last_gain"],
            "best_epoch": res["best_epoch"],
            "epochs": tcfg.epochs,
            "steps": res["steps"],
            "n_train": obj.n_train,
            "world_size": res["world_size"],
            "data_format": data_format(task, tcfg),
            "curve": res["curve"],
            "seconds": time.perf_counter() - t0,
        }
    )
    log.info("%s: %s = %.2f (%.1f s)", task, obj.main_metric, metrics["main"], metrics["seconds"])
    return TaskRun(metrics, model, obj, test=res["test"], val=res["val"])


def finetune_task(
    task: str,
    backbone: str | Path | nn.Module,
    cfg: FinetuneConfig,
    world: Any,
    out_dir: str | Path | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``task`` and return its metrics (deterministic for a seed, but for
    ``seconds``); with ``out_dir``, also write them to ``<out_dir>/<task>.json``.

    Args:
        task: one of :data:`~vlmerge_core.model.experts.TASKS`.
        backbone: an MS / MA / merged MA checkpoint path, ``"random:<rng_seed>"`` or a model (copied).
        cfg: the ``finetune`` section; ``cfg.overrides[task]`` is applied here.
        world: the micro-world (a ``World`` or its folder); may be ``None`` when the task reads real data
            and ``cfg.real_paths["tokenizer"]`` is set.
        out_dir: folder of the metrics file (written by rank 0 under several processes).
        **kwargs: keyword arguments of :func:`run_task` (``epochs``, ``model_cfg``, ``n_bootstrap``,
            ``bootstrap_seed``).
    """
    run = run_task(task, backbone, cfg, world, **kwargs)
    if out_dir is not None and run.task.runtime.is_main:  # under torchrun, rank 0 writes
        write_json(resolve(out_dir) / f"{task}.json", run.metrics)
    return run.metrics


@torch.no_grad()
def predictions(run: TaskRun, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
    """A few predictions of a fine-tuned task (eval mode), for
    :func:`~vlmerge_core.tasks.plots.fig_predictions`."""
    run.model.eval()
    run.task.head.eval()
    return run.task.examples(run.model, split, n)


def gram_inputs(params: Params, world_dir: str = "") -> dict[str, Any]:
    """The ``batches`` and ``passes`` of :func:`~vlmerge_core.merge.stage.write_grams` for
    ``merge.gram_source``: nothing for ``pairs`` (the world's pre-training pairs, every pass); COCO
    retrieval's training pairs with the image and text passes for ``coco_retrieval`` (no ``vl``
    Grams, as the official ``cache_gram_matrices.py``)."""
    if params.merge.gram_source != "coco_retrieval":
        return {}
    cfg, mc = with_resolved_paths(params.finetune), params.model
    world = None if cfg.real_paths.get("coco") else task_world(params.data, world_dir or None)
    tok, _ = _tokenizer(world, cfg)
    batches = retrieval.gram_batches(
        world, cfg, tok, mc.image_size, mc.max_text_len, params.merge.gram_batch_size
    )
    return {"batches": batches, "passes": ("image", "text")}
