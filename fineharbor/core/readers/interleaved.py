"""Interleaved image-text documents: OBELICS / MINT-1T HTML Parquet, MINT-style JSONL, and
MINT-1T's PDF/ArXiv WebDataset shards.

A document is ``images`` and ``texts``, two lists of one length where each position holds
exactly one of an image or a paragraph (the other null), plus ``metadata`` (a JSON string or an
object). An image is bytes, a `datasets` Image struct (``{bytes, path}``), a path relative to
the source's ``image_root`` (default: the location's directory), or a URL (``http(s)://``, as
OBELICS and MINT-1T HTML publish them). URLs are downloaded as a ``url_list`` source's are: the
same downloader (retries, SSRF guard, ``X-Robots-Tag: noai``) and, in the raw stage, the same
kept store (``downloads/<source>/``), so a re-run reuses what was fetched. A document whose
image URL fails is rejected whole with the download's reason (``download_http_error``...,
detail ``position N: URL: why``), as cleaning rejects a document for one bad image: a
document with a hole where an image was is not the document that was published.

WebDataset shards (``.tar``, ``.tar.gz``, ``.tgz``; members grouped by key as the
``webdataset`` reader groups them): a sample's ``.json`` member is the document, its images are
the sample's other members. An ``images`` entry that names a member (``page_0_image_85`` for
``<key>.page_0_image_85.png``, or the full extension) is that member; the other entries take
the sample's unnamed images in order, an integer entry by index: a multi-page ``.tiff`` (how
MINT-1T PDF and ArXiv store a document's images) gives one image per page, stored as PNG.
Images left over, or too few, are ``document_misaligned``.

Each row, line or sample becomes a raw row (the record keeps ``texts`` aligned with nulls at the
image positions, ``metadata`` and every other field; the images in document order) or a
reject: ``document_misaligned`` (lists of different lengths, a position with both or neither,
images and members that do not match), ``empty_document`` (no position holds anything),
``image_corrupt`` (bytes that are no known image format, downloaded ones included),
``image_missing`` (empty bytes), ``download_*`` (a URL that could not be fetched), plus the
file, path and shard reasons of the other readers (``file_unreadable``, ``malformed_record``,
``image_path_outside_root``, ``unreadable_shard``...).
"""

from __future__ import annotations

import io
import itertools
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fineharbor.core.config import IngestParams, InterleavedSource, Shard
from fineharbor.core.download import Downloader, DownloadResult
from fineharbor.core.download_store import DownloadStore
from fineharbor.core.readers.common import (
    BatchBuilder,
    ImageFetchError,
    Progress,
    RawBatch,
    ReadStats,
    encode_record,
    list_files,
    read_local_image,
    relative_key,
)
from fineharbor.core.readers.fields import checked_reference, get_path
from fineharbor.core.readers.files import IMAGE_MISSING, FileRefused, identify
from fineharbor.core.readers.json_records import (
    FILE_UNREADABLE,
    file_problem,
    json_values,
    jsonl_records,
)
from fineharbor.core.readers.webdataset import (
    SHARD_SUFFIXES,
    ShardReject,
    decode_sample,
    image_member_extensions,
    shard_samples,
)

DOCUMENT_MISALIGNED = "document_misaligned"
EMPTY_DOCUMENT = "empty_document"
IMAGE_CORRUPT = "image_corrupt"
DECOMPRESSION_BOMB = "decompression_bomb"
SUFFIXES = (".parquet", ".jsonl", ".json", *SHARD_SUFFIXES)
_DIGITS = re.compile(r"(\d+)")


class DocumentRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Document:
    """One document read, waiting for its URL images (``images[slot]`` None until fetched)."""

    key: str
    origin_uri: str = ""
    stored: dict = field(default_factory=dict)
    images: list[dict | None] = field(default_factory=list)
    urls: list[tuple[int, int, str]] = field(default_factory=list)  # (slot, position, URL)
    refused: tuple[str, str] | None = None


