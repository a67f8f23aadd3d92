"""Training-time image augmentation: the official transform, and the part of it that keeps a micro-world
image true to its captions, answers and masks.

The official train transform (``square_transform_randaug`` of vl-merging, used for pre-training and
every fine-tuning task) is ``RandomResizedCrop(scale 0.5-1)``, ``RandomHorizontalFlip`` and
``RandomAugment(2, 7)``: two ops drawn with replacement from :data:`OFFICIAL_OPS`, each applied with
probability 0.5 at level 7 of 10 (``randaugment.py``: enhance factor ``0.1 + 1.8 * 7/10 = 1.36``,
shear ``0.21``, translation ``7`` px at 224 px, rotation ``21`` degrees, fill grey 128).

Modes (``PretrainConfig.augment`` / ``FinetuneConfig.augment``):

- ``official``: all of it, at the task's resolution (``augment_images(size=...)``; the real readers
  decode at the model's size, which :func:`~vlmerge_core.model.resolution.at_resolution` sets to the
  task's): translation 7 px as the official code at 224 px and above, scaled below (``7 * size / 224``
  px on a micro canvas). Flips follow the official rule: each image is flipped on its own with
  probability 0.5 and the text is left as it is (no "left" <-> "right" swap; NLVR2's two images draw
  their flips independently), as ``transforms.RandomHorizontalFlip`` inside the image transform;
- ``photometric``: ``RandomAugment(2, 7)`` over :data:`SURVIVING_OPS` only, no crop and no flip: what
  survives at 32 px in the micro-world. A flip swaps "left" and "right" in captions, answers and
  relations; a crop of half the area cuts objects of the border cells out; rotation, shear and
  translation move objects across the 3x3 cells that "where" answers name; AutoContrast and
  Equalize stretch each channel on its own and change the colour names of objects.
  :func:`truth_changes` measures how often (``benchmarks/augment_truth.py`` prints it);
- ``none``: no augmentation.

Every draw comes from a ``torch.Generator``, so a run repeats for a seed. Segmentation masks are
never transformed: only photometric ops are applied to segmentation images in any mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmerge_core.data.scenes import COLOURS, RGB

__all__ = [
    "AUGMENT_MODES",
    "OFFICIAL_OPS",
    "SURVIVING_OPS",
    "augment_images",
    "truth_changes",
]

AUGMENT_MODES = ("official", "photometric", "none")
OFFICIAL_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
SURVIVING_OPS = ("Identity", "Brightness", "Sharpness")
N_OPS, LEVEL, MAX_LEVEL = 2, 7, 10  # RandomAugment(2, 7)
ENHANCE = 0.1 + 1.8 * LEVEL / MAX_LEVEL  # 1.36
SHEAR = 0.3 * LEVEL / MAX_LEVEL  # 0.21
TRANSLATE_224 = 10.0 * LEVEL / MAX_LEVEL  # 7 px at 224 px
ROTATE = 30.0 * LEVEL / MAX_LEVEL  # 21 degrees
FILL = 128


# ------------------------------------------------------------------------------- photometric ops
def _brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """PIL ``ImageEnhance.Brightness`` as the official table: ``clip(v * factor)``."""
    table = (np.arange(256, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)
    return table[img]


def _sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """The official ``sharpness_func``: blend with a 3x3 smoothing (centre 5, others 1, / 13), borders kept."""
    x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[:, None]  # (3, 1, H, W)
    kernel = torch.ones(1, 1, 3, 3, dtype=torch.float32)
    kernel[0, 0, 1, 1] = 5.0
    smooth = F.conv2d(x, kernel / 13.0).round().clamp(0, 255)[:, 0].permute(1, 2, 0).numpy()  # (H-2, W-2, 3)
    out = img.astype(np.float32)
    out[1:-1, 1:-1] = smooth + factor * (out[1:-1, 1:-1] - smooth)
    return out.clip(0, 255).astype(np.uint8)


def _autocontrast(img: np.ndarray) -> np.ndarray:
    """PIL ``ImageOps.autocontrast`` (cutoff 0), per channel."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[..., c]
        lo, hi = int(ch.min()), int(ch.max())
        if hi <= lo:
            out[..., c] = ch
            continue
        table = (np.arange(256) * (255.0 / (hi - lo)) - lo * 255.0 / (hi - lo)).clip(0, 255).astype(np.uint8)
        out[..., c] = table[ch]
    return out


