"""Opening and identifying the files a source hands over, without escaping it or hanging.

Three rules every file reader follows (``docs/reliability.md`` lists the reasons):

- **Confinement.** A path is resolved to its real path, which must lie inside the source root
  (``path_outside_source``), unless the source sets ``follow_symlinks: true``.
- **Regular files only.** The file is opened with ``O_NONBLOCK`` (opening a FIFO never waits for
  a writer) and ``fstat`` of the *opened* descriptor must say regular file, so a path swapped
  for a FIFO or a device between a check and the open is still refused (``not_regular_file``).
- **Bounded reads.** The size from ``fstat`` is compared to the caller's limit before anything
  is read, and at most ``limit + 1`` bytes are ever read (a file growing meanwhile is caught).

Formats are identified by content, never by suffix: known non-image containers by their magic
bytes, images by the cleaning stage's sniffer and then by Pillow's own plugin identification
(header only: no pixel is decoded and no external program is run here).
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass

from PIL import Image

from fineharbor.core.cleaning.images import plugin_format, sniff_format

PATH_OUTSIDE_SOURCE = "path_outside_source"
NOT_REGULAR_FILE = "not_regular_file"
PATH_INVALID = "path_invalid"
IMAGE_MISSING = "image_missing"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_FILE_TOO_LARGE = "image_file_too_large"
RECORD_TOO_LARGE = "record_too_large"
UNSUPPORTED_FILE = "unsupported_file"

# Enough for every magic number below and for the text heuristic.
HEAD_BYTES = 4096

# Containers that are never images; checked first so that no image plugin sees them.
_NOT_IMAGES: list[tuple[bytes, int, str]] = [
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"PK\x05\x06", 0, "ZIP"),
    (b"\x1f\x8b", 0, "GZIP"),
    (b"BZh", 0, "BZIP2"),
    (b"\xfd7zXZ\x00", 0, "XZ"),
    (b"(\xb5/\xfd", 0, "ZSTD"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7Z"),
    (b"Rar!\x1a\x07", 0, "RAR"),
    (b"\x7fELF", 0, "ELF"),
    (b"PAR1", 0, "PARQUET"),
    (b"SQLite format 3\x00", 0, "SQLITE"),
    (b"ustar", 257, "TAR"),
]
# What the cleaning sniffer names but is not an image.
_SNIFFED_NOT_IMAGES = {"PDF", "HTML"}


class FileRefused(Exception):
    """A file that is not read, with a stable reject reason and a detail naming it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Identified:
    """What a file holds: a format name (``PNG``, ``ZIP``, ``text``, ``unknown``...) and
    whether it is an image (the cleaning stage decides whether that format is allowed)."""

    kind: str
    image: bool


def check_path(path: str) -> None:
    if "\x00" in path:
        raise FileRefused(PATH_INVALID, f"{path!r} holds a NUL byte")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def confined(root: str, path: str, *, follow_symlinks: bool = False) -> str:
    """The real path of ``path``, refused when it leaves the real ``root``."""
    check_path(path)
    real = os.path.realpath(path)
    if not follow_symlinks and not _inside(real, os.path.realpath(root)):
        raise FileRefused(PATH_OUTSIDE_SOURCE, f"{path} resolves to {real}, outside {root}")
    return real


