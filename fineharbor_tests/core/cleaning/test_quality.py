"""Image size and quality rules: blur, entropy, min side, aspect, bytes, pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fineharbor.core.cleaning import quality
from fineharbor.core.cleaning.images import clean_image, gray_thumbnail
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    ASPECT_RATIO,
    IMAGE_BLURRY,
    IMAGE_LOW_ENTROPY,
    IMAGE_TOO_SMALL_BYTES,
    IMAGE_TOO_SMALL_SIDE,
)
from fineharbor_tests.core.cleaning.helpers import blurred, encode, scene

P = CleanParams()


def gray(image: Image.Image) -> np.ndarray:
    return gray_thumbnail(image, P.quality_max_side)


def test_blur_threshold_separates_sharp_from_blurred():
    for seed in range(3):
        sharp = scene(1200, 900, seed)
        sharp_var = quality.laplacian_variance(gray(sharp))
        blur_var = quality.laplacian_variance(gray(blurred(sharp, 8)))
        assert sharp_var > 4 * P.min_laplacian_var, sharp_var
        assert blur_var < P.min_laplacian_var, blur_var
        assert quality.rule_blur(sharp_var, P) is None
        reject = quality.rule_blur(blur_var, P)
        assert reject.reason == IMAGE_BLURRY and f"< {P.min_laplacian_var}" in reject.detail


def test_laplacian_of_a_checkerboard_is_high_and_of_flat_is_zero():
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.float32)
    assert quality.laplacian_variance(board) > 10_000
    assert quality.laplacian_variance(np.full((64, 64), 77, np.float32)) == 0.0


def test_entropy_and_near_uniform():
    flat = np.full((100, 100), 200, np.float32)
    assert quality.gray_entropy(flat) == 0.0
    assert quality.rule_low_entropy(flat, P).reason == IMAGE_LOW_ENTROPY
    noisy_flat = np.clip(128 + np.random.default_rng(0).normal(0, 1.0, (100, 100)), 0, 255)
    reject = quality.rule_low_entropy(noisy_flat.astype(np.float32), P)
    assert reject is not None and "gray std" in reject.detail
    photo = gray(scene(800, 600, 1))
    assert quality.gray_entropy(photo) > 3
    assert quality.rule_low_entropy(photo, P) is None
    # a sparse document page (white with a few dark lines) has low entropy but is kept
    page = np.full((400, 300), 255, np.float32)
    page[40:44, 20:280] = 0
    page[60:64, 20:200] = 0
    assert quality.gray_entropy(page) < 0.5
    assert quality.rule_low_entropy(page, P) is None


def test_flat_and_blurred_images_rejected_end_to_end():
    flat = encode(Image.new("RGB", (800, 600), (40, 90, 160)), "PNG")
    assert clean_image(flat, P, pair=True).reason in (IMAGE_LOW_ENTROPY, IMAGE_TOO_SMALL_BYTES)
    assert clean_image(flat, CleanParams(check_image_bytes=False)).reason == IMAGE_LOW_ENTROPY
    blurry = encode(blurred(scene(1200, 900, 2), 10), "JPEG")
    assert clean_image(blurry, P).reason == IMAGE_BLURRY
    assert clean_image(blurry, CleanParams(check_blur=False)).ok
    assert clean_image(encode(scene(1200, 900, 2), "JPEG"), P).ok


def test_min_side_applies_to_pairs_by_default():
    assert quality.rule_min_side((150, 400), P, pair=False) is None
    reject = quality.rule_min_side((150, 400), P, pair=True)
    assert reject.reason == IMAGE_TOO_SMALL_SIDE and reject.detail.startswith("side 150 < 200")
    everywhere = CleanParams(min_side_scope="all")
    assert quality.rule_min_side((150, 400), everywhere, pair=False) is not None
    assert quality.rule_min_side((150, 400), CleanParams(check_min_side=False), pair=True) is None


def test_aspect_ratio():
    assert quality.rule_aspect_ratio((3000, 1000), P) is None  # exactly 3.0 is allowed
    reject = quality.rule_aspect_ratio((4120, 1000), P)
    assert reject.reason == ASPECT_RATIO and reject.detail.startswith("aspect 4.12 > 3.0")
    assert quality.rule_aspect_ratio((4120, 1000), CleanParams(aspect_ratio_scope="pairs")) is None


def test_image_bytes():
    reject = quality.rule_image_bytes(4000, P)
    assert reject.reason == IMAGE_TOO_SMALL_BYTES and reject.detail == "bytes 4000 < 5120"
    assert quality.rule_image_bytes(6000, P) is None
    assert quality.rule_image_bytes(4000, CleanParams(image_bytes_scope="pairs")) is None


def test_small_valid_image_end_to_end():
    small = encode(Image.new("RGB", (240, 240), (200, 30, 30)), "JPEG", quality=40)
    assert len(small) < 5120
    assert clean_image(small, P, pair=True).reason == IMAGE_TOO_SMALL_BYTES
    tiny = encode(scene(120, 90, 1), "PNG")
    assert clean_image(tiny, P, pair=True).reason == IMAGE_TOO_SMALL_SIDE


def test_corrupt_wins_over_size_rules():
    data = encode(scene(150, 100, 1), "JPEG")
    result = clean_image(data[: len(data) // 2], P, pair=True)
    assert result.reason == "image_truncated"
