"""Downloads kept across runs: a content store keyed by URL, and the rules for reusing it.

On the web links rot, so an image fetched once is an asset: every fetch result (the bytes, the
HTTP status, the headers that matter, the time) is kept under the storage root and later runs
reuse it instead of asking the server again. Layout, one file per URL::

    downloads/<source>/<h[0:2]>/<h[2:4]>/<h>.fetch     h = sha256(URL), hex

A ``.fetch`` file is one JSON line (url, ok, status, error, final URL, attempts, headers,
fetched_at, size and sha256 of the body) followed by the body bytes. Why one file per URL
rather than Parquet segments:

- no index to load: a lookup is one path computed from the URL, so memory does not grow with
  the list (a Parquet store would need a URL -> row index, or a join, and a row-group read per
  random lookup);
- each URL is committed as soon as it is fetched (temporary file + rename locally, one PUT on
  an object store, both atomic), so a run killed after fetching 9 of 10 million URLs keeps the
  9 million;
- two shards of a source, or two runs, never write the same file at once except for the same
  URL, where the last complete write wins.

The cost is one file (object) per URL, as img2dataset's ``files`` output has; the two-level
fan-out keeps directories small (about 15 entries per directory at a million URLs). Lookups and
writes run on a few threads so an object store's latency overlaps.

Reuse rules (:meth:`DownloadStore.wants_fetch`, :meth:`DownloadStore.settle`): a kept success
is reused unless the run asks for a refetch (:data:`REFETCH_ENV`) or it is older than the
source's ``max_age_days``; a kept failure is fetched again while ``refetch_failed`` (the
default). A refetch that fails keeps the earlier good copy, except when the server now opts
out (``X-Robots-Tag: noai``). Reused copies are checked against the current limits
(``max_bytes``, ``honour_noai``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from fineharbor.core.config import DownloadParams, InterleavedSource, UrlListSource
from fineharbor.core.download import Downloader, DownloadResult, has_noai_directive
from fineharbor.core.storage import Storage

__all__ = [
    "ACCEPT_LOSSES_ENV",
    "DOWNLOADS",
    "LOSS_REASONS",
    "REFETCH_ENV",
    "DownloadLossError",
    "DownloadStore",
    "LossCounter",
    "ReusePolicy",
    "refetch_requested",
]

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
REFETCH_ENV = "FINEHARBOR_REFETCH"
"""``1``/``all``: refetch every URL of every url_list and interleaved source in this run;
``a,b``: of those."""
ACCEPT_LOSSES_ENV = "FINEHARBOR_ACCEPT_DOWNLOAD_LOSSES"
"""``1``: publish a raw partition even though URLs it held now fail (see :class:`LossCounter`)."""

# Failures that say "not now" rather than "not this": they must not replace a kept image.
LOSS_REASONS = frozenset(
    f"download_{code}" for code in ("dns_error", "connection_error", "timeout", "http_error")
)
_SUFFIX = ".fetch"
_FORMAT = 1
_MAX_HEADER_BYTES = 1 << 20
_THREADS = 16
_WINDOW = 4 * _THREADS
_TRUE = frozenset({"1", "true", "yes", "all", "*"})
_FALSE = frozenset({"", "0", "false", "no", "none"})


def refetch_requested(source: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this run asks to refetch ``source``'s URLs (:data:`REFETCH_ENV`)."""
    value = environ.get(REFETCH_ENV, "").strip()
    if value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    return source in {name.strip() for name in value.split(",")}


@dataclass(frozen=True)
class ReusePolicy:
    """When a kept fetch result is used instead of asking the server again."""

    refetch: bool = False
    refetch_failed: bool = True
    max_age_s: float | None = None

    @classmethod
    def for_source(
        cls, source: UrlListSource | InterleavedSource, environ: Mapping[str, str] = os.environ
    ) -> ReusePolicy:
        max_age = source.max_age_days
        return cls(
            refetch=refetch_requested(source.name, environ),
            refetch_failed=source.refetch_failed,
            max_age_s=None if max_age is None else max_age * 86400.0,
        )


@dataclass
class StoreStats:
    """What the store did in one run, for the stage's metadata."""

    reused: int = 0
    reused_failures: int = 0
    fetched: int = 0
    kept_after_failed_refetch: int = 0
    write_errors: int = 0

    def as_metadata(self) -> dict[str, int]:
        return {f"downloads_{name}": value for name, value in self.__dict__.items()}


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode(result: DownloadResult) -> bytes:
    body = result.content or b""
    header = {
        "v": _FORMAT,
        "url": result.url,
        "ok": result.ok,
        "http_status": result.http_status,
        "error_code": result.error_code,
        "error_message": result.error_message,
        "final_url": result.final_url,
        "attempts": result.attempts,
        "headers": result.headers,
        "fetched_at": result.fetched_at,
        "size": len(body) if result.ok else None,
        "sha256": _sha256(body) if result.ok else None,
    }
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + body


