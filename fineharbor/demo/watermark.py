"""A small watermark detector trained for the demo, so ``pwatermark`` means something there
without LAION's weights.

Real deployments name LAION-5B's ``watermark_model_v1.pt`` in ``stages.signals.watermark_path``.
The demo cannot download it, so ``fineharbor demo`` calls :func:`train_demo_watermark`: a small
CNN learns to tell images with a visible watermark from clean ones on images drawn by the demo's
generators from a seed of their own (:func:`fineharbor.demo.generate.pretraining_corpus`),
each image once clean and once with a watermark drawn by
:func:`fineharbor.demo.images.watermark` — never on the demo's samples or its ground truth.
It is exported as TorchScript with LAION's output convention (two logits, index 0 =
watermarked) and loads through the same loader as LAION's file
(:class:`fineharbor.core.quality.signals.WatermarkScorer`). :func:`planted_watermark_auc` then
scores the planted ``watermark`` samples against the clean samples of their sources, from
``scored_samples.pwatermark``.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from pydantic import Field
from torch import nn

from fineharbor.core.pipeline import SCORED
from fineharbor.core.strict import StrictModel

WATERMARK_DEFECT = "watermark"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DemoWatermarkConfig(StrictModel):
    """Size and schedule of the demo detector (about 2.5 minutes on 2 idle threads)."""

    image_size: int = Field(96, ge=32, le=512, description="square input side")
    images: int = Field(
        150, ge=2, description="pretraining images, each cropped 4 ways, clean and watermarked"
    )
    steps: int = Field(
        900,
        ge=1,
        description="optimiser steps; 450 left the net underfitted (train accuracy 0.84, planted "
        "AUC 0.87), 900 fits it (0.96, planted AUC 1.0: bench/watermark_auc.py)",
    )
    batch_size: int = Field(32, ge=2)
    width: int = Field(16, ge=4, le=128, description="channels of the first convolution")
    learning_rate: float = Field(3e-3, gt=0)
    threads: int = Field(2, ge=1, le=64)


class DemoWatermarkNet(nn.Module):
    """Four strided convolutions, then max and mean pooling: a watermark is a local pattern
    anywhere in the image, and max pooling finds it wherever it is."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width, width * 2, width * 4, width * 4]
        for i in range(4):
            stride = 1 if i == 3 else 2
            layers += [
                nn.Conv2d(channels[i], channels[i + 1], 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels[i + 1]),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1))


def _square(image: Image.Image, side: int) -> np.ndarray:
    """The scorer's resize (``SquareResize``: skewing, bicubic) as uint8, after a JPEG round
    trip like the demo's files, so training sees the pixels scoring will."""
    from fineharbor.demo import images as demo_images

    rgb = demo_images.decode(demo_images.encode(image, "jpeg", 90))
    return np.asarray(rgb.resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)


def training_images(
    count: int, seed: int, side: int, variants: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """``2 * count * variants`` images (n, side, side, 3) uint8 and labels (0 = watermarked,
    LAION's index): each pretraining image cropped ``variants`` ways, each crop clean and with a
    watermark of its own (drawing scenes is the slow part; crops and overlays are cheap)."""
    from fineharbor.demo import images as demo_images
    from fineharbor.demo.generate import pretraining_corpus

    corpus_seed = int.from_bytes(hashlib.sha256(f"demo-watermark/{seed}".encode()).digest()[:4])
    pixels, labels = [], []
    for i, (data, _) in enumerate(pretraining_corpus(count, corpus_seed)):
        rng = np.random.default_rng([corpus_seed, i])
        image = demo_images.decode(data)
        w, h = image.size
        for _ in range(variants):
            share = rng.uniform(0.75, 1.0)
            cw, ch = int(w * share), int(h * share)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image.crop((x, y, x + cw, y + ch))
            marked, _ = demo_images.watermark(crop, rng)
            pixels += [_square(crop, side), _square(marked, side)]
            labels += [1, 0]
    return np.stack(pixels), np.array(labels, dtype=np.int64)


def _normalise(batch: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class WatermarkTraining:
    steps: int
    images: int
    loss: float
    train_accuracy: float
    seconds: float


def train_demo_watermark(
    target: str | Path, seed: int = 0, config: DemoWatermarkConfig | None = None
) -> WatermarkTraining:
    """Train the detector and write it as TorchScript at ``target`` (staged, then renamed: a
    killed run leaves no half-written file). Same seed and config: same weights."""
    config = config or DemoWatermarkConfig()
    started = time.perf_counter()
    pixels, labels = training_images(config.images, seed, config.image_size)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DemoWatermarkNet(config.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.steps
    )
    y = torch.from_numpy(labels)
    loss_value = float("nan")
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        model.train()
        for _ in range(config.steps):
            chosen = torch.randint(len(labels), (config.batch_size,), generator=generator)
            x = _normalise(pixels[chosen.numpy()])
            flip = torch.rand(len(chosen), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)  # mirrored text still marks
            loss = nn.functional.cross_entropy(model(x), y[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_value = float(loss.item())
        model.eval()
        with torch.inference_mode():
            predicted = torch.cat(
                [model(_normalise(pixels[i : i + 128])).argmax(1) for i in range(0, len(y), 128)]
            )
    finally:
        torch.set_num_threads(previous)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(model).save(str(staging))
    os.replace(staging, target)
    return WatermarkTraining(
        config.steps,
        len(labels),
        loss_value,
        float((predicted == y).float().mean()),
        time.perf_counter() - started,
    )


@dataclass(frozen=True)
class WatermarkAuc:
    """ROC AUC of ``pwatermark``: planted watermarks against the clean samples of their
    sources."""

    auc: float
    watermarked: int
    clean: int


def planted_watermark_auc(storage, truth_path: str | Path) -> WatermarkAuc | None:
    """From ``scored_samples``; None when there is nothing to score (no planted watermark
    reached scoring, or ``pwatermark`` is null: no watermark model configured)."""
    from fineharbor.core.quality.metrics import roc_auc
    from fineharbor.core.stored import read_stage_table

    truth = pq.read_table(truth_path, columns=["source", "origin_key", "defect"]).to_pylist()
    planted = {(r["source"], r["origin_key"]): r["defect"] for r in truth}
    sources = sorted({s for (s, _), d in planted.items() if d == WATERMARK_DEFECT})
    marked, clean = [], []
    for source in sources:
        if not storage.has_partition(SCORED, source):
            continue
        table = read_stage_table(storage, SCORED, source, columns=["origin_key", "pwatermark"])
        keys, scores = (table.column(c).to_pylist() for c in ("origin_key", "pwatermark"))
        for key, score in zip(keys, scores, strict=True):
            if score is None:
                continue
            defect = planted.get((source, key))
            if defect == WATERMARK_DEFECT:
                marked.append(score)
            elif defect is None:
                clean.append(score)
    if not marked or not clean:
        return None
    return WatermarkAuc(roc_auc(marked, clean), len(marked), len(clean))
