"""Train a small SSCD-style copy detector on CPU and export it as TorchScript.

Why: the published SSCD models cannot be downloaded here (and tests never download), yet the
demo's near-duplicates (resize, JPEG re-encode, crop up to 20% of the area, horizontal flip)
need a copy-detection embedding that means something. This trains one, self-supervised, on
images only (no labels, no knowledge of which images are planted copies):

* **Instance discrimination** (SimCLR / SSCD): two augmented views of each image should embed
  close, views of different images far apart (InfoNCE with a temperature), plus SSCD's KoLeo
  entropy term that spreads embeddings so unrelated images stay far.
* **Augmentations** are the copy transforms the detector must ignore: random crop keeping 60-100%
  of the area (the demo removes at most 20%), horizontal flip, downscale-then-upscale, JPEG at
  quality 20-80, mild colour jitter (brightness, contrast, saturation).
* **Hard negatives**: every 50 steps the model embeds all images and half of each batch is
  filled with images and their nearest look-alikes (bar charts with one palette, screens of one
  app), so the loss learns to separate them. Neighbours above a similarity guard are skipped:
  they may be copies inside the training set itself.
* **Flip invariance by construction**: the exported module returns
  ``normalize(f(x) + f(mirror(x)))``, so an image and its mirror image embed identically.
* **Small input** (64 px by default) and a patchify stem keep a run short on CPU: the default
  160 steps on ~1,400 demo images took 453 s on two cores shared with other jobs (about 0.7 s
  a step when the cores are free, i.e. about 2 minutes). Such a coarse descriptor also matches
  look-alikes; the dedup stage's pixel verification (``fineharbor.core.dedup.verify``) removes
  them, so the detector only has to find every copy among its candidates.

The export is a TorchScript module that :class:`~fineharbor.core.signatures.embedders.
SscdEmbedder` loads like a published SSCD file: same ImageNet normalisation, skewing square
resize, L2-normalised output; the module carries an ``input_size`` attribute that the embedder
reads instead of SSCD's 320.

Run ``python -m fineharbor.core.signatures.train_copy_detector --images DIR --out FILE``.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from fineharbor.core.signatures.embedders import IMAGENET_MEAN, IMAGENET_STD
from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class TrainConfig:
    """Model size, augmentation strengths and optimisation of the demo copy detector."""

    input_size: int = 64
    channels: tuple[int, int, int, int] = (32, 48, 96, 192)
    embedding_dim: int = 128
    steps: int = 160
    batch_images: int = 96  # images per step; two views each
    lr: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    koleo_weight: float = 0.1  # SSCD's entropy regulariser (their 30 is for a 512-d ResNet50)
    min_crop_area: float = 0.6
    crop_probability: float = 0.8
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (20, 80)
    rescale_probability: float = 0.3
    jitter_probability: float = 0.5
    jitter: float = 0.15
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch's default
    base_size_factor: float = 2.0  # images are kept at this multiple of input_size for crops
    hard_negative_every: int = 50  # steps between neighbour mining; 0 = random batches only
    hard_negative_k: int = 7  # neighbours drawn with each anchor
    hard_fraction: float = 0.5  # share of each batch made of anchors and their neighbours
    hard_negative_guard: float = 0.95  # neighbours more similar than this are not used
    log_every: int = 25


# --------------------------------------------------------------------------- images


def images_from_folder(root: str | Path) -> Iterable[bytes]:
    """Encoded images under ``root`` (recursive), in sorted path order for determinism."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path.read_bytes()


def load_images(items: Iterable[bytes | Image.Image], base_size: int) -> np.ndarray:
    """Decode and skew-resize every image to ``base_size``²; undecodable ones are skipped.

    The skewing resize is what the embedder does too (SSCD's ``Resize([s, s])``), and an
    axis-aligned crop commutes with it, so cropping the square base equals cropping the
    original and then resizing.
    """
    bases = []
    for item in items:
        try:
            image = item if isinstance(item, Image.Image) else decode_rgb(item)
        except ImageDecodeError:
            continue
        image = image.convert("RGB").resize((base_size, base_size), Image.Resampling.BICUBIC)
        bases.append(np.asarray(image, dtype=np.uint8))
    if len(bases) < 2:
        raise ValueError(f"need at least 2 decodable images to train, got {len(bases)}")
    return np.stack(bases)


