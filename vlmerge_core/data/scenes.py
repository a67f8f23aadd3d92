"""Scene graphs of the micro-world and their rendering to RGB images and segmentation masks.

A scene is a small list of objects on a 3x3 grid of cells of a square canvas. Each object has a
shape, a colour, a size (exactly one ``large`` object per scene, the rest ``small``), a grid cell
(``row``, ``col``) and a jittered centre and radius in pixels. No two objects of a scene share a
(shape, colour) pair, so "the red circle" always names one object; shapes and colours may repeat
on their own. Objects never overlap (cells are far enough apart for the radii used).

Labels derived from a scene (documented here once, used everywhere):
- image class (ImageNet stand-in): ``shape_index * len(COLOURS) + colour_index`` of the large object
  (``len(SHAPES) * len(COLOURS)`` = 30 classes);
- segmentation (ADE20k stand-in): per pixel ``1 + shape_index`` of the object covering it, 0 for
  background, so ``num_seg_classes = len(SHAPES) + 1`` (background included). Colour is a nuisance
  for this task; the shape must be recognised.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
RGB = {
    "red": (215, 45, 45),
    "green": (45, 175, 65),
    "blue": (55, 85, 225),
    "yellow": (225, 205, 45),
    "purple": (155, 65, 205),
    "cyan": (55, 205, 215),
}
SIZES = ("small", "large")
# answer of "where is ..." for each grid cell (row, col)
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUM_IMAGE_CLASSES = len(SHAPES) * len(COLOURS)
NUM_SEG_CLASSES = len(SHAPES) + 1

Scene = dict  # {"objects": [obj, ...], "label": int}; obj = {shape, colour, size, row, col, cx, cy, r}


def image_label(objects: list[dict]) -> int:
    """Image class of a scene: (shape, colour) of its large object."""
    big = [o for o in objects if o["size"] == "large"]
    if len(big) != 1:
        raise ValueError(f"scene must have exactly one large object, got {len(big)}")
    return SHAPES.index(big[0]["shape"]) * len(COLOURS) + COLOURS.index(big[0]["colour"])


def kind_tags(scenes: list[Scene]) -> np.ndarray:
    """Multi-hot float32 [N, NUM_IMAGE_CLASSES]: which object kinds (shape, colour) each scene holds
    (the tags of the init's supervised stand-in; index as :func:`image_label`)."""
    out = np.zeros((len(scenes), NUM_IMAGE_CLASSES), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for o in scene["objects"]:
            out[i, SHAPES.index(o["shape"]) * len(COLOURS) + COLOURS.index(o["colour"])] = 1.0
    return out


def scene_key(scene: Scene) -> tuple:
    """The discrete scene graph (no pixel jitter): two scenes with the same key are the same scene."""
    return tuple(sorted((o["shape"], o["colour"], o["size"], o["row"], o["col"]) for o in scene["objects"]))


def sample_scene(rng: np.random.Generator, max_objects: int, size: int) -> Scene:
    """Draw one scene graph: 1..max_objects objects in distinct cells, unique (shape, colour) pairs."""
    weights = np.array([1.0] + [2.0] * (max_objects - 1))
    n = int(rng.choice(np.arange(1, max_objects + 1), p=weights / weights.sum()))
    cells = rng.choice(9, size=n, replace=False)
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)
    big = int(rng.integers(n))
    objects = []
    for i, (cell, kind) in enumerate(zip(cells.tolist(), kinds.tolist())):
        row, col = divmod(cell, 3)
        lo, hi = (0.14, 0.17) if i == big else (0.08, 0.11)
        jx, jy = rng.uniform(-0.03, 0.03, size=2)
        objects.append(
            {
                "shape": SHAPES[kind // len(COLOURS)],
                "colour": COLOURS[kind % len(COLOURS)],
                "size": "large" if i == big else "small",
                "row": row,
                "col": col,
                "cx": round(float((col + 0.5) / 3 + jx) * size, 2),
                "cy": round(float((row + 0.5) / 3 + jy) * size, 2),
                "r": round(float(rng.uniform(lo, hi)) * size, 2),
            }
        )
    return {"objects": objects, "label": image_label(objects)}


def sample_scenes(
    rng: np.random.Generator, n: int, max_objects: int, size: int, exclude: set | None = None
) -> list[Scene]:
    """Draw ``n`` scenes whose keys are not in ``exclude`` (scenes of other splits)."""
    exclude = exclude or set()
    out: list[Scene] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(
                f"could not draw {n} scenes disjoint from {len(exclude)} others; "
                "raise data.max_objects or lower the split sizes"
            )
        scene = sample_scene(rng, max_objects, size)
        if scene_key(scene) not in exclude:
            out.append(scene)
    return out


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside ``shape`` of radius ``r``, given offsets from its centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "diamond":
        return ax + ay <= 1.1 * r
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= 0.75 * r) & (ax <= 0.6 * (dy + r))
    if shape == "cross":
        return ((ax <= 0.34 * r) & (ay <= r)) | ((ay <= 0.34 * r) & (ax <= r))
    raise KeyError(f"unknown shape {shape!r}")


def render_scene(
    scene: Scene, size: int, rng: np.random.Generator, noise_std: float
) -> tuple[np.ndarray, np.ndarray]:
    """RGB image uint8 [H, W, 3] and segmentation mask uint8 [H, W] of a scene.

    The background is a random dark grey with a slight tint; objects get a jittered colour; Gaussian
    pixel noise of ``noise_std`` is added to everything.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, (H, W)
    bg = rng.uniform(25, 85) + rng.uniform(-8, 8, size=3)
    img = np.broadcast_to(bg, (size, size, 3)).astype(np.float32).copy()
    mask = np.zeros((size, size), dtype=np.uint8)
    for o in scene["objects"]:
        inside = shape_mask(o["shape"], xx - o["cx"], yy - o["cy"], o["r"])
        img[inside] = np.asarray(RGB[o["colour"]], dtype=np.float32) + rng.uniform(-18, 18, size=3)
        mask[inside] = 1 + SHAPES.index(o["shape"])
    img += rng.normal(0.0, noise_std, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def render_scenes(
    scenes: list[Scene], size: int, rng: np.random.Generator, noise_std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, H, W, 3] and masks uint8 [N, H, W] of a list of scenes."""
    images = np.zeros((len(scenes), size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(scenes), size, size), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i], masks[i] = render_scene(scene, size, rng, noise_std)
    return images, masks
