"""The study's grid: which pre-training runs exist, where their files live, which merges and fine-tunes
each gets, and which experiments each row feeds.

One definition of the study (PAPER.md §7, E0-E6; DESIGN.md §11) derived from ``params.yaml``, read by
the DVC stage functions of :mod:`vlmerge_core.study.execute` and by the collection of metrics. Nothing
here trains or reads a checkpoint.

The unit of replication is a pre-training run: every claim-carrying model is pre-trained once per RNG
seed of ``study.pt_seeds`` and each of its fine-tunes has one fine-tuning seed (``study.ft_seed``).

- **MA runs** (:class:`MARun`): the MA model pre-trained from the init for ``K`` steps with RNG seed
  ``r``, its own full schedule. One concept serves three roles: the seed checkpoints of E1 (``K`` in
  ``study.seed_lengths``), the paper's MA baseline (``K_VL`` = ``ms_pretrain.steps``, README run
  ``ma_200k_vlpt``) and the compute-matched MA control (``K_seed + K_VL`` of the recipe). A length
  that plays two roles is one run.
- **MS runs** (:class:`MSRun`): the MS model pre-trained for ``K_VL`` steps from the seed ``(K, r)``
  (every expert a copy of it), or from the init for ``K = 0`` (naive). E1 holds the ``all`` variant
  for every seed length and 0, every RNG seed; ``study.grid`` adds models from the recipe seed of
  ``pt_seeds[0]`` that vary what moves the expert distances (variant, MS RNG seed, MS steps, LR):
  with the recipe replicates they are the E4 grid of C3, and the variants are E3.
- **Merges**: every MS run by ``study.e1_methods`` (each at its first knob); the recipe replicates also
  by ``study.recipe_methods`` on every task (C5's methods); the recipe run of ``pt_seeds[0]`` by every
  method and knob of ``merge`` on ``study.sweep_tasks`` (E2, picked on validation) and by the options of
  ``study.options`` (E6); the variants of the grid by ``study.recipe_methods`` on the sweep tasks (E3).
- **Fine-tunes**: E0 (untrained, random init and init with ``study.e0_ft_seeds``; the recipe seed, the
  MA baseline and the compute-matched MA, every replicate), then every MS run (the recipe and naive
  replicates and the variants unmerged) and merge above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmerge_core.config import Params, ParamsError
from vlmerge_core.merge.grid import MergeJob, check_knobs, method_grid
from vlmerge_core.merge.methods import METHODS
from vlmerge_core.model.block import MS_VARIANTS

RUNS = "runs"  # run folder of the pipeline, relative to the repo root (tests and notebooks use a scratch one)

OPTION_USED_EXPERTS = "used_experts"  # E6: only the experts a task uses (official flag on)
OPTION_GRAM_NOPAD = "gram_nopad"  # E6: RegMean with Gram matrices that exclude padding tokens
OPTIONS = (OPTION_USED_EXPERTS, OPTION_GRAM_NOPAD)
GRID_KEYS = ("variant", "ms_seed", "ms_steps", "lr_mult")  # what a study.grid entry may set


def init_ckpt(runs: str = RUNS) -> str:
    """The init (MIM + tags stand-in for BEiT, or the converted BEiT file)."""
    return f"{runs}/init/last.safetensors"


def random_ckpt(rng_seed: int) -> str:
    """The random-init MA model of ``params.model`` drawn with ``rng_seed`` (built on the fly)."""
    return f"random:{rng_seed}"


def gram_path(ms_id: str, exclude_padding: bool = False, runs: str = RUNS) -> str:
    return f"{runs}/gram/{ms_id}/{'gram_nopad' if exclude_padding else 'gram'}.safetensors"


def merge_dir(ms_id: str, runs: str = RUNS) -> str:
    return f"{runs}/merge/{ms_id}"


@dataclass(frozen=True)
class MARun:
    """MA pre-trained from the init for ``steps`` steps with RNG seed ``pt_seed`` (its own schedule)."""

    steps: int
    pt_seed: int

    @property
    def id(self) -> str:
        return f"ma{self.steps}_r{self.pt_seed}"

    @property
    def model_id(self) -> str:
        """Its row id in the study's tables."""
        return self.id

    def dir(self, runs: str = RUNS) -> str:
        return f"{runs}/ma/{self.id}"

    def info(self) -> dict[str, Any]:
        """Its identity in metrics files (an MA run of K steps is also the seed of length K)."""
        return {"kind": "ma", "seed_steps": self.steps, "pt_seed": self.pt_seed, "pt_steps": self.steps}

    def ckpt(self, runs: str = RUNS) -> str:
        return f"{self.dir(runs)}/last.safetensors"