class CopyAugment:
    """One random copy-like view of a base image, as a normalised tensor."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32)

    def _crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        c = self.config
        if rng.random() >= c.crop_probability:
            return image
        w, h = image.size
        area = rng.uniform(c.min_crop_area, 1.0)
        aspect = math.exp(rng.uniform(-0.15, 0.15))  # copies keep roughly the aspect ratio
        cw = min(w, max(8, round(w * math.sqrt(area * aspect))))
        ch = min(h, max(8, round(h * math.sqrt(area / aspect))))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch))

    def _jitter(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        c = self.config
        if rng.random() >= c.jitter_probability:
            return image
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(1.0 + rng.uniform(-c.jitter, c.jitter))
        return image

    def _jpeg(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        c = self.config
        if rng.random() >= c.jpeg_probability:
            return image
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1])))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    def __call__(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        size = c.input_size
        image = self._crop(Image.fromarray(base), rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < c.rescale_probability:  # the resize copies lose detail
            small = max(8, round(size * rng.uniform(0.5, 0.9)))
            image = image.resize((small, small), Image.Resampling.BILINEAR)
        resample = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[int(rng.integers(2))]
        image = image.resize((size, size), resample)
        image = self._jpeg(self._jitter(image, rng), rng)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return ((array - self.mean) / self.std).transpose(2, 0, 1)


# --------------------------------------------------------------------------- model


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class GeM(nn.Module):
    """Generalised-mean pooling (SSCD's choice, p=3): between average and max pooling."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x.clamp(min=1e-6).pow(self.p), (x.shape[-2], x.shape[-1]))
        return pooled.pow(1.0 / self.p).flatten(1)


class Backbone(nn.Module):
    """Patchify stem (4x4, stride 4) then three conv stages: ~0.7 M parameters."""

    def __init__(self, channels: tuple[int, int, int, int], embedding_dim: int) -> None:
        super().__init__()
        a, b, c, d = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, a, 4, 4, bias=False),
            nn.BatchNorm2d(a),
            nn.ReLU(inplace=True),
            *_conv_bn_relu(a, b),
            *_conv_bn_relu(b, c, 2),
            *_conv_bn_relu(c, c),
            *_conv_bn_relu(c, d, 2),
            *_conv_bn_relu(d, d),
        )
        self.pool = GeM()
        self.head = nn.Linear(d, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class CopyDetector(nn.Module):
    """The exported module: flip-symmetric, L2-normalised embedding of a normalised image batch.

    ``input_size`` is a TorchScript attribute that ``SscdEmbedder`` reads to size its resize
    (an int set in ``__init__``: TorchScript infers its type from the value).
    """

    def __init__(self, backbone: Backbone, input_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.backbone(x) + self.backbone(torch.flip(x, dims=[3]))
        return F.normalize(both, dim=1)


# --------------------------------------------------------------------------- training


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over 2N views: each view's positive is its pair, the rest negatives."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def koleo(z: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (SSCD): penalise each embedding's nearest neighbour
    being close, spreading unrelated images over the sphere."""
    z = F.normalize(z, dim=1)
    sims = z @ z.t()
    sims.fill_diagonal_(-2.0)
    nearest = sims.max(dim=1).values
    distances = torch.sqrt(torch.clamp(2 - 2 * nearest, min=1e-8))
    return -torch.log(distances).mean()


class HardNegativeSampler:
    """Batches of images for instance discrimination.

    Random batches rarely hold two look-alikes (two bar charts with the same palette, two GUI
    screens of one app), so the loss never learns to tell them apart. Every
    ``hard_negative_every`` steps the current model embeds all images once, and afterwards
    ``hard_fraction`` of each batch is filled with anchors plus their nearest neighbours: the
    look-alikes become each other's negatives. The rest stays random, epoch by epoch.
    """

    def __init__(self, bases: np.ndarray, config: TrainConfig, rng: np.random.Generator):
        self.bases = bases
        self.config = config
        self.rng = rng
        self.batch = min(config.batch_images, len(bases))
        self.order = rng.permutation(len(bases))
        self.cursor = 0
        self.neighbours: list[np.ndarray] | None = None

    @torch.no_grad()
    def mine(self, model: nn.Module) -> None:
        c = self.config
        size = c.input_size
        mean = np.asarray(IMAGENET_MEAN, np.float32)
        std = np.asarray(IMAGENET_STD, np.float32)
        was_training = model.training
        model.eval()
        chunks = []
        for start in range(0, len(self.bases), 256):
            images = [
                np.asarray(Image.fromarray(b).resize((size, size), Image.Resampling.BILINEAR))
                for b in self.bases[start : start + 256]
            ]
            pixels = ((np.stack(images).astype(np.float32) / 255.0 - mean) / std).transpose(
                0, 3, 1, 2
            )
            chunks.append(F.normalize(model(torch.from_numpy(pixels)), dim=1))
        model.train(was_training)
        z = torch.cat(chunks)
        sims = z @ z.t()
        sims.fill_diagonal_(-2.0)
        k = min(c.hard_negative_k, len(self.bases) - 1)
        values, indices = sims.topk(k, dim=1)
        # Neighbours above the guard are likely copies of each other (the training images may
        # hold duplicates too): making them negatives would teach the model to split copies.
        keep = (values < c.hard_negative_guard).numpy()
        self.neighbours = [row[ok] for row, ok in zip(indices.numpy(), keep, strict=True)]

    def _random(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self.cursor >= len(self.order):  # epoch boundary: reshuffle
                self.order, self.cursor = self.rng.permutation(len(self.bases)), 0
            take = self.order[self.cursor : self.cursor + count - len(out)]
            self.cursor += len(take)
            out += [int(i) for i in take]
        return out

    def next_batch(self) -> np.ndarray:
        if self.neighbours is None:
            picked = self._random(self.batch)
        else:
            hard: list[int] = []
            seen: set[int] = set()
            target = round(self.batch * self.config.hard_fraction)
            while len(hard) < target:
                anchor = int(self.rng.integers(len(self.bases)))
                for i in (anchor, *self.neighbours[anchor].tolist()):
                    if i not in seen and len(hard) < target:
                        seen.add(i)
                        hard.append(i)
            rest = [i for i in self._random(self.batch) if i not in seen]
            picked = hard + rest[: self.batch - len(hard)]
        return np.asarray(picked)


def train_copy_detector(
    images: np.ndarray | Iterable[bytes | Image.Image],
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int, float], None] | None = None,
) -> CopyDetector:
    """Train on ``images`` (encoded, PIL, or a (N, B, B, 3) uint8 array from
    :func:`load_images`) and return the eval-mode flip-symmetric module."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    base_size = round(config.input_size * config.base_size_factor)
    bases = images if isinstance(images, np.ndarray) else load_images(images, base_size)
    augment = CopyAugment(config)
    model = Backbone(config.channels, config.embedding_dim)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    sampler = HardNegativeSampler(bases, config, rng)
    model.train()
    started = time.perf_counter()
    for step in range(config.steps):
        if config.hard_negative_every and step and step % config.hard_negative_every == 0:
            sampler.mine(model)
        picked = sampler.next_batch()
        views = [np.stack([augment(bases[i], rng) for i in picked]) for _ in range(2)]
        a = model(torch.from_numpy(views[0]))
        b = model(torch.from_numpy(views[1]))
        loss = info_nce(a, b, config.temperature)
        if config.koleo_weight > 0:
            loss = loss + config.koleo_weight * 0.5 * (koleo(a) + koleo(b))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        value = loss.item()
        if progress is not None:
            progress(step, value)
        if config.log_every and (step % config.log_every == 0 or step == config.steps - 1):
            elapsed = time.perf_counter() - started
            log.info("step %d/%d loss %.4f (%.0f s)", step + 1, config.steps, value, elapsed)
    return CopyDetector(model, config.input_size).eval()


def export_torchscript(model: CopyDetector, path: str | Path) -> Path:
    """Script ``model`` and save it where ``SscdEmbedder`` can load it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream, but TorchScript is the format SSCD models ship in
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model.eval())
    tmp = out.with_name(f".{out.name}.tmp")
    scripted.save(str(tmp))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of training images (recursive)")
    parser.add_argument("--out", required=True, help="output file, e.g. copy.torchscript.pt")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig(steps=args.steps, input_size=args.input_size, seed=args.seed)
    model = train_copy_detector(images_from_folder(args.images), config)
    print(export_torchscript(model, args.out))


if __name__ == "__main__":
    main()
