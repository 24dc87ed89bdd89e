"""Geometric verification of near-duplicate candidates: does one image, possibly mirrored,
cover a crop of the other pixel for pixel?

Embeddings and perceptual hashes are made to be robust, so they also match *look-alikes*: two
pie charts with the same palette and nearly the same slices, two renders of one app screen. Copy
detection systems therefore verify candidate pairs (the ISC21 winners used local matching after
the global descriptor). Here the check is dense and cheap, sized to the copy transforms dedup
must tolerate (resize, re-encode, crop of up to ``max_crop_area``, horizontal flip):

1. both images become colour thumbnails (a skewing square resize, like SSCD's input);
2. for each direction (A in B, B in A), mirror or not, and each crop scale allowed by the two
   aspect ratios, the smaller view is slid over the larger at a coarse size and scored by
   normalised cross-correlation (per-channel zero mean, so small colour shifts do not matter);
3. the best coarse hypotheses are refined at the fine size around their offset and scale;
4. at the best fit, a per-channel gain/offset is fitted and the worst tile of a 6 x 6 grid is
   measured (mean absolute difference in grey levels).

A global correlation is dominated by large uniform areas (backgrounds, a pie), so two charts
that differ in one slice and their labels still correlate at ~0.97; the worst tile catches that
local difference, while a true copy differs a little everywhere (noise, resampling). On the demo
(``bench/dedup_quality.py``) planted copies reach a worst tile of at most 14.1, look-alikes at
least 17.7; the stage passes pairs with NCC >= 0.90 and worst tile <= 16.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb

ImageKey = tuple[str, int]  # (sample_id, image_index)


@dataclass(frozen=True)
class Thumbnail:
    """What verification keeps of an image: its size and a fine colour thumbnail."""

    width: int
    height: int
    pixels: np.ndarray  # (fine, fine, 3) float32

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


def thumbnail(image: Image.Image, size: int) -> Thumbnail:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((size, size), Image.Resampling.BOX, reducing_gap=2.0)
    return Thumbnail(rgb.width, rgb.height, np.asarray(small, dtype=np.float32))


def thumbnail_from_bytes(data: bytes | None, size: int) -> Thumbnail | None:
    try:
        return thumbnail(decode_rgb(data), size)
    except ImageDecodeError:
        return None


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    channels = [
        np.asarray(
            Image.fromarray(pixels[..., c]).resize((width, height), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def _ncc_map(big: np.ndarray, template: np.ndarray) -> np.ndarray:
    """NCC of ``template`` against every window of ``big`` (valid positions)."""
    h, w, _ = template.shape
    t = template - template.mean(axis=(0, 1), keepdims=True)
    t_norm = np.sqrt((t * t).sum())
    windows = sliding_window_view(big, (h, w, 3))[:, :, 0]  # (ny, nx, h, w, 3)
    n = h * w
    sums = windows.sum(axis=(2, 3))  # (ny, nx, 3)
    squares = np.einsum("yxhwc,yxhwc->yx", windows, windows)
    centred_sq = squares - (sums * sums).sum(axis=-1) / n
    dot = np.einsum("yxhwc,hwc->yx", windows, t)  # t is zero-mean: window means cancel
    return dot / (np.sqrt(np.maximum(centred_sq, 1e-6)) * t_norm + 1e-6)


def _scales(big: Thumbnail, small: Thumbnail, config: VerifyConfig) -> list[tuple[float, float]]:
    """(kx, ky): the share of the big image's width and height the small one would cover.

    A crop keeps its own aspect ratio, so ky follows from kx and the two images' aspects; the
    rounding of real crops is absorbed by the search's tolerance.
    """
    ratio = big.aspect / small.aspect  # ky / kx
    lowest = 1.0 - config.max_crop_area
    out = []
    kx = 1.0
    while kx >= lowest - 1e-9:
        ky = kx * ratio
        if lowest - 1e-9 <= ky <= 1.0 + 1e-9 and kx * ky >= lowest - 1e-9:
            out.append((kx, min(ky, 1.0)))
        kx = round(kx - config.scale_step, 6)
    if not out:  # aspect ratios too different for a crop: still try the plain resize
        out.append((1.0, 1.0))
    return out


def _search(
    big: Thumbnail, small: Thumbnail, mirrored: bool, config: VerifyConfig
) -> list[tuple[float, float, float, int, int]]:
    """Coarse pass: (score, kx, ky, y, x) for every scale, best offset each."""
    coarse_big = _resize(big.pixels, config.coarse, config.coarse)
    source = small.pixels[:, ::-1] if mirrored else small.pixels
    found = []
    for kx, ky in _scales(big, small, config):
        w = max(4, round(kx * config.coarse))
        h = max(4, round(ky * config.coarse))
        scores = _ncc_map(coarse_big, _resize(np.ascontiguousarray(source), w, h))
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        found.append((float(scores[y, x]), kx, ky, int(y), int(x)))
    return found


def _refine(
    big: Thumbnail, small: Thumbnail, mirrored: bool, hypothesis, config: VerifyConfig
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Fine pass around a coarse hypothesis: (score, big window, template) of the best fit."""
    _, kx, ky, y, x = hypothesis
    factor = config.fine / config.coarse
    source = np.ascontiguousarray(small.pixels[:, ::-1] if mirrored else small.pixels)
    best: tuple[float, np.ndarray | None, np.ndarray | None] = (-1.0, None, None)
    for dk in (-config.scale_step / 2, 0.0, config.scale_step / 2):
        w = min(config.fine, max(4, round((kx + dk) * config.fine)))
        h = min(config.fine, max(4, round(min(1.0, ky + dk * ky / kx) * config.fine)))
        template = _resize(source, w, h)
        cy, cx = round(y * factor), round(x * factor)
        y0, x0 = max(0, cy - 3), max(0, cx - 3)
        y1 = min(config.fine - h, cy + 3)
        x1 = min(config.fine - w, cx + 3)
        if y1 < y0 or x1 < x0:
            continue
        region = big.pixels[y0 : y1 + h, x0 : x1 + w]
        scores = _ncc_map(region, template)
        py, px = np.unravel_index(int(np.argmax(scores)), scores.shape)
        if scores[py, px] > best[0]:
            best = (float(scores[py, px]), region[py : py + h, px : px + w], template)
    return best


