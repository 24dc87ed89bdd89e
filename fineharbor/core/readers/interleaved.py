"""Interleaved image-text documents: OBELICS / MINT-1T HTML Parquet and MINT-style JSONL.

A document is ``images`` and ``texts``, two lists of one length where each position holds
exactly one of an image or a paragraph (the other null), plus ``metadata`` (a JSON string or an
object). An image is bytes, a `datasets` Image struct (``{bytes, path}``), or a path relative
to the source's ``image_root`` (default: the location's directory). Image URLs, as OBELICS and
MINT-1T publish them, are not fetched: such a document is rejected ``image_url_not_supported``
(download the images first, e.g. with img2dataset, and point the document at the files).

Each row or line becomes a raw row (the record keeps ``texts`` aligned with nulls at the image
positions, ``metadata`` and every other field; the images are fetched in document order) or a
reject: ``document_misaligned`` (lists of different lengths, or a position with both or
neither), ``empty_document`` (no position holds anything), ``image_corrupt`` (bytes that are
no known image format), ``image_missing`` (empty bytes), plus the file and path reasons of the
other readers (``file_unreadable``, ``malformed_record``, ``image_path_outside_root``...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.config import IngestParams, InterleavedSource, Shard
from fineharbor.core.readers.common import (
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    encode_record,
    list_files,
    read_local_image,
    relative_key,
)
from fineharbor.core.readers.fields import checked_reference, get_path
from fineharbor.core.readers.files import IMAGE_MISSING, identify
from fineharbor.core.readers.json_records import (
    FILE_UNREADABLE,
    file_problem,
    json_values,
    jsonl_records,
)

DOCUMENT_MISALIGNED = "document_misaligned"
EMPTY_DOCUMENT = "empty_document"
IMAGE_URL_NOT_SUPPORTED = "image_url_not_supported"
IMAGE_CORRUPT = "image_corrupt"
SUFFIXES = (".parquet", ".jsonl", ".json")


class DocumentRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_interleaved(
    source: InterleavedSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, SUFFIXES, shard)
    image_root = Path(source.image_root) if source.image_root else root
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        file_key = relative_key(root, path)
        problem = file_problem(path, root, source.location, source.follow_symlinks)
        if problem:
            builder.reject(file_key, *problem)
            continue
        documents = (
            _parquet_documents(path, source.batch_size)
            if path.suffix.lower() == ".parquet"
            else _json_documents(path, params.max_record_bytes)
        )
        try:
            for index, record, refused in documents:
                key = _origin_key(record, source, file_key, index)
                if refused is not None:
                    builder.reject(key, refused.reason, refused.detail)
                else:
                    _keep(builder, key, record, image_root, params, str(path))
                yield from builder.drain_if_full()
        except (pa.ArrowException, OSError) as error:
            builder.reject(file_key, FILE_UNREADABLE, f"{path}: {error}")
    yield from builder.drain()


Document = tuple[int, dict | None, DocumentRefused | None]


def _parquet_documents(path: Path, batch_size: int) -> Iterator[Document]:
    """Rows of an OBELICS Parquet file; a file that breaks part way raises (one reject)."""
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for offset in range(batch.num_rows):
            try:
                row = batch.slice(offset, 1).to_pylist()[0]
            except UnicodeDecodeError as error:
                yield index, None, DocumentRefused("malformed_record", f"not UTF-8: {error}")
            else:
                yield index, row, None
            index += 1


def _json_documents(path: Path, limit: int) -> Iterator[Document]:
    reader = jsonl_records if path.suffix.lower() == ".jsonl" else json_values
    for parsed in reader(path, limit):
        if parsed.record is None:
            yield parsed.index, None, DocumentRefused(parsed.reason, parsed.detail)
        else:
            yield parsed.index, parsed.record, None


def _origin_key(record: dict | None, source: InterleavedSource, file_key: str, index: int) -> str:
    if record is not None and source.mapping.origin_key:
        value = get_path(record, source.mapping.origin_key)
        if value not in (None, ""):
            return str(value)
    return f"{file_key}:{index}"


def _keep(
    builder: BatchBuilder,
    key: str,
    record: dict,
    image_root: Path,
    params: IngestParams,
    origin_uri: str,
) -> None:
    try:
        texts, images = aligned(record)
        fetched = [
            fetch_image(image, position, image_root, params.max_image_bytes)
            for position, image in images
        ]
        stored = {k: v for k, v in record.items() if k != "images"}
        stored["texts"] = texts
        encode_record(stored)  # nested too deep to store: refused here, not in keep
    except (DocumentRefused, ImageFetchError) as error:
        builder.reject(key, error.reason, error.detail)
    except RecursionError:
        builder.reject(key, "record_too_deep", "nested deeper than the JSON encoder's limit")
    else:
        builder.keep(key, stored, fetched, origin_uri=origin_uri)


def aligned(record: dict) -> tuple[list[str | None], list[tuple[int, Any]]]:
    """The document's texts (null at image positions) and its (position, image) pairs."""
    images, texts = record.get("images"), record.get("texts")
    if _nothing(images) and _nothing(texts):
        raise DocumentRefused(EMPTY_DOCUMENT, "no position holds an image or a text")
    if not isinstance(images, list) or not isinstance(texts, list):
        raise DocumentRefused(
            DOCUMENT_MISALIGNED,
            f"images is {type(images).__name__} and texts is {type(texts).__name__}; "
            "both must be lists",
        )
    if len(images) != len(texts):
        raise DocumentRefused(
            DOCUMENT_MISALIGNED, f"{len(images)} image positions but {len(texts)} text positions"
        )
    found: list[tuple[int, Any]] = []
    for position, (image, text) in enumerate(zip(images, texts, strict=True)):
        if (image is None) == (text is None):
            held = "both an image and a text" if image is not None else "neither image nor text"
            raise DocumentRefused(DOCUMENT_MISALIGNED, f"position {position} holds {held}")
        if image is not None:
            found.append((position, image))
        elif not isinstance(text, str):
            raise DocumentRefused(
                "malformed_record", f"texts[{position}] is {type(text).__name__}, not text"
            )
    return texts, found


def _nothing(values: Any) -> bool:
    """Null, an empty list, or a list of nulls."""
    return values is None or (isinstance(values, list) and all(v is None for v in values))


def fetch_image(value: Any, position: int, root: Path, max_bytes: int) -> dict:
    """One document image as ``{bytes, path}``: embedded bytes, a struct, or a local path."""
    where = f"position {position}: "
    if isinstance(value, dict):
        data, reference = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray):
        data, reference = bytes(value), None
    elif isinstance(value, str):
        data, reference = None, value
    else:
        raise DocumentRefused("malformed_record", where + f"image is {ascii(value)[:100]}")
    if data is None and isinstance(reference, str) and reference:
        if "://" in reference:
            raise DocumentRefused(
                IMAGE_URL_NOT_SUPPORTED,
                where + f"{reference[:200]!r} is a URL; download the images first",
            )
        try:
            return read_local_image(root, checked_reference(reference), max_bytes)
        except ImageFetchError as error:
            raise DocumentRefused(error.reason, where + error.detail) from None
    if not data:
        raise DocumentRefused(IMAGE_MISSING, where + "an image without bytes or path")
    if not isinstance(data, bytes | bytearray):
        raise DocumentRefused("malformed_record", where + f"image bytes are {type(data).__name__}")
    identified = identify(bytes(data))
    if not identified.image:
        raise DocumentRefused(
            IMAGE_CORRUPT, where + f"bytes are no known image format ({identified.kind})"
        )
    return {"bytes": bytes(data), "path": reference if isinstance(reference, str) else None}