def _equalize(img: np.ndarray) -> np.ndarray:
    """PIL ``ImageOps.equalize``, per channel (the official ``equalize_func``)."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[..., c]
        hist = np.bincount(ch.ravel(), minlength=256)
        nz = hist[hist != 0]
        step = int(nz[:-1].sum()) // 255
        if step == 0:
            out[..., c] = ch
            continue
        n = np.empty(256, dtype=np.int64)
        n[0] = step // 2
        n[1:] = hist[:-1]
        out[..., c] = (np.cumsum(n) // step).clip(0, 255).astype(np.uint8)[ch]
    return out


# ------------------------------------------------------------------------------- geometric ops
def _affine(img: np.ndarray, matrix: tuple[float, ...]) -> np.ndarray:
    """PIL affine transform (inverse map ``matrix`` = a, b, c, d, e, f), bilinear, grey fill."""

    pil = Image.fromarray(img)
    out = pil.transform(
        pil.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=(FILL,) * 3
    )
    return np.asarray(out)


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:

    return np.asarray(Image.fromarray(img).rotate(degrees, Image.Resampling.BILINEAR, fillcolor=(FILL,) * 3))


def _apply(name: str, img: np.ndarray, sign: float, size: int) -> np.ndarray:
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return _autocontrast(img)
    if name == "Equalize":
        return _equalize(img)
    if name == "Brightness":
        return _brightness(img, ENHANCE)
    if name == "Sharpness":
        return _sharpness(img, ENHANCE)
    if name == "ShearX":
        return _affine(img, (1, sign * SHEAR, 0, 0, 1, 0))
    if name == "ShearY":
        return _affine(img, (1, 0, 0, sign * SHEAR, 1, 0))
    # official: 7 px at any size; ours: scaled down below 224 px (micro canvases)
    shift = sign * TRANSLATE_224 * min(size, 224) / 224.0
    if name == "TranslateX":
        return _affine(img, (1, 0, shift, 0, 1, 0))
    if name == "TranslateY":
        return _affine(img, (1, 0, 0, 0, 1, shift))
    if name == "Rotate":
        return _rotate(img, sign * ROTATE)
    raise KeyError(f"unknown augmentation op {name!r}")


def _resized_crop(img: np.ndarray, g: torch.Generator, size: int | None = None) -> np.ndarray:
    """torchvision's ``RandomResizedCrop`` (scale 0.5-1, ratio 3/4-4/3, bicubic) to ``size`` (default:
    the input's size); after 10 failed draws the whole image, resized."""

    H, W = img.shape[:2]
    out = (W, H) if size is None else (size, size)
    area = H * W
    for _ in range(10):
        target = area * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand(1, generator=g))
        ratio = math.exp(log_r)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (1,), generator=g))
            left = int(torch.randint(0, W - w + 1, (1,), generator=g))
            crop = Image.fromarray(img[top : top + h, left : left + w])
            return np.asarray(crop.resize(out, Image.Resampling.BICUBIC))
    return img if out == (W, H) else _resize(img, out[0])


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize to ``size x size`` (the official eval transform ``square_transform``)."""

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def _augment_one(
    img: np.ndarray, mode: str, g: torch.Generator, photometric_only: bool, out_size: int | None = None
) -> np.ndarray:
    geometric = mode == "official" and not photometric_only
    ops = OFFICIAL_OPS if mode == "official" else SURVIVING_OPS
    if photometric_only and mode == "official":
        ops = tuple(
            o
            for o in OFFICIAL_OPS
            if o in ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
        )
    if geometric:
        img = _resized_crop(img, g, out_size)
    elif out_size is not None and out_size != img.shape[0]:
        img = _resize(img, out_size)
    size = img.shape[0]
    if geometric:
        if float(torch.rand(1, generator=g)) < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
    picks = torch.randint(0, len(ops), (N_OPS,), generator=g).tolist()
    coins = torch.rand(2 * N_OPS, generator=g).tolist()
    for k, op in enumerate(picks):
        if coins[2 * k] > 0.5:  # each op applied with probability 0.5
            continue
        img = _apply(ops[op], img, 1.0 if coins[2 * k + 1] > 0.5 else -1.0, size)
    return img


def augment_images(
    images: np.ndarray,
    mode: str,
    generator: torch.Generator,
    photometric_only: bool = False,
    size: int | None = None,
) -> np.ndarray:
    """The train transform of ``mode`` on a batch of uint8 images ``[B, H, W, 3]`` (a new array).

    Args:
        images: uint8 ``[B, H, W, 3]``.
        mode: one of :data:`AUGMENT_MODES`.
        generator: the source of every random draw.
        photometric_only: never move pixels (segmentation, whose masks are not transformed).
        size: the output side, the task's resolution (default: the input's): ``official`` crops to it
            (``RandomResizedCrop(size)``), the other modes resize to it (bicubic).

    Returns:
        uint8 ``[B, size, size, 3]``.
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {list(AUGMENT_MODES)}, got {mode!r}")
    if size is not None and size < 1:
        raise ValueError(f"augment_images: size must be >= 1, got {size}")
    if mode == "none" and (size is None or size == images.shape[1]):
        return images
    if mode == "none":
        return np.stack([_resize(np.ascontiguousarray(im), size) for im in images])
    B = len(images)
    out = np.empty((B, size, size, 3) if size else images.shape, dtype=images.dtype)
    for i in range(B):
        out[i] = _augment_one(np.ascontiguousarray(images[i]), mode, generator, photometric_only, size)
    return out