def _decode(payload: bytes, url: str) -> DownloadResult | None:
    """The kept result, or None when the file is not a complete record for ``url``."""
    line, newline, body = payload.partition(b"\n")
    if not newline or len(line) > _MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("v") != _FORMAT or header.get("url") != url:
        return None
    ok = bool(header.get("ok"))
    intact = len(body) == header.get("size") and _sha256(body) == header.get("sha256")
    if ok and not intact:
        return None
    return DownloadResult(
        url=url,
        ok=ok,
        content=body if ok else None,
        http_status=header.get("http_status"),
        error_code=header.get("error_code"),
        error_message=header.get("error_message"),
        final_url=header.get("final_url"),
        attempts=int(header.get("attempts") or 0),
        headers=dict(header.get("headers") or {}),
        fetched_at=header.get("fetched_at"),
    )


def _fails(result: DownloadResult, code: str, message: str) -> DownloadResult:
    return replace(result, ok=False, content=None, error_code=code, error_message=message)


class DownloadStore:
    """The kept fetch results of one source under ``storage``'s root (module docstring)."""

    def __init__(
        self,
        storage: Storage,
        source: str,
        policy: ReusePolicy = ReusePolicy(),
        params: DownloadParams | None = None,
    ) -> None:
        self.storage = storage
        self.source = source
        self.policy = policy
        self.params = params or DownloadParams()
        self.stats = StoreStats()
        self._dirs: set[str] = set()

    # ------------------------------------------------------------------ files

    def path(self, url: str) -> str:
        digest = _url_hash(url)
        return self.storage.path(DOWNLOADS, self.source, digest[:2], digest[2:4], digest + _SUFFIX)

    def get(self, url: str) -> DownloadResult | None:
        """The kept result for ``url``; None when there is none or it is unreadable."""
        path = self.path(url)
        try:
            with self.storage.fs.open_input_stream(path) as stream:
                payload = stream.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cannot read kept download %s: %s", path, error)
            return None
        return _decode(payload, url)

    def put(self, result: DownloadResult) -> None:
        """Keep ``result``, replacing what was kept for its URL, all at once."""
        path = self.path(result.url)
        payload = _encode(result)
        fs = self.storage.fs
        if not self.storage.is_local:  # one PUT: readers see the old object or the new one
            with fs.open_output_stream(path) as stream:
                stream.write(payload)
            return
        directory = posixpath.dirname(path)
        if directory not in self._dirs:  # one mkdir per fan-out directory, not one per URL
            fs.create_dir(directory, recursive=True)
            self._dirs.add(directory)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open_output_stream(temporary) as stream:
                stream.write(payload)
            fs.move(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(temporary)

    # ------------------------------------------------------------------ rules

    def wants_fetch(self, kept: DownloadResult | None, now: float | None = None) -> bool:
        """Whether to ask the server rather than use ``kept``."""
        policy = self.policy
        if kept is None or policy.refetch:
            return True
        if not kept.ok:
            return policy.refetch_failed
        if policy.max_age_s is None:
            return False
        age = (now or time.time()) - (kept.fetched_at or 0.0)
        return age > policy.max_age_s

    def reuse(self, kept: DownloadResult) -> DownloadResult:
        """A kept result as this run's, checked against the current limits."""
        params = self.params
        if not kept.ok:
            return kept
        if params.honour_noai and has_noai_directive([kept.headers.get("X-Robots-Tag", "")]):
            return _fails(kept, "noai", f"X-Robots-Tag: {kept.headers['X-Robots-Tag']} (kept copy)")
        size = len(kept.content or b"")
        if size > params.max_bytes:
            return _fails(
                kept, "too_large", f"kept copy of {size} bytes exceeds {params.max_bytes} bytes"
            )
        return kept

    def settle(
        self, kept: DownloadResult | None, fetched: DownloadResult
    ) -> tuple[DownloadResult, bool]:
        """This run's result for a URL that was fetched, and whether to keep it in the store.

        A failed refetch of a kept good copy keeps the copy, unless the server opted out.
        Refusals made before any request (bad URL, blocked address) depend on the project
        file, not on the server, so they are not kept.
        """
        if fetched.ok:
            return fetched, True
        if kept is not None and kept.ok and fetched.error_code != "noai":
            self.stats.kept_after_failed_refetch += 1
            return self.reuse(kept), False
        return fetched, fetched.attempts > 0

    # ------------------------------------------------------------------ streaming

    def fetch(self, downloader: Downloader, urls: Iterable[str]) -> Iterator[DownloadResult]:
        """One result per URL, in order: kept ones reused, the others fetched and kept.

        Lookups and writes run on a small thread pool, each with a bounded window, so memory
        stays bounded by the windows (not by the list) and an object store's latency overlaps.
        """
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="fineharbor-store") as pool:
            decided: deque[tuple[DownloadResult | None, bool]] = deque()
            writes: deque[Future[None]] = deque()

            def inputs() -> Iterator[str | DownloadResult]:
                for url, kept in self._lookups(pool, urls):
                    ask = self.wants_fetch(kept)
                    decided.append((kept, ask))
                    yield url if ask or kept is None else self.reuse(kept)

            for result in downloader.map(inputs()):
                kept, asked = decided.popleft()
                if not asked:
                    self.stats.reused += 1
                    self.stats.reused_failures += not result.ok
                    yield result
                    continue
                self.stats.fetched += result.attempts > 0
                final, keep = self.settle(kept, result)
                if keep:
                    writes.append(pool.submit(self._put_logged, final))
                    while len(writes) > _WINDOW:
                        writes.popleft().result()
                yield final
            for write in writes:
                write.result()

    def _lookups(
        self, pool: ThreadPoolExecutor, urls: Iterable[str]
    ) -> Iterator[tuple[str, DownloadResult | None]]:
        pending: deque[tuple[str, Future[DownloadResult | None] | None]] = deque()
        for url in urls:
            lookup = pool.submit(self.get, url) if url else None
            pending.append((url, lookup))
            if len(pending) >= _WINDOW:
                head, future = pending.popleft()
                yield head, None if future is None else future.result()
        while pending:
            head, future = pending.popleft()
            yield head, None if future is None else future.result()

    def _put_logged(self, result: DownloadResult) -> None:
        """A download that cannot be kept is still used in this run."""
        try:
            self.put(result)
        except OSError as error:
            self.stats.write_errors += 1
            log.warning("cannot keep the download of %s: %s", result.url, error)


