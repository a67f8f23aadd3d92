"""Visual question answering (VQAv2, Goyal et al. 2017; the micro-world's questions).

Model path: fusion (``forward_fused``: image by ``v`` and question by ``l`` below ``vl_start``, the
concatenation through ``vl`` above), pooled feature -> :class:`MLPClassifier` (D -> 2D -> LN -> GELU ->
#answers), as ``compute_vqa`` of the official code. Loss: binary cross-entropy on soft scores times
the number of answers (official, after ban-vqa). Targets and metric use the official soft-score
table (``write_vqa.get_score``: 0, .3, .6, .9, 1 for 0..4+ annotators); ``vqa_score`` is the target
of the arg-max answer, as ``VQAScore``. The micro-world gives every question ten annotator answers
(``data.vqa_annotators``), so the same table applies to it.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import VQA_TEST_DEV, read_vqav2, read_vqav2_testdev
from vlmerge_core.io import write_json
from vlmerge_core.paths import resolve
from vlmerge_core.tasks.base import (
    BaseTask,
    subsample,
    subsample_size,
    text_batch,
    tokenize,
    train_images,
)
from vlmerge_core.tasks.heads import MLPClassifier
from vlmerge_core.tasks.metrics import Outcomes, dense_targets, mean_outcomes, vqa_score, vqa_targets

log = logging.getLogger(__name__)


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str) -> dict[str, Any]:
    """Raw split: ``{"images", "questions": [{image, question, answers}], "answers": vocab}``."""
    root = cfg.real_paths.get("vqa")
    if root:
        return read_vqav2(
            root, split, image_size, min_answer_count=cfg.vqa_min_answer_count, val_images=cfg.vqa_val_images,
            protocol=cfg.vqa_protocol,
        )  # fmt: skip
    qs = [{"image": q["image"], "question": q["question"], "answers": q["answers"]} for q in world.vqa(split)]
    return {"images": world.images(split), "questions": qs, "answers": list(world.answers)}


class VQATask(BaseTask):
    name = "vqa"
    select_metric = "vqa_score"
    main_metric = "vqa_score"

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.vocab = list(data["train"]["answers"])
        if not self.vocab:
            raise ValueError("vqa: empty answer vocabulary")
        a2l = {a: i for i, a in enumerate(self.vocab)}
        self.splits: dict[str, dict[str, Any]] = {}
        for split, raw in data.items():
            qs = raw["questions"]
            keep = subsample(len(qs), subsample_size(cfg, split), split, cfg.rng_seed)
            qs = [qs[i] for i in keep]
            ids, mask = tokenize(tokenizer, [q["question"] for q in qs], self.max_len)
            scheme = "exact" if raw.get("exact") else "official"
            targets = [vqa_targets(q["answers"], a2l, scheme) for q in qs]
            self.splits[split] = {
                "images": raw["images"],
                "image": np.asarray([q["image"] for q in qs], np.int64),
                "ids": ids,
                "mask": mask,
                "labels": [t[0] for t in targets],
                "scores": [t[1] for t in targets],
                "questions": [q["question"] for q in qs],
                "answers": [q["answers"] for q in qs],
            }
        self.head = MLPClassifier(self.dim, 2 * self.dim, len(self.vocab))

    @property
    def n_train(self) -> int:
        return len(self.splits["train"]["image"])

    def write_submission(self, model: nn.Module, name: str) -> Path | None:
        """Under the official protocol with a ``submission_dir``: the test-dev2015 answers of the
        fine-tuned model for the EvalAI server, ``vqa_test-dev2015_<name>_seed<k>.json`` (rank 0 writes)."""
        cfg, root = self.cfg, self.cfg.real_paths.get("vqa")
        if cfg.vqa_protocol != "official" or not cfg.submission_dir or not root:
            return None
        answers = self.submission(model, read_vqav2_testdev(root, model.cfg.image_size))
        out = resolve(cfg.submission_dir) / f"vqa_{VQA_TEST_DEV}_{name}_seed{cfg.rng_seed}.json"
        if self.runtime.rank == 0:
            write_json(out, answers)
            log.info("vqa: %d test-dev answers written to %s", len(answers), out)
        return out

    @torch.no_grad()
    def submission(self, model: nn.Module, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """The EvalAI answer file of an unlabelled split (:func:`~vlmerge_core.data.real.
        read_vqav2_testdev`): ``[{"question_id", "answer"}]``, the arg-max answer of each question."""
        qs = raw["questions"]
        ids, mask = tokenize(self.tokenizer, [q["question"] for q in qs], self.max_len)
        s = {
            "images": raw["images"],
            "image": np.asarray([q["image"] for q in qs], np.int64),
            "ids": ids,
            "mask": mask,
        }
        was = model.training, self.head.training
        model.eval()
        self.head.eval()
        rows = self._eval_rows(len(qs), lambda idx: (self._logits(model, s, idx).argmax(1).cpu(),))
        model.train(was[0])
        self.head.train(was[1])
        pred = rows[0].tolist() if rows else []
        return [{"question_id": q["question_id"], "answer": self.vocab[p]} for q, p in zip(qs, pred)]

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        ids, mask = text_batch(s["ids"], s["mask"], idx)
        return {
            "images": train_images(s["images"], s["image"][idx.numpy()], self.cfg, generator),
            "ids": ids,
            "mask": mask,
        }

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(model.forward_fused(batch["images"], batch["ids"], batch["mask"])["cls"])

    def _logits(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self._forward(model, self._device(self._inputs(s, idx, generator)))

    def _targets(self, s: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        i = idx.tolist()
        return dense_targets([s["labels"][k] for k in i], [s["scores"][k] for k in i], len(self.vocab))

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        s = self.splits["train"]
        return {**self._inputs(s, idx, generator), "targets": self._targets(s, idx)}

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        b = self._device(batch)
        logits, targets = self._forward(model, b), b["targets"]
        return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]

    def _scores(self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor) -> tuple[torch.Tensor]:
        targets = self._targets(s, idx).to(self.runtime.device)
        return (vqa_score(self._logits(model, s, idx).float(), targets).cpu(),)

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        """Per-question VQA score (the unit is a question)."""
        s = self.splits[split]
        rows = self._eval_rows(len(s["image"]), lambda idx: self._scores(model, s, idx))
        return mean_outcomes(rows[0] if rows else torch.zeros(0), "vqa_score")

    @torch.no_grad()
    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s = self.splits[split]
        idx = torch.arange(min(n, len(s["image"])))
        pred = self._logits(model, s, idx).argmax(1).tolist()
        return [
            {
                "images": [s["images"][int(s["image"][i])]],
                "text": s["questions"][i],
                "pred": self.vocab[p],
                "truth": Counter(s["answers"][i]).most_common(1)[0][0],
            }
            for i, p in zip(idx.tolist(), pred)
        ]