class RegularFile:
    """A regular file opened for bounded reading (a context manager around one descriptor)."""

    def __init__(self, path: str, display: str) -> None:
        self.display = display
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            raise FileRefused(IMAGE_MISSING, f"{display} not found") from None
        except OSError as error:
            raise FileRefused(IMAGE_UNREADABLE, f"{display}: {error.strerror}") from None
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self.fd)
            raise FileRefused(NOT_REGULAR_FILE, f"{display} is a {_kind_of(info.st_mode)}")
        self.size = info.st_size

    def __enter__(self) -> RegularFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, limit: int) -> bytes:
        """Up to ``limit + 1`` bytes from the current position (one more than allowed shows the
        file is over the limit)."""
        chunks, left = [], limit + 1
        while left > 0:
            try:
                chunk = os.read(self.fd, min(left, 1 << 20))
            except OSError as error:
                raise FileRefused(IMAGE_UNREADABLE, f"{self.display}: {error.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def read_bounded(
    path: str, display: str, limit: int, too_large: str = IMAGE_FILE_TOO_LARGE
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; larger files are refused unread."""
    with RegularFile(path, display) as handle:
        if handle.size > limit:
            raise FileRefused(too_large, f"{display}: {handle.size} bytes > {limit}")
        payload = handle.read(limit)
    if len(payload) > limit:
        raise FileRefused(too_large, f"{display}: over {limit} bytes")
    return payload


def read_text(path: str, display: str, limit: int) -> str:
    """A UTF-8 text sidecar of at most ``limit`` bytes (``record_too_large`` above)."""
    payload = read_bounded(path, display, limit, RECORD_TOO_LARGE)
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileRefused("malformed_record", f"{display}: not UTF-8 ({error.reason})") from None


def identify(data: bytes) -> Identified:
    """Identify content: non-image containers by magic, images by the cleaning stage's sniffer
    and then by Pillow's plugins (header only), the rest as ``text`` or ``unknown``."""
    for magic, offset, name in _NOT_IMAGES:
        if data[offset : offset + len(magic)] == magic:
            return Identified(name, False)
    sniffed = sniff_format(data)
    if sniffed is not None:
        return Identified(sniffed, sniffed not in _SNIFFED_NOT_IMAGES)
    pillow = plugin_format(data)
    if pillow is not None:
        return Identified(pillow, True)
    return Identified(_text_or_unknown(data[:HEAD_BYTES]), False)


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions, with their dot, of the formats Pillow reads."""
    Image.init()
    return frozenset(Image.registered_extensions())


def damaged_image(name: str, identified: Identified) -> bool:
    """A file named as an image whose bytes are no known format: a damaged image, which the
    cleaning stage names (``image_corrupt``, ``image_truncated``) with its sidecars kept, not an
    unsupported file. Known non-image containers (ZIP, PDF, HTML...) stay what they are."""
    suffix = os.path.splitext(name)[1].lower()
    return identified.kind in ("unknown", "text") and suffix in image_extensions()


def _text_or_unknown(head: bytes) -> str:
    if not head:
        return "empty"
    if b"\x00" in head:
        return "unknown"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # a multi-byte character cut by the head's end is still text
        if error.start < len(head) - 3:
            return "unknown"
    return "text"


def describe(name: str, identified: Identified) -> str:
    """``unsupported_file`` detail: the extension and the sniffed type."""
    extension = os.path.splitext(name)[1].lower() or "(none)"
    return f"{name}: extension {extension}, content {identified.kind}"


HIDDEN_FILE = "hidden_file"
SYMLINKED_DIRECTORY = "symlinked_directory"


@dataclass(frozen=True)
class Entry:
    """One directory entry under a source root: ``key`` is its path relative to the root;
    ``real`` the path to open, or ``refused`` why it is not read."""

    key: str
    real: str | None
    refused: FileRefused | None = None

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


def walk(root: str, *, follow_symlinks: bool = False) -> list[Entry]:
    """Every entry under ``root`` in sorted order, each readable or refused with a reason.

    Hidden files and directories are one ``hidden_file`` entry each (a ``.git`` is not read).
    Directories are descended without following links: a symlinked directory is refused
    (``path_outside_source`` when it leaves the root, else ``symlinked_directory``: its files
    are read where they lie) unless ``follow_symlinks``, which descends each real directory
    once. Anything but a regular file (FIFO, socket, device) is ``not_regular_file``.
    """
    real_root = os.path.realpath(root)
    entries: list[Entry] = []
    visited = {real_root}
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            listing = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            refusal = FileRefused(IMAGE_UNREADABLE, f"{prefix or '.'}: {error.strerror}")
            entries.append(Entry(prefix or ".", None, refusal))
            continue
        subdirs = []
        for item in listing:
            key = prefix + item.name
            entry, descend = _entry(item, key, real_root, follow_symlinks, visited)
            if descend is not None:
                subdirs.append((descend, key + "/"))
            else:
                entries.append(entry)
        pending.extend(reversed(subdirs))
    return sorted(entries, key=lambda e: e.key)


def _entry(
    item: os.DirEntry, key: str, real_root: str, follow_symlinks: bool, visited: set[str]
) -> tuple[Entry, str | None]:
    """The entry for one directory item, or the directory to descend into."""
    if "\x00" in item.name:  # not possible on POSIX; kept so keys are always valid
        return Entry(key, None, FileRefused(PATH_INVALID, f"{key!r} holds a NUL byte")), None
    if item.name.startswith("."):
        what = "directory, not read" if item.is_dir(follow_symlinks=False) else "file"
        return Entry(key, None, FileRefused(HIDDEN_FILE, f"{key}: hidden {what}")), None
    try:
        info = item.stat(follow_symlinks=False)
    except OSError as error:
        return Entry(key, None, FileRefused(IMAGE_UNREADABLE, f"{key}: {error.strerror}")), None
    real = item.path
    if stat.S_ISLNK(info.st_mode):
        real = os.path.realpath(item.path)
        if not os.path.exists(real):
            return Entry(key, None, FileRefused(IMAGE_MISSING, f"{key}: broken symlink")), None
        if not follow_symlinks and not _inside(real, real_root):
            refusal = FileRefused(PATH_OUTSIDE_SOURCE, f"{key} links to {real}, outside the source")
            return Entry(key, None, refusal), None
        info = os.stat(real)
        if stat.S_ISDIR(info.st_mode):
            if follow_symlinks and real not in visited:
                visited.add(real)
                return Entry(key, None), real
            detail = f"{key} links to the directory {real}, whose files are read where they lie"
            return Entry(key, None, FileRefused(SYMLINKED_DIRECTORY, detail)), None
    elif stat.S_ISDIR(info.st_mode):
        return Entry(key, None), item.path
    if not stat.S_ISREG(info.st_mode):
        refusal = FileRefused(NOT_REGULAR_FILE, f"{key} is a {_kind_of(info.st_mode)}")
        return Entry(key, None, refusal), None
    return Entry(key, real), None