def truth_changes(world, n: int = 500, rng_seed: int = 0) -> dict[str, float]:
    """How often each official op changes what a micro-world image means, on ``n`` train images.

    Returns fractions: ``flip``: captions (COCO style) or VQA answers that name a side (left/right) and
    are false after a horizontal flip; ``crop``: images whose crop (scale 0.5) cuts an object to under
    half its pixels; ``colour.<op>``: objects whose nearest palette colour changes under the op;
    ``geometry.<op>``: objects whose 3x3 cell changes under the op (at 32 px: translation 1 px).
    """

    g = torch.Generator().manual_seed(rng_seed)
    images, masks, scenes = world.images("train")[:n], world.masks("train")[:n], world.scenes("train")[:n]
    size = images.shape[1]
    palette = np.asarray([RGB[c] for c in COLOURS], dtype=np.float32)
    sides = ("left", "right")
    caps = [c for per in world.captions("train", "coco")[:n] for c in per]
    answers = [q["answer"] for q in world.vqa("train") if q["image"] < n]
    out = {
        "flip.captions": float(np.mean([any(w in c.split() for w in sides) for c in caps])),
        "flip.vqa_answers": float(np.mean([any(w in a.split() for w in sides) for a in answers])),
    }
    cut = 0
    for i in range(n):
        top = int(torch.randint(0, size - int(size * math.sqrt(0.5)) + 1, (1,), generator=g))
        left = int(torch.randint(0, size - int(size * math.sqrt(0.5)) + 1, (1,), generator=g))
        s = int(size * math.sqrt(0.5))
        kept = masks[i][top : top + s, left : left + s]
        for obj_id in np.unique(masks[i]):
            if obj_id == 0:
                continue
            if (kept == obj_id).sum() < 0.5 * (masks[i] == obj_id).sum():
                cut += 1
                break
    out["crop"] = cut / n

    def colour_of(img: np.ndarray, region: np.ndarray) -> int:
        mean = img[region].astype(np.float32).mean(0)
        return int(np.argmin(((palette - mean) ** 2).sum(1)))

    for op in ("AutoContrast", "Equalize", "Brightness", "Sharpness"):
        changed = total = 0
        for i in range(n):
            aug = _apply(op, images[i], 1.0, size)
            for o in scenes[i]["objects"]:
                region = (masks[i] > 0) & _disc(size, o)
                if region.sum() == 0:
                    continue
                total += 1
                changed += colour_of(images[i], region) != colour_of(aug, region)
        out[f"colour.{op}"] = changed / max(total, 1)
    for op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        moved = total = 0
        for i in range(n):
            for o in scenes[i]["objects"]:
                total += 1
                moved += _cell_after(op, o, size) != (o["row"], o["col"])
        out[f"geometry.{op}"] = moved / max(total, 1)
    return out


def _disc(size: int, o: dict) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return (xx - o["cx"]) ** 2 + (yy - o["cy"]) ** 2 <= (0.6 * o["r"]) ** 2


def _cell_after(op: str, o: dict, size: int) -> tuple[int, int]:
    """The 3x3 cell of an object's centre after ``op`` (positive direction)."""
    x, y, c = o["cx"], o["cy"], size / 2
    if op == "ShearX":  # PIL maps output (x, y) from input (x + s y, y): the centre moves by -s y
        x = x - SHEAR * y
    elif op == "ShearY":
        y = y - SHEAR * x
    elif op == "TranslateX":
        x = x - TRANSLATE_224 * size / 224.0
    elif op == "TranslateY":
        y = y - TRANSLATE_224 * size / 224.0
    elif op == "Rotate":
        a = math.radians(ROTATE)
        dx, dy = x - c, y - c
        x, y = c + dx * math.cos(a) + dy * math.sin(a), c - dx * math.sin(a) + dy * math.cos(a)
    cell = lambda v: min(max(int(v // (size / 3)), 0), 2)  # noqa: E731
    return cell(y), cell(x)