def worst_tile_residual(window: np.ndarray, template: np.ndarray, tiles: int = 6) -> float:
    """After a per-channel gain/offset fit, the largest mean absolute residual of any tile of
    a ``tiles`` x ``tiles`` grid, in grey levels: a copy differs a little everywhere (noise,
    resampling), a look-alike a lot somewhere (a slice, a label, a shape)."""
    fitted = np.empty_like(template)
    for c in range(3):
        t, wv = template[..., c].ravel(), window[..., c].ravel()
        var = t.var()
        gain = ((t - t.mean()) * (wv - wv.mean())).mean() / var if var > 1e-6 else 0.0
        fitted[..., c] = (template[..., c] - t.mean()) * gain + wv.mean()
    residual = np.abs(window - fitted).mean(axis=-1)
    h, w = residual.shape
    worst = 0.0
    for ty in range(tiles):
        for tx in range(tiles):
            tile = residual[
                ty * h // tiles : (ty + 1) * h // tiles, tx * w // tiles : (tx + 1) * w // tiles
            ]
            if tile.size:
                worst = max(worst, float(tile.mean()))
    return worst


def alignment_score(a: Thumbnail, b: Thumbnail, config: VerifyConfig = VerifyConfig()) -> float:
    """Best NCC over crop scale, offset, direction and mirroring (see the module doc)."""
    return align(a, b, config)[0]


def align(a: Thumbnail, b: Thumbnail, config: VerifyConfig = VerifyConfig()) -> tuple[float, float]:
    """(best NCC, worst tile residual at that alignment)."""
    hypotheses = []
    for big, small in ((a, b), (b, a)):
        for mirrored in (False, True):
            for found in _search(big, small, mirrored, config):
                hypotheses.append((found, big, small, mirrored))
    hypotheses.sort(key=lambda h: -h[0][0])
    refined = [
        _refine(big, small, mirrored, found, config)
        for found, big, small, mirrored in hypotheses[: config.refine_top]
    ]
    score, window, template = max(refined, key=lambda r: r[0])
    if window is None:
        return score, float("inf")
    return score, worst_tile_residual(window, template)


