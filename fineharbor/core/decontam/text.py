"""Word n-grams of normalised text, hashed to 64-bit integers for a compact index."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_words(text: str) -> list[str]:
    """Case-, accent- and punctuation-insensitive words, so formatting never hides a copy."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _WORD.findall(stripped)


def ngram_hashes(text: str, n: int) -> set[int]:
    """Signed 64-bit hashes of the word n-grams (Parquet has no unsigned default)."""
    words = normalise_words(text)
    hashes = set()
    for start in range(len(words) - n + 1):
        gram = " ".join(words[start : start + n]).encode()
        digest = hashlib.blake2b(gram, digest_size=8).digest()
        hashes.add(int.from_bytes(digest, "little", signed=True))
    return hashes


def turn_ngrams(turns: Iterable[dict], fields: Iterable[str], n: int) -> set[int]:
    found: set[int] = set()
    for turn in turns or []:
        for field in fields:
            found |= ngram_hashes(turn.get(field) or "", n)
    return found