def read_interleaved(
    source: InterleavedSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
    store: DownloadStore | None = None,
) -> Iterator[RawBatch]:
    """The source's documents with their images read (URLs downloaded; with ``store``, the
    downloads kept from earlier runs are reused and new ones kept)."""
    root, files = list_files(source.location, SUFFIXES, shard)
    image_root = Path(source.image_root) if source.image_root else root
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    documents = _read_files(source, params, root, files, image_root)
    for document in _downloaded(documents, source, params, store):
        if document.refused is not None:
            builder.reject(document.key, *document.refused)
        else:
            images = [image for image in document.images if image is not None]
            builder.keep(document.key, document.stored, images, origin_uri=document.origin_uri)
        yield from builder.drain_if_full()
    yield from builder.drain()


def _read_files(
    source: InterleavedSource,
    params: IngestParams,
    root: Path,
    files: list[Path],
    image_root: Path,
) -> Iterator[_Document]:
    for path in files:
        file_key = relative_key(root, path)
        problem = file_problem(path, root, source.location, source.follow_symlinks)
        if problem:
            yield _Document(file_key, refused=problem)
        elif path.name.lower().endswith(SHARD_SUFFIXES):
            yield from _shard_documents(path, file_key, source, params, image_root)
        else:
            yield from _record_documents(path, file_key, source, params, image_root)


def _record_documents(
    path: Path, file_key: str, source: InterleavedSource, params: IngestParams, image_root: Path
) -> Iterator[_Document]:
    records = (
        _parquet_documents(path, source.batch_size)
        if path.suffix.lower() == ".parquet"
        else _json_documents(path, params.max_record_bytes)
    )
    try:
        for index, record, refused in records:
            key = _origin_key(record, source, f"{file_key}:{index}")
            if refused is not None:
                yield _Document(key, refused=(refused.reason, refused.detail))
            else:
                read = partial(fetch_image, root=image_root, max_bytes=params.max_image_bytes)
                yield _prepared(key, record, str(path), read)
    except (pa.ArrowException, OSError) as error:
        yield _Document(file_key, refused=(FILE_UNREADABLE, f"{path}: {error}"))


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


def _origin_key(record: dict | None, source: InterleavedSource, default: str) -> str:
    if record is not None and source.mapping.origin_key:
        value = get_path(record, source.mapping.origin_key)
        if value not in (None, ""):
            return str(value)
    return default


ImageReader = Callable[[Any, int], dict]
"""Reads the non-URL image entry at a position into ``{bytes, path}`` or raises."""


def _prepared(key: str, record: dict, origin_uri: str, read_image: ImageReader) -> _Document:
    """The document with its local images read and its URLs listed, or refused."""
    document = _Document(key, origin_uri)
    try:
        texts, found = aligned(record)
        for slot, (position, value) in enumerate(found):
            url = _url(value)
            if url is None:
                document.images.append(read_image(value, position))
            else:
                document.images.append(None)
                document.urls.append((slot, position, url))
        document.stored = {k: v for k, v in record.items() if k != "images"}
        document.stored["texts"] = texts
        encode_record(document.stored)  # nested too deep to store: refused here, not in keep
    except (DocumentRefused, ImageFetchError) as error:
        return _Document(key, refused=(error.reason, error.detail))
    except RecursionError:
        return _Document(
            key, refused=("record_too_deep", "nested deeper than the JSON encoder's limit")
        )
    return document


def _url(value: Any) -> str | None:
    """The URL an image entry names (a string or a struct's path, no bytes), if it is one."""
    reference = value.get("path") if isinstance(value, dict) and not value.get("bytes") else value
    return reference if isinstance(reference, str) and "://" in reference else None


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
        try:
            return read_local_image(root, checked_reference(reference), max_bytes)
        except ImageFetchError as error:
            raise DocumentRefused(error.reason, where + error.detail) from None
    if not data:
        raise DocumentRefused(IMAGE_MISSING, where + "an image without bytes or path")
    if not isinstance(data, bytes | bytearray):
        raise DocumentRefused("malformed_record", where + f"image bytes are {type(data).__name__}")
    _check_image(bytes(data), where + "bytes")
    return {"bytes": bytes(data), "path": reference if isinstance(reference, str) else None}


def _check_image(data: bytes, what: str) -> None:
    identified = identify(data)
    if not identified.image:
        raise DocumentRefused(
            IMAGE_CORRUPT, f"{what} are no known image format ({identified.kind})"
        )


