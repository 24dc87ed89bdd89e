"""GPU model throughput: end to end (decode + preprocess through the loader + model) vs forward
only, for the copy detector (SSCD), CLIP scoring and the quality classifiers.

    .venv/bin/python bench/embed_throughput.py [--images 2048] [--batch-size 256] [--workers 8]
        [--device auto|cpu|cuda] [--models sscd,clip,classifier,mllm]

Every model has random weights in its published architecture (nothing is downloaded); inputs
are photo-like 640x480 JPEGs generated in memory.

* ``sscd``: a ResNet-50 with a 512-d head (``sscd_disc_mixup``'s architecture), scripted to
  TorchScript and loaded through ``SscdEmbedder``. Forward only: ``embed_tensors`` on 320x320
  tensors already in memory; end to end: ``compute_signatures`` on Arrow batches of encoded
  images, the DataLoader workers decoding, hashing and resizing while the model runs.
* ``clip``: CLIP scoring with open_clip ViT-B/32 (LAION's scoring CLIP): image and caption
  towers and the cosine, as ``scored_samples`` computes ``clip_score``.
* ``classifier``: the same plus the ``clip_mlp`` quality classifier (its features are the
  CLIP's, embedded once per batch, and its text chunks).
* ``mllm``: UniFilter's architecture at test size (1-layer SigLIP + 2-layer Qwen2: the loader's
  cost around a small model, not the published model's speed).

For the scoring models, forward only runs the stage's batch scoring on images the loader
prepared before the clock starts (every model call, text included); end to end runs the stage's
own stream (``scored_samples``' loader with ``--workers`` decode workers, pinned memory on CUDA)
over Arrow batches of encoded images.

The issue's target (on a GPU): end to end >= 0.7x forward only.

``run(size)`` (the suite's ``signatures`` stage) runs end to end on CPU with a tiny CNN at 64 px
(``TinyDescriptor``) and no loader workers, so it measures the pipeline around the model, and
compares it with the bare decode + RGB loop over the same images.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torchvision
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement
from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.core.signatures import SignatureParams, SscdEmbedder, compute_signatures


class ResNetDescriptor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torchvision.models.resnet50(weights=None)
        self.trunk.fc = torch.nn.Linear(2048, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.trunk(x), dim=1)


def jpeg(seed: int, size=(640, 480)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 12, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def batches(images: list[bytes], rows: int = 256):
    for start in range(0, len(images), rows):
        chunk = images[start : start + rows]
        yield pa.Table.from_pylist(
            [
                {
                    "sample_id": f"s{start + k}",
                    "source": "bench",
                    "origin_uri": None,
                    "origin_key": str(start + k),
                    "images": [{"bytes": data, "path": None}],
                    "texts": [],
                }
                for k, data in enumerate(chunk)
            ],
            schema=UNIFIED_SCHEMA,
        ).to_batches()[0]


class TinyDescriptor(torch.nn.Module):
    """A small CNN with a 64-d head: the suite measures the pipeline around the model."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 4, stride=4),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 4, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 64),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.features(x), dim=1)


