"""Training-time augmentation: the official RandomAugment(2, 7) ops, seeded; what survives at 32 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmerge_core.data import augment


def _images(n: int = 4, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_modes_are_seeded_and_keep_shape():
    x = _images()
    for mode in augment.AUGMENT_MODES:
        a = augment.augment_images(x, mode, torch.Generator().manual_seed(3))
        b = augment.augment_images(x, mode, torch.Generator().manual_seed(3))
        assert a.shape == x.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert augment.augment_images(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match="augment"):
        augment.augment_images(x, "mixup", torch.Generator())


def test_official_level_7_magnitudes():
    """randaugment.py at level 7 of 10: enhance factor 1.36, shear 0.21, 7 px at 224, 21 degrees."""
    assert augment.ENHANCE == pytest.approx(1.36) and augment.SHEAR == pytest.approx(0.21)
    assert augment.TRANSLATE_224 == pytest.approx(7.0) and augment.ROTATE == pytest.approx(21.0)
    img = np.full((4, 4, 3), 100, np.uint8)
    assert np.all(augment._brightness(img, augment.ENHANCE) == 136)  # clip(v * 1.36)


def test_photometric_mode_never_moves_pixels():
    """A flat image stays flat under every surviving op (no crop, flip or geometric op)."""
    x = np.zeros((16, 32, 32, 3), np.uint8)
    x[:, 8:16, 8:16] = 200  # one bright square, everything else black
    out = augment.augment_images(x, "photometric", torch.Generator().manual_seed(0))
    assert np.all(out[:, :4, :4] == 0) and np.all(out[:, 20:, 20:] == 0)
    assert set(augment.SURVIVING_OPS) < set(augment.OFFICIAL_OPS)


def test_truth_changes_measures_what_the_official_ops_break(smoke_world):
    out = augment.truth_changes(smoke_world, n=16)
    assert 0 <= out["flip.captions"] <= 1 and 0 <= out["crop"] <= 1
    assert out["colour.Brightness"] <= out["colour.AutoContrast"] + 1e-9 or out["colour.AutoContrast"] > 0
    assert out["geometry.TranslateX"] >= 0


# the official op list (vl-merging ``square_transform_randaug``: RandomAugment(2, 7, augs=[...]))
OFFICIAL_AUGS = [
    "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
    "TranslateY", "Rotate",
]  # fmt: skip


def test_official_op_list():
    assert list(augment.OFFICIAL_OPS) == OFFICIAL_AUGS
    assert (augment.N_OPS, augment.LEVEL, augment.MAX_LEVEL) == (2, 7, 10)


@pytest.mark.parametrize("mode", ["official", "photometric", "none"])
def test_at_the_task_resolution(mode):
    """``size``: official crops to the task's resolution (RandomResizedCrop(size)), the others resize."""
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    a = augment.augment_images(imgs, mode, torch.Generator().manual_seed(1), size=48)
    b = augment.augment_images(imgs, mode, torch.Generator().manual_seed(1), size=48)
    assert a.shape == (3, 48, 48, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    if mode == "official":
        c = augment.augment_images(imgs, mode, torch.Generator().manual_seed(2), size=48)
        assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="size must be >= 1"):
        augment.augment_images(imgs, mode, torch.Generator(), size=0)


def test_official_translation_is_7px_at_and_above_224():
    img = np.zeros((256, 256, 3), np.uint8)
    img[:, 100] = 255
    moved = augment._apply("TranslateX", img, 1.0, 256)
    assert np.flatnonzero(moved[0, :, 0] == 255).tolist() == [93]  # 7 px, as the official code at any size
