"""The study's grid: which models exist, where their files live, and which experiments each row feeds.

One definition of the study (PAPER.md §7, E0–E6) derived from ``params.yaml``, read by the DVC stage
functions of :mod:`vlmerge_core.study.stage`, by ``dvc.yaml`` (through the same parameters) and by the
collection of metrics. Nothing here trains or reads a checkpoint.

The grid:
- seed pre-training (MA) from the init, a checkpoint at every ``seed_pretrain.save_steps`` (step 0 is
  the init itself: "no seed", the paper's naive merging);
- MS models ``study.ms_models``: ``{id: {variant, seed_steps}}``, each pre-trained for
  ``ms_pretrain.steps`` from the seed checkpoint of its ``seed_steps`` (E1 varies ``seed_steps`` with
  variant ``all``; E3 varies ``variant`` at ``study.recipe``'s seed length);
- the MA baseline: MA pre-trained from the init for K_VL steps, as the paper's MA model pre-trained
  "from scratch" (README run ``ma_200k_vlpt``);
- merges of every MS model by ``study.e1_methods`` (each method's first knob value of ``merge``), and of
  the recipe model by every method and knob of ``merge`` (E2, E6) and by the options of
  ``study.options`` (E6);
- fine-tuning of every model on ``finetune.tasks`` (E2 sweeps on ``study.sweep_tasks``) with
  ``study.ft_seeds`` for the rows that carry claims (E0, E5 and E1's end points: the MA baseline, the
  recipe model unmerged and merged, the naive merges), one seed elsewhere; the one-seed rows only on
  ``study.single_seed_tasks`` when it is set (the micro study: the tasks E0 marks valid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmerge_core.config import Params, ParamsError

RUNS = "runs"  # run folder of the pipeline, relative to the repo root (tests and notebooks use a scratch one)

OPTION_USED_EXPERTS = "used_experts"  # E6: only the experts a task uses (official flag on)
OPTION_GRAM_NOPAD = "gram_nopad"  # E6: RegMean with Gram matrices that exclude padding tokens
OPTIONS = (OPTION_USED_EXPERTS, OPTION_GRAM_NOPAD)


def init_ckpt(runs: str = RUNS) -> str:
    """The init (MIM stand-in for BEiT, or the converted BEiT file)."""
    return f"{runs}/init/last.safetensors"


def seed_ckpt(steps: int, runs: str = RUNS) -> str:
    """The seed checkpoint of ``steps`` K_seed steps (step 0 is the init itself, "no seed")."""
    return init_ckpt(runs) if steps == 0 else f"{runs}/seed/ckpt_step{steps}.safetensors"


def ma_ckpt(runs: str = RUNS) -> str:
    return f"{runs}/ma/last.safetensors"


def random_ckpt(rng_seed: int) -> str:
    """The random-init MA model of ``params.model`` drawn with ``rng_seed`` (built on the fly)."""
    return f"random:{rng_seed}"


def ms_dir(model_id: str, runs: str = RUNS) -> str:
    return f"{runs}/ms/{model_id}"


def ms_ckpt(model_id: str, runs: str = RUNS) -> str:
    return f"{ms_dir(model_id, runs)}/last.safetensors"


def gram_path(model_id: str, exclude_padding: bool = False, runs: str = RUNS) -> str:
    return f"{runs}/gram/{model_id}/{'gram_nopad' if exclude_padding else 'gram'}.safetensors"


def merge_dir(model_id: str, runs: str = RUNS) -> str:
    return f"{runs}/merge/{model_id}"


@dataclass(frozen=True)
class MSModel:
    """One modality-specific model of the grid."""

    id: str  # key of study.ms_models, e.g. "all_s300"
    variant: str  # MS architecture variant (all, attn, ffn, ln)
    seed_steps: int  # K_seed of its seed checkpoint; 0 = from the init ("naive")

    def init_ckpt(self, runs: str = RUNS) -> str:
        """Where its MS pre-training starts: the seed checkpoint (the init when ``seed_steps`` is 0)."""
        return seed_ckpt(self.seed_steps, runs)

    def central_ckpt(self, runs: str = RUNS) -> str:
        """The central (seed) weights W0 of modality arithmetic, TIES and DARE."""
        return seed_ckpt(self.seed_steps, runs)


@dataclass(frozen=True)
class MergeJob:
    """A merge of one MS model: a method with its knobs and an option."""

    method: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    option: str = ""  # "" or one of OPTIONS
    experiments: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinetuneJob:
    """A model of the grid fine-tuned on some tasks with some seeds."""

    model_id: str  # row id in metrics/study/results.csv
    kind: str  # untrained, random, init, seed, ma_baseline, ms, merged
    tasks: tuple[str, ...]
    ft_seeds: tuple[int, ...]
    experiments: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def ms_models(params: Params) -> dict[str, MSModel]:
    """The MS models of ``study.ms_models``, checked against the seed lengths and the variants."""
    from vlmerge_core.model import MS_VARIANTS

    save = set(params.seed_pretrain.save_steps) | {0}
    out = {}
    for key, spec in params.study.ms_models.items():
        variant, steps = spec.get("variant"), spec.get("seed_steps")
        extra = sorted(set(spec) - {"variant", "seed_steps"})
        if extra or variant is None or steps is None:
            raise ParamsError(f"study.ms_models.{key}: expected {{variant, seed_steps}}, got {sorted(spec)}")
        if variant not in MS_VARIANTS:
            raise ParamsError(
                f"study.ms_models.{key}.variant: {variant!r} is not one of {sorted(MS_VARIANTS)}"
            )
        if not isinstance(steps, int) or steps not in save:
            raise ParamsError(
                f"study.ms_models.{key}.seed_steps: {steps!r} is not 0 or one of "
                f"seed_pretrain.save_steps {sorted(save - {0})}"
            )
        out[key] = MSModel(key, variant, steps)
    for role in ("recipe", "naive"):
        if getattr(params.study, role) not in out:
            raise ParamsError(
                f"study.{role}: {getattr(params.study, role)!r} is not a key of study.ms_models"
            )
    return out


def ma_baseline_steps(params: Params) -> int:
    """The MA baseline's budget: K_VL, the MS pre-training steps, from the init, as the paper's MA
    model pre-trained "from scratch" (README run ``ma_200k_vlpt``: 200k steps from BEiT, the MS
    models' K_VL)."""
    return params.ms_pretrain.steps


def merged_id(ms_id: str, run: str, option: str = "") -> str:
    """Row id of a merged model, e.g. ``merged_all_s300_interpolation_ratio0.5[_used_experts]``."""
    return f"merged_{ms_id}_{run}" + (f"_{option}" if option else "")


def e1_merges(params: Params) -> list[tuple[str, dict[str, Any]]]:
    """The merges every MS model gets: each of ``study.e1_methods`` at its first knob value."""
    from vlmerge_core.merge.stage import method_grid

    out = []
    for method in params.study.e1_methods:
        grid = method_grid(params.merge, [method])
        out.append(grid[0])
    return out


def merge_jobs(params: Params, model_id: str) -> list[MergeJob]:
    """Every merge of MS model ``model_id``, with the experiments it feeds."""
    from vlmerge_core.merge.stage import method_grid

    models = ms_models(params)
    m = models[model_id]
    recipe, naive = params.study.recipe, params.study.naive
    e1 = e1_merges(params)
    tag = ["E1"] if m.variant == "all" else []
    if m.variant != "all" or model_id == recipe:
        tag.append("E3")
    if model_id in (recipe, naive):
        tag.append("E5")
    jobs: dict[tuple, MergeJob] = {}
    for method, kp in e1:
        jobs[(method, _key(kp), "")] = MergeJob(method, kp, "", tuple(tag) + ("E4",))
    if model_id == recipe:
        for method, kp in method_grid(params.merge):
            k = (method, _key(kp), "")
            old = jobs.get(k)
            exps = tuple(old.experiments) if old else ()
            jobs[k] = MergeJob(method, kp, "", _merge_tags(exps, ("E2",)))
        for option in params.study.options:
            for method, kp in _option_merges(params, option):
                jobs[(method, _key(kp), option)] = MergeJob(method, kp, option, ("E6",))
    return list(jobs.values())


def _option_merges(params: Params, option: str) -> list[tuple[str, dict[str, Any]]]:
    from vlmerge_core.merge.methods import METHODS
    from vlmerge_core.merge.stage import method_grid

    if option == OPTION_USED_EXPERTS:
        return e1_merges(params)
    if option == OPTION_GRAM_NOPAD:
        grams = [m for m in params.merge.methods if METHODS[m].needs_grams]
        return [method_grid(params.merge, [m])[0] for m in grams]
    raise ParamsError(f"study.options: unknown option {option!r}; known: {list(OPTIONS)}")


def _key(kp: dict[str, Any]) -> tuple:
    return tuple(sorted(kp.items()))


def _merge_tags(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(a) | set(b)))