# --------------------------------------------------------------------------- losses


class DownloadLossError(RuntimeError):
    """A re-run would replace rows of a published raw partition with download failures."""


def _id_keys(sample_ids: Iterable[str]) -> np.ndarray:
    """64-bit keys of sample ids (hex digests): a compact set, 8 bytes per id."""
    return np.fromiter((int(s[:16], 16) for s in sample_ids), dtype=np.uint64)


@dataclass
class LossCounter:
    """Counts published rows that a new run of a raw partition would lose to failed downloads.

    Fed the new run's rejects as they stream by; only failures in :data:`LOSS_REASONS` are held,
    as 64-bit keys, and checked against the published partition's sample ids batch by batch.
    """

    keys: list[np.ndarray] = field(default_factory=list)
    reasons: list[np.ndarray] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def add(self, rejected: pa.Table) -> None:
        if not rejected.num_rows:
            return
        rows = [
            (sample_id, reason)
            for sample_id, reason in zip(
                rejected.column("sample_id").to_pylist(),
                rejected.column("reason").to_pylist(),
                strict=True,
            )
            if reason in LOSS_REASONS
        ]
        if rows:
            self.keys.append(_id_keys(sample_id for sample_id, _ in rows))
            codes = [self.codes.setdefault(reason, len(self.codes)) for _, reason in rows]
            self.reasons.append(np.asarray(codes, dtype=np.int16))

    def lost(self, published: Iterable[pa.RecordBatch]) -> Counter[str]:
        """Rows among ``published`` (batches with ``sample_id``) now failing, by reason."""
        lost: Counter[str] = Counter()
        if not self.keys:
            return lost
        keys = np.concatenate(self.keys)
        reasons = np.concatenate(self.reasons)
        order = np.argsort(keys)
        keys, reasons = keys[order], reasons[order]
        names = {code: reason for reason, code in self.codes.items()}
        for batch in published:
            ids = _id_keys(batch.column("sample_id").to_pylist())
            position = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            hits = position[keys[position] == ids]
            for code, count in zip(*np.unique(reasons[hits], return_counts=True), strict=True):
                lost[names[int(code)]] += int(count)
        return lost