# --------------------------------------------------------------------------- downloads


def _downloaded(
    documents: Iterator[_Document],
    source: InterleavedSource,
    params: IngestParams,
    store: DownloadStore | None,
) -> Iterator[_Document]:
    """The documents in order, their URL images fetched (or the document refused).

    No downloader is started until a document names a URL: sources of embedded or local images
    never pay for one."""
    for first in documents:
        if first.urls:
            rest = itertools.chain([first], documents)
            yield from _through_downloader(rest, source, params, store)
            return
        yield first


def _through_downloader(
    documents: Iterator[_Document],
    source: InterleavedSource,
    params: IngestParams,
    store: DownloadStore | None,
) -> Iterator[_Document]:
    """Every document goes through the downloader in order (one without URLs as one empty
    entry, answered without a request), so only the downloader's window waits in memory."""
    pending: deque[_Document] = deque()

    def urls() -> Iterator[str]:
        for document in documents:
            pending.append(document)
            yield from (url for _, _, url in document.urls) if document.urls else ("",)

    with Downloader(
        params.download, allow_private_addresses=source.allow_private_addresses
    ) as downloader:
        results = downloader.map(urls()) if store is None else store.fetch(downloader, urls())
        answered: list[DownloadResult] = []
        for result in results:
            answered.append(result)
            if len(answered) < max(1, len(pending[0].urls)):
                continue
            document = pending.popleft()
            yield _with_downloads(document, answered) if document.urls else document
            answered = []


def _with_downloads(document: _Document, results: list[DownloadResult]) -> _Document:
    fetched = []
    for (slot, position, url), result in zip(document.urls, results, strict=True):
        where = f"position {position}: {url[:300]}"
        if not result.ok:
            reason = f"download_{result.error_code}"
            return _Document(document.key, refused=(reason, f"{where}: {result.error_message}"))
        try:
            _check_image(result.content or b"", f"{where}: the downloaded bytes")
        except DocumentRefused as error:
            return _Document(document.key, refused=(error.reason, error.detail))
        name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1][:200]
        document.images[slot] = {"bytes": result.content, "path": name or None}
        fetched.append(
            {
                "position": position,
                "url": url,
                "http_status": result.http_status,
                "final_url": result.final_url,
                "attempts": result.attempts,
                "fetched_at": result.fetched_at,
            }
        )
    document.stored["downloads"] = fetched
    return document


# --------------------------------------------------------------------------- shards


def _shard_documents(
    path: Path, file_key: str, source: InterleavedSource, params: IngestParams, image_root: Path
) -> Iterator[_Document]:
    """MINT-1T PDF/ArXiv-style samples: a ``.json`` document and its images as members."""
    extensions = image_member_extensions()
    for item in shard_samples(str(path), file_key, params, ReadStats()):
        if isinstance(item, ShardReject):
            yield _Document(item.origin_key, refused=(item.reason, item.detail))
            continue
        key = f"{file_key}/{item.key}"
        if item.problem is not None:
            yield _Document(key, refused=item.problem)
            continue
        try:
            record, images = decode_sample(item.members, params, extensions)
        except FileRefused as refusal:
            yield _Document(key, refused=(refusal.reason, refusal.detail))
            continue
        except (ValueError, RecursionError) as error:  # JSON, UTF-8 and int errors
            yield _Document(key, refused=("malformed_record", f"{type(error).__name__}: {error}"))
            continue
        document = record.get("json", record.get("jsn"))
        if not isinstance(document, dict):
            found = "none" if document is None else type(document).__name__
            detail = f"a document sample needs a .json object member (found {found})"
            yield _Document(key, refused=("malformed_record", detail))
            continue
        key = _origin_key(document, source, key)
        members = _SampleImages(images, document.get("images"), params)
        try:
            read = partial(members.take, root=image_root)
            prepared = _prepared(key, document, f"{path}#{item.key}", read)
            if prepared.refused is None:
                members.check_all_used()
        except DocumentRefused as error:
            prepared = _Document(key, refused=(error.reason, error.detail))
        others = {k: v for k, v in record.items() if k not in ("json", "jsn")}
        if others and prepared.refused is None:
            prepared.stored["sample_members"] = others
        yield prepared


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(name)]


