"""Read checkpoints and Gram files in the naming of the official vl-merging code (Sung et al. 2023).

Three inputs, detected from the content of a ``torch.save`` file:
- a PyTorch Lightning checkpoint (a dict with ``state_dict``) or a bare state dict, MS (``all_moe``,
  ``attn_moe``, ``ffn_moe``, ``ln_moe``) or MA (``ufo``, including the outputs of the official
  ``merge_weights``/``sum_task_vectors``/``regmean``), or holding only the backbone (``transformer.*``);
- a Gram file of ``cache_gram_matrices.py``: float64 sums keyed by module names, where
  ``transformer.blocks.{i}.attn.{e}`` is the input of the attention module (= the ``qkv`` input),
  ``...attn.{e}.proj``, ``...mlp.{e}.fc1``, ``...mlp.{e}.fc2`` the inputs of those linears.

Mapping (official -> ours): ``transformer.blocks.*`` -> ``blocks.*`` (same inner names),
``transformer.{patch_embed,cls_token,mask_token,pos_embed,norm}`` -> top level,
``text_embeddings.word_embeddings/LayerNorm`` -> ``text_embed.word_embeddings/norm``,
``token_type_embeddings`` -> ``token_type_embed``, ``pooler.dense`` / ``itm_score.fc`` /
``mlm_score`` / ``mim_score`` / ``ifm_*_proj.fc`` -> ``heads.*``, ``logit_vl_scale`` -> ``logit_scale_vl``.
Exact rewrites: the official text embedding adds no absolute position (``position_embedding_type=
"rel_pos"``) but BERT's token-type row 0 before its LayerNorm, so that row is added to every word
embedding (the unused official position table is listed); the top-level table
``relative_position_bias_table`` [R_img + 2 T_0 + 2, H L] is ours as it is, with ``T_0`` (the
official ``max_text_len_of_initckpt``) kept as ``rel_pos_text_span``; a third token type (NLVR2) is
kept (``token_types`` 3); a BEiT shared table ``transformer.rel_pos_bias`` [R, H] fills the image rows
of every block. Lossy rewrites, only with ``allow_lossy``: a non-zero absolute ``pos_embed`` and
tensors with no place (task heads, the DALL-E tokenizer, video tables) are dropped. Every rewrite is
listed in the output metadata (``convert``). Derived index buffers are skipped.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmerge_core.config import ModelConfig, section_from_dict, to_dict
from vlmerge_core.data.tokenizer import load_identified_tokenizer
from vlmerge_core.io import save_safetensors
from vlmerge_core.model import MultiwayTransformer
from vlmerge_core.model.checkpoint import FORMAT

log = logging.getLogger(__name__)
MAX_TEXT_LEN_OF_INITCKPT = 196  # official config: text rows of the relative position table = 2 * 196 + 2
BUFFERS = re.compile(
    r"(^|\.)(position_ids|token_type_ids|\w*relative_position_index|mask_for_combining_temporal)$"
)
_BLOCK = re.compile(
    r"^transformer\.blocks\.(\d+)\.((?:attn|mlp|norm1|norm2)(?:\.(?:v|l|vl))?\.(?:qkv\.weight|q_bias|"
    r"v_bias|proj\.weight|proj\.bias|fc1\.weight|fc1\.bias|fc2\.weight|fc2\.bias|weight|bias)|"
    r"gamma_1|gamma_2)$"
)
_DIRECT = {
    "transformer.patch_embed.proj.weight": "patch_embed.proj.weight",
    "transformer.patch_embed.proj.bias": "patch_embed.proj.bias",
    "transformer.cls_token": "cls_token",
    "transformer.mask_token": "mask_token",
    "transformer.norm.weight": "norm.weight",
    "transformer.norm.bias": "norm.bias",
    "text_embeddings.word_embeddings.weight": "text_embed.word_embeddings.weight",
    "text_embeddings.LayerNorm.weight": "text_embed.norm.weight",
    "text_embeddings.LayerNorm.bias": "text_embed.norm.bias",
    "pooler.dense.weight": "heads.pooler.dense.weight",
    "pooler.dense.bias": "heads.pooler.dense.bias",
    "itm_score.fc.weight": "heads.itm.weight",
    "itm_score.fc.bias": "heads.itm.bias",
    "mlm_score.transform.dense.weight": "heads.mlm.transform.dense.weight",
    "mlm_score.transform.dense.bias": "heads.mlm.transform.dense.bias",
    "mlm_score.transform.LayerNorm.weight": "heads.mlm.transform.norm.weight",
    "mlm_score.transform.LayerNorm.bias": "heads.mlm.transform.norm.bias",
    "mlm_score.decoder.weight": "heads.mlm.decoder.weight",
    "mlm_score.bias": "heads.mlm.bias",
    "mim_score.weight": "heads.mim.weight",
    "mim_score.bias": "heads.mim.bias",
    "ifm_image_proj.fc.weight": "heads.itc_image.weight",
    "ifm_text_proj.fc.weight": "heads.itc_text.weight",
    "ifm_vl_image_proj.fc.weight": "heads.itc_vl_image.weight",
    "ifm_vl_text_proj.fc.weight": "heads.itc_vl_text.weight",
    "logit_scale": "logit_scale",
    "logit_vl_scale": "logit_scale_vl",
}
_GRAM = re.compile(r"^transformer\.blocks\.(\d+)\.(attn|mlp)((?:\.(?:v|l|vl))?)((?:\.(?:proj|fc1|fc2))?)$")


class ConvertError(ValueError):
    """An official checkpoint holds tensors that cannot be placed (the message names them)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only tensors, storages, dtypes and plain containers, ``collections.defaultdict``
    included (the official ``cache_gram_matrices.py`` saves a ``defaultdict(float)``, which
    ``torch.load(weights_only=True)`` refuses). Any other global is an error."""

    _ALLOWED = {
        ("collections", "defaultdict"),
        ("collections", "OrderedDict"),
        ("builtins", "float"),
        ("builtins", "int"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch.storage", "UntypedStorage"),
    }

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 name
        storage = module == "torch" and (
            name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)
        )
        if (module, name) in self._ALLOWED or storage:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


class _RestrictedPickle:
    """A ``pickle_module`` for ``torch.load`` that unpickles with :class:`_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    __name__ = "vlmerge_restricted_pickle"

    @staticmethod
    def load(fh: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(fh, **kwargs).load()


def load_torch(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load(weights_only=True)``; for a Gram file's ``defaultdict``, a restricted unpickler
    (tensors and plain containers only); full unpickling only with ``trust_pickle``. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" not in str(exc).lower().replace(" ", "_"):
            raise ValueError(f"{path}: not a readable torch file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except pickle.UnpicklingError as exc:
        raise ConvertError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); it pickles "
            "other objects (Lightning hyper-parameters...): pass --trust-pickle only if you "
            "trust its source"
        ) from None


def detect(obj: Any) -> str:
    """``"gram"`` for a cache_gram_matrices.py file, ``"checkpoint"`` for a (Lightning) state dict."""
    if isinstance(obj, dict) and "state_dict" in obj:
        return "checkpoint"
    if not isinstance(obj, dict) or not obj:
        raise ConvertError("not a state dict, a Lightning checkpoint or a Gram file")
    if all(
        _GRAM.match(str(k)) or re.match(r"^transformer\.blocks\.\d+\.norm[12]", str(k)) for k in obj
    ) and all(isinstance(v, Tensor) and v.dim() == 2 and v.shape[0] == v.shape[1] for v in obj.values()):
        return "gram"
    return "checkpoint"


def convert_grams(
    obj: dict[str, Tensor], allow_lossy: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Official Gram keys -> ours (``transformer.blocks.3.attn.v`` -> ``blocks.3.attn.v.qkv``)."""
    out, dropped, bad = {}, [], []
    for k, v in obj.items():
        m = _GRAM.match(k)
        if m is None:
            (dropped if allow_lossy else bad).append(k)
            continue
        block, comp, expert, lin = m.groups()
        lin = lin[1:] if lin else ("qkv" if comp == "attn" else None)
        if lin is None:  # the mlp container itself never runs a forward
            (dropped if allow_lossy else bad).append(k)
            continue
        out[f"blocks.{block}.{comp}{expert}.{lin}"] = v.detach().to(torch.float64)
    if bad:
        raise ConvertError(
            f"cannot place Gram entries {sorted(bad)} (only linear inputs are used by RegMean); "
            "pass --allow-lossy to drop them"
        )
    return dict(sorted(out.items())), {"kind": "gram", "dropped": sorted(dropped)}


def _grid_from_rows(rows: int) -> int | None:
    g = (math.isqrt(max(rows - 3, 0)) + 1) // 2
    return g if g > 0 and (2 * g - 1) ** 2 + 3 == rows else None


def _infer_grid(sd: dict[str, Tensor], table: Tensor | None, beit: Tensor | None) -> int:
    """Patches per image side, from the absolute positions, BEiT's shared table or the VLMo table."""
    grid = None
    if "transformer.pos_embed" in sd:
        grid = math.isqrt(sd["transformer.pos_embed"].shape[1] - 1)
    elif beit is not None:
        grid = _grid_from_rows(beit.shape[0])
    elif table is not None:  # T_0 is the official 196, or the text length of the checkpoint
        spans = [MAX_TEXT_LEN_OF_INITCKPT]
        if "text_embeddings.position_embeddings.weight" in sd:
            spans.append(sd["text_embeddings.position_embeddings.weight"].shape[0])
        grid = next((g for t in spans if (g := _grid_from_rows(table.shape[0] - 2 * t - 2))), None)
    if grid is None:
        raise ConvertError("cannot infer the image size from the shapes: give --image-size")
    return grid


def _text_span(table: Tensor | None, grid: int) -> int:
    """T_0 of the VLMo table: its rows are the image rows, 2 T_0 text rows and 2 cross-modal rows."""
    if table is None:
        return 0
    n_img = (2 * grid - 1) ** 2 + 3
    span, rem = divmod(table.shape[0] - n_img - 2, 2)
    if rem or span <= 0:
        raise ConvertError(
            f"relative_position_bias_table has {table.shape[0]} rows: not {n_img} image rows + 2 T_0 + 2"
        )
    return span


def infer_config(
    sd: dict[str, Tensor],
    *,
    heads: int | None = None,
    vl_start: int | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """A ``model_config`` mapping inferred from the shapes of an official state dict."""
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^transformer\.blocks\.(\d+)\.", k))})
    if not blocks:
        raise ConvertError("no transformer.blocks.* tensors: not a vl-merging/VLMo checkpoint")
    depth = blocks[-1] + 1
    qkv = next(
        v for k, v in sd.items() if re.match(r"^transformer\.blocks\.0\.attn\.(?:v\.|l\.)?qkv\.weight$", k)
    )
    width = qkv.shape[1]
    fc1 = next(
        v for k, v in sd.items() if re.match(r"^transformer\.blocks\.0\.mlp\.(?:v\.|l\.)?fc1\.weight$", k)
    )
    comps = sorted(
        {
            m.group(1)
            for k in sd
            if (m := re.match(r"^transformer\.blocks\.\d+\.(attn|mlp|norm1|norm2)\.(?:v|l|vl)\.", k))
        }
    )
    vl_blocks = [int(m.group(1)) for k in sd if (m := re.match(r"^transformer\.blocks\.(\d+)\.\w+\.vl\.", k))]
    if vl_start is None:
        if not comps:
            raise ConvertError(
                "a modality-agnostic (ufo) checkpoint does not tell the first fusion block: give --vl-start"
            )
        vl_start = min(vl_blocks) if vl_blocks else depth
    table = sd.get("relative_position_bias_table")
    beit = sd.get("transformer.rel_pos_bias.relative_position_bias_table")
    if heads is None:
        if beit is not None:
            heads = beit.shape[1]
        elif table is not None and table.shape[1] % depth == 0:
            heads = table.shape[1] // depth
        else:
            raise ConvertError("cannot infer the number of attention heads from the shapes: give --heads")
    patch = (
        sd["transformer.patch_embed.proj.weight"].shape[-1]
        if "transformer.patch_embed.proj.weight" in sd
        else 16
    )
    if image_size is None:
        image_size = _infer_grid(sd, table, beit) * patch
    span = _text_span(table, image_size // patch)
    cfg: dict[str, Any] = {
        "width": width,
        "depth": depth,
        "heads": heads,
        "mlp_ratio": fc1.shape[0] / width,
        "vl_start": vl_start,
        "image_size": image_size,
        "patch_size": patch,
        "ms_components": comps,
        "rel_pos_bias": table is not None or beit is not None,
        "rel_pos_text_span": span,
        "layer_scale_init": 0.1 if "transformer.blocks.0.gamma_1" in sd else 0.0,
    }
    if "token_type_embeddings.weight" in sd:
        cfg["token_types"] = sd["token_type_embeddings.weight"].shape[0]
    if "text_embeddings.word_embeddings.weight" in sd:
        cfg["vocab_size"] = sd["text_embeddings.word_embeddings.weight"].shape[0]
    if "text_embeddings.position_embeddings.weight" in sd:
        cfg["max_text_len"] = sd["text_embeddings.position_embeddings.weight"].shape[0]
        if span and cfg["max_text_len"] > span:
            cfg["rel_pos_text_span"] = cfg["max_text_len"]
    if "mim_score.weight" in sd:
        cfg["mim_vocab"] = sd["mim_score.weight"].shape[0]
    return cfg


def _place(sd: dict[str, Tensor], cfg: Any, allow_lossy: bool) -> tuple[dict[str, Tensor], dict[str, list]]:
    """Each official tensor under our name, or recorded as unused / lossy / dropped (else an error)."""
    out: dict[str, Tensor] = {}
    rec: dict[str, list] = {"exact": [], "lossy": [], "unused": [], "dropped": [], "initialised": []}
    bad: list[str] = []
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point() and v.dtype == torch.float64:
            v = v.float()  # the official RegMean leaves float64 tensors
        if BUFFERS.search(k):
            continue
        if (m := _BLOCK.match(k)) is not None:
            out[f"blocks.{m.group(1)}.{m.group(2)}"] = v
        elif k in _DIRECT:
            out[_DIRECT[k]] = v
        elif k == "text_embeddings.position_embeddings.weight":
            rec["unused"].append(k)  # position_embedding_type="rel_pos": never added in the official forward
        elif k in (
            "text_embeddings.token_type_embeddings.weight",
            "transformer.rel_pos_bias.relative_position_bias_table",
        ):
            pass  # folded into the word embeddings / placed in every block's image rows, by the caller
        elif k == "relative_position_bias_table":
            out["rel_pos_bias.relative_position_bias_table"] = v
            rec["exact"].append(f"{k}: the official table, as it is (text span {cfg.rel_pos_text_span})")
        elif k == "token_type_embeddings.weight":
            out["token_type_embed.weight"] = v
        elif k == "transformer.pos_embed" and not bool(v.abs().max() > 0):
            rec["unused"].append(k)  # all zeros: the official model adds no absolute image position
        elif k == "transformer.pos_embed" and allow_lossy:
            rec["lossy"].append(f"{k}: a non-zero absolute position embedding dropped (ours has none)")
        elif allow_lossy:
            rec["dropped"].append(k)
        else:
            bad.append(k)
    if bad:
        raise ConvertError(
            f"cannot place {len(bad)} tensor(s): {sorted(bad)[:20]}"
            f"{' ...' if len(bad) > 20 else ''}; pass --allow-lossy to drop them"
        )
    return out, rec


def convert_state_dict(
    sd: dict[str, Tensor],
    *,
    heads: int | None = None,
    vl_start: int | None = None,
    image_size: int | None = None,
    allow_lossy: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Official state dict -> ``(our tensors, model_config, record of rewrites)``.

    Tensors of our model that the checkpoint lacks (a backbone-only file) are taken from a fresh
    model built with the inferred config (seed 0) and listed under ``initialised``.
    """

    cfg_d = infer_config(sd, heads=heads, vl_start=vl_start, image_size=image_size)
    cfg = section_from_dict(ModelConfig, cfg_d, prefix="model")
    out, rec = _place(sd, cfg, allow_lossy)
    torch.manual_seed(0)
    fresh = MultiwayTransformer(cfg).state_dict()
    tt = sd.get("text_embeddings.token_type_embeddings.weight")
    word = "text_embed.word_embeddings.weight"
    if word in out and tt is not None:
        out[word] = out[word] + tt[0].to(out[word].dtype)
        rec["exact"].append(
            "text_embed.word_embeddings: + BERT token-type row 0 (added to every token before the LayerNorm)"
        )
    beit = sd.get("transformer.rel_pos_bias.relative_position_bias_table")
    if beit is not None and "rel_pos_bias.relative_position_bias_table" not in out:
        table = fresh["rel_pos_bias.relative_position_bias_table"].detach().clone()
        table[: beit.shape[0]] = beit.repeat(1, cfg.depth)
        out["rel_pos_bias.relative_position_bias_table"] = table
        rec["exact"].append(
            "transformer.rel_pos_bias: BEiT's shared [R, H] table in the image rows of every block"
        )
    for k, v in fresh.items():
        if k not in out:
            out[k] = v.detach().clone()
            rec["initialised"].append(k)
    extra = sorted(set(out) - set(fresh))
    if extra:
        raise ConvertError(f"converted tensors do not fit the inferred architecture: {extra[:10]}")
    for k in out:
        if tuple(out[k].shape) != tuple(fresh[k].shape):
            raise ConvertError(
                f"{k}: converted shape {tuple(out[k].shape)} but the inferred architecture expects "
                f"{tuple(fresh[k].shape)} (give --heads / --image-size / --vl-start?)"
            )
    return dict(sorted(out.items())), cfg_d, rec


def convert_file(
    in_path: str | Path,
    out_path: str | Path,
    *,
    heads: int | None = None,
    vl_start: int | None = None,
    image_size: int | None = None,
    allow_lossy: bool = False,
    trust_pickle: bool = False,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """Convert an official checkpoint or Gram file to our safetensors; returns what was done.

    ``tokenizer`` (a ``vocab.txt`` folder or ``tokenizer.json``; official checkpoints: BERT uncased) is
    recorded in the checkpoint, so that fine-tuning it with another vocabulary is refused.
    """

    obj = load_torch(in_path, trust_pickle)
    kind = detect(obj)
    if kind == "gram":
        tensors, rec = convert_grams(dict(obj), allow_lossy)
        save_safetensors(
            out_path,
            tensors,
            {"kind": "gram", "format": FORMAT, "convert": rec, "source": Path(in_path).name},
        )
        return {"kind": "gram", "tensors": len(tensors), **rec}
    sd = obj["state_dict"] if "state_dict" in obj else obj
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConvertError(f"{in_path}: non-tensor entries {bad[:10]} in the state dict")
    tensors, cfg, rec = convert_state_dict(
        dict(sd), heads=heads, vl_start=vl_start, image_size=image_size, allow_lossy=allow_lossy
    )
    kind = "ms" if cfg["ms_components"] else "ma"

    full_cfg = to_dict(section_from_dict(ModelConfig, cfg, prefix="model"))
    save_safetensors(
        out_path,
        tensors,
        {
            "model_config": json.dumps(full_cfg, sort_keys=True),
            "kind": kind,
            "format": FORMAT,
            "convert": rec,
            "source": Path(in_path).name,
            **(
                {"tokenizer": json.dumps(load_identified_tokenizer(tokenizer)[1], sort_keys=True)}
                if tokenizer
                else {}
            ),
        },
    )
    for what in ("lossy", "dropped", "unused", "initialised"):
        if rec[what]:
            log.warning("convert %s: %s: %s", in_path, what, rec[what][:5])
    return {"kind": kind, "tensors": len(tensors), "model_config": full_cfg, **rec}
