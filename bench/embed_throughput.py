"""Embedder throughput: end to end (decode + hash + preprocess + model) vs forward only.

    .venv/bin/python bench/embed_throughput.py [--images 2048] [--batch-size 256] [--workers 8]

The model is a ResNet-50 with a 512-d head, scripted to TorchScript and loaded through
``SscdEmbedder``: the architecture of ``sscd_disc_mixup`` (random weights, nothing is
downloaded). Inputs are JPEG photos-like images of 640x480 generated in memory.

* forward only: ``embed_tensors`` on pre-made 320x320 tensors already in memory;
* end to end: ``compute_signatures`` on Arrow batches of encoded images, with the DataLoader
  workers decoding, hashing and resizing while the model runs.

The issue's target (on a GPU): end to end >= 0.7x forward only.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50_512.torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(ResNetDescriptor().eval()).save(str(path))
        embedder = SscdEmbedder(path, device=args.device, batch_size=args.batch_size)
    print(f"device {embedder.device}, fp16 {embedder.half}, batch {args.batch_size}")
    images = [jpeg(k) for k in range(min(args.images, 512))]
    images = (images * (args.images // len(images) + 1))[: args.images]

    # forward only, on tensors already preprocessed and in host memory
    tensors = torch.stack([embedder.transform(Image.open(io.BytesIO(b))) for b in images[:512]])
    if embedder.device.type == "cuda":
        tensors = tensors.pin_memory()
    embedder.embed_tensors(tensors[: args.batch_size])  # warm-up (cuDNN autotune, allocations)
    repeats = max(1, args.images // len(tensors))
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        embedder.embed_tensors(tensors)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    forward = repeats * len(tensors) / (time.perf_counter() - started)

    params = SignatureParams(batch_size=args.batch_size, num_workers=args.workers)
    started = time.perf_counter()
    rows = sum(t.num_rows for t in compute_signatures(batches(images), params, [embedder]))
    end_to_end = rows / (time.perf_counter() - started)
    print(f"forward only: {forward:,.0f} images/s")
    print(f"end to end:   {end_to_end:,.0f} images/s (decode, hashes, resize, model)")
    print(f"ratio: {end_to_end / forward:.2f} (target >= 0.70 on a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
