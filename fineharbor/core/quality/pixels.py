"""The scored stage's images through the signature stage's prefetching loader.

Every model of ``scored_samples`` that reads pixels (the scoring CLIP, the signal heads' own
CLIP, the watermark model, the UniFilter vision tower) and the face detector get their input
from one pass over the partition: :func:`prepared_batches` streams the row batches through
:func:`fineharbor.core.signatures.loader.stream_batches`, whose workers decode each distinct
image of a batch once and run every model's preprocess (``transforms``, picklable callables
from a PIL RGB image to a tensor) and the face detector on it, while the main process runs the
models on the previous batch. The tensors come back stacked per model (pinned when a model is
on CUDA); :class:`BatchPixels` hands each model the rows of the images it is asked for, and
says which images did not decode (their scores are null, as on the old in-process path).

With ``num_workers=0`` the same preparation runs in the calling process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from fineharbor.core.quality.clip_score import image_bytes
from fineharbor.core.quality.faces import FaceDetector
from fineharbor.core.signatures.hashing import ImageDecodeError, decode_rgb
from fineharbor.core.signatures.loader import stream_batches

Transform = Callable[[Image.Image], torch.Tensor]
Boxes = list[dict[str, int]]

# names of the prepared inputs, one per model
SCORING_CLIP = "clip"
SIGNAL_CLIP = "signal_clip"
WATERMARK = "watermark"
MLLM_VISION = "mllm"


@dataclass
class PreparedImages:
    """What a loader worker returns for one batch's distinct images: per model, the stacked
    tensors of the decodable images and each image's row in that stack (None: undecodable);
    the face boxes per image when a detector runs."""

    stacks: dict[str, torch.Tensor | None]
    rows: list[int | None]
    boxes: list[Boxes] | None = None

    def pin_memory(self) -> PreparedImages:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        stacks = {k: None if v is None else v.pin_memory() for k, v in self.stacks.items()}
        return PreparedImages(stacks, self.rows, self.boxes)


class ProcessorTransform:
    """A Hugging Face image processor as a one-image transform (picklable with it)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


class ImagePrep:
    """A loader worker's work: decode each image once, run every transform and the detector."""

    def __init__(self, transforms: Mapping[str, Transform], faces: FaceDetector | None = None):
        self.transforms = dict(transforms)
        self.faces = faces

    def __call__(self, images: Sequence[bytes]) -> PreparedImages:
        per_model: dict[str, list[torch.Tensor]] = {name: [] for name in self.transforms}
        rows: list[int | None] = []
        decoded = 0
        boxes: list[Boxes] | None = [] if self.faces is not None else None
        for data in images:
            try:
                image = decode_rgb(data)
            except ImageDecodeError:
                rows.append(None)
                if boxes is not None:
                    boxes.append([])
                continue
            rows.append(decoded)
            decoded += 1
            for name, transform in self.transforms.items():
                per_model[name].append(transform(image))
            if boxes is not None:
                boxes.append(self.faces.detect(image))  # type: ignore[union-attr]
        stacks = {name: torch.stack(t) if t else None for name, t in per_model.items()}
        return PreparedImages(stacks, rows, boxes)


class BatchPixels:
    """One row batch's prepared images, looked up by their bytes."""

    def __init__(self, images: Sequence[bytes], prepared: PreparedImages) -> None:
        self.index = {data: i for i, data in enumerate(images)}
        self.prepared = prepared

    @classmethod
    def here(cls, images: Sequence[bytes], prep: ImagePrep) -> BatchPixels:
        """Prepared in this process (callers outside the scored stage)."""
        unique = list(dict.fromkeys(images))
        return cls(unique, prep(unique))

    def __contains__(self, name: str) -> bool:
        return name in self.prepared.stacks

    def take(self, name: str, images: Sequence[bytes]) -> tuple[torch.Tensor | None, list[int]]:
        """(the ``name`` tensors of the decodable ``images``, their positions in ``images``)."""
        stack = self.prepared.stacks[name]
        found = [self.prepared.rows[self.index[data]] for data in images]
        ok = [i for i, row in enumerate(found) if row is not None]
        if stack is None or not ok:
            return None, []
        rows = [found[i] for i in ok]
        first = rows[0]
        if rows == list(range(first, first + len(rows))):  # a slice keeps the pinned memory
            return stack[first : first + len(rows)], ok
        return stack[torch.tensor(rows)], ok

    def embed(self, name: str, images: Sequence[bytes], embed_tensors, dim: int) -> np.ndarray:
        """(n, dim) float32 rows of ``embed_tensors`` over the images; NaN rows where an image
        did not decode (what ``embed_images`` returns)."""
        out = np.full((len(images), dim), np.nan, dtype=np.float32)
        pixels, ok = self.take(name, images)
        if pixels is not None:
            out[ok] = embed_tensors(pixels)
        return out

    def boxes(self, data: bytes) -> Boxes:
        assert self.prepared.boxes is not None, "no face detector ran in the loader"
        return self.prepared.boxes[self.index[data]]

    @property
    def has_faces(self) -> bool:
        return self.prepared.boxes is not None


def batch_images(batch: pa.RecordBatch | pa.Table) -> list[bytes]:
    """The distinct image bytes of a row batch, in first-seen order."""
    return list(
        dict.fromkeys(
            data for row in batch.column("images").to_pylist() for data in image_bytes(row)
        )
    )


def _only(items: list[PreparedImages]) -> PreparedImages:
    (item,) = items
    return item


def prepared_batches(
    batches: Iterable[pa.RecordBatch],
    prep: ImagePrep | None,
    *,
    num_workers: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
) -> Iterator[tuple[pa.RecordBatch, BatchPixels | None]]:
    """Each row batch with its prepared images (None without ``prep``: nothing reads pixels).

    One loader item is one row batch's distinct images; the batch itself stays in this process
    (a queue in loader order) so only image bytes travel to the workers."""
    if prep is None:
        for batch in batches:
            yield batch, None
        return
    waiting: deque[tuple[pa.RecordBatch, list[bytes]]] = deque()

    def payloads() -> Iterator[list[bytes]]:
        for batch in batches:
            images = batch_images(batch)
            waiting.append((batch, images))
            yield images

    for prepared in stream_batches(
        payloads(),
        prep,
        _only,
        batch_size=1,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        pin_memory=pin_memory,
    ):
        batch, images = waiting.popleft()
        yield batch, BatchPixels(images, prepared)