@dataclass(frozen=True)
class MSRun:
    """One modality-specific pre-training run of the grid."""

    id: str  # e.g. "all_s100_r0", "attn_s100_r0", "all_s100_r0_lr0.5"
    variant: str  # MS architecture variant (all, attn, ffn, ln)
    seed_steps: int  # K_seed of its seed; 0 = from the init ("naive")
    pt_seed: int  # the replicate: RNG seed of its seed run
    ms_seed: int  # RNG seed of the MS run itself
    ms_steps: int  # K_VL of this run
    lr_mult: float = 1.0  # its peak LR relative to ms_pretrain.lr
    role: str = "e1"  # "e1" (every seed length and RNG seed) or "grid" (study.grid)

    def seed(self) -> MARun | None:
        return MARun(self.seed_steps, self.pt_seed) if self.seed_steps else None

    def init_ckpt(self, runs: str = RUNS) -> str:
        """Where its MS pre-training starts: its seed checkpoint (the init when ``seed_steps`` is 0)."""
        seed = self.seed()
        return seed.ckpt(runs) if seed else init_ckpt(runs)

    def central_ckpt(self, runs: str = RUNS) -> str:
        """The central (seed) weights W0 of modality arithmetic, TIES and DARE."""
        return self.init_ckpt(runs)

    @property
    def model_id(self) -> str:
        """Its row id in the study's tables (unmerged; its merges are ``merged_<id>_...``)."""
        return f"ms_{self.id}"

    def dir(self, runs: str = RUNS) -> str:
        return f"{runs}/ms/{self.id}"

    def ckpt(self, runs: str = RUNS) -> str:
        return f"{self.dir(runs)}/last.safetensors"

    def info(self) -> dict[str, Any]:
        """Its identity in metrics files."""
        return {
            "kind": "ms",
            "seed_steps": self.seed_steps,
            "variant": self.variant,
            "pt_seed": self.pt_seed,
            "ms_seed": self.ms_seed,
            "pt_steps": self.ms_steps,
            "lr_mult": self.lr_mult,
        }


@dataclass(frozen=True)
class Design:
    """The roles of the study's runs (written beside the collected tables as ``design.json``)."""

    recipe_seed: int  # K_seed of the recipe
    k_vl: int  # K_VL, the MS pre-training steps
    seed_lengths: tuple[int, ...]  # E1
    pt_seeds: tuple[int, ...]  # replicates
    ma_baseline_steps: int  # the paper's MA baseline: K_VL from the init
    ma_matched_steps: int  # the compute-matched MA: K_seed + K_VL
    recipe_method: str  # the recipe's merge (first of study.e1_methods)
    recipe_knob: dict[str, Any] = field(default_factory=dict)
    recipe_methods: tuple[str, ...] = ()  # C5's methods, on every recipe replicate

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def design(params: Params) -> Design:
    """The :class:`Design` of ``params``."""
    st = params.study
    method, knob = e1_merges(params)[0]
    return Design(
        recipe_seed=st.recipe_seed,
        k_vl=params.ms_pretrain.steps,
        seed_lengths=tuple(st.seed_lengths),
        pt_seeds=tuple(st.pt_seeds),
        ma_baseline_steps=params.ms_pretrain.steps,
        ma_matched_steps=st.recipe_seed + params.ms_pretrain.steps,
        recipe_method=method,
        recipe_knob=dict(knob),
        recipe_methods=tuple(st.recipe_methods),
    )


def ma_runs(params: Params) -> dict[str, MARun]:
    """Every MA run: the seed lengths, the MA baseline and the compute-matched MA, every RNG seed."""
    d = design(params)
    lengths = sorted({*d.seed_lengths, d.ma_baseline_steps, d.ma_matched_steps})
    runs = [MARun(k, r) for k in lengths for r in d.pt_seeds]
    return {m.id: m for m in runs}


def _grid_run(params: Params, key: str, spec: dict[str, Any]) -> MSRun:
    st = params.study
    extra = sorted(set(spec) - set(GRID_KEYS))
    if extra:
        raise ParamsError(f"study.grid.{key}: unknown key(s) {extra}; allowed: {list(GRID_KEYS)}")
    variant = spec.get("variant", "all")
    if variant not in MS_VARIANTS:
        raise ParamsError(f"study.grid.{key}.variant: {variant!r} is not one of {sorted(MS_VARIANTS)}")
    r0 = st.pt_seeds[0]
    ms_steps = int(spec.get("ms_steps", params.ms_pretrain.steps))
    lr_mult = float(spec.get("lr_mult", 1.0))
    ms_seed = int(spec.get("ms_seed", r0))
    if ms_steps <= 0 or lr_mult <= 0:
        raise ParamsError(f"study.grid.{key}: ms_steps and lr_mult must be positive, got {spec}")
    return MSRun(f"{key}", variant, st.recipe_seed, r0, ms_seed, ms_steps, lr_mult, "grid")


