"""Geometric verification of near-duplicate candidates: is one image, up to the transforms a
user calls copying, the other one pixel for pixel?

Embeddings and perceptual hashes are made to be robust, so they also match *look-alikes*: two
pie charts with the same palette and nearly the same slices, two renders of one app screen, two
photos of one object from another angle. Copy detection systems therefore verify candidate pairs
(the ISC21 winners used local matching after the global descriptor). Here the check is dense
and cheap, and runs in a space where the copy transforms are identities:

* **luminance** (grey levels) of colour thumbnails (``fine`` x ``fine``): a grayscale copy, a
  re-encode (BMP/PNG/JPEG/WebP) or an alpha-channel copy has the luminance of its original;
* **squashed to a square**, as SSCD's input: a resize that changes the aspect ratio
  (non-uniform scaling) is the same thumbnail;
* **all eight rotations and mirrors** (the dihedral group) of one thumbnail are compared with
  the other: a flip or a 90/180/270-degree rotation is an identity of the comparison.

Two passes, both vectorised over a batch of pairs (NumPy on stacked thumbnails):

1. *full frame*: normalised cross-correlation (NCC) of A against the 8 turns of B; the best
   turn is measured by its worst tile (below). Exact, resized, grayscale, rotated, flipped and
   re-encoded copies pass here, which is most true copies;
2. *crop search*, for the pairs the first pass did not confirm: for each direction (A in B,
   B in A), mirror or not, and each crop scale allowed by the two aspect ratios, the smaller
   view is slid over the larger at ``coarse`` size and scored by NCC; the ``refine_top`` best
   hypotheses are refined at ``fine`` size around their offset and scale.

A pair passes when, at its best fit, NCC >= ``min_ncc`` and the *worst tile* is close: after a
gain/offset fit, the largest mean absolute residual of any tile of a 6 x 6 grid, in grey
levels. Alignment uses luminance only; the worst tile is measured on the three colour channels
(each fitted, residuals averaged, chroma at JPEG's half resolution) when both images have
colour, so a recoloured look-alike is still told apart, and on luminance when either is grey.

A global correlation is dominated by large uniform areas (backgrounds, a pie), so two charts
that differ in one slice and their labels still correlate at ~0.97, and two photos of a scene
from a moved camera correlate where the backdrop is; the worst tile catches the local difference
(a slice, a label, an object that moved against its background), while a true copy differs a
little everywhere (noise, resampling). The stage passes pairs with NCC >= 0.90 and worst tile
<= 16: in the pipeline benchmark planted copies of small photos reach a worst tile of at most
14.7 and distinct photos at least 37.6, the demo's recall and precision are 1.000
(``bench/dedup_quality.py``, ``test_demo_quality.py``); on ``fineharbor.testing.copies``
copies reach at most 6, other-angle photos at least 20.

A 64 px thumbnail averages away what tells apart two charts, documents or screens from one
template (a bar edge, a few glyphs of a label): a pair the full frame confirmed is therefore
compared again at the smaller image's own resolution (:func:`detail_residual`, the *detail
check*), where a stroke one image lacks leaves a residual of one sign that stands out of the
pair's resampling and compression noise.

Resizing is a matrix product (area-average weights), so a batch of thumbnails resizes in one
``matmul``; every score is computed pair by pair in the same order whatever the batch, so
verdicts do not depend on batching or on the number of worker processes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy.ndimage import uniform_filter
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb

ImageKey = tuple[str, int]  # (sample_id, image_index)


@dataclass(frozen=True)
class Thumbnail:
    """What verification keeps of an image: its size and a colour thumbnail (12 KB at 64)."""

    width: int
    height: int
    pixels: np.ndarray  # (fine, fine, 3) uint8 RGB: stacks are made float32 batch by batch

    @property
    def aspect(self) -> float:
        return self.width / self.height


@dataclass(frozen=True)
class VerifyConfig:
    fine: int = 64
    coarse: int = 24
    max_crop_area: float = 0.36  # the demo crops remove up to 20%; margin for uneven crops
    scale_step: float = 0.02
    refine_top: int = 3
    tiles: int = 6
    # crop hypotheses whose best coarse NCC is below this are not refined: a 24 px view
    # correlates at least as well as the 64 px one for a true crop (1,560 benchmark and test
    # crops that passed: coarse >= 0.938), while 97% of distinct photos score below it, and
    # refining them was a third of the verifier's time in the pipeline benchmark
    min_coarse_ncc: float = 0.80


def thumbnail(image: Image.Image, size: int) -> Thumbnail:
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # alpha dropped, not blended
    # BOX averages where a side shrinks but repeats pixels where one grows: the thumbnail of a
    # 72 x 54 copy then held row-doubling steps that its 96 x 72 original's lacked, and 4% of
    # such copies (0.75x resizes in the pipeline benchmark) fell under min_ncc or over the tile
    # threshold; interpolating when a side grows leaves 5 of 3,000 resize copies refuted
    # (low-contrast or saturated-colour photos, docs/dedup.md)
    grows = min(rgb.size) < size
    method = Image.Resampling.BILINEAR if grows else Image.Resampling.BOX
    small = rgb.resize((size, size), method, reducing_gap=2.0)
    return Thumbnail(rgb.width, rgb.height, np.asarray(small, dtype=np.uint8))


def thumbnail_from_bytes(data: bytes | None, size: int) -> Thumbnail | None:
    try:
        return thumbnail(decode_rgb(data), size)
    except ImageDecodeError:
        return None


# --------------------------------------------------------------------------- array helpers


@functools.lru_cache(maxsize=512)
def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of an area-average resize: each output pixel is the mean of the input
    span it covers (partial pixels weighted by overlap); upsizing falls back to nearest-area."""
    edges = np.linspace(0.0, src, dst + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    left = np.arange(src, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(ends, left + 1) - np.maximum(starts, left), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (P, H, W) thumbnails to (P, height, width) in two matrix products; (P, H, W, C)
    stacks channel by channel."""
    if stack.ndim == 4:
        moved = np.moveaxis(stack, 3, 1)
        return np.moveaxis(_resize(moved.reshape(-1, *moved.shape[2:]), height, width)
                           .reshape(*moved.shape[:2], height, width), 1, 3)  # fmt: skip
    _, h, w = stack.shape
    # a side already at its size is left alone: its weights are the identity (exactly)
    if h != height:
        stack = _area_weights(h, height) @ stack
    if w != width:
        stack = stack @ _area_weights(w, width).T
    return stack


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, Pillow's "L"
# RGB -> (Y, Cb, Cr) as JPEG defines it (ITU-R 601; the offset cancels in every comparison)
_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=np.float32,
)
_RGB = np.linalg.inv(_YCBCR).astype(np.float32)
# mean spread between an image's channels below which it counts as grey (JPEG chroma noise)
_GREY_SPREAD = 3.0


def luminance(stack: np.ndarray) -> np.ndarray:
    return stack @ _LUMA


def is_colour(stack: np.ndarray) -> np.ndarray:
    """(P,) whether each (P, S, S, 3) thumbnail has colour (not a grey image stored as RGB)."""
    # elementwise max/min of the three planes: a reduce over the 3-long last axis is ~5x slower
    r, g, b = stack[..., 0], stack[..., 1], stack[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return spread.mean(axis=(1, 2)) > _GREY_SPREAD


def _turn(image: np.ndarray, turn: int) -> np.ndarray:
    """Turn ``turn`` (0-7) of :func:`_dihedral` of one (S, S, ...) thumbnail."""
    turned = np.rot90(image, turn % 4, axes=(0, 1))
    return turned[:, ::-1] if turn >= 4 else turned


def _dihedral(stack: np.ndarray) -> np.ndarray:
    """(P, S, S, ...) -> (P, 8, S, S, ...): every rotation and mirror of each square
    thumbnail."""
    turns = [np.rot90(stack, k, axes=(1, 2)) for k in range(4)]
    mirrored = [t[:, :, ::-1] for t in turns]
    return np.stack(turns + mirrored, axis=1)


def _zero_mean_unit(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    centred = x - x.mean(axis=axes, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=axes, keepdims=True))
    return centred / (norm + 1e-6)


def _ncc_maps(big: np.ndarray, template: np.ndarray) -> np.ndarray:
    """NCC of each template (P, h, w) against every window of its big image (P, H, W)."""
    _, h, w = template.shape
    t = template - template.mean(axis=(1, 2), keepdims=True)
    t_norm = np.sqrt((t * t).sum(axis=(1, 2)))
    windows = sliding_window_view(big, (h, w), axis=(1, 2))  # (P, ny, nx, h, w), a view
    n = h * w
    sums = np.einsum("pyxhw->pyx", windows)
    squares = np.einsum("pyxhw,pyxhw->pyx", windows, windows)
    centred = squares - sums * sums / n
    dot = np.einsum("pyxhw,phw->pyx", windows, t)  # t is zero-mean: window means cancel
    return dot / (np.sqrt(np.maximum(centred, 1e-6)) * t_norm[:, None, None] + 1e-6)


def worst_tiles(window: np.ndarray, template: np.ndarray, tiles: int = 6) -> np.ndarray:
    """For each pair of (P, h, w) or (P, h, w, C) stacks: after a per-channel gain/offset fit
    of the template to the window, the largest mean absolute residual (averaged over channels)
    of any tile of a ``tiles`` x ``tiles`` grid, in grey levels (P,)."""
    if window.ndim == 3:
        window, template = window[..., None], template[..., None]
    t = template - template.mean(axis=(1, 2), keepdims=True)
    wv = window - window.mean(axis=(1, 2), keepdims=True)
    var = (t * t).mean(axis=(1, 2), keepdims=True)
    cov = (t * wv).mean(axis=(1, 2), keepdims=True)
    gain = np.where(var > 1e-6, cov / np.maximum(var, 1e-6), 0.0)
    residual = np.abs(wv - t * gain).mean(axis=3)
    _, h, w = residual.shape
    rows = np.array([k * h // tiles for k in range(tiles)])
    cols = np.array([k * w // tiles for k in range(tiles)])
    sums = np.add.reduceat(np.add.reduceat(residual, rows, axis=1), cols, axis=2)
    counts = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    return (sums / counts[None]).reshape(len(residual), -1).max(axis=1)


# --------------------------------------------------------------------------- pass 1: full frame


def _chroma_as_jpeg(stack: np.ndarray) -> np.ndarray:
    """(P, h, w, 3) RGB with its chroma (Cb, Cr) averaged over 2 x 2 pixels, luma untouched:
    the resolution JPEG keeps chroma at (4:2:0)."""
    ycc = stack @ _YCBCR.T
    ycc[..., 1:] = uniform_filter(ycc[..., 1:], (1, 2, 2, 1), mode="nearest")
    return ycc @ _RGB.T


def _worst(window: np.ndarray, template: np.ndarray, colour: np.ndarray, tiles: int) -> np.ndarray:
    """Worst tile of colour stacks (P, h, w, 3): on RGB where ``colour`` (chroma compared at
    JPEG's resolution, :func:`_chroma_as_jpeg`), else on luminance; the larger of the two fit
    directions, so the verdict does not depend on the pair's order.

    Chroma at full resolution made JPEG itself look like a difference: re-encoded, resized and
    mirrored copies of small saturated photos (96 x 72, a red shape) reached worst tiles of
    16-19, over the threshold, from colour bled across each edge; with chroma compared as JPEG
    stores it they reach at most 14.7 and look-alikes keep their distance (pipeline benchmark
    and test_verify, docs/dedup.md)."""

    def both_ways(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.maximum(worst_tiles(x, y, tiles), worst_tiles(y, x, tiles))

    out = np.empty(len(window), dtype=np.float64)
    grey = ~colour
    if grey.any():
        out[grey] = both_ways(luminance(window[grey]), luminance(template[grey]))
    if colour.any():
        out[colour] = both_ways(_chroma_as_jpeg(window[colour]), _chroma_as_jpeg(template[colour]))
    return out


def full_frame(
    a: np.ndarray, b: np.ndarray, colour: np.ndarray, tiles: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NCC, worst tile, turn) of each A (P, S, S, 3) against the best of the 8 turns of its B
    (``turn``: the index of :func:`_turn` that fits B to A); ``colour``: (P,) whether both
    images of a pair have colour."""
    turns = _dihedral(luminance(b))
    ncc = np.einsum(
        "pij,pdij->pd", _zero_mean_unit(luminance(a), (1, 2)), _zero_mean_unit(turns, (2, 3))
    )
    best = np.argmax(ncc, axis=1)
    turned = np.stack([_turn(image, int(turn)) for image, turn in zip(b, best, strict=True)])
    return ncc[np.arange(len(a)), best], _worst(a, turned, colour, tiles), best


# --------------------------------------------------------------------------- pass 2: crops


def _scales(
    big_aspect: float, small_aspect: float, config: VerifyConfig
) -> tuple[tuple[float, float], ...]:
    """(kx, ky): the share of the big image's width and height the small one would cover.

    A crop keeps its own aspect ratio, so ky follows from kx and the two images' aspects; the
    rounding of real crops is absorbed by the search's tolerance.
    """
    ratio = big_aspect / small_aspect  # ky / kx
    lowest = 1.0 - config.max_crop_area
    out = []
    kx = 1.0
    while kx >= lowest - 1e-9:
        ky = kx * ratio
        if lowest - 1e-9 <= ky <= 1.0 + 1e-9 and kx * ky >= lowest - 1e-9:
            out.append((kx, min(ky, 1.0)))
        kx = round(kx - config.scale_step, 6)
    return tuple(out)


@dataclass(frozen=True)
class _Hypothesis:
    score: float
    pair: int
    big_is_a: bool
    mirrored: bool
    kx: float
    ky: float
    y: int
    x: int


def _coarse(
    big: np.ndarray,
    small: np.ndarray,
    pairs: np.ndarray,
    big_is_a: bool,
    scales: tuple[tuple[float, float], ...],
    config: VerifyConfig,
) -> list[_Hypothesis]:
    """Best offset of every (mirror, scale) for pairs that share ``scales``."""
    coarse_big = _resize(big, config.coarse, config.coarse)  # luminance stacks here
    found = []
    for mirrored in (False, True):
        source = small[:, :, ::-1] if mirrored else small
        for kx, ky in scales:
            w = max(4, round(kx * config.coarse))
            h = max(4, round(ky * config.coarse))
            scores = _ncc_maps(coarse_big, _resize(source, h, w))
            flat = scores.reshape(len(pairs), -1)
            best = np.argmax(flat, axis=1)
            ys, xs = np.divmod(best, scores.shape[2])
            for k, pair in enumerate(pairs):
                found.append(
                    _Hypothesis(
                        float(flat[k, best[k]]), int(pair), big_is_a, mirrored, kx, ky,
                        int(ys[k]), int(xs[k]),
                    )
                )  # fmt: skip
    return found


@dataclass(frozen=True)
class _Fit:
    """A refined alignment: the small view resized to (h, w) at (y, x) of the big one."""

    score: float
    pair: int
    big_is_a: bool
    mirrored: bool
    h: int
    w: int
    y: int
    x: int


def _views(a: np.ndarray, b: np.ndarray, fits: list) -> tuple[np.ndarray, np.ndarray]:
    """(big, small) stacks of fits or hypotheses (from ``a``/``b``, luminance or colour), the
    small one mirrored where asked; one gather each."""
    both = np.stack([a, b])
    index = np.array([f.pair for f in fits])
    big_is_a = np.array([f.big_is_a for f in fits])
    big = both[np.where(big_is_a, 0, 1), index]
    small = both[np.where(big_is_a, 1, 0), index]
    mirrored = np.array([f.mirrored for f in fits])
    small[mirrored] = small[mirrored][:, :, ::-1]
    return big, small


def _refine_group(
    a: np.ndarray,
    b: np.ndarray,
    group: list[tuple[_Hypothesis, int, int]],
    h: int,
    w: int,
    config: VerifyConfig,
) -> list[_Fit]:
    """The best window within +-3 pixels of each hypothesis, templates all (h, w)."""
    offsets = np.arange(-3, 4)
    big, small = _views(a, b, [hyp for hyp, _, _ in group])  # luminance stacks here
    templates = _resize(small, h, w)
    windows = sliding_window_view(big, (h, w), axis=(1, 2))  # (G, ny, nx, h, w), a view
    ys = np.clip(np.array([cy for _, cy, _ in group])[:, None] + offsets, 0, config.fine - h)
    xs = np.clip(np.array([cx for _, _, cx in group])[:, None] + offsets, 0, config.fine - w)
    rows = np.arange(len(group))[:, None, None]
    local = windows[rows, ys[:, :, None], xs[:, None, :]]  # (G, 7, 7, h, w)
    t = templates - templates.mean(axis=(1, 2), keepdims=True)
    t_norm = np.sqrt((t * t).sum(axis=(1, 2)))
    sums = np.einsum("gyxhw->gyx", local)
    centred = np.einsum("gyxhw,gyxhw->gyx", local, local) - sums * sums / (h * w)
    dot = np.einsum("gyxhw,ghw->gyx", local, t)
    scores = dot / (np.sqrt(np.maximum(centred, 1e-6)) * t_norm[:, None, None] + 1e-6)
    flat = scores.reshape(len(group), -1)
    top = np.argmax(flat, axis=1)
    ty, tx = np.divmod(top, scores.shape[2])
    return [
        _Fit(float(flat[k, top[k]]), hyp.pair, hyp.big_is_a, hyp.mirrored, h, w,
             int(ys[k, ty[k]]), int(xs[k, tx[k]]))
        for k, (hyp, _, _) in enumerate(group)
    ]  # fmt: skip


def _refine(
    a: np.ndarray, b: np.ndarray, hypotheses: list[_Hypothesis], config: VerifyConfig
) -> dict[int, _Fit]:
    """Fine pass around each hypothesis on luminance stacks ``a``, ``b``: pair -> its best fit.
    Windows within +-3 pixels and +-half a scale step, batched by template size."""
    factor = config.fine / config.coarse
    jobs: dict[tuple[int, int], list[tuple[_Hypothesis, int, int]]] = {}
    for hyp in hypotheses:
        for dk in (-config.scale_step / 2, 0.0, config.scale_step / 2):
            w = min(config.fine, max(4, round((hyp.kx + dk) * config.fine)))
            ky = min(1.0, hyp.ky + dk * hyp.ky / hyp.kx)
            h = min(config.fine, max(4, round(ky * config.fine)))
            jobs.setdefault((h, w), []).append((hyp, round(hyp.y * factor), round(hyp.x * factor)))
    best: dict[int, _Fit] = {}
    for (h, w), jobs_of_size in sorted(jobs.items()):
        # chunks bound the gathered windows: 64 x 49 windows of at most 64 x 64 floats, 51 MB
        for start in range(0, len(jobs_of_size), 64):
            chunk = jobs_of_size[start : start + 64]
            for fit in _refine_group(a, b, chunk, h, w, config):
                if fit.pair not in best or fit.score > best[fit.pair].score:
                    best[fit.pair] = fit
    return best


def _fit_residuals(
    a: np.ndarray, b: np.ndarray, fits: list[_Fit], colour: np.ndarray, tiles: int
) -> dict[int, float]:
    """Worst tile of each pair's best fit (only the winners are measured), batched by size."""
    by_size: dict[tuple[int, int], list[_Fit]] = {}
    for fit in fits:
        by_size.setdefault((fit.h, fit.w), []).append(fit)
    out: dict[int, float] = {}
    for (h, w), group in sorted(by_size.items()):
        big, small = _views(a, b, group)
        rows = np.arange(len(group))
        ys = np.array([f.y for f in group])
        xs = np.array([f.x for f in group])
        window = sliding_window_view(big, (h, w), axis=(1, 2))[rows, ys, xs]  # (G, 3, h, w)
        pairs = np.array([f.pair for f in group])
        worst = _worst(
            np.ascontiguousarray(np.moveaxis(window, 1, 3)), _resize(small, h, w), colour[pairs],
            tiles,
        )  # fmt: skip
        out.update(zip(pairs.tolist(), worst.tolist(), strict=True))
    return out


def crop_search(
    a: np.ndarray,
    b: np.ndarray,
    aspects: np.ndarray,
    colour: np.ndarray,
    config: VerifyConfig = VerifyConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """(NCC, worst tile) at the best crop alignment of each pair (see the module doc).

    ``a``, ``b``: (P, fine, fine, 3) thumbnails; ``aspects``: (P, 2) width/height of A and B;
    ``colour``: (P,) whether both have colour. Pairs whose aspects allow no crop get NCC -1,
    pairs whose best coarse hypothesis is below ``min_coarse_ncc`` that coarse NCC (and an
    infinite worst tile).
    """
    count = len(a)
    ya, yb = luminance(a), luminance(b)
    groups: dict[tuple, list[int]] = {}
    for k in range(count):
        for big_is_a in (True, False):
            big_aspect, small_aspect = (aspects[k, 0], aspects[k, 1])[:: 1 if big_is_a else -1]
            scales = _scales(float(big_aspect), float(small_aspect), config)
            if scales:
                groups.setdefault((big_is_a, scales), []).append(k)
    hypotheses: dict[int, list[_Hypothesis]] = {k: [] for k in range(count)}
    for (big_is_a, scales), members in groups.items():
        pairs = np.array(members)
        big, small = (ya[pairs], yb[pairs]) if big_is_a else (yb[pairs], ya[pairs])
        for hyp in _coarse(big, small, pairs, big_is_a, scales, config):
            hypotheses[hyp.pair].append(hyp)
    ncc = np.full(count, -1.0, dtype=np.float32)
    residual = np.full(count, np.inf, dtype=np.float32)
    chosen = []
    for k in range(count):
        best = sorted(hypotheses[k], key=lambda h: -h.score)[: config.refine_top]
        if best and best[0].score < config.min_coarse_ncc:
            ncc[k] = best[0].score  # refuted at the coarse scale, its worst tile unmeasured
        else:
            chosen += best
    refined = _refine(ya, yb, chosen, config)
    worst = _fit_residuals(a, b, list(refined.values()), colour, config.tiles)
    for k, fit in refined.items():
        ncc[k], residual[k] = fit.score, worst[k]
    return ncc, residual


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Thresholds:
    min_ncc: float = 0.90
    max_tile_residual: float = 16.0


def verify_stacks(
    a: np.ndarray,
    b: np.ndarray,
    aspects: np.ndarray,
    config: VerifyConfig = VerifyConfig(),
    thresholds: Thresholds = Thresholds(),
) -> tuple[np.ndarray, np.ndarray]:
    """(passed, how, turn) for each pair of stacked thumbnails: ``how`` is 1 where the
    full-frame pass confirmed the pair, 2 where the crop search did, 0 where neither (refuted);
    ``turn``: the full-frame turn of B that fits A (what :func:`detail_residual` takes)."""
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    colour = is_colour(a) & is_colour(b)
    ncc, worst, turn = full_frame(a, b, colour, config.tiles)
    how = np.where(
        (ncc >= thresholds.min_ncc) & (worst <= thresholds.max_tile_residual), 1, 0
    ).astype(np.int8)
    rest = np.flatnonzero(how == 0)
    if rest.size:
        ncc2, worst2 = crop_search(a[rest], b[rest], aspects[rest], colour[rest], config)
        found = (ncc2 >= thresholds.min_ncc) & (worst2 <= thresholds.max_tile_residual)
        how[rest[found]] = 2
    return how > 0, how, turn


def align(a: Thumbnail, b: Thumbnail, config: VerifyConfig = VerifyConfig()) -> tuple[float, float]:
    """(NCC, worst tile) of one pair at its best fit: the full-frame turn when that is the
    better correlation, otherwise the best crop alignment."""
    sa, sb = a.pixels[None].astype(np.float32), b.pixels[None].astype(np.float32)
    colour = is_colour(sa) & is_colour(sb)
    ncc, worst, _ = full_frame(sa, sb, colour, config.tiles)
    ncc2, worst2 = crop_search(sa, sb, np.array([[a.aspect, b.aspect]]), colour, config)
    if ncc2[0] > ncc[0]:
        return float(ncc2[0]), float(worst2[0])
    return float(ncc[0]), float(worst[0])


# --------------------------------------------------------------------------- detail check


def detail_view(image: Image.Image, cap: int) -> np.ndarray:
    """(h, w) uint8 grey levels of an image at its own resolution, its longest side at most
    ``cap`` (area average): what the detail check compares."""
    grey = image.convert("L")
    scale = cap / max(grey.size)
    if scale < 1.0:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.uint8)


def detail_residual(a: np.ndarray, b: np.ndarray, turn: int) -> tuple[float, float]:
    """(worst, contrast) of two detail views, in grey levels and as a ratio: B turned by
    ``turn`` (:func:`full_frame`), both area-averaged to the smaller one's resolution, B fitted
    to A by a gain and an offset (and A to B); ``worst`` is the largest mean *signed* residual
    of any 2 x 2 window, ``contrast`` that worst against the pair's own residual level (its
    99th percentile window, plus 2 grey levels).

    Resampling filters (Lanczos ringing, area averaging) and JPEG leave residuals that swing in
    sign across an edge, so a small signed mean cancels most of them; a glyph or a bar edge that
    one image has and the other lacks leaves a residual of one sign over its whole stroke, and
    stands out of the pair's residual level (a textured photo's copy is uniformly noisy)."""
    b = _turn(b, turn)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    x = _resize(a[None].astype(np.float32), h, w)[0]
    y = _resize(b[None].astype(np.float32), h, w)[0]
    x, y = x - x.mean(), y - y.mean()
    worst, level = 0.0, 0.0
    for p, q in ((x, y), (y, x)):
        residual = p - q * ((p * q).mean() / max(float((q * q).mean()), 1e-6))
        if min(h, w) >= 2:  # the 2 x 2 window means, summed in the order np.mean sums them
            top, bottom = residual[:-1], residual[1:]
            pairs = (top[:, :-1] + top[:, 1:]) + (bottom[:, :-1] + bottom[:, 1:])
            residual = pairs / np.float32(4)
        windows = np.abs(residual)
        worst = max(worst, float(windows.max()))
        level = max(level, float(np.percentile(windows, 99)))
    return worst, worst / (level + 2.0)


def detail_residuals(a: list[np.ndarray], b: list[np.ndarray], turns: list[int]) -> np.ndarray:
    """(P, 2) :func:`detail_residual` (worst, contrast) of each pair of detail views: one batch
    of the detail check, a module-level function so that a worker process or a Ray task runs
    it; each row depends on its pair only."""
    rows = [detail_residual(x, y, t) for x, y, t in zip(a, b, turns, strict=True)]
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


ThumbnailLoader = Callable[[list[ImageKey]], dict[ImageKey, Thumbnail]]
# keys, cap -> (key, detail_view) of each key that loads, in one streaming pass, in the order
# the stream meets them (the caller drops a view once its pairs are done)
DetailLoader = Callable[[list[ImageKey], int], Iterator[tuple[ImageKey, np.ndarray]]]
# mapper(fn, [args of each batch]) -> results in order: a distributed engine's map (e.g. one
# Ray task per batch) instead of the local process pool; fn is verify_stacks or
# detail_residuals
BatchMapper = Callable[[Callable, list[tuple]], Iterable]
MIN_POOL_BATCHES = 4
# pairs per detail-check batch: ~10 ms a pair at 400x300, and the views of the batches in
# flight (up to 2 x workers) are held on top of the detail budget
DETAIL_BATCH = 16


def _run_batches(
    fn: Callable,
    batches: Iterable[tuple],
    *,
    pool_workers: int,
    mapper: BatchMapper | None,
    group: int,
) -> Iterator:
    """``fn(*args)`` of each batch, in order: through ``mapper`` ``group`` batches a call, in a
    spawned process pool of ``pool_workers`` (> 1), or in this process. ``batches`` is pulled
    lazily (a pool keeps at most two batches per worker in flight), so a producer that streams
    its inputs holds only what the batches in flight need."""
    if mapper is not None:
        pending: list[tuple] = []
        for args in batches:
            pending.append(args)
            if len(pending) >= group:
                yield from mapper(fn, pending)
                pending = []
        if pending:
            yield from mapper(fn, pending)
    elif pool_workers > 1:
        # spawn, not fork: the caller may hold torch/faiss threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(pool_workers, mp_context=context) as pool:
            futures: deque = deque()
            for args in batches:
                futures.append(pool.submit(fn, *args))
                if len(futures) >= 2 * pool_workers:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
    else:
        for args in batches:
            yield fn(*args)


def _component_order(pairs: Iterable[tuple[ImageKey, ImageKey]]) -> list[tuple]:
    """``pairs`` sorted by connected component (then pair): a pass's images then share many
    pairs, so first-fit packing (:func:`_one_pass`) splits few neighbourhoods."""
    pairs = sorted(pairs)
    keys = sorted({k for pair in pairs for k in pair})
    index = {k: n for n, k in enumerate(keys)}
    rows = np.array([index[a] for a, _ in pairs], dtype=np.int64)
    cols = np.array([index[b] for _, b in pairs], dtype=np.int64)
    graph = coo_array((np.ones(len(pairs)), (rows, cols)), shape=(len(keys), len(keys)))
    _, label = connected_components(graph, directed=False)
    return [pair for _, pair in sorted(zip(label[rows].tolist(), pairs, strict=True))]


def _one_pass(pairs: list[tuple], limit: int) -> tuple[list[tuple], list[tuple]]:
    """(the pairs of one pass, the rest): first fit, in order, of the pairs whose images
    together number at most ``limit`` (>= 2, so the first pair always fits)."""
    keys: set[ImageKey] = set()
    now, rest = [], []
    for pair in pairs:
        new = len(set(pair) - keys)
        if len(keys) + new <= limit:
            keys.update(pair)
            now.append(pair)
        else:
            rest.append(pair)
    return now, rest


class PairVerifier:
    """Checks image pairs by alignment, loading thumbnails once and caching verdicts.

    Pairs are verified ``batch_size`` at a time on stacked thumbnails; with ``workers`` > 1 and
    at least ``MIN_POOL_BATCHES`` batches of new pairs, batches go to a process pool; a
    ``mapper`` sends them to another engine instead (deterministic either way: each pair's
    verdict does not depend on its batch). A pair passes when its
    best alignment reaches ``min_ncc`` and no tile of the aligned images differs by more than
    ``max_tile_residual`` grey levels. A pair whose thumbnails cannot be loaded keeps its
    candidate status (the check can refute, not confirm, a match) and is counted as
    unverifiable.

    When the loader also loads detail views (a ``details`` attribute, as
    :func:`batches_thumbnail_loader`'s) and ``max_detail_residual`` is set, a pair the
    full-frame pass confirmed is compared again at the smaller image's resolution (up to
    ``detail_size``, :func:`detail_residual`) and refuted when its worst 2 x 2 window exceeds
    ``max_detail_residual`` grey levels and ``min_detail_contrast`` times the pair's residual
    level: two charts, documents or screens from one template differ in a few glyphs that a
    64 px thumbnail averages away.

    The detail check streams the loader's batches as few times as ``detail_budget_bytes``
    allows: a pass holds the views of at most ``detail_budget_bytes // detail_size**2``
    images (each counted at the largest view), evaluates a pair as soon as the stream has met
    both its images and drops a view once its pairs of the pass are done; only the pairs whose
    images do not fit with the others wait for a further pass. The residuals are computed
    ``DETAIL_BATCH`` pairs a batch in the same process pool or ``mapper`` as the thumbnails
    (each pair's verdict depends on its two views only, so it is the same whatever the
    batching, the passes or the engine).
    """

    def __init__(
        self,
        loader: ThumbnailLoader,
        config: VerifyConfig = VerifyConfig(),
        *,
        min_ncc: float = 0.90,
        max_tile_residual: float = 16.0,
        max_detail_residual: float | None = 35.0,
        min_detail_contrast: float = 4.6,
        detail_size: int = 512,
        detail_budget_bytes: int = 256 * 2**20,
        batch_size: int = 256,
        workers: int = 1,
        mapper: BatchMapper | None = None,
    ) -> None:
        self.loader = loader
        self.details: DetailLoader | None = getattr(loader, "details", None)
        self.mapper = mapper
        self.config = config
        self.thresholds = Thresholds(min_ncc, max_tile_residual)
        self.max_detail_residual = max_detail_residual
        self.min_detail_contrast = min_detail_contrast
        self.detail_size = detail_size
        self.detail_budget_bytes = detail_budget_bytes
        self.batch_size = batch_size
        self.workers = workers
        # held only during a check() call: memory holds the thumbnails of one call's pairs
        self.thumbnails: dict[ImageKey, Thumbnail] = {}
        self.verdicts: dict[tuple[ImageKey, ImageKey], bool] = {}
        self.unverifiable = 0
        self.full_frame = 0
        self.crop = 0
        self.detail_checked = 0
        self.detail_refuted = 0
        self.detail_passes = 0
        self.seconds = 0.0

    def _stacks(self, pairs: list[tuple[ImageKey, ImageKey]]):
        a = np.stack([self.thumbnails[x].pixels for x, _ in pairs])
        b = np.stack([self.thumbnails[y].pixels for _, y in pairs])
        aspects = np.array(
            [[self.thumbnails[x].aspect, self.thumbnails[y].aspect] for x, y in pairs]
        )
        return a, b, aspects, self.config, self.thresholds

    def _verify(self, pairs: list[tuple[ImageKey, ImageKey]]) -> list[tuple[tuple, int]]:
        """Verdicts of ``pairs`` on thumbnails; returns (pair, turn) of the pairs the
        full-frame pass confirmed."""
        chunks = [pairs[k : k + self.batch_size] for k in range(0, len(pairs), self.batch_size)]
        # a spawned worker costs ~1-2 s to start: worth it from a few batches of work on
        pool = min(self.workers, len(chunks)) if len(chunks) >= MIN_POOL_BATCHES else 1
        results = _run_batches(
            verify_stacks,
            (self._stacks(c) for c in chunks),
            pool_workers=pool,
            mapper=self.mapper,
            group=max(1, len(chunks)),
        )
        full: list[tuple[tuple, int]] = []
        for chunk, (passed, how, turn) in zip(chunks, results, strict=True):
            self.full_frame += int((how == 1).sum())
            self.crop += int((how == 2).sum())
            self.verdicts.update(zip(chunk, passed.tolist(), strict=True))
            full += [(chunk[k], int(turn[k])) for k in np.flatnonzero(how == 1).tolist()]
        return full

    def _check_details(self, confirmed: list[tuple[tuple, int]]) -> None:
        """Refute the confirmed pairs whose detail views differ (see the class doc)."""
        if self.details is None or self.max_detail_residual is None or not confirmed:
            return
        turns = dict(confirmed)
        batches: deque[list[tuple]] = deque()  # the pairs of each batch handed out, in order
        pool = self.workers if len(turns) >= MIN_POOL_BATCHES * DETAIL_BATCH else 1
        results = _run_batches(
            detail_residuals,
            self._detail_batches(turns, batches),
            pool_workers=pool,
            mapper=self.mapper,
            group=2 * max(1, self.workers),
        )
        for scores in results:
            for pair, (worst, contrast) in zip(batches.popleft(), scores.tolist(), strict=True):
                self.detail_checked += 1
                if worst > self.max_detail_residual and contrast > self.min_detail_contrast:
                    self.detail_refuted += 1
                    self.verdicts[pair] = False

    def _detail_batches(self, turns: dict[tuple, int], handed: deque) -> Iterator[tuple]:
        """Arguments of :func:`detail_residuals` for every pair of ``turns`` whose two views
        load, streaming the batches once per pass (class doc); the pairs of each batch are
        appended to ``handed``. A pair with an image that does not load is left as it is."""
        limit = max(2, self.detail_budget_bytes // (self.detail_size * self.detail_size))
        remaining = _component_order(turns)
        while remaining:
            now, remaining = _one_pass(remaining, limit)
            self.detail_passes += 1
            of_key: dict[ImageKey, list[tuple]] = {}
            for pair in now:
                for key in set(pair):
                    of_key.setdefault(key, []).append(pair)
            left = {key: len(pairs) for key, pairs in of_key.items()}
            held: dict[ImageKey, np.ndarray] = {}
            ready: list[tuple] = []  # (pair, view A, view B): a batch keeps its own views
            for key, view in self.details(sorted(of_key), self.detail_size):
                if key in held or key not in left:  # met twice, or already done
                    continue
                held[key] = view
                done = []
                for pair in of_key[key]:
                    if pair[0] in held and pair[1] in held:
                        ready.append((pair, held[pair[0]], held[pair[1]]))
                        for k in set(pair):
                            left[k] -= 1
                            if left[k] == 0:
                                done.append(k)
                    if len(ready) == DETAIL_BATCH:
                        yield self._detail_args(ready, turns, handed)
                        ready = []
                for k in done:
                    del held[k], left[k]
            if ready:
                yield self._detail_args(ready, turns, handed)
            del held  # the views of pairs whose other image did not load

    @staticmethod
    def _detail_args(ready: list[tuple], turns: dict[tuple, int], handed: deque) -> tuple:
        handed.append([pair for pair, _, _ in ready])
        return (
            [a for _, a, _ in ready],
            [b for _, _, b in ready],
            [turns[pair] for pair, _, _ in ready],
        )

    def check(self, pairs: list[tuple[ImageKey, ImageKey]]) -> list[bool]:
        started = time.perf_counter()
        ordered = [(a, b) if a <= b else (b, a) for a, b in pairs]
        new = sorted({p for p in ordered if p not in self.verdicts})
        missing = sorted({k for pair in new for k in pair})
        if missing:
            self.thumbnails = self.loader(missing)
        checkable = []
        for pair in new:
            if pair[0] in self.thumbnails and pair[1] in self.thumbnails:
                checkable.append(pair)
            else:
                self.unverifiable += 1
                self.verdicts[pair] = True
        confirmed = self._verify(checkable)
        self.thumbnails = {}
        self._check_details(confirmed)
        self.seconds += time.perf_counter() - started
        return [self.verdicts[p] for p in ordered]

    def stats(self) -> dict[str, float | int]:
        passed = sum(self.verdicts.values())
        return {
            "pairs_checked": len(self.verdicts),
            "pairs_passed": passed,
            "pairs_refuted": len(self.verdicts) - passed,
            "passed_full_frame": self.full_frame,
            "passed_crop": self.crop,
            "detail_checked": self.detail_checked,
            "refuted_by_detail": self.detail_refuted,
            "detail_passes": self.detail_passes,
            "unverifiable": self.unverifiable,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "batch_size": self.batch_size,
        }


def default_workers() -> int:
    """Worker processes for verification: the CPUs this process may use, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


class _BatchesLoader:
    """Thumbnails (call) and detail views (``details``) of keys, streaming ``open_batches()``
    once per call (``details``: lazily, one view at a time)."""

    def __init__(self, open_batches: Callable[[], Iterable], size: int) -> None:
        self.open_batches = open_batches
        self.size = size

    def __call__(self, keys: list[ImageKey]) -> dict[ImageKey, Thumbnail]:
        return thumbnails_from_batches(self.open_batches(), keys, self.size)

    def details(self, keys: list[ImageKey], cap: int) -> Iterator[tuple[ImageKey, np.ndarray]]:
        return _iter_decoded(self.open_batches(), keys, lambda image: detail_view(image, cap))


def batches_thumbnail_loader(
    open_batches: Callable[[], Iterable], size: int = VerifyConfig.fine
) -> ThumbnailLoader:
    """A loader that streams ``open_batches()`` (record batches with ``sample_id`` and
    ``images``, e.g. every partition of ``cleaned_samples``) once per call; it also loads
    the detail views :class:`PairVerifier` compares (``details``)."""
    return _BatchesLoader(open_batches, size)


def thumbnails_from_batches(
    batches: Iterable, keys: Iterable[ImageKey], size: int = VerifyConfig.fine
) -> dict[ImageKey, Thumbnail]:
    """Stream unified batches (``sample_id``, ``images``) and keep thumbnails of ``keys`` only:
    memory holds ~12 KB per wanted image, never the partition."""
    return _decoded_from_batches(batches, keys, lambda image: thumbnail(image, size))


def _decoded_from_batches(batches: Iterable, keys: Iterable[ImageKey], make: Callable) -> dict:
    return dict(_iter_decoded(batches, keys, make))


def _iter_decoded(batches: Iterable, keys: Iterable[ImageKey], make: Callable) -> Iterator:
    """(key, make(image)) of each of ``keys`` whose image decodes, in stream order."""
    wanted: dict[str, set[int]] = {}
    for sample_id, index in keys:
        wanted.setdefault(sample_id, set()).add(index)
    for batch in batches:
        ids = batch.column("sample_id").to_pylist()
        hits = [k for k, s in enumerate(ids) if s in wanted]
        if not hits:
            continue
        images = batch.column("images").take(hits).to_pylist()
        for k, sample_images in zip(hits, images, strict=True):
            for index in wanted[ids[k]]:
                if sample_images and index < len(sample_images) and sample_images[index]:
                    try:
                        image = decode_rgb(sample_images[index].get("bytes"))
                    except ImageDecodeError:
                        continue
                    yield (ids[k], index), make(image)
