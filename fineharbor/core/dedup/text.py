"""Text keys for deduplication: LAION's URL + caption key, exact text hashes, MinHash LSH.

* LAION-400M deduplicated on the URL + alt-text concatenation (LAION-5B on the URL alone). URLs
  are normalised first (scheme and host lower-cased, default port and fragment dropped, query
  parameters sorted) so trivially different spellings of one address meet.
* Text-only samples: an exact key on normalised text (Unicode NFKC, case-folded, whitespace
  collapsed), and MinHash LSH over word 5-shingles for near-duplicate long texts. LSH only
  proposes candidates; each candidate pair is confirmed with the exact Jaccard similarity of its
  shingle sets, so the reported similarity is exact and no pair below the threshold slips in.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from datasketch import MinHash, MinHashLSH

from fineharbor.core.dedup.search import Pairs, canonical_pairs, empty_pairs

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_text(text: str | None) -> str:
    """NFKC, case-folded, whitespace collapsed: the form exact text keys are computed on."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", folded).strip()


def text_key(text: str | None) -> str | None:
    """sha256 of the normalised text; None for empty text (empty texts are not duplicates)."""
    normalised = normalise_text(text)
    if not normalised:
        return None
    return hashlib.sha256(normalised.encode()).hexdigest()


def is_http_url(uri: str | None) -> bool:
    return bool(uri) and uri.split(":", 1)[0].lower() in ("http", "https")


def normalise_url(url: str) -> str:
    """Lower-case scheme and host, drop the default port, the fragment and a bare trailing '/',
    sort query parameters. The path keeps its case: servers treat it as case-sensitive."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = host
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    path = parts.path if parts.path not in ("", "/") else ""
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return urlunsplit((scheme, netloc, path, query, ""))


def url_caption_key(url: str | None, caption: str | None) -> str | None:
    """LAION's dedup key: hash of the normalised URL and the normalised caption; None when the
    row has no http(s) URL."""
    if not is_http_url(url):
        return None
    joined = f"{normalise_url(url)}\x1f{normalise_text(caption)}"
    return hashlib.sha256(joined.encode()).hexdigest()


def word_shingles(text: str, size: int = 5) -> set[str]:
    """Word ``size``-grams of the normalised text (a text shorter than ``size`` words is one
    shingle)."""
    words = _WORD.findall(normalise_text(text))
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[k : k + size]) for k in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def minhash_pairs(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_size: int = 5,
    min_words: int = 50,
    seed: int = 1,
) -> Pairs:
    """Pairs of texts whose word-shingle Jaccard similarity is >= ``threshold``.

    Only texts of at least ``min_words`` words take part: short texts share 5-grams by chance
    and have their exact key. MinHash signatures are deterministic (fixed ``seed``).
    """
    eligible = [
        k for k, text in enumerate(texts) if len(_WORD.findall(normalise_text(text))) >= min_words
    ]
    if len(eligible) < 2:
        return empty_pairs()
    signatures: list[MinHash] = []
    for start in range(0, len(eligible), 1024):  # bulk hashing, chunked to bound the shingles held
        chunk = eligible[start : start + 1024]
        encoded = [[s.encode() for s in word_shingles(texts[k], shingle_size)] for k in chunk]
        signatures.extend(MinHash.bulk(encoded, num_perm=num_perm, seed=seed))
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for k, signature in zip(eligible, signatures, strict=True):
        lsh.insert(k, signature, check_duplication=False)
    out_i, out_j, out_s = [], [], []
    for k, signature in zip(eligible, signatures, strict=True):
        candidates = [other for other in lsh.query(signature) if other > k]
        if not candidates:
            continue
        # shingle sets are rebuilt for candidates only: holding every set would cost ~5x the text
        mine = word_shingles(texts[k], shingle_size)
        for other in sorted(candidates):
            similarity = jaccard(mine, word_shingles(texts[other], shingle_size))
            if similarity >= threshold:
                out_i.append(k)
                out_j.append(other)
                out_s.append(similarity)
    if not out_i:
        return empty_pairs()
    return canonical_pairs(np.array(out_i), np.array(out_j), np.array(out_s))