def testbed_jobs(params: Params, runs: str = RUNS) -> list[FinetuneJob]:
    """E0: untrained, random init, init, shortest and longest seed, MA baseline; every task, all ft seeds."""
    tasks = tuple(params.finetune.tasks)
    seeds = tuple(params.study.ft_seeds)
    save = sorted(params.seed_pretrain.save_steps)
    jobs = [
        FinetuneJob(
            "untrained",
            "untrained",
            tasks,
            seeds[:1],
            ("E0",),
            {"checkpoint": random_ckpt(params.finetune.rng_seed)},
        ),
        FinetuneJob(
            "random", "random", tasks, seeds, ("E0",), {"checkpoint": random_ckpt(params.finetune.rng_seed)}
        ),
        FinetuneJob("init", "init", tasks, seeds, ("E0",), {"checkpoint": init_ckpt(runs)}),
    ]
    for steps in dict.fromkeys([save[0], save[-1]]):
        jobs.append(
            FinetuneJob(
                f"seed{steps}",
                "seed",
                tasks,
                seeds,
                ("E0",),
                {"checkpoint": seed_ckpt(steps, runs), "seed_steps": steps},
            )
        )
    jobs.append(
        FinetuneJob(
            "ma_baseline",
            "ma_baseline",
            tasks,
            seeds,
            ("E0", "E1", "E2", "E5"),
            {"checkpoint": ma_ckpt(runs)},
        )
    )
    return jobs