def load_embedder(
    module: torch.nn.Module, device: str, batch_size: int, input_size: int | None = None
) -> SscdEmbedder:
    """``module`` scripted to TorchScript and loaded the way SSCD files are."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "descriptor.torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(module.eval()).save(str(path))
        return SscdEmbedder(path, device=device, batch_size=batch_size, input_size=input_size)


def make_images(n: int) -> list[bytes]:
    images = [jpeg(k) for k in range(min(n, 512))]
    return (images * (n // len(images) + 1))[:n]


def forward_only(embedder: SscdEmbedder, images: list[bytes], batch_size: int) -> float:
    """Seconds to embed len(images) images from tensors already preprocessed in host memory."""
    tensors = torch.stack([embedder.transform(Image.open(io.BytesIO(b))) for b in images[:512]])
    if embedder.device.type == "cuda":
        tensors = tensors.pin_memory()
    embedder.embed_tensors(tensors[:batch_size])  # warm-up (cuDNN autotune, allocations)
    repeats = max(1, len(images) // len(tensors))
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        embedder.embed_tensors(tensors)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * len(images) / (repeats * len(tensors))


def end_to_end(
    embedder: SscdEmbedder, images: list[bytes], batch_size: int, workers: int
) -> tuple[float, int]:
    """Seconds for ``compute_signatures`` (decode, hashes, resize, model) and rows signed."""
    params = SignatureParams(batch_size=batch_size, num_workers=workers)
    started = time.perf_counter()
    rows = sum(t.num_rows for t in compute_signatures(batches(images), params, [embedder]))
    return time.perf_counter() - started, rows


SIZES = {"tiny": 16, "small": 64, "large": 512}


def run(size: int, workers: int = 0, batch_size: int = 64) -> list[Measurement]:
    """Signatures (hashes + a tiny model at 64 px) end to end against the bare decode loop, CPU.

    With a tiny model, forward only is not the bound; decoding every image is (the floor any
    signer pays), so that is the suite's baseline."""
    from bench.clean import bare_loop

    embedder = load_embedder(TinyDescriptor(), "cpu", batch_size, input_size=64)
    images = make_images(size)
    seconds, rows = end_to_end(embedder, images, batch_size, workers)
    assert rows == size, f"signed {rows} images, expected {size}"
    decode = bare_loop([{"images": [{"bytes": b}]} for b in images])
    forward = forward_only(embedder, images, batch_size)
    return [
        Measurement(
            "signatures",
            size,
            seconds,
            "decode + RGB loop",
            decode,
            "images",
            f"640x480 JPEG; hashes + tiny CNN at 64 px ({size / forward:,.0f} images/s forward "
            f"only), {workers} loader workers",
        )
    ]


# --------------------------------------------------------------------------- scoring models


def scoring_batches(images: list[bytes]) -> list[pa.RecordBatch]:
    """``decontaminated_samples``-shaped rows, one image and a caption each, in the stage's
    batches."""
    from fineharbor.core.cleaning import CLEANED_SCHEMA
    from fineharbor.core.quality.stage import SCORE_BATCH_ROWS as rows

    out = []
    for start in range(0, len(images), rows):
        table = pa.Table.from_pylist(
            [
                {
                    "sample_id": f"s{start + k}",
                    "source": "bench",
                    "origin_key": str(start + k),
                    "images": [{"bytes": data, "path": None}],
                    "texts": [{"user": "", "assistant": f"A photo number {start + k} of shapes."}],
                }
                for k, data in enumerate(images[start : start + rows])
            ],
            schema=CLEANED_SCHEMA,
        )
        out += table.to_batches()
    return out


def scoring_clip(device: str, batch_size: int):
    """open_clip ViT-B/32 with random weights through the scoring stage's embedder."""
    from fineharbor.core.models import SCORING_CLIP
    from fineharbor.core.signatures.embedders import OpenClipEmbedder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "its embeddings are random": intended
        return OpenClipEmbedder(
            "ViT-B-32", None, device=device, batch_size=batch_size, fields=SCORING_CLIP
        )


def clip_mlp(dim: int):
    """A ``clip_mlp`` quality classifier of the default width, random weights."""
    from fineharbor.core.quality.classifier import QualityModel, _Scorer
    from fineharbor.core.quality.params import QualityClassifierParams

    params = QualityClassifierParams()
    module = _Scorer(4 * dim, params.hidden, 1, dropout=0.0).eval()
    return QualityModel(module, dim, "mse", params.hidden, params.chunk_words, "ViT-B-32 (random)")


