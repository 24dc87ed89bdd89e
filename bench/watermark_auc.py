"""The demo watermark detector's ROC AUC on the demo's planted watermarks, without the demo.

Draws the demo's records exactly as ``fineharbor demo`` does (same seed and scale, nothing
written), trains the detector as ``make demo`` does (:func:`train_demo_watermark`, on
generator-drawn images of a seed of its own) and scores, through the ``pwatermark`` loader, the
planted ``watermark`` images against the clean images of the sources they are planted in. The
demo's figure (``planted_watermark_auc``) is taken over the samples that reach scoring; every
clean record here stands in for them (a few more negatives: the demo's cleaning and dedup drop
none of the clean originals' images, so the two differ only in copies of clean records).

    .venv/bin/python bench/watermark_auc.py [--seed 0] [--scale 1] [--steps N] [--size PX] ...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fineharbor.core.quality.metrics import roc_auc
from fineharbor.core.quality.params import SignalParams
from fineharbor.core.quality.signals import WatermarkScorer
from fineharbor.demo import generate as g
from fineharbor.demo.watermark import DemoWatermarkConfig, train_demo_watermark


def planted_images(seed: int, scale: float) -> tuple[list[bytes], list[str], list[bytes]]:
    """(watermarked images, their overlays, clean images) of the sources the demo plants
    watermarks in."""
    gen = g._Generator(seed, scale, "http://127.0.0.1:1")
    sources = (g.CAULDRON, g.LLAVA, g.WDS, g.LAION, g.FOLDER)
    for source in (g.BENCH_VQA, *sources):
        gen.build_clean(source, g.record_count(source, scale))
        gen.assign_keys(source)
    for source in sources:
        gen.fill_defects(source)
        gen.assign_keys(source)
    marked_in = {s for s in sources if any(r.defect == g.WATERMARK for r in gen.records[s])}
    marked, overlays, clean = [], [], []
    for source in sorted(marked_in):
        for record in gen.records[source]:
            if record.defect == g.WATERMARK:
                marked += [v.data for v in record.visuals]
                overlays += [str(record.transform)] * len(record.visuals)
            elif record.defect is None:
                clean += [v.data for v in record.visuals]
    return marked, overlays, clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    overrides = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("images", args.images),
            ("image_size", args.size),
            ("width", args.width),
            ("threads", args.threads),
        )
        if v is not None
    }
    config = DemoWatermarkConfig(**overrides)
    started = time.perf_counter()
    marked, overlays, clean = planted_images(args.seed, args.scale)
    drawn = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wm.torchscript.pt"
        report = train_demo_watermark(path, args.seed, config)
        scorer = WatermarkScorer(
            SignalParams(watermark_path=str(path), watermark_image_size=config.image_size)
        )
        scores_marked, scores_clean = scorer.score(marked), scorer.score(clean)
    auc = roc_auc(scores_marked, scores_clean)
    print(f"config: {config.model_dump()}")
    print(f"demo records drawn in {drawn:.1f} s")
    print(
        f"training: {report.images} images, {report.steps} steps, loss {report.loss:.3f}, "
        f"train accuracy {report.train_accuracy:.3f}, {report.seconds:.1f} s "
        f"on {config.threads} threads"
    )
    print(f"planted watermark ROC AUC {auc:.3f} ({len(marked)} watermarked vs {len(clean)} clean)")
    for score, overlay in sorted(zip(scores_marked, overlays, strict=True)):
        print(f"  pwatermark {score:.2f}  {overlay}")
    quantiles = np.quantile(scores_clean, [0.5, 0.9, 0.99, 1.0])
    print("clean pwatermark 50/90/99/100th percentiles:", np.round(quantiles, 3).tolist())


if __name__ == "__main__":
    main()