def ms_runs(params: Params) -> dict[str, MSRun]:
    """Every MS run: E1 (variant ``all``, K_seed in {0} and the seed lengths, every RNG seed) and the
    extra models of ``study.grid`` (from the recipe seed of the first RNG seed)."""
    d = design(params)
    out: dict[str, MSRun] = {}
    for k in (0, *d.seed_lengths):
        for r in d.pt_seeds:
            run = MSRun(f"all_s{k}_r{r}", "all", k, r, r, d.k_vl)
            out[run.id] = run
    for key, spec in params.study.grid.items():
        if key in out:
            raise ParamsError(f"study.grid.{key}: the id is taken by an E1 run")
        out[key] = _grid_run(params, key, spec)
    return out


def recipe_ids(params: Params) -> list[str]:
    """The recipe MS runs (K_seed = study.recipe_seed, variant all), one per RNG seed."""
    return [f"all_s{params.study.recipe_seed}_r{r}" for r in params.study.pt_seeds]


def naive_ids(params: Params) -> list[str]:
    """The naive MS runs (no seed), one per RNG seed."""
    return [f"all_s0_r{r}" for r in params.study.pt_seeds]


# ------------------------------------------------------------------------------------------- merges
def e1_merges(params: Params) -> list[tuple[str, dict[str, Any]]]:
    """Each method of ``study.e1_methods`` at its first knob value (the first is the recipe's merge)."""
    return [method_grid(params.merge, [m])[0] for m in params.study.e1_methods]


def _first(params: Params, method: str) -> tuple[str, dict[str, Any]]:
    return method_grid(params.merge, [method])[0]


def _key(method: str, kp: dict[str, Any], option: str = "") -> tuple:
    return (method, tuple(sorted(kp.items())), option)


def study_merges(params: Params, ms_id: str) -> list[MergeJob]:
    """Every merge of MS run ``ms_id``, with the experiments it feeds and its tasks.

    Each job has ``group="all"``: the merge stage splits a task-dependent merge into one checkpoint
    per task group (:func:`~vlmerge_core.merge.grid.merge_jobs`).
    """
    run = ms_runs(params)[ms_id]
    st = params.study
    tasks = tuple(params.finetune.tasks)
    sweep = tuple(t for t in tasks if t in st.sweep_tasks)
    recipe = ms_id in recipe_ids(params)
    first_recipe = recipe and run.pt_seed == st.pt_seeds[0]
    jobs: dict[tuple, MergeJob] = {}

    def add(
        method: str, kp: dict[str, Any], exps: tuple[str, ...], jtasks: tuple[str, ...], option: str = ""
    ):
        k = _key(method, kp, option)
        old = jobs.get(k)
        if old:
            exps = tuple(sorted({*old.experiments, *exps}))
            jtasks = tuple(t for t in tasks if t in {*old.tasks, *jtasks})
        jobs[k] = MergeJob(method, dict(kp), option, exps, jtasks)

    e1 = e1_merges(params)
    if run.role == "e1":
        tags = ("E1", "E4") + (("E5",) if recipe or ms_id in naive_ids(params) else ())
        for method, kp in e1:
            add(method, kp, tags, tasks)
    else:  # grid: the recipe's merge on every task (E4); a variant also by the recipe methods (E3)
        add(*e1[0], ("E4",) + (("E3",) if run.variant != "all" else ()), tasks)
        if run.variant != "all":
            for m in st.recipe_methods:
                add(*_first(params, m), ("E3",), sweep)
    if recipe:
        for m in st.recipe_methods:
            add(*_first(params, m), ("E2", "E5"), tasks)
    if first_recipe:
        for method, kp in method_grid(params.merge):
            add(method, kp, ("E2",), sweep)
        for option in st.options:
            for method, kp in _option_merges(params, option):
                add(method, kp, ("E6",), sweep, option)
        for m in st.recipe_methods:  # E3's "all" row beside the variants
            add(*_first(params, m), ("E3",), sweep)
    return list(jobs.values())


def _option_merges(params: Params, option: str) -> list[tuple[str, dict[str, Any]]]:
    if option == OPTION_USED_EXPERTS:
        return e1_merges(params)
    if option == OPTION_GRAM_NOPAD:
        return [_first(params, m) for m in params.merge.methods if METHODS[m].needs_grams]
    raise ParamsError(f"study.options: unknown option {option!r}; known: {list(OPTIONS)}")


