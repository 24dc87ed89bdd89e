"""Embedder throughput: end to end (decode + hash + preprocess + model) vs forward only.

    .venv/bin/python bench/embed_throughput.py [--images 2048] [--batch-size 256] [--workers 8]

The model is a ResNet-50 with a 512-d head, scripted to TorchScript and loaded through
``SscdEmbedder``: the architecture of ``sscd_disc_mixup`` (random weights, nothing is
downloaded). Inputs are JPEG photos-like images of 640x480 generated in memory.

* forward only: ``embed_tensors`` on pre-made 320x320 tensors already in memory;
* end to end: ``compute_signatures`` on Arrow batches of encoded images, with the DataLoader
  workers decoding, hashing and resizing while the model runs.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    embedder = load_embedder(ResNetDescriptor(), args.device, args.batch_size)
    print(f"device {embedder.device}, fp16 {embedder.half}, batch {args.batch_size}")
    images = make_images(args.images)
    forward = args.images / forward_only(embedder, images, args.batch_size)
    seconds, rows = end_to_end(embedder, images, args.batch_size, args.workers)
    print(f"forward only: {forward:,.0f} images/s")
    print(f"end to end:   {rows / seconds:,.0f} images/s (decode, hashes, resize, model)")
    print(f"ratio: {rows / seconds / forward:.2f} (target >= 0.70 on a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
