"""WebDataset tar shards (`.tar`, `.tar.gz`, `.tgz`): consecutive members sharing a key form
one sample, decoded by extension as the `webdataset` package does.

- key and extension: webdataset's split (``base_plus_ext``): the key is the member path up to
  the first dot of its basename (dots in directories belong to the key), the extension the
  rest, lower-cased;
- ``.gz`` members are decompressed (bounded) and decoded by the extension under it;
- ``txt``/``text``/``transcript`` are UTF-8 text, ``cls``/``cls2``/``index``/``inx``/``id``/
  ``class``/``count`` integers, ``json``/``jsn`` JSON; images are members with an image
  extension Pillow knows or, for any other extension, whose content is an image; everything
  else (pickles included: never unpickled) is recorded by size;
- a sample without an image is kept image-less; mapping decides what it becomes.

Every member is accounted for: it belongs to a kept or rejected sample, or is itself rejected
(``unsupported_member``: no extension, webdataset ``__meta__`` members). A symlink or hardlink
member rejects its whole sample (``tar_link_member``), as does a device or FIFO member
(``tar_special_member``). Members over the limits are never read: ``max_record_bytes`` for
text, ``max_image_bytes`` for the rest. An unreadable or truncated shard is one
``unreadable_shard`` reject naming its path; the samples before the damage are kept and the
other shards are read.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from fineharbor.core.config import IngestParams, Shard, WebDatasetSource
from fineharbor.core.readers.common import (
    BatchBuilder,
    Progress,
    RawBatch,
    ReadStats,
    SourceLocationError,
    list_entries,
    shard_files,
)
from fineharbor.core.readers.files import (
    HEAD_BYTES,
    IMAGE_FILE_TOO_LARGE,
    RECORD_TOO_LARGE,
    UNSUPPORTED_FILE,
    Entry,
    FileRefused,
    RegularFile,
    describe,
    identify,
    image_extensions,
)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TAR_LINK_MEMBER = "tar_link_member"
TAR_SPECIAL_MEMBER = "tar_special_member"
UNSUPPORTED_MEMBER = "unsupported_member"
UNREADABLE_SHARD = "unreadable_shard"

# webdataset.tariterators.base_plus_ext (importing webdataset costs seconds: it imports torch)
_KEY_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_TEXT = {"txt", "text", "transcript"}
_INTEGER = {"cls", "cls2", "index", "inx", "id", "class", "count"}
_JSON = {"json", "jsn"}


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lower-cased extension) by webdataset's rule; None for a name without extension."""
    match = _KEY_EXTENSION.match(name)
    if not match:
        return None
    return match.group(1), match.group(2).lower()


def image_member_extensions() -> frozenset[str]:
    return frozenset(ext.lstrip(".") for ext in image_extensions())


def _is_text(extension: str) -> bool:
    last = extension.removesuffix(".gz").rsplit(".", 1)[-1]
    return last in _TEXT | _INTEGER | _JSON


@dataclass
class Sample:
    """The members of one key, read; ``problem`` once one member rejects the whole sample."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: tuple[str, str] | None = None

    def refuse(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)


def _gunzip(payload: bytes, limit: int, name: str) -> bytes:
    """Decompress a gzip member, never past ``limit`` bytes (a gzip bomb is a reject)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(payload, limit + 1)
    except zlib.error as error:
        raise FileRefused("malformed_record", f"{name}: gzip: {error}") from None
    if len(out) > limit:
        too_large = RECORD_TOO_LARGE if _is_text(name) else IMAGE_FILE_TOO_LARGE
        raise FileRefused(too_large, f"{name}: decompresses to over {limit} bytes")
    return out


def decode_sample(
    members: dict[str, bytes], params: IngestParams, images_by_extension: frozenset[str]
) -> tuple[dict, list[dict]]:
    """(record, images) of one sample; raises FileRefused or ValueError on a bad member."""
    record: dict = {}
    images = []
    for extension in sorted(members):
        payload, name = members[extension], extension
        if name.endswith(".gz"):
            name = name.removesuffix(".gz")
            limit = params.max_record_bytes if _is_text(name) else params.max_image_bytes
            payload = _gunzip(payload, limit, extension)
            if name in members:  # both `txt` and `txt.gz`: keep webdataset's key
                name = extension
        last = name.rsplit(".", 1)[-1]
        if last in _TEXT:
            record[name] = payload.decode("utf-8")
        elif last in _INTEGER:
            record[name] = int(payload)
        elif last in _JSON:
            record[name] = json.loads(payload)
        elif last in images_by_extension or identify(payload).image:
            images.append({"bytes": payload, "path": name})
        else:
            record[name] = {"$bytes": len(payload)}
    return record, images


def read_webdataset(
    source: WebDatasetSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
    stats: ReadStats | None = None,
) -> Iterator[RawBatch]:
    _, entries = list_entries(source.location, source.follow_symlinks)
    if not any(_is_shard(e) for e in entries):
        raise SourceLocationError(
            f"source location {source.location} holds no {'/'.join(SHARD_SUFFIXES)} files"
        )
    entries = shard_files(entries, shard, source.location)
    stats = stats if stats is not None else ReadStats()
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    images_by_extension = image_member_extensions()
    for entry in entries:
        stats.files_seen += 1
        if not _is_shard(entry):
            _reject_entry(builder, entry)
            continue
        yield from _read_shard(builder, stats, entry, params, images_by_extension)
        yield from builder.drain_if_full()
    yield from builder.drain()


