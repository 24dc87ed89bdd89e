"""The ``image_signatures`` stage core: one row per image of every sample.

Input batches need only the unified columns ``sample_id``, ``source`` and ``images``; whatever
else a stage added is ignored. Decoding, hashing and model preprocessing run in DataLoader
workers (:mod:`~fineharbor.core.signatures.loader`) while the embedders run on the previous
batch, and output is yielded every ``output_rows`` rows, so memory does not grow with the
partition. An image that cannot be decoded gets a row with null signatures and an ``error``
(the pipeline removes such images in cleaning first; this stage must still not crash on one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from fineharbor.core.signatures.embedders import CLIP_EMBEDDING, COPY_EMBEDDING, Embedder
from fineharbor.core.signatures.hashing import (
    ImageDecodeError,
    decode_rgb,
    dihedral_hashes,
    sha256_bytes,
    sha256_pixels,
)
from fineharbor.core.signatures.loader import stream_batches
from fineharbor.core.signatures.params import SignatureParams

EMBEDDING_TYPE = pa.list_(pa.float16())
SIGNATURE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sha256_bytes", pa.string()),
        pa.field("sha256_pixels", pa.string()),
        pa.field("phash", pa.int64()),
        pa.field("phash_flip", pa.int64()),
        # the six other rotations/mirrors (hashing.DIHEDRAL_TURNS): rotated copies' candidates
        pa.field("phash_dihedral", pa.list_(pa.int64())),
        pa.field(COPY_EMBEDDING, EMBEDDING_TYPE),
        pa.field(CLIP_EMBEDDING, EMBEDDING_TYPE),
        pa.field("error", pa.string()),
    ]
)
EMBEDDING_COLUMNS = (COPY_EMBEDDING, CLIP_EMBEDDING)


@dataclass(frozen=True)
class ImageItem:
    """One image to sign, as drawn from the input batches (the DataLoader payload)."""

    sample_id: str
    source: str
    image_index: int
    data: bytes | None


@dataclass
class PreparedImage:
    """What a worker produced for one image: its signature row and its model inputs."""

    row: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def iter_images(batches: Iterable[pa.RecordBatch]) -> Iterator[ImageItem]:
    """Every image of every sample, in input order, reading only unified columns."""
    for batch in batches:
        ids = batch.column("sample_id").to_pylist()
        sources = batch.column("source").to_pylist()
        images = batch.column("images").to_pylist()
        for sample_id, source, sample_images in zip(ids, sources, images, strict=True):
            for index, image in enumerate(sample_images or []):
                data = None if image is None else image.get("bytes")
                yield ImageItem(sample_id, source, index, data)


class SignaturePreparer:
    """Worker-side work per image: decode once, hash, and run each embedder's transform.

    A plain object holding only flags and picklable transforms, so it travels to workers.
    """

    def __init__(self, params: SignatureParams, transforms: dict[str, object]) -> None:
        self.byte_hash = params.byte_hash
        self.pixel_hash = params.pixel_hash
        self.perceptual_hash = params.perceptual_hash
        self.transforms = transforms

    def __call__(self, item: ImageItem) -> PreparedImage:
        row = {
            "sample_id": item.sample_id,
            "source": item.source,
            "image_index": item.image_index,
            "width": None,
            "height": None,
            "sha256_bytes": None,
            "sha256_pixels": None,
            "phash": None,
            "phash_flip": None,
            "phash_dihedral": None,
            "error": None,
        }
        if self.byte_hash and item.data is not None:
            row["sha256_bytes"] = sha256_bytes(item.data)
        try:
            image = decode_rgb(item.data)
        except ImageDecodeError as error:
            row["error"] = f"image_undecodable: {error}"[:500]
            return PreparedImage(row)
        row["width"], row["height"] = image.width, image.height
        if self.pixel_hash:
            row["sha256_pixels"] = sha256_pixels(image)
        if self.perceptual_hash:
            row["phash"], row["phash_flip"], turns = dihedral_hashes(image)
            row["phash_dihedral"] = list(turns)
        tensors = {}
        for name, transform in self.transforms.items():
            try:
                tensors[name] = transform(image)
            except Exception as error:  # a transform bug must not cost the other signatures
                row["error"] = f"{name}_transform: {type(error).__name__}: {error}"[:500]
        return PreparedImage(row, tensors)


@dataclass
class PreparedBatch:
    """Rows of a DataLoader batch and, per embedder, the stacked inputs of the rows that have
    them (``positions`` say which rows)."""

    rows: list[dict]
    tensors: dict[str, torch.Tensor]
    positions: dict[str, list[int]]

    def pin_memory(self) -> PreparedBatch:  # called by the DataLoader when pinning is on
        self.tensors = {k: v.pin_memory() for k, v in self.tensors.items()}
        return self


def collate_prepared(items: list[PreparedImage]) -> PreparedBatch:
    names = sorted({name for item in items for name in item.tensors})
    tensors, positions = {}, {}
    for name in names:
        where = [i for i, item in enumerate(items) if name in item.tensors]
        positions[name] = where
        tensors[name] = torch.stack([items[i].tensors[name] for i in where])
    return PreparedBatch([item.row for item in items], tensors, positions)


def embedding_array(vectors: list[np.ndarray | None]) -> pa.Array:
    """list<float16> column from per-row float vectors (None -> null)."""
    lengths = [0 if v is None else len(v) for v in vectors]
    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [v for v in vectors if v is not None]
    flat = np.concatenate(present).astype(np.float16) if present else np.zeros(0, dtype=np.float16)
    mask = pa.array([v is None for v in vectors], type=pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), pa.array(flat, type=pa.float16()), mask=mask
    )


def signatures_table(rows: list[dict], embeddings: dict[str, list[np.ndarray | None]]) -> pa.Table:
    columns = {}
    for f in SIGNATURE_SCHEMA:
        if f.name in EMBEDDING_COLUMNS:
            columns[f.name] = embedding_array(embeddings.get(f.name, [None] * len(rows)))
        else:
            columns[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
    return pa.table(columns, schema=SIGNATURE_SCHEMA)


def compute_signatures(
    batches: Iterable[pa.RecordBatch],
    params: SignatureParams,
    embedders: Sequence[Embedder] = (),
) -> Iterator[pa.Table]:
    """Signature tables (``SIGNATURE_SCHEMA``) for every image of the input batches.

    ``embedders`` come from :func:`~fineharbor.core.signatures.embedders.build_embedders`
    (loaded once by the caller); their ``name`` picks the output column.
    """
    unknown = [e.name for e in embedders if e.name not in EMBEDDING_COLUMNS]
    if unknown:
        raise ValueError(f"embedders must be named one of {EMBEDDING_COLUMNS}, got {unknown}")
    by_name = {e.name: e for e in embedders}
    preparer = SignaturePreparer(params, {e.name: e.transform for e in embedders})
    pending_rows: list[dict] = []
    pending_vectors: dict[str, list[np.ndarray | None]] = {name: [] for name in by_name}
    pin = any(e.device.type == "cuda" for e in embedders)
    for batch in stream_batches(
        iter_images(batches),
        preparer,
        collate_prepared,
        batch_size=params.batch_size,
        num_workers=params.num_workers,
        prefetch_factor=params.prefetch_factor,
        pin_memory=pin,
    ):
        for name, embedder in by_name.items():
            column: list[np.ndarray | None] = [None] * len(batch.rows)
            if name in batch.tensors:
                vectors = embedder.embed_tensors(batch.tensors[name])
                for position, vector in zip(batch.positions[name], vectors, strict=True):
                    column[position] = vector
            pending_vectors[name].extend(column)
        pending_rows.extend(batch.rows)
        if len(pending_rows) >= params.output_rows:
            yield signatures_table(pending_rows, pending_vectors)
            pending_rows = []
            pending_vectors = {name: [] for name in by_name}
    if pending_rows:
        yield signatures_table(pending_rows, pending_vectors)