def tiny_unifilter(device: str, batch_size: int):
    from fineharbor.core.quality.mllm_classifier import build_mllm_classifier
    from fineharbor.core.quality.params import MllmClassifierParams
    from fineharbor.testing.unifilter import save_tiny_mllm

    with tempfile.TemporaryDirectory() as tmp:
        vision, lm = save_tiny_mllm(Path(tmp))
        params = MllmClassifierParams(
            vision_model=str(vision),
            language_model=str(lm),
            visual_tokens=4,
            max_length=64,
            batch_size=batch_size,
            device=device,
        )
        return build_mllm_classifier(params)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def scoring_throughput(
    models, images: list[bytes], batch_size: int, workers: int, device
) -> tuple[float, float]:
    """(forward-only, end-to-end) images/s of ``scored_samples``' batch scoring with ``models``
    (a :class:`~fineharbor.core.quality.stage.ScoringModels`)."""
    from fineharbor.core.config import StageParams
    from fineharbor.core.quality.params import ClipScoreParams
    from fineharbor.core.quality.pixels import BatchPixels, batch_images
    from fineharbor.core.quality.stage import _score_batch, _score_in_worker, image_prep

    loader = ClipScoreParams(batch_size=batch_size, num_workers=workers)
    params = StageParams(clip_score=loader)
    batches = scoring_batches(images)
    prep, pin = image_prep(models)
    assert prep is not None, "the scoring models read no pixels"

    def score(batch, pixels) -> None:
        _score_batch(batch, models.embedder, models.model, (None, None), params, None,
                     models.stats, models.signals, pixels)  # fmt: skip

    # forward only: the distinct images (at most 512, as for SSCD) prepared before the clock
    distinct = batches[: max(1, 512 // len(batches[0]))]
    prepared = []
    for batch in distinct:
        unique = batch_images(batch)
        done = prep(unique)
        prepared.append((batch, BatchPixels(unique, done.pin_memory() if pin else done)))
    score(*prepared[0])  # warm-up
    repeats = max(1, len(batches) // len(prepared))
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for batch, pixels in prepared:
            score(batch, pixels)
    _sync(device)
    forward = repeats * sum(b.num_rows for b in distinct) / (time.perf_counter() - started)

    run = _score_in_worker(params, None, models)
    started = time.perf_counter()
    rows = sum(kept.num_rows for kept, _ in run(iter(batches)))
    _sync(device)
    assert rows == len(images), f"scored {rows} rows, expected {len(images)}"
    return forward, rows / (time.perf_counter() - started)


MODELS = ("sscd", "clip", "classifier", "mllm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = parser.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")

    from fineharbor.core.quality.stage import ScoringModels

    images = make_images(args.images)
    results: list[tuple[str, float, float, str]] = []
    device = None
    if "sscd" in wanted:
        embedder = load_embedder(ResNetDescriptor(), args.device, args.batch_size)
        device = embedder.device
        forward = args.images / forward_only(embedder, images, args.batch_size)
        seconds, rows = end_to_end(embedder, images, args.batch_size, args.workers)
        results.append(("sscd (ResNet-50, 320 px)", forward, rows / seconds, "decode, hashes"))
    if "clip" in wanted or "classifier" in wanted:
        clip = scoring_clip(args.device, args.batch_size)
        device = clip.device
        if "clip" in wanted:
            forward, e2e = scoring_throughput(
                ScoringModels(clip), images, args.batch_size, args.workers, clip.device
            )
            results.append(("clip score (ViT-B/32)", forward, e2e, "decode, 224 px"))
        if "classifier" in wanted:
            models = ScoringModels(clip, clip_mlp(clip.dim))
            forward, e2e = scoring_throughput(
                models, images, args.batch_size, args.workers, clip.device
            )
            results.append(("clip score + clip_mlp classifier", forward, e2e, "decode, 224 px"))
    if "mllm" in wanted:
        mllm = tiny_unifilter(args.device, min(args.batch_size, 64))
        device = mllm.device
        forward, e2e = scoring_throughput(
            ScoringModels(model=mllm), images, args.batch_size, args.workers, mllm.device
        )
        results.append(("mllm classifier (tiny test size)", forward, e2e, "decode, 32 px"))

    half = device is not None and torch.device(device).type == "cuda"
    print(
        f"device {device}, fp16 {half}, {args.images} images of 640x480 JPEG, batch "
        f"{args.batch_size}, {args.workers} loader workers"
    )
    print("| model | forward only (img/s) | end to end (img/s) | ratio | loader work |")
    print("|---|---:|---:|---:|---|")
    for name, forward, e2e, work in results:
        print(f"| {name} | {forward:,.1f} | {e2e:,.1f} | {e2e / forward:.2f} | {work} |")
    print("target on a GPU: ratio >= 0.70")
    return 0


if __name__ == "__main__":
    sys.exit(main())