ThumbnailLoader = Callable[[list[ImageKey]], dict[ImageKey, Thumbnail]]


class PairVerifier:
    """Checks image pairs by alignment, loading thumbnails once and caching verdicts.

    A pair passes when its best alignment reaches ``min_ncc`` and no tile of the aligned
    images differs by more than ``max_tile_residual`` grey levels. A pair whose thumbnails
    cannot be loaded keeps its candidate status (the check can refute, not confirm, a match)
    and is counted as unverifiable.
    """

    def __init__(
        self,
        loader: ThumbnailLoader,
        config: VerifyConfig = VerifyConfig(),
        *,
        min_ncc: float = 0.90,
        max_tile_residual: float = 16.0,
    ) -> None:
        self.loader = loader
        self.config = config
        self.min_ncc = min_ncc
        self.max_tile_residual = max_tile_residual
        self.thumbnails: dict[ImageKey, Thumbnail] = {}
        self.verdicts: dict[tuple[ImageKey, ImageKey], bool] = {}
        self.unverifiable = 0
        self.seconds = 0.0

    def _verdict(self, a: ImageKey, b: ImageKey) -> bool:
        pair = (a, b) if a <= b else (b, a)
        if pair not in self.verdicts:
            ta, tb = self.thumbnails.get(a), self.thumbnails.get(b)
            if ta is None or tb is None:
                self.unverifiable += 1
                self.verdicts[pair] = True
            else:
                score, residual = align(ta, tb, self.config)
                self.verdicts[pair] = score >= self.min_ncc and residual <= self.max_tile_residual
        return self.verdicts[pair]

    def check(self, pairs: list[tuple[ImageKey, ImageKey]]) -> list[bool]:
        started = time.perf_counter()
        missing = sorted({k for pair in pairs for k in pair} - self.thumbnails.keys())
        if missing:
            self.thumbnails.update(self.loader(missing))
        out = [self._verdict(a, b) for a, b in pairs]
        self.seconds += time.perf_counter() - started
        return out

    def stats(self) -> dict[str, float | int]:
        passed = sum(self.verdicts.values())
        return {
            "pairs_checked": len(self.verdicts),
            "pairs_passed": passed,
            "pairs_refuted": len(self.verdicts) - passed,
            "unverifiable": self.unverifiable,
            "seconds": round(self.seconds, 3),
        }


def batches_thumbnail_loader(
    open_batches: Callable[[], Iterable], size: int = VerifyConfig.fine
) -> ThumbnailLoader:
    """A loader that streams ``open_batches()`` (record batches with ``sample_id`` and
    ``images``, e.g. every partition of ``cleaned_samples``) once per call."""

    def load(keys: list[ImageKey]) -> dict[ImageKey, Thumbnail]:
        return thumbnails_from_batches(open_batches(), keys, size)

    return load


def thumbnails_from_batches(
    batches: Iterable, keys: Iterable[ImageKey], size: int = VerifyConfig.fine
) -> dict[ImageKey, Thumbnail]:
    """Stream unified batches (``sample_id``, ``images``) and keep thumbnails of ``keys`` only:
    memory holds ~12 KB per wanted image, never the partition."""
    wanted: dict[str, set[int]] = {}
    for sample_id, index in keys:
        wanted.setdefault(sample_id, set()).add(index)
    out: dict[ImageKey, Thumbnail] = {}
    for batch in batches:
        ids = batch.column("sample_id").to_pylist()
        hits = [k for k, s in enumerate(ids) if s in wanted]
        if not hits:
            continue
        images = batch.column("images").take(hits).to_pylist()
        for k, sample_images in zip(hits, images, strict=True):
            for index in wanted[ids[k]]:
                if sample_images and index < len(sample_images) and sample_images[index]:
                    made = thumbnail_from_bytes(sample_images[index].get("bytes"), size)
                    if made is not None:
                        out[(ids[k], index)] = made
    return out
