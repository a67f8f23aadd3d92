"""Typed parameters of every stage, loaded strictly from ``params.yaml``.

Resolution order (later wins): the dataclass defaults (the ``micro`` profile) -> the profile file
``vlmerge_core/profiles/<profile>.yaml`` (``smoke``, ``paper``, ``rehearsal``) -> the sections of ``params.yaml``.
An unknown key, a value of the wrong type or a value out of range raises :class:`ParamsError`
naming the file and the dotted key.

Each section owner keeps the fields of their dataclass; every field carries a one-line comment.
Range checks live in the field's metadata (``_f(default, lo=..., hi=..., choices=...)``), but for the
merge methods' knobs, whose ranges live in their registry declarations (:class:`MergeConfig`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from vlmerge_core.paths import resolve

PROFILES = ("micro", "smoke", "paper", "rehearsal")
DATA_SOURCES = ("micro", "fixtures", "real")  # what the data stage writes (or reads) under data.root
# what pre-training reads (metrics: data_format)
PRETRAIN_FORMATS = ("micro", "arrow", "coco_karpathy", "released")
PROFILE_DIR = Path(__file__).parent / "profiles"


class ParamsError(ValueError):
    """A params file has an unknown key, a wrong type or an out-of-range value."""


def _f(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple | None = None,
    factory: Any = None,
) -> Any:
    """A dataclass field with range metadata checked by the loader."""
    meta = {"lo": lo, "hi": hi, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    rng_seed: int = _f(0, lo=0)  # RNG seed of the micro-world generator
    root: str = "data/micro"  # output folder, relative to the repo root
    image_size: int = _f(32, lo=8)  # canvas side in pixels
    n_train: int = _f(6000, lo=1)  # training scenes
    n_val: int = _f(500, lo=1)  # validation scenes
    n_test: int = _f(500, lo=1)  # test scenes
    max_objects: int = _f(3, lo=1, hi=8)  # objects per scene (1..max)
    captions_per_image: int = _f(2, lo=1)  # captions per scene and style
    vocab_size: int = _f(512, lo=32)  # WordPiece vocabulary size
    max_text_len: int = _f(24, lo=4)  # tokens per caption, [CLS]/[SEP] included
    mim_codebook_size: int = _f(64, lo=2)  # k-means patch codebook size for the MIM target
    mim_patch: int = _f(8, lo=1)  # patch side of the MIM codebook (must equal model.patch_size)
    noise_std: float = _f(6.0, lo=0.0)  # Gaussian pixel noise of the rendered images
    vqa_per_image: int = _f(3, lo=1)  # VQA questions per scene
    vqa_annotators: int = _f(10, lo=1)  # answers per question (VQAv2: 10), scored by the official table
    vqa_agree: float = _f(0.85, lo=0.0, hi=1.0)  # chance that an annotator gives the ground-truth answer
    nlvr2_per_image: int = _f(1, lo=1)  # NLVR2 image pairs per scene of the split
    text_cls_per_image: int = _f(1, lo=1)  # text-classification sentences per scene of the split
    text_label_noise: float = _f(0.1, lo=0.0, hi=1.0)  # text task: fraction of labels that are another class
    n_image_only: int = _f(3000, lo=1)  # unlabeled images (ImageNet-22k stand-in, MIM and codebook)
    n_corpus: int = _f(6000, lo=1)  # text-only corpus sentences (BookCorpus stand-in)
    # the data stage writes the micro-world ("micro"), tiny files in every real on-disk format
    # ("fixtures": the rehearsal of the paper path, vlmerge_core.data.fixtures), or reads the real
    # datasets of finetune.real_paths for their statistics ("real": the paper profile)
    source: str = _f("micro", choices=DATA_SOURCES)
    # pre-training pairs: the micro-world, the official arrow files, COCO's Karpathy release or the
    # released COCO/VG/CC/SBU folders (vlmerge_core.data.pretrain_data)
    pretrain_format: str = _f("micro", choices=PRETRAIN_FORMATS)
    # arrow folder, Karpathy root or released root (relative to the repo root); micro: data.root
    pretrain_path: str = ""
    # arrow: file groups read; released: the dataset folders read
    pretrain_datasets: list[str] = _f(factory=lambda: ["coco", "vg", "cc", "sbu"])
    tokenizer: str = ""  # real data: the study's one tokenizer (vocab.txt folder); "" = the world's
    num_workers: int = _f(0, lo=0)  # real data: DataLoader decoding processes per rank
    eval_images: int = _f(1000, lo=1)  # real data: zero-shot retrieval images of the Karpathy val split


# -------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    width: int = _f(64, lo=4)  # hidden size D
    depth: int = _f(4, lo=1)  # number of blocks L
    heads: int = _f(4, lo=1)  # attention heads
    mlp_ratio: float = _f(4.0, lo=0.5)  # MLP hidden size / D
    vl_start: int = _f(3, lo=0)  # first fusion block (vlffn_start_layer_index)
    image_size: int = _f(32, lo=8)  # input image side
    patch_size: int = _f(8, lo=1)  # patch side
    vocab_size: int = _f(512, lo=8)  # text vocabulary size (must match the tokenizer)
    max_text_len: int = _f(24, lo=2)  # text positions
    ms_components: list[str] = _f(factory=list)  # per-modality parts; empty list = modality-agnostic
    layer_scale_init: float = _f(0.1, lo=0.0)  # gamma_1/gamma_2 init (official: 0.1); 0 = layer scale off
    rel_pos_bias: bool = True  # official relative position bias: 2-D image, 1-D text, text<->image buckets
    abs_pos_embed: bool = False  # ours: absolute image and text position embeddings (official: none)
    rel_pos_text_span: int = _f(0, lo=0)  # text positions of the bias table; 0 = max_text_len (official: 196)
    token_types: int = _f(2, lo=2, hi=3)  # token-type rows: text, image (+ NLVR2's second image)
    drop_path: float = _f(0.0, lo=0.0, hi=1.0)  # pre-training stochastic depth, linear from 0 (paper: 0.1)
    text_dropout: float = _f(0.0, lo=0.0, hi=1.0)  # pre-training text-embedding dropout (paper: 0.1)
    mim_vocab: int = _f(64, lo=2)  # MIM head classes (must equal data.mim_codebook_size)
    num_tags: int = _f(30, lo=1)  # image tags of the init's supervised stand-in (micro-world: object kinds)
    init_std: float = _f(0.1, lo=0.0)  # truncated-normal init std (0.1 for width 64; BEiT/ViT-B: 0.02)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ParamsError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if self.vl_start > self.depth:
            raise ParamsError(f"model.vl_start ({self.vl_start}) must be <= model.depth ({self.depth})")
        if self.image_size % self.patch_size:
            raise ParamsError(f"model.image_size ({self.image_size}) must be divisible by model.patch_size")
        from vlmerge_core.model.experts import COMPONENTS  # pure Python: no torch import

        bad = set(self.ms_components) - set(COMPONENTS)
        if bad:
            raise ParamsError(
                f"model.ms_components: unknown component(s) {sorted(bad)}; allowed: {', '.join(COMPONENTS)}"
            )


# ------------------------------------------------------------------------------------ pre-training
# Seed and MS stages (no uni-modal data). The official total is MLM + ITM + 0.5 (ITC + ITC_vl):
# ``ifm_total_loss = (ifm_weight * ifm_loss + ifm_vlffn_loss) * 0.5`` with ``ifm_weight = 1``.
VL_LOSSES = {"mlm": 1.0, "itc": 0.5, "itc_vl": 0.5, "itm": 1.0}


@dataclass
class PretrainConfig:
    steps: int = _f(300, lo=0)  # optimisation steps
    batch_size: int = _f(128, lo=1)  # global batch size (summed over ranks and accumulation)
    grad_accum: int = _f(1, lo=1)  # gradient accumulation steps
    lr: float = _f(3e-3, lo=0.0)  # peak learning rate
    weight_decay: float = _f(0.01, lo=0.0)  # AdamW weight decay (the official no-decay list: biases, norms)
    betas: list[float] = _f(factory=lambda: [0.9, 0.98])  # AdamW betas
    warmup_frac: float = _f(0.1, lo=0.0, hi=1.0)  # linear warm-up over this fraction of the run's steps
    schedule: str = _f(
        "linear", choices=("cosine", "linear", "constant")
    )  # decay after warm-up (official linear)
    grad_clip: float = _f(0.0, lo=0.0)  # max gradient norm; 0 = off (official: no clipping)
    ckpt_every: int = _f(100, lo=1)  # atomic checkpoint interval in steps
    losses: dict[str, float] = _f(factory=dict)  # objective name -> weight
    mlm_prob: float = _f(0.25, lo=0.0, hi=1.0)  # MLM masking budget per caption (official vl_mlm_prob 0.25)
    whole_word_masking: bool = True  # mask WordPiece words whole (official README); false = per token
    rng_seed: int = _f(0, lo=0)  # RNG seed of the run (init, data order, masking, negatives)
    amp: bool = True  # bf16 autocast when a GPU is present
    mim_mask_ratio: float = _f(0.4, lo=0.0, hi=1.0)  # fraction of patches masked for MIM (BEiT: 0.4)
    log_every: int = _f(5, lo=1)  # loss-curve resolution in steps (mean over each window)
    caption_style: str = _f("coco", choices=("coco", "flickr", "both"))  # captions used as pairs
    # ITM negatives: micro draws them uniformly (ViLT's ITM), as the official softmax hard negatives
    # leave the micro ITM at its prior in every setting tried (README, departures); paper: official
    itm_negatives: str = _f("uniform", choices=("official", "true_negatives", "uniform"))
    # training image transform: micro keeps the ops of the official one that change no label at 32 px
    augment: str = _f("photometric", choices=("official", "photometric", "none"))
    eval_batch_size: int = _f(256, lo=1)  # batch size of the zero-shot retrieval evaluation
    # ITC gradients on several ranks: "exact" (gathered features carry gradients: the global loss's
    # gradient), "official" (compute_ifm: plain all_gather, so feature gradients are 1/world-size of it)
    itc_grad: str = _f("exact", choices=("exact", "official"))


@dataclass
class InitPretrainConfig(PretrainConfig):
    """The BEiT stand-in: image-only MIM (micro) or a local BEiT checkpoint (paper)."""

    beit_checkpoint: str = ""  # paper profile: local timm BEiT/ViT checkpoint; empty = run MIM
    steps: int = _f(1200, lo=0)  # MIM + tags steps of the micro init
    losses: dict[str, float] = _f(
        factory=lambda: {"mim": 1.0, "tags": 1.0}
    )  # MIM + tags (BEiT pt22k_ft22k stand-in)


@dataclass
class SeedPretrainConfig(PretrainConfig):
    """The MA pre-training of the seed, the MA baseline and the compute-matched MA (the study sets each
    run's ``steps``: every length is its own run with its own schedule)."""

    steps: int = _f(125, lo=0)  # steps of a stand-alone run (`vlmerge pretrain seed`)
    batch_size: int = _f(96, lo=1)  # global batch (micro: the shortest seed's ITM needs the steps)
    lr: float = _f(5e-3, lo=0.0)  # peak LR (micro: at 3e-3 a 100-step seed's ITM stays at 0.61)
    save_steps: list[int] = _f(factory=list)  # extra checkpoints kept inside one run (curves only)
    losses: dict[str, float] = _f(factory=lambda: dict(VL_LOSSES))  # the paper's VL objectives


@dataclass
class MSPretrainConfig(PretrainConfig):
    steps: int = _f(250, lo=0)  # K_VL: MS pre-training steps (and the MA baseline's)
    batch_size: int = _f(96, lo=1)  # global batch, the seed stage's
    lr: float = _f(5e-3, lo=0.0)  # peak LR, the seed stage's
    losses: dict[str, float] = _f(factory=lambda: dict(VL_LOSSES))  # the paper's VL objectives


# ------------------------------------------------------------------------------------------ merging
@dataclass
class MergeConfig:
    """The merge section. A field that a merge method's ``Knob`` names (``params_key``) holds only its
    value(s): its range lives in that declaration (``vlmerge_core.merge.methods``), checked by
    ``merge.grid.method_grid`` and ``study.plan.check``, so a method's settings are declared once."""

    methods: list[str] = _f(  # methods of the E2 sweep
        factory=lambda: ["interpolation", "arithmetic", "arithmetic_formula", "regmean", "ties", "dare"]
    )
    ratios: list[float] = _f(factory=lambda: [0.5, 0.25, 0.75])  # interpolation ratio (v weight); knob
    lambdas: list[float] = _f(factory=lambda: [0.75, 0.5])  # modality-arithmetic lambda (README 0.75); knob
    regmean_alphas: list[float] = _f(factory=lambda: [1.0])  # RegMean off-diagonal scale alpha_R; knob
    ties_densities: list[float] = _f(factory=lambda: [0.5])  # TIES kept fraction; knob
    dare_drop_rates: list[float] = _f(factory=lambda: [0.5])  # DARE drop rate; knob
    only_used_experts: bool = False  # only_activate_used_experts of the official code (default False)
    gram_batches: int = _f(8, lo=1)  # batches used to collect RegMean Gram matrices
    tssd_k: float = _f(0.5, lo=0.0, hi=1.0)  # TSSD keeps the top-k fraction per row
    rng_seed: int = 0  # RNG seed of stochastic methods (DARE); knob
    ties_lambda: float = 1.0  # TIES scale of the merged modality vector; knob
    ties_trim: str = "vector"  # TIES top-k per vector (Yadav) / tensor; knob
    dare_lambda: float = 0.5  # DARE scale of the summed rescaled modality vectors; knob
    unimodal_paths: bool = False  # ours: image-only tasks merged from v, text-only from l
    gram_batch_size: int = _f(32, lo=1)  # batch size of the Gram-matrix collection
    # where RegMean's Gram matrices come from: "pairs" (ours: pre-training image-text pairs, image,
    # text and fused passes, so vl has Grams) or "coco_retrieval" (official cache_gram_matrices.py: the
    # COCO retrieval training data, image and text passes only; RegMean then drops vl from the linear
    # weights and averages its biases and norms)
    gram_source: str = _f("pairs", choices=("pairs", "coco_retrieval"))
    gram_device: str = _f("cpu", choices=("auto", "cpu", "cuda"))  # where the Grams are collected


# -------------------------------------------------------------------------------------- fine-tuning
@dataclass
class FinetuneConfig:
    tasks: list[str] = _f(factory=lambda: ["vqa", "coco", "flickr", "nlvr2", "imagenet", "ade20k", "text"])
    epochs: int = _f(8, lo=0)  # epochs per task (per-task overrides in `overrides`)
    batch_size: int = _f(32, lo=1)  # batch size
    lr: float = _f(1e-4, lo=0.0)  # peak learning rate of the backbone
    head_lr_mult: float = _f(10.0, lo=0.0)  # LR multiplier of new task heads (paper: x10 for VQA)
    layer_decay: float = _f(1.0, lo=0.0, hi=1.0)  # layer-wise LR decay; 1 = off
    warmup_frac: float = _f(0.1, lo=0.0, hi=1.0)  # warm-up fraction of the steps
    weight_decay: float = _f(0.01, lo=0.0)  # AdamW weight decay
    rng_seed: int = _f(0, lo=0)  # RNG seed of fine-tuning (head init, data order, training subset)
    overrides: dict[str, dict[str, Any]] = _f(
        factory=lambda: {  # task -> {field: value}: the micro recipe (params.yaml says why)
            "vqa": {"head_lr_mult": 100.0, "epochs": 24, "drop_path": 0.15},
            "coco": {"batch_size": 64, "train_subsample": 500},
            "flickr": {"batch_size": 64, "train_subsample": 500},
            "nlvr2": {"epochs": 10, "batch_size": 128, "train_subsample": 0},
            "ade20k": {"lr": 1e-3, "batch_size": 16, "seg_out_blocks": [0, 1, 2, 3]},
            "text": {"lr": 1e-3},
        }
    )
    real_paths: dict[str, str] = _f(factory=dict)  # task -> local dataset root; "tokenizer" -> tokenizer file
    train_subsample: int = _f(1000, lo=0)  # at most this many training examples per task; 0 = all
    eval_subsample: int = _f(0, lo=0)  # at most this many val/test examples per task; 0 = all
    val_subsample: int = _f(250, lo=0)  # at most this many val examples (model selection); 0 = eval_subsample
    val_every: int = _f(2, lo=1)  # validate every this many epochs and after the last; best validated kept
    betas: list[float] = _f(factory=lambda: [0.9, 0.98])  # AdamW betas (official beta_2 = 0.98)
    vqa_min_answer_count: int = _f(9, lo=1)  # real VQAv2: answers kept in the vocabulary (official: 9)
    vqa_val_images: int = _f(1000, lo=1)  # real VQAv2: val2014 images held out for model selection
    # real VQAv2: "heldout" (ours: train2014; val and a labelled test from val2014) or "official"
    # (train2014 + val2014's trainable part; test-dev2015 answers written for the EvalAI server)
    vqa_protocol: str = _f("heldout", choices=("heldout", "official"))
    submission_dir: str = ""  # official VQA protocol: where the test-dev2015 answer files go; "" = none
    drop_path: float = _f(0.1, lo=0.0, hi=1.0)  # stochastic depth while fine-tuning (official 0.1; VQA 0.15)
    text_dropout: float = _f(0.1, lo=0.0, hi=1.0)  # text-embedding dropout while fine-tuning (official 0.1)
    augment: str = _f("photometric", choices=("official", "photometric", "none"))  # train image transform
    freeze_backbone: bool = False  # linear probe: train the task head only, the backbone frozen in eval mode
    device: str = _f("cpu", choices=("auto", "cpu", "cuda"))  # where tasks run; auto = cuda when available
    amp: bool = False  # bf16 autocast of the forward passes on cuda (no effect on cpu)
    grad_accum: int = _f(1, lo=1)  # micro-batches per optimizer step; batch_size stays the global batch
    eval_batch_size: int = _f(256, lo=1)  # evaluation batch per process (no gradients)
    run_dir: str = ""  # folder of the resumable train state (<task>_train_state.pt, every epoch); "" = none
    image_size: int = _f(0, lo=0)  # task resolution; 0 = the checkpoint's (else position bias interpolated)
    # segmentation: the blocks (0-based) whose patch tokens the decoder reads, concatenated, as BEiT's
    # UperNet reads blocks 4, 6, 8 and 12 of 12 ([3, 5, 7, 11]); [] = the last block after the final norm
    seg_out_blocks: list[int] = _f(factory=list, lo=0)


# ------------------------------------------------------------------------------------------- report
@dataclass
class ReportConfig:
    formats: list[str] = _f(factory=lambda: ["pdf", "png"])  # figure formats
    n_bootstrap: int = _f(1000, lo=0)  # bootstrap resamples for confidence intervals
    rng_seed: int = _f(0, lo=0)  # RNG seed of the bootstrap
    c2_margin: float = _f(1.0, lo=0.0)  # C2: merged within this many points of the MA baseline


# -------------------------------------------------------------------------------------------- study
def _grid() -> dict[str, dict[str, Any]]:
    """The E3/E4 models beside the recipe replicates: variants, MS RNG seeds, MS steps, LR."""
    return {
        "attn_s125_r0": {"variant": "attn"},
        "ffn_s125_r0": {"variant": "ffn"},
        "ln_s125_r0": {"variant": "ln"},
        "all_s125_r0_m10": {"ms_seed": 10},
        "all_s125_r0_k125": {"ms_steps": 125},
        "all_s125_r0_lr0.5": {"lr_mult": 0.5},
        "all_s125_r0_lr1.5": {"lr_mult": 1.5},
    }


@dataclass
class StudyConfig:
    seed_lengths: list[int] = _f(
        factory=lambda: [125, 175, 250, 375], lo=1
    )  # K_seed of E1, each a separate run
    recipe_seed: int = _f(
        125, lo=1
    )  # K_seed of the recipe (one of seed_lengths; paper ratio K_seed : K_VL = 1 : 2)
    pt_seeds: list[int] = _f(
        factory=lambda: [0, 1, 2], lo=0
    )  # pre-training replicates (RNG seeds) of every claim row
    ft_seed: int = _f(0, lo=0)  # the fine-tuning seed of every pre-trained model's fine-tunes
    e0_ft_seeds: list[int] = _f(
        factory=lambda: [0, 1, 2], lo=0
    )  # fine-tuning seeds of random init and init (E0)
    e1_methods: list[str] = _f(
        factory=lambda: ["interpolation"]
    )  # merges of every MS run; the first is the recipe's
    recipe_methods: list[str] = _f(
        factory=lambda: ["interpolation", "arithmetic", "regmean"]
    )  # C5, every recipe replicate
    grid: dict[str, dict[str, Any]] = _f(factory=_grid)  # E3/E4: id -> {variant, ms_seed, ms_steps, lr_mult}
    sweep_tasks: list[str] = _f(factory=lambda: ["coco"])  # tasks of the E2 knob sweeps, E3 and E6
    options: list[str] = _f(factory=lambda: ["used_experts", "gram_nopad"])  # E6 merge options (recipe)
    workers: int = _f(
        2, lo=1
    )  # processes run side by side (pre-training, fine-tuning), one torch thread each
    launcher: str = _f(
        "inprocess", choices=("inprocess", "torchrun")
    )  # how pre-training and fine-tuning units run
    nproc_per_node: int = _f(1, lo=1)  # torchrun: processes per node (GPUs)
    nnodes: int = _f(1, lo=1)  # torchrun: nodes (each starts the stage with VLMERGE_NODE_RANK set)
    rdzv_endpoint: str = ""  # torchrun with nnodes > 1: host:port of the rendezvous


@dataclass
class Params:
    profile: str = _f("micro", choices=PROFILES)  # which preset the defaults come from
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init_pretrain: InitPretrainConfig = field(default_factory=InitPretrainConfig)
    seed_pretrain: SeedPretrainConfig = field(default_factory=SeedPretrainConfig)
    ms_pretrain: MSPretrainConfig = field(default_factory=MSPretrainConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def __post_init__(self) -> None:
        """Checks across sections: the data the model reads and the checkpoints later stages need."""
        d, m = self.data, self.model
        if d.image_size != m.image_size:
            raise ParamsError(
                f"model.image_size ({m.image_size}) must equal data.image_size ({d.image_size})"
            )
        if d.max_text_len > m.max_text_len:
            raise ParamsError(
                f"data.max_text_len ({d.max_text_len}) exceeds model.max_text_len ({m.max_text_len})"
            )
        self._check_sources()
        init = self.init_pretrain
        if init.steps > 0 and not init.beit_checkpoint and init.losses.get("mim", 0) > 0:
            if d.mim_patch != m.patch_size:
                raise ParamsError(
                    f"data.mim_patch ({d.mim_patch}) must equal model.patch_size ({m.patch_size})"
                )
            if d.mim_codebook_size != m.mim_vocab:
                raise ParamsError(
                    f"data.mim_codebook_size ({d.mim_codebook_size}) must equal "
                    f"model.mim_vocab ({m.mim_vocab})"
                )
        st = self.study
        if st.recipe_seed not in st.seed_lengths:
            raise ParamsError(
                f"study.recipe_seed ({st.recipe_seed}) must be one of study.seed_lengths {st.seed_lengths}"
            )
        if not st.pt_seeds or len(set(st.pt_seeds)) != len(st.pt_seeds):
            raise ParamsError(f"study.pt_seeds: expected distinct RNG seeds, got {st.pt_seeds}")
        if not st.e1_methods:
            raise ParamsError("study.e1_methods: at least one method (the first is the recipe's merge)")
        unknown = sorted(set(st.sweep_tasks) - set(self.finetune.tasks))
        if unknown:
            raise ParamsError(f"study.sweep_tasks: {unknown} not in finetune.tasks {self.finetune.tasks}")

    def _check_sources(self) -> None:
        """Real pre-training data needs its path and the study's one tokenizer (shared by fine-tuning)."""
        d, real = self.data, self.finetune.real_paths
        if d.pretrain_format != "micro":
            if not d.pretrain_path:
                raise ParamsError(
                    f"data.pretrain_path: needed with data.pretrain_format {d.pretrain_format!r}"
                )
            if not d.tokenizer:
                raise ParamsError(
                    f"data.tokenizer: needed with data.pretrain_format {d.pretrain_format!r} "
                    "(the micro-world's tokenizer does not read real captions)"
                )
        if d.tokenizer and real.get("tokenizer") and real["tokenizer"] != d.tokenizer:
            raise ParamsError(
                f"finetune.real_paths.tokenizer ({real['tokenizer']}) differs from data.tokenizer "
                f"({d.tokenizer}): a study has one tokenizer"
            )
        if d.source != "micro" and d.pretrain_format == "micro":
            raise ParamsError(
                f"data.pretrain_format: 'micro' reads a micro-world, but data.source is {d.source!r}"
            )
        missing = [t for t in self.finetune.tasks if not real.get(t)]
        if d.source == "real" and missing:
            raise ParamsError(f"finetune.real_paths: data.source 'real' needs a dataset root for {missing}")
        init = self.init_pretrain
        if d.source != "micro" and init.steps > 0 and not init.beit_checkpoint:
            raise ParamsError(
                f"init_pretrain: data.source {d.source!r} holds no image-only set for MIM; set "
                "init_pretrain.beit_checkpoint (a BEiT file; the fixtures': beit.safetensors) or init_pretrain.steps: 0"
            )


# ------------------------------------------------------------------------------------------- loader
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, src)
            except ParamsError:
                pass
        raise ParamsError(f"{src}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{src}: {key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{src}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{src}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, src)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{src}: {key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{src}: {key}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(
                f"{src}: {key}: expected bool (true/false), got {type(value).__name__} {value!r}"
            )
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{src}: {key}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise ParamsError(f"{src}: {key}: unsupported annotation {tp}")  # pragma: no cover


def _check_range(value: Any, meta: typing.Mapping, key: str, src: str) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise ParamsError(f"{src}: {key}: {v!r} is not one of {list(meta['choices'])}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if meta.get("lo") is not None and v < meta["lo"]:
                raise ParamsError(f"{src}: {key}: {v!r} is below the minimum {meta['lo']}")
            if meta.get("hi") is not None and v > meta["hi"]:
                raise ParamsError(f"{src}: {key}: {v!r} is above the maximum {meta['hi']}")


def _build(cls: type, data: Any, prefix: str, src: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from mapping ``data`` on top of ``base`` (an instance, or defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{src}: {prefix or '<top>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(
            f"{src}: unknown key(s) {', '.join(where + k for k in unknown)}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            tp = hints[name]
            if dataclasses.is_dataclass(tp):
                value = _build(tp, data[name], key, src, base=getattr(base, name) if base else None)
            else:
                value = _coerce(data[name], tp, key, src)
            _check_range(value, f.metadata, key, src)
            kwargs[name] = value
        elif base is not None:
            kwargs[name] = getattr(base, name)
    try:
        return cls(**kwargs)
    except ParamsError as exc:
        raise ParamsError(f"{src}: {exc}") from None


def profile_params(profile: str = "micro") -> Params:
    """The resolved parameters of a profile: defaults overlaid with ``profiles/<profile>.yaml``."""
    if profile not in PROFILES:
        raise ParamsError(f"profile: {profile!r} is not one of {list(PROFILES)}")
    params = Params(profile=profile)
    path = PROFILE_DIR / f"{profile}.yaml"
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        data.pop("profile", None)
        params = _build(Params, {**data, "profile": profile}, "", str(path), base=params)
    return params


def params_from_dict(data: dict, src: str = "<dict>") -> Params:
    """Resolve a params mapping: its ``profile`` preset, overlaid with its sections."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{src}: expected a mapping at the top level")
    profile = data.get("profile", "micro")
    if profile not in PROFILES:
        raise ParamsError(f"{src}: profile: {profile!r} is not one of {list(PROFILES)}")
    return _build(Params, data, "", src, base=profile_params(profile))


def load_params(path: str | Path | None = None, profile: str | None = None) -> Params:
    """Load ``params.yaml`` (default: the one at the repo root) strictly.

    Args:
        path: the params file, absolute or relative to the repo root. ``None`` uses
            ``<repo root>/params.yaml``.
        profile: when given and ``path`` is ``None``, return that profile's preset instead.
    """

    if path is None and profile is not None:
        return profile_params(profile)
    path = resolve("params.yaml" if path is None else path)  # relative paths: from the repo root
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return params_from_dict(data, str(path))


def stage_params(path: str = "", profile: str = "smoke") -> Params:
    """The parameters of a stage entry point, parsed once and passed down as the object.

    ``path`` (a params file, from the repo root) if given, else the ``profile`` preset, else (both
    empty) the repo's ``params.yaml``.
    """
    if path:
        return load_params(path)
    return load_params(profile=profile) if profile else load_params()


def to_dict(obj: Any) -> dict:
    """A dataclass (e.g. :class:`Params`) as plain nested dicts, for JSON/YAML."""
    return dataclasses.asdict(obj)


def section_from_dict(cls: type, data: dict, src: str = "<dict>", prefix: str = "") -> Any:
    """Build one section dataclass strictly from a mapping (notebook parameters, CLI)."""
    return _build(cls, data, prefix or cls.__name__, src, base=cls())
