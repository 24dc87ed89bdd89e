"""Image hash blocklists: the lists of known-bad images safety teams keep, matched before any
other rule or stage looks at an image.

A blocklist is a UTF-8 text file, one entry per line, ``KIND HASH`` (blank lines and ``#``
comments ignored)::

    # known-bad images, exported 2026-12-01
    sha256         9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    sha256_pixels  1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014
    phash          c3e1f0f0e0c08080
    phash          -4332348393585868672

``sha256`` is the hash of the file's bytes as the source holds them; ``sha256_pixels`` and
``phash`` are the ``image_signatures`` columns of the same names
(:mod:`fineharbor.core.signatures.hashing`: the decoded RGB pixels with their size, and
imagehash's 64-bit DCT hash as 16 hex digits or as the signed int64 the column stores). A phash
entry matches an image whose phash is within ``blocklist_phash_distance`` bits.

Files are read once per process (and again when they change on disk); a file the project
names that is missing or holds a malformed line fails at config load.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("sha256", "sha256_pixels", "phash")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{16}")
_INT64 = re.compile(r"[+-]?\d{1,20}")


class BlocklistError(ValueError):
    """A blocklist file that cannot be used: the message names the file and the line."""


@dataclass(frozen=True)
class Blocklist:
    """One loaded list. ``lines`` map each hash to the line that holds it (so a reject can say
    which entry matched without repeating the hash)."""

    name: str
    sha256: dict[str, int]
    sha256_pixels: dict[str, int]
    phash: np.ndarray  # uint64, one per phash entry
    phash_lines: np.ndarray  # int64, the line of each phash entry

    def phash_match(self, code: int, distance: int) -> tuple[int, int] | None:
        """(line, bits apart) of the closest phash entry within ``distance`` bits, or None."""
        if not len(self.phash):
            return None
        apart = np.bitwise_count(self.phash ^ np.uint64(code & 0xFFFFFFFFFFFFFFFF))
        best = int(np.argmin(apart))
        if int(apart[best]) > distance:
            return None
        return int(self.phash_lines[best]), int(apart[best])


def _phash_value(text: str) -> int | None:
    lowered = text.lower()
    if _HEX64.fullmatch(lowered):
        return int(lowered, 16)
    if _INT64.fullmatch(text):
        value = int(text)
        if -(1 << 63) <= value < (1 << 63):
            return value & 0xFFFFFFFFFFFFFFFF
    return None


def parse(text: str, name: str) -> Blocklist:
    """Parse a blocklist's text; raises :class:`BlocklistError` at the first bad line."""
    hashes: dict[str, dict[str, int]] = {"sha256": {}, "sha256_pixels": {}}
    phashes: list[int] = []
    phash_lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0].lower() not in KINDS:
            raise BlocklistError(
                f"{name}, line {number}: expected 'KIND HASH' with KIND one of {', '.join(KINDS)}"
            )
        kind, value = parts[0].lower(), parts[1]
        if kind == "phash":
            code = _phash_value(value)
            if code is None:
                raise BlocklistError(
                    f"{name}, line {number}: a phash is 16 hex digits or a signed 64-bit integer"
                )
            phashes.append(code)
            phash_lines.append(number)
        elif _SHA256.fullmatch(value.lower()):
            hashes[kind].setdefault(value.lower(), number)
        else:
            raise BlocklistError(f"{name}, line {number}: a {kind} is 64 hex digits")
    return Blocklist(
        name,
        hashes["sha256"],
        hashes["sha256_pixels"],
        np.array(phashes, dtype=np.uint64),
        np.array(phash_lines, dtype=np.int64),
    )


def read(path: str) -> Blocklist:
    """The blocklist at ``path``, named by its file name; raises :class:`BlocklistError`."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise BlocklistError(f"blocklist {path}: {error.strerror or error}") from None
    return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read(path: str, mtime_ns: int, size: int) -> Blocklist:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise BlocklistError(f"blocklist {path}: cannot read it as UTF-8 text: {error}") from None
    return parse(text, Path(path).name)


def read_all(paths: list[str]) -> list[Blocklist]:
    return [read(path) for path in paths]