class _SampleImages:
    """A sample's image members, handed to the document's image entries: an entry that names a
    member gets it, the others take the unnamed members (a multi-page TIFF as its pages) in
    natural order, an integer entry by index."""

    def __init__(self, images: list[dict], entries: Any, params: IngestParams) -> None:
        self.by_name = {image["path"]: image for image in images}
        self.stems = {name.rsplit(".", 1)[0]: name for name in self.by_name if "." in name}
        self.params = params
        names = (self._name(entry) for entry in entries) if isinstance(entries, list) else ()
        self.unnamed = sorted(set(self.by_name) - set(names), key=_natural)
        self.next = 0
        self.used: set[int] = set()
        self._sequence: list[dict] | None = None

    def _name(self, entry: Any) -> str | None:
        if not isinstance(entry, str):
            return None
        return self.stems.get(entry, entry if entry in self.by_name else None)

    def take(self, value: Any, position: int, root: Path) -> dict:
        name = self._name(value)
        if name is not None:
            image = self.by_name[name]
        elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            image = self._in_order(value, position)
        else:  # embedded bytes or a struct, as in a JSONL document
            return fetch_image(value, position, root, self.params.max_image_bytes)
        _check_image(image["bytes"], f"position {position}: member {image['path']!r} bytes")
        return image

    def _in_order(self, value: str | int, position: int) -> dict:
        if isinstance(value, int):
            index = value
        else:
            index, self.next = self.next, self.next + 1
        sequence = self.sequence()
        if not 0 <= index < len(sequence):
            raise DocumentRefused(
                DOCUMENT_MISALIGNED,
                f"position {position}: image {index} of the sample, which has {len(sequence)} "
                f"({', '.join(self.unnamed) or 'no unnamed image members'})",
            )
        self.used.add(index)
        return sequence[index]

    def sequence(self) -> list[dict]:
        if self._sequence is None:
            self._sequence = [
                page for name in self.unnamed for page in _pages(self.by_name[name], self.params)
            ]
        return self._sequence

    def check_all_used(self) -> None:
        if not self.unnamed:
            return
        left = len(self.sequence()) - len(self.used)
        if left:
            raise DocumentRefused(
                DOCUMENT_MISALIGNED,
                f"{left} of the sample's {len(self.sequence())} unnamed images "
                f"({', '.join(self.unnamed)}) have no position in the document",
            )


def _pages(image: dict, params: IngestParams) -> list[dict]:
    """The pages of a multi-page TIFF as PNG images (lossless; one frame each), else the image.

    PNG at compress level 1: the page is re-encoded once at ingest, where level 6 (Pillow's
    default) costs several times the time for about a fifth less bytes. Pillow's
    decompression-bomb level is checked on every page before it is decoded."""
    data, name = image["bytes"], image["path"]
    if identify(data).kind != "TIFF":
        return [image]
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    pages = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hostile headers warn; the errors decide
            with Image.open(io.BytesIO(data)) as tiff:
                count = getattr(tiff, "n_frames", 1)
                if count == 1:
                    return [image]
                for page in range(count):
                    tiff.seek(page)
                    width, height = tiff.size
                    if limit and width * height > limit:
                        raise DocumentRefused(
                            DECOMPRESSION_BOMB,
                            f"{name} page {page}: {width}x{height} pixels exceed {limit}",
                        )
                    frame = tiff if tiff.mode in ("1", "L", "LA", "P", "RGB", "RGBA") else None
                    out = io.BytesIO()
                    (frame or tiff.convert("RGB")).save(out, format="PNG", compress_level=1)
                    pages.append({"bytes": out.getvalue(), "path": f"{name}#{page}"})
    except DocumentRefused:
        raise
    except Image.DecompressionBombError as error:
        raise DocumentRefused(DECOMPRESSION_BOMB, f"{name}: {error}") from None
    except Exception as error:  # hostile TIFFs make the decoder raise anything
        detail = f"{name} page {len(pages)}: {type(error).__name__}: {error}"[:300]
        raise DocumentRefused(IMAGE_CORRUPT, detail) from None
    return pages
