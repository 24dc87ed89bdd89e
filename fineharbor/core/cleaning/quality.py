"""Image size and quality rules (LAION, DataComp, DanQing): pure functions on sizes and arrays.

Size rules work on the displayed size read from the header, before any pixel is decoded.
Quality rules work on a small grayscale array (see :func:`images.gray_thumbnail`):

- blur: variance of the 4-neighbour Laplacian (Pech-Pacheco et al. 2000), the usual
  "variance of Laplacian" focus measure;
- low entropy / near-uniform: Shannon entropy of the 256-level histogram, plus the gray standard
  deviation, which catches flat images with sensor noise or dithering.
"""

from __future__ import annotations

import numpy as np

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import (
    ASPECT_RATIO,
    IMAGE_BLURRY,
    IMAGE_LOW_ENTROPY,
    IMAGE_TOO_SMALL_BYTES,
    IMAGE_TOO_SMALL_SIDE,
    TOO_MANY_PIXELS,
    Reject,
)


def _applies(scope: str, pair: bool) -> bool:
    return scope == "all" or pair


# --------------------------------------------------------------------------- measures


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the discrete Laplacian (kernel [[0,1,0],[1,-4,1],[0,1,0]]), valid region."""
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


def gray_entropy(gray: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-level histogram (0 for a flat image, at most 8)."""
    g = np.asarray(gray)
    if g.size == 0:
        return 0.0
    values = np.clip(np.rint(g), 0, 255).astype(np.uint8) if g.dtype != np.uint8 else g
    counts = np.bincount(values.ravel(), minlength=256)
    p = counts[counts > 0] / values.size
    return float(max(0.0, -(p * np.log2(p)).sum()))


# --------------------------------------------------------------------------- size rules


def rule_image_bytes(n_bytes: int, params: CleanParams, *, pair: bool = False) -> Reject | None:
    """LAION: images under ``min_image_bytes`` (5 KB) are dropped."""
    if not params.check_image_bytes or not _applies(params.image_bytes_scope, pair):
        return None
    if n_bytes < params.min_image_bytes:
        return Reject(IMAGE_TOO_SMALL_BYTES, f"bytes {n_bytes} < {params.min_image_bytes}")
    return None


def rule_min_side(
    size: tuple[int, int], params: CleanParams, *, pair: bool = False
) -> Reject | None:
    """DataComp: the shorter side must be at least ``min_side`` (200 px) for caption pairs."""
    if not params.check_min_side or not _applies(params.min_side_scope, pair):
        return None
    width, height = size
    if min(width, height) < params.min_side:
        return Reject(
            IMAGE_TOO_SMALL_SIDE,
            f"side {min(width, height)} < {params.min_side} ({width}x{height})",
        )
    return None


def rule_aspect_ratio(
    size: tuple[int, int], params: CleanParams, *, pair: bool = False
) -> Reject | None:
    """DataComp: longer / shorter side at most ``max_aspect_ratio`` (3.0)."""
    if not params.check_aspect_ratio or not _applies(params.aspect_ratio_scope, pair):
        return None
    width, height = size
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > params.max_aspect_ratio:
        return Reject(
            ASPECT_RATIO, f"aspect {ratio:.2f} > {params.max_aspect_ratio} ({width}x{height})"
        )
    return None


def rule_max_pixels(size: tuple[int, int], params: CleanParams) -> Reject | None:
    """LAION-5B "DOS-bomb" sized images: more than ``max_pixels`` declared pixels."""
    if not params.check_max_pixels:
        return None
    width, height = size
    if width * height > params.max_pixels:
        return Reject(
            TOO_MANY_PIXELS, f"pixels {width * height} > {params.max_pixels} ({width}x{height})"
        )
    return None


# --------------------------------------------------------------------------- quality rules


def rule_low_entropy(
    gray: np.ndarray, params: CleanParams, *, entropy: float | None = None
) -> Reject | None:
    """DanQing information density: flat or near-uniform images."""
    if not params.check_entropy:
        return None
    value = gray_entropy(gray) if entropy is None else entropy
    if value < params.min_entropy_bits:
        return Reject(IMAGE_LOW_ENTROPY, f"entropy {value:.3f} bits < {params.min_entropy_bits}")
    std = float(np.asarray(gray, dtype=np.float32).std()) if np.size(gray) else 0.0
    if std < params.min_gray_std:
        return Reject(IMAGE_LOW_ENTROPY, f"gray std {std:.2f} < {params.min_gray_std}")
    return None


def rule_blur(laplacian_var: float, params: CleanParams) -> Reject | None:
    """DanQing visual fidelity: variance of the Laplacian below ``min_laplacian_var``."""
    if not params.check_blur:
        return None
    if laplacian_var < params.min_laplacian_var:
        return Reject(
            IMAGE_BLURRY, f"laplacian var {laplacian_var:.2f} < {params.min_laplacian_var}"
        )
    return None
