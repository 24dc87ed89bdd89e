"""JSON array or JSONL records with images in a directory (LLaVA / ShareGPT style).

Every line of a JSONL file and every element of a JSON array becomes a record or a reject: a
line that is not JSON, not an object, not UTF-8, nested too deep or longer than the source's
``max_record_bytes`` is rejected with its line (or byte offset) and the reader goes on. A JSON
array is read element by element from a bounded buffer; after a broken element it resumes at
the next element that parses, so one bad byte costs one record, not the rest of the file.
(ijson, which streamed arrays before, stops at the first error and reports no byte offset.)
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fineharbor.core.config import IngestParams, JsonSource, Shard
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
from fineharbor.core.readers.files import FileRefused, confined

DEFAULT_IMAGE_FIELD = "image"
MALFORMED = "malformed_record"
TOO_LARGE = "record_too_large"
TOO_DEEP = "record_too_deep"
FILE_UNREADABLE = "file_unreadable"

_CHUNK = 1 << 20
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
# Raw bytes that are not UTF-8 decode (surrogateescape) to U+DC80..U+DCFF.
_RAW_BAD = re.compile("[\udc80-\udcff]")
# A \uD800-\uDFFF escape may be a lone surrogate, which no Arrow string can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Where the next element of an array, or the next value of a stream of objects, may start.
_ARRAY_NEXT = re.compile(r",[ \t\n\r]*(?=[{\[])")
_STREAM_NEXT = re.compile(r"\n[ \t\r]*(?=\{)")
_STRUCTURE = re.compile(r'["{}\[\]]')
_STRING_END = re.compile(r'["\\]')
_SCALAR = re.compile(r"[^,\]}\s]*")


@dataclass(frozen=True)
class Parsed:
    """One line or element: the record, or why there is none."""

    index: int
    record: dict | None
    reason: str = ""
    detail: str = ""


def _checked(value: Any, escapes: bool, where: object) -> tuple[dict | None, str, str]:
    """(record, reason, detail): the value must be an object Arrow can store; `escapes` says
    whether its text holds surrogate escapes (``\\uD800``..``\\uDFFF``), which may be lone."""
    if not isinstance(value, dict):
        return None, MALFORMED, f"{where}: expected an object, got {type(value).__name__}"
    if escapes:
        try:
            encode_record(value).encode("utf-8")
        except UnicodeEncodeError:
            return None, MALFORMED, f"{where}: a \\u escape is a lone surrogate (not Unicode)"
        except RecursionError:
            return None, TOO_DEEP, f"{where}: nested too deep"
    return value, "", ""


def _parse_text(text: str, where: str) -> tuple[dict | None, str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return None, MALFORMED, f"{where}: {error}"
    except RecursionError:
        return None, TOO_DEEP, f"{where}: nested deeper than the JSON parser's limit"
    return _checked(value, _SURROGATE_ESCAPE.search(text) is not None, where)


def jsonl_records(path: Path, limit: int) -> Iterator[Parsed]:
    """One Parsed per non-blank line; a line over `limit` bytes is skipped, not read whole."""
    offset = 0
    with path.open("rb") as handle:
        for index in itertools.count():
            line = handle.readline(limit + 1)
            if not line:
                return
            start = offset
            offset += len(line)
            where = f"line {index + 1} (byte {start})"
            if len(line) > limit and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = handle.readline(_CHUNK)
                    offset += len(line)
                yield Parsed(index, None, TOO_LARGE, f"{where}: over {limit} bytes")
                continue
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                detail = f"{where}: invalid UTF-8 at byte {start + error.start}"
                yield Parsed(index, None, MALFORMED, detail)
                continue
            yield Parsed(index, *_parse_text(text.lstrip("\ufeff") if index == 0 else text, where))


class _TooLarge(Exception):
    pass


class _Buffer:
    """A window of a JSON file as text, refilled by chunks, with byte offsets kept exact."""

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.pos = 0
        self.base = 0  # byte offset of text[0]
        self.eof = False
        self.given_up = False  # a reject took the rest of the file
        self.raw_bad = False  # bytes that are not UTF-8 were seen
        self.escapes = False  # \uD800-\uDFFF escapes were seen

    def give_up(self) -> None:
        self.pos = len(self.text)
        self.given_up = True

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(_CHUNK)
        self.eof = not chunk
        new = self.decoder.decode(chunk, final=self.eof)
        # Elements are checked for these only once a chunk holds one: most files never do.
        self.raw_bad = self.raw_bad or _RAW_BAD.search(new) is not None
        self.escapes = self.escapes or _SURROGATE_ESCAPE.search(self.text[-5:] + new) is not None
        self.text += new
        return not self.eof

    def offset(self, at: int) -> int:
        return self.base + len(self.text[:at].encode("utf-8", "surrogateescape"))

    def compact(self) -> None:
        if self.pos > _CHUNK:
            self.base = self.offset(self.pos)
            self.text = self.text[self.pos :]
            self.pos = 0

    def peek(self) -> str | None:
        """The next non-blank character (pos moved to it), None at the end of the file."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def opens_objects(self) -> bool:
        """Whether the "[" at pos is followed by a "{"."""
        start = self.pos
        self.pos += 1
        found = self.peek() == "{"
        self.pos = start
        return found

    def decode(self, at: int) -> tuple[Any, int]:
        """The value starting at `at` and its end; refills while the value may be incomplete."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, at)
            except json.JSONDecodeError as error:
                # An error near the window's end may only mean the value goes on in the file.
                incomplete = error.msg.startswith("Unterminated string")
                if self.eof or not (incomplete or error.pos >= len(self.text) - 64):
                    raise
            else:
                if end < len(self.text) or self.eof:  # a number may go on in the next chunk
                    return value, end
            if len(self.text) - at > self.limit:
                raise _TooLarge
            self.fill()

    def skip_value(self) -> bool:
        """Move past the value at pos by its brackets and strings alone (no parse, no copy
        beyond one chunk); False when the file ends inside it."""
        depth, in_string = 0, self.text[self.pos] == '"'
        at = self.pos + 1 if in_string else self.pos
        if not in_string and self.text[self.pos] not in "{[":
            match = _SCALAR.match(self.text, at)
            while match.end() == len(self.text) and self.fill():
                match = _SCALAR.match(self.text, at)
            self.pos = match.end()
            return True
        while True:
            match = (_STRING_END if in_string else _STRUCTURE).search(self.text, at)
            if match is None or (match.group() == "\\" and match.end() >= len(self.text)):
                self.pos = len(self.text) if match is None else match.start()
                self.compact()
                if not self.fill():
                    return False
                at = self.pos
                continue
            token, at = match.group(), match.end()
            if in_string:
                if token == "\\":
                    at += 1
                else:
                    in_string = False
                    if depth == 0:
                        self.pos = at
                        return True
            elif token == '"':
                in_string = True
            elif token in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    self.pos = at
                    return True

    def resync(self, in_array: bool, keys: set[str] | None) -> bool:
        """Move to the next element after pos that parses and looks like the records before it
        (shares a key with the last good one, so an object nested inside the broken element is
        not taken for a record); False when none is left."""
        pattern = _ARRAY_NEXT if in_array else _STREAM_NEXT
        self.pos += 1
        while True:
            match = pattern.search(self.text, self.pos)
            if match is None:
                self.pos = max(self.pos, len(self.text) - 64)
                self.compact()
                if not self.fill():
                    return False
                continue
            if self._accepts(match, in_array, keys):
                self.pos = match.start()  # the separator: the caller's loop steps over it
                return True
            # What lies before a refused candidate is no longer needed: the window stays small.
            self.pos = match.start() + 1
            self.compact()

    def _accepts(self, match: re.Match, in_array: bool, keys: set[str] | None) -> bool:
        try:
            value, end = self.decode(match.end())
        except (json.JSONDecodeError, RecursionError, _TooLarge):
            return False
        if not isinstance(value, dict) or (keys and not keys & value.keys()):
            return False
        self.pos = end
        after = self.peek()  # may refill the window, never compacts it
        return after is None or after in (",", "]") or not in_array


def json_values(path: Path, limit: int) -> Iterator[Parsed]:
    """The elements of a top-level JSON array, or the objects of a file holding one or more
    objects one after another (JSONL saved as .json), one Parsed each."""
    with path.open("rb") as handle:
        buffer = _Buffer(handle, limit)
        first = buffer.peek()
        if first == "\ufeff":
            buffer.pos += 1
            first = buffer.peek()
        in_array = first == "["
        if in_array:
            buffer.pos += 1
        keys: set[str] | None = None
        index = 0
        while True:
            char = buffer.peek()
            if char is None:
                if in_array and not buffer.given_up:
                    yield Parsed(index, None, MALFORMED, "the array is not closed (truncated?)")
                return
            if in_array and char == "]":
                buffer.pos += 1
                if buffer.peek() is None:
                    return
                # Data after the closing bracket: a stray "]" ended the array early.
                yield _recover(buffer, index, "data after the closing ]", keys)
                index += 1
                continue
            if in_array and char == "[" and keys and buffer.opens_objects():
                # Among objects, a "[" before a "{" is most likely a stray byte: its elements are
                # read as the array's, instead of one list swallowing every record up to its "]".
                at = buffer.offset(buffer.pos)
                yield Parsed(index, None, MALFORMED, f"element {index} (byte {at}): a list")
                buffer.pos += 1
                index += 1
                continue
            parsed = _next_value(buffer, index, in_array, keys)
            yield parsed
            if parsed.record:
                keys = set(parsed.record)
            index += 1
            char = buffer.peek()
            if in_array and char == ",":
                buffer.pos += 1
            elif in_array and char not in (None, "]"):
                yield _recover(buffer, index, "expected ',' or ']' between elements", keys)
                index += 1
            buffer.compact()


def _recover(buffer: _Buffer, index: int, problem: str, keys: set[str] | None) -> Parsed:
    """A reject for what lies between pos and the next element that parses."""
    at = buffer.offset(buffer.pos)
    if buffer.resync(True, keys):
        buffer.pos += 1  # over the ","
        detail = f"{problem} (byte {at}); resumed at byte {buffer.offset(buffer.pos)}"
    else:
        buffer.give_up()
        detail = f"{problem} (byte {at}) and the rest of the file: no element after it parses"
    return Parsed(index, None, MALFORMED, detail)


@dataclass(frozen=True)
class _Where:
    """Names an element in a reject; the byte offset is only computed for a reject."""

    buffer: _Buffer
    index: int
    at: int

    def __str__(self) -> str:
        return f"element {self.index} (byte {self.buffer.offset(self.at)})"


def _next_value(buffer: _Buffer, index: int, in_array: bool, keys: set[str] | None) -> Parsed:
    start = buffer.pos
    where = _Where(buffer, index, start)
    try:
        value, end = buffer.decode(start)
    except (_TooLarge, RecursionError) as error:
        where = str(where)  # now: skipping moves the window
        reason, problem = (
            (TOO_LARGE, f"over {buffer.limit} bytes")
            if isinstance(error, _TooLarge)
            else (TOO_DEEP, "nested deeper than the JSON parser's limit")
        )
        if buffer.skip_value():
            return Parsed(index, None, reason, f"{where}: {problem}")
        buffer.give_up()
        return Parsed(index, None, reason, f"{where} and the rest of the file: {problem}")
    except json.JSONDecodeError as error:
        where, at = str(where), buffer.offset(error.pos)
        if buffer.resync(in_array, keys):
            resumed = buffer.offset(buffer.pos)
            detail = f"{where}: {error.msg} (byte {at}); resumed at byte {resumed}"
            return Parsed(index, None, MALFORMED, detail)
        buffer.give_up()
        detail = (
            f"{where} and the rest of the file: {error.msg} (byte {at}); no element after it parses"
        )
        return Parsed(index, None, MALFORMED, detail)
    buffer.pos = end
    if end - start > buffer.limit:
        return Parsed(index, None, TOO_LARGE, f"{where}: over {buffer.limit} bytes")
    bad = _RAW_BAD.search(buffer.text, start, end) if buffer.raw_bad else None
    if bad:
        detail = f"{where}: invalid UTF-8 at byte {buffer.offset(bad.start())}"
        return Parsed(index, None, MALFORMED, detail)
    escapes = buffer.escapes and _SURROGATE_ESCAPE.search(buffer.text, start, end) is not None
    return Parsed(index, *_checked(value, escapes, where))


def file_problem(
    path: Path, root: Path, location: str, follow_symlinks: bool
) -> tuple[str, str] | None:
    """Why a listed file must not be opened: not a regular file (a FIFO would block the run,
    a device never ends), or a link out of the source (unless the source follows links)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return FILE_UNREADABLE, f"{path}: {error.strerror}"
    if not stat.S_ISREG(mode):
        return FILE_UNREADABLE, f"{path} is not a regular file"
    if Path(location) != path:  # a file named as the location itself is the user's choice
        try:
            confined(str(root), str(path), follow_symlinks=follow_symlinks)
        except FileRefused as refused:
            return refused.reason, refused.detail
    return None


