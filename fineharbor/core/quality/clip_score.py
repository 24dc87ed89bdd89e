"""CLIP score: cosine similarity of image and text embeddings (LAION, DanQing).

LAION-400M dropped pairs whose OpenAI CLIP ViT-B/32 cosine is below 0.30 (0.28 for LAION-5B
English). DanQing filters with a lower *and* an upper bound: very high similarity flags pairs
whose text is mostly rendered in the image (OCR-dominated). This stage only measures: the bounds
are the release recipe's ``clip_score_min`` / ``clip_score_max``. What is scored for a multi-turn or
multi-image sample is set by :class:`ClipScoreParams` and documented in
:mod:`fineharbor.core.quality.text`:

* text: ``all_turns`` by default — every turn as ``"user assistant"``, joined, truncated by the
  model's tokenizer (so a caption pair scores its caption, and Q&A its first turns);
* images: ``max`` by default — the score of the best-matching decodable image.

The score is null when a sample has no decodable image or no text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
from PIL import Image

from fineharbor.core.quality.params import ClipScoreParams
from fineharbor.core.quality.text import rule_texts


@runtime_checkable
class ImageTextEmbedder(Protocol):
    """What the quality scorers need from a CLIP model.

    :class:`fineharbor.core.signatures.embedders.OpenClipEmbedder` satisfies it. Both methods
    return L2-normalised float32 rows in input order; an undecodable image gives a NaN row.
    """

    dim: int

    def embed_images(self, images: Iterable[bytes | Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def load_clip_embedder(params: ClipScoreParams):
    """The open_clip embedder ``params`` name, loaded once (CUDA + fp16 when present), from
    local files only.

    Reuses the signature stage's loader, so a missing model raises the same
    ``ModelNotFoundError``, naming the ``stages.clip_score`` field, where the weights were
    looked for and how to fetch them.
    """
    from fineharbor.core.models import SCORING_CLIP
    from fineharbor.core.signatures.embedders import OpenClipEmbedder

    return OpenClipEmbedder(
        params.model,
        params.pretrained,
        model_config=params.model_config_path,
        device=params.device,
        batch_size=params.batch_size,
        half=params.half_precision,
        fields=SCORING_CLIP,
    )


CLIP_OFF = "stages.clip_score.model is null"


def scoring_clip(params: ClipScoreParams) -> tuple[ImageTextEmbedder | None, str]:
    """(the scoring CLIP, "") or (None, why not): the model is null, or it is named but not on
    this machine (the message names the field, where it was looked for and how to get it; it
    is logged once). Scoring then leaves ``clip_score`` and ``quality_score`` null; nothing is
    downloaded and nothing crashes."""
    if not params.model:
        return None, CLIP_OFF
    from fineharbor.core.models import WITHOUT_SCORING_CLIP, report_once, without
    from fineharbor.core.signatures.embedders import ModelNotFoundError

    try:
        return load_clip_embedder(params), ""
    except ModelNotFoundError as missing:
        note = without(str(missing), WITHOUT_SCORING_CLIP)
        report_once(note)
        return None, note


def _column(samples: pa.Table | pa.RecordBatch, name: str) -> list:
    index = samples.schema.get_field_index(name)
    if index < 0:
        raise KeyError(f"samples have no {name!r} column (unified schema expected)")
    return samples.column(index).to_pylist()


def image_bytes(images: Sequence[dict | None] | None) -> list[bytes]:
    """The encoded bytes of a sample's images (entries without bytes are skipped)."""
    return [image["bytes"] for image in images or [] if image and image.get("bytes")]


def embed_sample_images(
    embedder: ImageTextEmbedder, images_per_sample: Sequence[Sequence[bytes]]
) -> list[np.ndarray]:
    """Per sample, the (k, dim) embeddings of its decodable images (k may be 0).

    All images of the batch go through one ``embed_images`` call, so the model sees full
    batches even when samples have one image each.
    """
    flat = [data for images in images_per_sample for data in images]
    vectors = embedder.embed_images(flat) if flat else np.zeros((0, embedder.dim), np.float32)
    out: list[np.ndarray] = []
    start = 0
    for images in images_per_sample:
        block = vectors[start : start + len(images)]
        start += len(images)
        out.append(block[~np.isnan(block).any(axis=1)])
    return out


def embed_unique_texts(embedder: ImageTextEmbedder, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Embeddings of the distinct texts (repeated prompts and captions are embedded once)."""
    unique = sorted(set(texts))
    if not unique:
        return {}
    vectors = embedder.embed_texts(unique)
    return dict(zip(unique, vectors, strict=True))


def clip_scores(
    samples: pa.Table | pa.RecordBatch, embedder: ImageTextEmbedder, params: ClipScoreParams
) -> pa.Array:
    """One float32 score per row in [-1, 1], null where there is no decodable image or no text.

    ``samples`` needs the unified ``images`` and ``texts`` columns. Pass a record batch at a
    time: memory follows the batch, not the partition.
    """
    images = [image_bytes(row) for row in _column(samples, "images")]
    texts = [rule_texts(row, params.text_rule) for row in _column(samples, "texts")]
    image_vectors = embed_sample_images(embedder, images)
    text_vectors = embed_unique_texts(embedder, (t for per_sample in texts for t in per_sample))
    scores: list[float | None] = []
    for vectors, sample_texts in zip(image_vectors, texts, strict=True):
        if vectors.shape[0] == 0 or not sample_texts:
            scores.append(None)
            continue
        # (images, texts) cosines; turn_mean averages over texts, then the image rule applies.
        matrix = vectors @ np.stack([text_vectors[t] for t in sample_texts]).T
        per_image = matrix.mean(axis=1)
        value = per_image.max() if params.image_rule == "max" else per_image.mean()
        scores.append(float(np.clip(value, -1.0, 1.0)))
    return pa.array(scores, type=pa.float32())
