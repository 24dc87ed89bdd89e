"""Quality scoring: the CLIP score of caption pairs, batched, vs one sample at a time; and the
learned classifier's two architectures, UniFilter's MLLM against the CLIP-MLP.

    .venv/bin/python bench/quality.py [--n 2048] [--mllm tiny|published-shape]

The model is a tiny open_clip CLIP with random weights (ViT, 32 px, 1 layer; the test suite's
``save_tiny_clip``), saved in the local-directory layout and loaded through the path users take
(``local-dir:``), so nothing is downloaded and the figures measure the stage's own work (decode,
preprocess, tokenise, batching, cosine) more than a model's. Timed on the same 320x240 JPEG
caption pairs:

* stage: ``clip_scores`` on record batches of 256 (images and unique texts embedded in batches);
* baseline: the naive loop, one sample at a time through the same embedder (one image, one
  text, their dot product).

Both must give the same scores (to float16 precision on a GPU; exactly on CPU).

``quality/classifier_mllm`` times ``MllmQualityModel.score_samples`` (vision tower + AvgPool
projector + causal LM + head, record batches of 256) against the CLIP-MLP scorer
(``score_quality``: the same CLIP embeddings + the two-layer MLP) on the same batches. Scoring
costs the same with trained or untrained weights, so both are untrained.
``quality/classifier_mllm_documents`` does the same on interleaved documents (a title, then
three images each followed by its paragraph: :func:`make_documents`), the MLLM reading them in
order, the CLIP-MLP pooling their images and chunked text. ``--mllm tiny`` (the
suite's) is the tests' tiny SigLIP + Qwen2; ``--mllm published-shape`` builds SigLIP-SO400M and
Qwen2.5-0.5B *shapes* with random weights (nothing is downloaded; ~4 GB of float32 weights are
written to a temporary directory), the cost of the published model: run it on a GPU.
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
from fineharbor.core.quality.classifier import QualityModel, _Scorer, score_quality
from fineharbor.core.quality.clip_score import clip_scores, load_clip_embedder
from fineharbor.core.quality.params import ClipScoreParams, MllmClassifierParams
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


def make_documents(n: int, images_per_document: int = 3) -> list[pa.RecordBatch]:
    """``n`` interleaved documents (unified rows with ``segments``), the caption batches' JPEGs
    as their images."""
    from fineharbor.core.interleaved import document_segments, document_turns

    images = [jpeg(i % 64) for i in range(64)]
    rows = []
    for i in range(n):
        texts: list[str | None] = [f"Notes from day {i} of the trip."]
        data = []
        for k in range(images_per_document):
            data.append(images[(i * images_per_document + k) % len(images)])
            texts += [None, f"Here {k + 2} red circles sit on a grey card, photo {i}-{k}."]
        segments = document_segments(texts, len(data))
        rows.append(
            {
                "sample_id": f"d{i}",
                "source": "bench",
                "origin_key": str(i),
                "images": [{"bytes": b, "path": None} for b in data],
                "texts": document_turns(segments),
                "segments": segments,
            }
        )
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


def published_shape(root: Path) -> tuple[Path, Path]:
    """SigLIP-SO400M-patch14-384 and Qwen2.5-0.5B configurations with random weights."""
    import torch
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from fineharbor.testing.unifilter import build_tokenizer

    torch.manual_seed(0)
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        )
    )
    vision.save_pretrained(root / "vision")
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(root / "vision")
    del vision
    tokenizer = build_tokenizer()
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root / "vision", root / "lm"


def run_classifiers(size: int, repeats: int = 1, mllm: str = "tiny") -> list[Measurement]:
    """Scoring samples/s of the MLLM classifier, with the CLIP-MLP on the same batches as the
    baseline: caption pairs, then ``size // 4`` interleaved documents."""
    import torch

    from fineharbor.core.quality.mllm_classifier import build_mllm_classifier
    from fineharbor.testing.unifilter import save_tiny_mllm

    batches = make_batches(size)
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = Path(tmp) / "clip"
        params = ClipScoreParams(model=f"local-dir:{clip_dir}", pretrained=None, device="cpu")
        embedder = load_tiny_clip(clip_dir, params)
        if mllm == "tiny":
            vision, lm = save_tiny_mllm(Path(tmp))
            shape = {"visual_tokens": 4, "max_length": 160, "batch_size": 64}
        else:
            vision, lm = published_shape(Path(tmp))
            shape = {"visual_tokens": 144, "max_length": 1024, "batch_size": 32}
        model = build_mllm_classifier(
            MllmClassifierParams(vision_model=str(vision), language_model=str(lm), **shape)
        )
    torch.manual_seed(0)
    clip_mlp = QualityModel(_Scorer(4 * embedder.dim, 256, 1, 0.0).eval(), embedder.dim, "mse",
                            256, 50)  # fmt: skip
    model.score_samples(batches[0].slice(0, 2))  # warm-up

    out = []
    for name, unit, data in (
        ("quality/classifier_mllm", "samples", batches),
        ("quality/classifier_mllm_documents", "documents", make_documents(max(1, size // 4))),
    ):

        def score_mllm(data=data) -> int:
            return sum(model.score_samples(b).null_count for b in data)

        seconds, nulls = best_time(score_mllm, repeats)
        base, _ = best_time(lambda data=data: [score_quality(b, clip_mlp, embedder) for b in data],
                            repeats)  # fmt: skip
        rows = sum(b.num_rows for b in data)
        note = f"{mllm} on {model.device.type}; {nulls} null scores"
        out.append(Measurement(name, rows, seconds, "CLIP-MLP classifier, same batches", base,
                               unit, note))  # fmt: skip
    return out


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
        *run_classifiers(size, repeats),
        Measurement(
            "quality/clip_score",
            size,
            seconds,
            "same model, one sample at a time",
            base,
            "samples",
            f"max |score difference| {gap:.1e}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SIZES["large"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mllm", choices=("tiny", "published-shape"), default="tiny")
    parser.add_argument("--classifiers-only", action="store_true")
    args = parser.parse_args(argv)
    if args.classifiers_only:
        measurements = run_classifiers(args.n, args.repeats, args.mllm)
    else:
        measurements = run(args.n, args.repeats)
        if args.mllm != "tiny":
            measurements = run_classifiers(args.n, args.repeats, args.mllm) + [
                m for m in measurements if not m.name.startswith("quality/classifier")
            ]
    for m in measurements:
        if m.name == "quality/clip_score":
            print(
                f"{m.rows:,} caption pairs: clip_scores {m.rate:,.0f} samples/s, one at a time "
                f"{m.rows / m.baseline_seconds:,.0f} samples/s ({m.ratio:.2f}x); {m.note}"
            )
        else:
            what = "caption pairs" if m.unit == "samples" else "documents (3 images each)"
            print(
                f"{m.rows:,} {what}: MLLM classifier {m.rate:,.1f} {m.unit}/s, CLIP-MLP "
                f"classifier {m.rows / m.baseline_seconds:,.1f} {m.unit}/s ({m.ratio:.3f}x); "
                f"{m.note}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
