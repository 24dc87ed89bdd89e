"""Quality scoring: the CLIP score of caption pairs, batched, vs one sample at a time.

    .venv/bin/python bench/quality.py [--n 2048]

The model is a tiny open_clip CLIP with random weights (ViT, 32 px, 1 layer; the test suite's
``save_tiny_clip``), saved in the local-directory layout and loaded through the path users take
(``local-dir:``), so nothing is downloaded and the figures measure the stage's own work (decode,
preprocess, tokenise, batching, cosine) more than a model's. Timed on the same 320x240 JPEG
caption pairs:

* stage: ``clip_scores`` on record batches of 256 (images and unique texts embedded in batches);
* baseline: the naive loop, one sample at a time through the same embedder (one image, one
  text, their dot product).

Both must give the same scores (to float16 precision on a GPU; exactly on CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, best_time
from bench.ingest import jpeg
from fineharbor.core.quality.clip_score import clip_scores, load_clip_embedder
from fineharbor.core.quality.params import ClipScoreParams
from fineharbor.core.schema import UNIFIED_SCHEMA

SIZES = {"tiny": 16, "small": 256, "large": 2048}
BATCH = 256


def make_batches(n: int) -> list[pa.RecordBatch]:
    images = [jpeg(i % 64) for i in range(min(n, 64))]
    rows = [
        {
            "sample_id": f"s{i}",
            "source": "bench",
            "origin_key": str(i),
            "images": [{"bytes": images[i % len(images)], "path": None}],
            "texts": [{"user": "", "assistant": f"a photo of {i % 97} red circles on grey"}],
        }
        for i in range(n)
    ]
    table = pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)
    return table.to_batches(max_chunksize=BATCH)


def load_tiny_clip(directory: Path, params: ClipScoreParams):
    from fineharbor.testing.models import save_tiny_clip

    save_tiny_clip(directory)
    return load_clip_embedder(params)


def one_at_a_time(batches: list[pa.RecordBatch], embedder) -> list[float]:
    scores = []
    for batch in batches:
        for images, texts in zip(
            batch.column("images").to_pylist(), batch.column("texts").to_pylist(), strict=True
        ):
            image = embedder.embed_images([images[0]["bytes"]])[0]
            text = embedder.embed_texts([f"{texts[0]['user']} {texts[0]['assistant']}".strip()])[0]
            scores.append(float(image @ text))
    return scores


def run(size: int, repeats: int = 1) -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        params = ClipScoreParams(model=f"local-dir:{tmp}", pretrained=None, device="cpu")
        embedder = load_tiny_clip(Path(tmp), params)
    batches = make_batches(size)
    embedder.embed_images([batches[0].column("images")[0].as_py()[0]["bytes"]])  # warm-up

    def stage() -> list[float]:
        return [s for b in batches for s in clip_scores(b, embedder, params).to_pylist()]

    seconds, scores = best_time(stage, repeats)
    base, naive = best_time(lambda: one_at_a_time(batches, embedder), repeats)
    gap = float(np.max(np.abs(np.array(scores) - np.array(naive))))
    return [
        Measurement(
            "quality/clip_score",
            size,
            seconds,
            "same model, one sample at a time",
            base,
            "samples",
            f"max |score difference| {gap:.1e}",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SIZES["large"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    (m,) = run(args.n, args.repeats)
    print(
        f"{m.rows:,} caption pairs: clip_scores {m.rate:,.0f} samples/s, one at a time "
        f"{m.rows / m.baseline_seconds:,.0f} samples/s ({m.ratio:.2f}x); {m.note}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