def merged_id(ms_id: str, run: str, option: str = "") -> str:
    """Row id of a merged model, e.g. ``merged_all_s100_r0_interpolation_ratio0.5[_used_experts]``."""
    return f"merged_{ms_id}_{run}" + (f"_{option}" if option else "")


# ---------------------------------------------------------------------------------------- fine-tunes
@dataclass(frozen=True)
class FinetuneJob:
    """A model of the grid fine-tuned on some tasks with some fine-tuning seeds."""

    model_id: str  # row id in metrics/study/results.csv
    kind: str  # untrained, random, init, ma, ms, merged
    tasks: tuple[str, ...]
    ft_seeds: tuple[int, ...]
    experiments: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def testbed_jobs(params: Params, runs: str = RUNS) -> list[FinetuneJob]:
    """E0: untrained, random init and init (``study.e0_ft_seeds``); the recipe seed, the MA baseline and
    the compute-matched MA, every replicate (one fine-tuning seed each); every task."""
    tasks = tuple(params.finetune.tasks)
    st, d = params.study, design(params)
    e0 = tuple(st.e0_ft_seeds)
    rnd = random_ckpt(params.finetune.rng_seed)
    jobs = [
        FinetuneJob("untrained", "untrained", tasks, e0[:1], ("E0",), {"checkpoint": rnd}),
        FinetuneJob("random", "random", tasks, e0, ("E0",), {"checkpoint": rnd}),
        FinetuneJob("init", "init", tasks, e0, ("E0",), {"checkpoint": init_ckpt(runs)}),
    ]
    roles = {d.recipe_seed: ("E0",), d.ma_baseline_steps: ("E0", "E5"), d.ma_matched_steps: ("E0", "E5")}
    exps: dict[int, set[str]] = {}
    for k, e in roles.items():
        exps.setdefault(k, set()).update(e)
    for k in sorted(exps):
        for r in st.pt_seeds:
            m = MARun(k, r)
            info = {**m.info(), "checkpoint": m.ckpt(runs)}
            jobs.append(FinetuneJob(m.model_id, "ma", tasks, (st.ft_seed,), tuple(sorted(exps[k])), info))
    return jobs


def evaluate_jobs(params: Params, runs: str = RUNS) -> list[FinetuneJob]:
    """Every MS run that carries a claim (the recipe and naive replicates, the variants of the grid)
    unmerged, and every merge of every MS run."""
    st = params.study
    tasks = tuple(params.finetune.tasks)
    sweep = tuple(t for t in tasks if t in st.sweep_tasks)
    recipe, naive = recipe_ids(params), naive_ids(params)
    jobs = []
    for ms_id, run in ms_runs(params).items():
        base = {**run.info(), "ms_id": ms_id}
        if ms_id in recipe or ms_id in naive:
            exps = ("E1", "E5") + (("E2", "E3") if ms_id in recipe else ())
            jobs.append(
                FinetuneJob(
                    run.model_id, "ms", tasks, (st.ft_seed,), exps, {**base, "checkpoint": run.ckpt(runs)}
                )
            )
        elif run.role == "grid" and run.variant != "all":
            jobs.append(
                FinetuneJob(
                    run.model_id, "ms", sweep, (st.ft_seed,), ("E3",), {**base, "checkpoint": run.ckpt(runs)}
                )
            )
        for job in study_merges(params, ms_id):
            knob, value = _knob(job)
            info = {
                **base,
                "method": job.method,
                "knob": knob,
                "knob_value": value,
                "option": job.option,
                "run": job.run_name,
            }
            jobs.append(
                FinetuneJob(
                    merged_id(ms_id, job.run_name, job.option),
                    "merged",
                    job.tasks,
                    (st.ft_seed,),
                    job.experiments,
                    info,
                )
            )
    return jobs


def _knob(job: MergeJob) -> tuple[str, float | None]:
    """The swept knob of a merge (the method's declared ``sweep_knob``), for the tables' x axis."""
    if job.knob is None or job.knob not in job.params:
        return "", None
    return job.knob, float(job.knob_value)


def check(params: Params) -> None:
    """Checks across sections that need the registry and the grid (the loader checks the rest): the
    merge and study methods are registered, every knob value is in the range its method's declaration
    gives (:func:`~vlmerge_core.merge.grid.check_knobs`), the grid's runs are valid."""
    st = params.study
    for name, methods in (("e1_methods", st.e1_methods), ("recipe_methods", st.recipe_methods)):
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ParamsError(f"study.{name}: unknown method(s) {unknown}; known: {list(METHODS)}")
    check_knobs(params.merge)
    method_grid(params.merge)
    ms_runs(params)