def _image_references(record: dict, field: str) -> list[str]:
    value = get_path(record, field)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    refs = []
    for item in values:
        if isinstance(item, dict):
            item = item.get("path")
        if not isinstance(item, str):
            raise ImageFetchError(MALFORMED, f"image field {field!r} holds {ascii(item)[:200]}")
        refs.append(checked_reference(item))
    return refs


def read_json(
    source: JsonSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    root, files = list_files(source.location, (".json", ".jsonl"), shard)
    image_root = Path(source.image_root) if source.image_root else root
    image_field = source.mapping.images or DEFAULT_IMAGE_FIELD
    limit = params.max_record_bytes
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for path in files:
        file_key = relative_key(root, path)
        reader = jsonl_records if path.suffix.lower() == ".jsonl" else json_values
        problem = file_problem(path, root, source.location, source.follow_symlinks)
        if problem:
            builder.reject(file_key, *problem)
            continue
        try:
            for parsed in reader(path, limit):
                if parsed.record is None:
                    builder.reject(f"{file_key}:{parsed.index}", parsed.reason, parsed.detail)
                else:
                    _read_record(
                        builder,
                        parsed.record,
                        source,
                        (path, file_key, parsed.index),
                        image_root,
                        image_field,
                        params,
                    )
                yield from builder.drain_if_full()
        except OSError as error:
            builder.reject(file_key, FILE_UNREADABLE, f"{path}: {error}")
    yield from builder.drain()


def _read_record(
    builder: BatchBuilder,
    record: dict[str, Any],
    source: JsonSource,
    position: tuple[Path, str, int],
    image_root: Path,
    image_field: str,
    params: IngestParams,
) -> None:
    path, file_key, index = position
    key_value = get_path(record, source.mapping.origin_key) if source.mapping.origin_key else None
    origin_key = str(key_value) if key_value not in (None, "") else f"{file_key}:{index}"
    try:
        images = [
            read_local_image(image_root, ref, params.max_image_bytes)
            for ref in _image_references(record, image_field)
        ]
    except ImageFetchError as error:
        builder.reject(origin_key, error.reason, error.detail)
        return
    builder.keep(origin_key, record, images, origin_uri=str(path))