def evaluate_jobs(params: Params, model_id: str, runs: str = RUNS) -> list[FinetuneJob]:
    """The fine-tuning jobs of MS model ``model_id``: the unmerged model and each of its merges."""
    from vlmerge_core.merge.stage import run_name

    models = ms_models(params)
    m = models[model_id]
    recipe, naive = params.study.recipe, params.study.naive
    tasks = tuple(params.finetune.tasks)
    claims = model_id in (recipe, naive)
    seeds = tuple(params.study.ft_seeds) if claims else tuple(params.study.ft_seeds[:1])
    unknown = sorted(set(params.study.single_seed_tasks) - set(tasks))
    if unknown:
        raise ParamsError(f"study.single_seed_tasks: {unknown} not in finetune.tasks {list(tasks)}")
    single = set(params.study.single_seed_tasks or tasks)

    def one_seed(jtasks: tuple[str, ...], jseeds: tuple[int, ...]) -> tuple[str, ...]:
        """A one-seed row runs only the tasks of ``study.single_seed_tasks``."""
        return tuple(t for t in jtasks if t in single) if len(jseeds) == 1 else jtasks

    if m.variant != "all":  # E3 compares the variants on the sweep tasks (the budget of the micro study)
        tasks = tuple(t for t in tasks if t in params.study.sweep_tasks)
    base = {"seed_steps": m.seed_steps, "variant": m.variant, "ms_id": model_id}
    tag = []
    if m.variant == "all":
        tag.append("E1")
    if m.variant != "all" or model_id == recipe:
        tag.append("E3")
    if claims:
        tag.append("E5")
    ms_seeds = seeds if model_id == recipe else seeds[:1]  # the naive model's unmerged row carries no claim
    jobs = [
        FinetuneJob(
            f"ms_{model_id}",
            "ms",
            one_seed(tasks, ms_seeds),
            ms_seeds,
            tuple(tag) + ("E2",) * (model_id == recipe),
            {**base, "checkpoint": ms_ckpt(model_id, runs)},
        )
    ]
    e1 = {(meth, _key(kp)) for meth, kp in e1_merges(params)}
    for job in merge_jobs(params, model_id):
        run = run_name(job.method, job.params)
        in_e1 = (job.method, _key(job.params)) in e1 and not job.option
        jtasks = tasks if in_e1 or job.option else tuple(t for t in tasks if t in params.study.sweep_tasks)
        jseeds = seeds if in_e1 else seeds[:1]
        jtasks = one_seed(jtasks, jseeds)
        knob, value = _knob(job.method, job.params)
        jobs.append(
            FinetuneJob(
                merged_id(model_id, run, job.option),
                "merged",
                jtasks,
                jseeds,
                job.experiments,
                {
                    **base,
                    "method": job.method,
                    "knob": knob,
                    "knob_value": value,
                    "option": job.option,
                    "run": run,
                },
            )
        )
    return jobs


def _knob(method: str, kp: dict[str, Any]) -> tuple[str, float | None]:
    """The swept knob of a merge (the method's declared ``sweep_knob``), for the tables' x axis."""
    from vlmerge_core.merge.methods import get_method

    knob = get_method(method).sweep_knob
    if knob is None or knob.name not in kp:
        return "", None
    return knob.name, float(kp[knob.name])