def _is_shard(entry: Entry) -> bool:
    return entry.refused is None and entry.name.lower().endswith(SHARD_SUFFIXES)


def _reject_entry(builder: BatchBuilder, entry: Entry) -> None:
    """A location entry that is not a readable shard: refused, or named by its content."""
    if entry.refused is not None:
        builder.reject(entry.key, entry.refused.reason, entry.refused.detail)
        return
    assert entry.real is not None
    try:
        with RegularFile(entry.real, entry.key) as handle:
            identified = identify(handle.read(HEAD_BYTES - 1))
    except FileRefused as refusal:
        builder.reject(entry.key, refusal.reason, refusal.detail)
        return
    builder.reject(entry.key, UNSUPPORTED_FILE, f"{describe(entry.key, identified)}, not a shard")


@dataclass(frozen=True)
class ShardReject:
    """A member rejected on its own, or the part of a shard that could not be read."""

    origin_key: str
    reason: str
    detail: str


def shard_samples(
    real: str, shard_key: str, params: IngestParams, stats: ReadStats
) -> Iterator[Sample | ShardReject]:
    """A shard's samples (members grouped by key, read within the limits) and the rejects of
    members that belong to none, in shard order; an unreadable or truncated shard ends with
    one ``unreadable_shard`` reject (``shard_key/*``) for what was not read."""
    current: Sample | None = None
    try:
        # Plain tars are read with random access ("r:"), several times faster than the stream
        # reader; compressed ones must stream. Opened through the regular-file check.
        with (
            RegularFile(real, shard_key) as handle,
            os.fdopen(os.dup(handle.fd), "rb") as stream,
        ):
            plain = shard_key.lower().endswith(".tar")
            with tarfile.open(fileobj=stream, mode="r:" if plain else "r|*") as archive:
                for member in archive:
                    if member.isdir():
                        continue
                    stats.members_seen += 1
                    split = split_member_name(member.name)
                    meta = "/" not in member.name and re.fullmatch(r"__.*__", member.name)
                    if split is None or meta:
                        why = "webdataset metadata" if meta else "no extension"
                        detail = f"{shard_key}: member {member.name!r} ({why})"
                        yield ShardReject(f"{shard_key}#{member.name}", UNSUPPORTED_MEMBER, detail)
                        continue
                    key, extension = split
                    if current is None or key != current.key:
                        if current is not None:
                            yield current
                        current = Sample(key)
                    _add_member(current, archive, member, extension, params, shard_key)
                end = archive.offset
            if plain and handle.size < end + 1024:
                # tarfile stops silently at a header cut short: only the missing
                # end-of-archive blocks tell a truncated tar from a complete one
                raise tarfile.ReadError(f"ends at byte {handle.size} without end-of-archive")
        if current is not None:
            yield current
    except FileRefused as refusal:
        yield ShardReject(f"{shard_key}/*", refusal.reason, refusal.detail)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        pending = f"sample {current.key!r} and what follows" if current else "the shard"
        detail = f"{real}: {type(error).__name__}: {error}; {pending} not read"
        yield ShardReject(f"{shard_key}/*", UNREADABLE_SHARD, detail)


def _read_shard(
    builder: BatchBuilder,
    stats: ReadStats,
    entry: Entry,
    params: IngestParams,
    images_by_extension: frozenset[str],
) -> Iterator[RawBatch]:
    assert entry.real is not None
    for item in shard_samples(entry.real, entry.key, params, stats):
        if isinstance(item, ShardReject):
            builder.reject(item.origin_key, item.reason, item.detail)
            continue
        origin_key = f"{entry.key}/{item.key}"
        if item.problem is not None:
            builder.reject(origin_key, *item.problem)
            continue
        try:
            record, images = decode_sample(item.members, params, images_by_extension)
        except FileRefused as refusal:
            builder.reject(origin_key, refusal.reason, refusal.detail)
        except (ValueError, RecursionError) as error:  # JSON, UTF-8 and int errors
            builder.reject(origin_key, "malformed_record", f"{type(error).__name__}: {error}")
        else:
            builder.keep(origin_key, record, images, origin_uri=f"{entry.real}#{item.key}")
        yield from builder.drain_if_full()


def _add_member(
    sample: Sample,
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    extension: str,
    params: IngestParams,
    shard_key: str,
) -> None:
    if sample.problem is not None:
        return  # the sample is rejected already: its other members need not be read
    name = f"{shard_key}: member {member.name!r}"
    if member.issym() or member.islnk():
        sample.refuse(TAR_LINK_MEMBER, f"{name} is a link to {member.linkname!r}")
        return
    if not member.isreg():
        sample.refuse(TAR_SPECIAL_MEMBER, f"{name} is not a regular file (type {member.type!r})")
        return
    if extension in sample.members:
        sample.refuse("malformed_record", f"{name}: a second {extension!r} member for one key")
        return
    text = _is_text(extension)
    limit = params.max_record_bytes if text else params.max_image_bytes
    if member.size > limit:
        reason = RECORD_TOO_LARGE if text else IMAGE_FILE_TOO_LARGE
        sample.refuse(reason, f"{name}: {member.size} bytes > {limit}")
        return
    handle = archive.extractfile(member)
    sample.members[extension] = handle.read() if handle else b""
