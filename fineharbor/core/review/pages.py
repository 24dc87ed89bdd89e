"""A static, self-contained HTML review page per source.

What a person needs to approve or reject a source: its mapping and review status, the stage
funnel, a fixed random sample of unified and cleaned samples with their images (thumbnails as
``data:`` URIs) and turns, and the rejects of every stage grouped by reason with examples. Every
text from the data is HTML-escaped, and the page forbids scripts and remote loads with a
Content-Security-Policy, so a hostile caption can neither inject markup nor phone home.
Image bytes are as untrusted as the text: thumbnails are decoded by the cleaning stage's safe
decoder (:func:`fineharbor.core.cleaning.images.decode_image`: format allowlist, pixel limits)
in a child process killed past ``decode_timeout_s`` (:class:`ThumbnailWorker`), under the
project's ``stages.clean`` settings; an image it refuses is shown as "rejected: <reason>".
Pages are written under ``review/`` of the storage root (``FINEHARBOR_HOME/review/``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import io
import multiprocessing
import posixpath
import signal
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import yaml
from PIL import Image

from fineharbor.core.cleaning.images import ImageResult, decode_image
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.pool import setup_worker_process
from fineharbor.core.cleaning.reasons import IMAGE_DECODE_TIMEOUT, WORKER_CRASHED
from fineharbor.core.config import ProjectConfig, SourceConfig
from fineharbor.core.pipeline import (
    CLEANED,
    DECONTAMINATED,
    DEDUPLICATED,
    RAW,
    SIGNATURES,
    UNIFIED,
)
from fineharbor.core.review.decisions import (
    Approve,
    Decision,
    Flag,
    Override,
    ReviewLog,
    mapping_fingerprint,
)
from fineharbor.core.review.gate import release_gate
from fineharbor.core.storage import DATA, REJECTS, Storage
from fineharbor.core.stored import read_stage_rows

REVIEW_DIR = "review"
SAMPLE_SIZE = 12
SEED = 0
THUMBNAIL_PX = 256
MAX_IMAGES_PER_SAMPLE = 4
MAX_TEXT_CHARS = 2000
EXAMPLES_PER_REASON = 3
# The per-source chain, in order; stages added later are listed after these, by name.
CHAIN = (
    RAW,
    UNIFIED,
    CLEANED,
    SIGNATURES,
    DEDUPLICATED,
    DECONTAMINATED,
)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2733;background:#f7f8fa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#eef1f4}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600}
.approved{background:#d3f5dc}.benchmark{background:#e4e7eb}.rejected,.stale{background:#fbd5d5}.unreviewed{background:#fff0c2}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px}
.card img{max-width:100%;max-height:256px;display:block;margin:0 0 6px}
.meta{color:#57606a;font-size:12px;word-break:break-all}.flag{color:#b42318;font-weight:600}
.turn{margin:6px 0;white-space:pre-wrap;word-break:break-word}.u{color:#0b4f9c}.a{color:#1a7f37}
.broken{background:#fbd5d5;padding:6px;font-size:12px}pre{background:#fff;padding:8px;
border:1px solid #d0d7de;white-space:pre-wrap}
"""


def page_path(storage: Storage, source: str) -> str:
    return storage.path(REVIEW_DIR, f"{source}.html")


# --------------------------------------------------------------------------- data access


def _rank(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{sample_id}".encode()).hexdigest()


def sample_ids(storage: Storage, asset: str, source: str, n: int, seed: int) -> list[str]:
    """A fixed random sample: the `n` ids of smallest seeded hash. The same ids on every run,
    and a sample stays chosen when other rows come and go."""
    if not storage.has_partition(asset, source):
        return []
    ids = (
        sample_id
        for batch in storage.iter_batches(asset, source, columns=["sample_id"], batch_size=4096)
        for sample_id in batch.column("sample_id").to_pylist()
    )
    return heapq.nsmallest(n, ids, key=lambda i: _rank(seed, i))


def rows_by_id(
    storage: Storage, asset: str, source: str, ids: Sequence[str], kind: str = DATA
) -> dict[str, dict]:
    """The rows of `ids` (one streaming pass; only matching rows are converted)."""
    if not ids or not storage.has_partition(asset, source, kind):
        return {}
    wanted = pa.array(list(ids), pa.string())
    found: dict[str, dict] = {}
    batches = (
        read_stage_rows(storage, asset, source, batch_size=512, sample_ids=wanted)
        if kind == DATA
        else storage.iter_batches(asset, source, kind=kind, batch_size=512)
    )
    for batch in batches:
        hit = batch.filter(pc.is_in(batch.column("sample_id"), value_set=wanted))
        for row in hit.to_pylist():
            found.setdefault(row["sample_id"], row)
    return found


def _assets(storage: Storage, source: str, kind: str) -> list[str]:
    root = storage.path(kind)
    if not storage.exists(root):
        return []
    infos = storage.fs.get_file_info(pafs.FileSelector(root, recursive=False))
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
    present = [a for a in names if storage.has_partition(a, source, kind)]
    return [a for a in CHAIN if a in present] + sorted(a for a in present if a not in CHAIN)


def _reasons(storage: Storage, asset: str, source: str) -> dict[str, list[dict]]:
    """Reason -> its rows' (sample_id, origin_key, detail), at most a few examples kept."""
    grouped: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    columns = ["sample_id", "origin_key", "reason", "detail"]
    for batch in storage.iter_batches(asset, source, kind=REJECTS, columns=columns):
        for row in batch.to_pylist():
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
            examples = grouped.setdefault(row["reason"], [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append(row)
    return {
        reason: [{**e, "count": counts[reason]} for e in grouped[reason]]
        for reason in sorted(grouped, key=lambda r: -counts[r])
    }


# --------------------------------------------------------------------------- rendering


def _thumbnail_params(params: CleanParams) -> CleanParams:
    """The cleaning stage's decode settings, bringing every image down to a thumbnail. A
    thumbnail needs no more pixels than cleaning keeps, so ``max_pixels`` bounds the decode."""
    return params.model_copy(
        update={
            "resize": True,
            "max_image_side": THUMBNAIL_PX,
            "reencode_unchanged": True,  # no original bytes (nor their metadata) in the page
            "jpeg_quality": 80,
            "decompression_bomb_pixels": min(params.decompression_bomb_pixels, params.max_pixels),
        }
    )


def _as_jpeg(result: ImageResult) -> ImageResult:
    """Thumbnails are JPEG whatever the source format (a page of PNG thumbnails is 5x larger).
    The bytes are the decoder's own small re-encoding, opened with that one format only."""
    if not result.ok or result.info is None or result.info.encoded_format == "JPEG":
        return result
    with Image.open(io.BytesIO(result.data), formats=[result.info.encoded_format]) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return ImageResult(ok=True, data=buffer.getvalue(), info=result.info)


def _thumbnail_main(conn, params: CleanParams) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    setup_worker_process(params)
    while True:
        try:
            data = conn.recv()
        except (EOFError, OSError):
            return
        if data is None:
            return
        conn.send(_as_jpeg(decode_image(data, params)))


class ThumbnailWorker:
    """Thumbnails of untrusted image bytes, decoded in one child process.

    The child runs the cleaning stage's safe decoder with its process-wide limits
    (:func:`~fineharbor.core.cleaning.pool.setup_worker_process`: Pillow's pixel limit,
    ``worker_memory_limit_mb``); a decode past ``decode_timeout_s`` kills it (SIGKILL: a
    decoder stuck in C cannot be interrupted otherwise) and a crash costs that image only; the
    next image starts a fresh child. Use as a context manager."""

    def __init__(self, params: CleanParams) -> None:
        self.params = _thumbnail_params(params)
        self._ctx = multiprocessing.get_context(params.start_method)
        self._process = None
        self._conn = None

    def __enter__(self) -> ThumbnailWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._process = self._ctx.Process(
            target=_thumbnail_main, args=(child, self.params), daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent

    def decode(self, data: bytes) -> ImageResult:
        if self._process is None:
            self._start()
        try:
            self._conn.send(data)
            if self._conn.poll(self.params.decode_timeout_s):
                return self._conn.recv()
            failed = ImageResult.failed(
                IMAGE_DECODE_TIMEOUT, f"no thumbnail within {self.params.decode_timeout_s} s"
            )
        except (EOFError, OSError):  # the child died: a segfault, the memory limit
            failed = ImageResult.failed(WORKER_CRASHED, "the decoder process died")
        self._stop(kill=True)
        return failed

    def _stop(self, kill: bool) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            if not kill:
                self._conn.send(None)
        self._conn.close()
        if kill:
            self._process.kill()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = self._conn = None

    def close(self) -> None:
        self._stop(kill=False)


def thumbnail(data: bytes | None, worker: ThumbnailWorker) -> str:
    """An <img> with a JPEG thumbnail as a data URI, or why the bytes are not shown."""
    if not data:
        return '<div class="broken">no image bytes</div>'
    result = worker.decode(data)
    if not result.ok:
        return (
            f'<div class="broken">rejected: {escape(result.reason or "")} ({len(data)} bytes): '
            f"{escape(result.detail)}</div>"
        )
    encoded = base64.b64encode(result.data).decode("ascii")
    return f'<img alt="image" src="data:image/jpeg;base64,{encoded}">'


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT_CHARS:
        text = f"{text[:MAX_TEXT_CHARS]}… ({len(text) - MAX_TEXT_CHARS} more characters)"
    return escape(text)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], raw: bool = False) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if raw else _text(v)}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _card(row: dict, flagged: dict[str, str], worker: ThumbnailWorker, note: str = "") -> str:
    images = row.get("images") or []
    parts = [thumbnail(image.get("bytes"), worker) for image in images[:MAX_IMAGES_PER_SAMPLE]]
    if len(images) > MAX_IMAGES_PER_SAMPLE:
        parts.append(f'<div class="meta">+{len(images) - MAX_IMAGES_PER_SAMPLE} more images</div>')
    for turn in row.get("texts") or []:
        parts.append(f'<div class="turn"><b class="u">user:</b> {_text(turn["user"])}</div>')
        parts.append(
            f'<div class="turn"><b class="a">assistant:</b> {_text(turn["assistant"])}</div>'
        )
    meta = f"{_text(row['sample_id'])} · {_text(row.get('origin_key'))}"
    if note:
        meta += f" · {_text(note)}"
    if row["sample_id"] in flagged:
        parts.append(f'<div class="flag">{_text(flagged[row["sample_id"]])}</div>')
    return f'<div class="card"><div class="meta">{meta}</div>{"".join(parts)}</div>'


def _what(decision: Decision) -> str:
    if isinstance(decision, Override):
        return f"{decision.key} = {decision.value!r}"
    if isinstance(decision, Flag):
        return ", ".join(decision.sample_ids)
    if isinstance(decision, Approve):
        return f"mapping {decision.mapping}"
    return ""


def _status(source: SourceConfig, reviews: ReviewLog) -> tuple[str, str]:
    if source.role == "benchmark":
        return "benchmark", "a benchmark test set: never enters a release, needs no approval"
    gate = release_gate(reviews, [source.name], {source.name: mapping_fingerprint(source)})
    state = reviews.state(source.name)
    if source.name in gate.allowed:
        return "approved", f"approved by {state.decided.by} at {state.decided.at.isoformat()}"
    why = gate.blocked[source.name]
    return ("stale" if why.startswith("stale") else state.status), why


def _samples_section(
    storage: Storage,
    asset: str,
    source: str,
    flagged: dict[str, str],
    n: int,
    seed: int,
    worker: ThumbnailWorker,
) -> str:
    total = storage.count_rows(asset, source) if storage.has_partition(asset, source) else 0
    ids = sample_ids(storage, asset, source, n, seed)
    rows = rows_by_id(storage, asset, source, ids)
    cards = "".join(_card(rows[i], flagged, worker) for i in ids if i in rows)
    title = f"{asset}: {len(ids)} of {total} (fixed sample, seed {seed})"
    body = f'<div class="grid">{cards}</div>' if cards else "<p>(not materialized yet)</p>"
    return f"<h2>{escape(title)}</h2>{body}"


def _rejects_section(storage: Storage, source: str, worker: ThumbnailWorker) -> str:
    parts = ["<h2>Rejects by stage and reason</h2>"]
    found = False
    examples_needed: list[str] = []
    stages = []
    for asset in _assets(storage, source, REJECTS):
        reasons = _reasons(storage, asset, source)
        if reasons:
            stages.append((asset, reasons))
            examples_needed += [e["sample_id"] for rows in reasons.values() for e in rows]
    images = rows_by_id(storage, RAW, source, examples_needed)
    for asset, reasons in stages:
        found = True
        parts.append(f"<h3>{escape(asset)}</h3>")
        for reason, examples in reasons.items():
            parts.append(f"<h4>{escape(reason)}: {examples[0]['count']} rows</h4>")
            cards = []
            for example in examples:
                raw = images.get(example["sample_id"])
                shown = {**example, "images": (raw or {}).get("images") or [], "texts": []}
                cards.append(_card(shown, {}, worker, note=example["detail"] or ""))
            parts.append(f'<div class="grid">{"".join(cards)}</div>')
    if not found:
        parts.append("<p>(no rejects)</p>")
    return "".join(parts)


def render_review_page(
    storage: Storage,
    project: ProjectConfig,
    reviews: ReviewLog,
    source_name: str,
    *,
    sample_size: int = SAMPLE_SIZE,
    seed: int = SEED,
    worker: ThumbnailWorker | None = None,
) -> str:
    """One source's page; ``worker``: a running thumbnail decoder to reuse (else one is
    started for this page)."""
    if worker is None:
        with ThumbnailWorker(project.stages.clean) as own:
            return render_review_page(
                storage,
                project,
                reviews,
                source_name,
                sample_size=sample_size,
                seed=seed,
                worker=own,
            )
    source = project.source(source_name)  # a shard's page shows its partition, decided per source
    state = reviews.state(source.name)
    status, why = _status(source, reviews)
    mapping = yaml.safe_dump(
        source.mapping.model_dump(mode="json", exclude_defaults=True), sort_keys=False
    )
    decisions = [
        (d.at.isoformat(), d.by, d.action, _what(d), d.note) for d in reviews.decisions(source.name)
    ]
    funnel = []
    for asset in _assets(storage, source_name, DATA):
        kept = storage.count_rows(asset, source_name)
        rejected = (
            storage.count_rows(asset, source_name, kind=REJECTS)
            if storage.has_partition(asset, source_name, REJECTS)
            else 0
        )
        funnel.append((asset, kept + rejected, kept, rejected))
    commands = "\n".join(
        [
            f"fineharbor review {source.name} --approve --note 'mapping and samples look right'",
            f"fineharbor review {source.name} --reject --note 'why'",
            f"fineharbor review {source.name} --flag SAMPLE_ID ...",
            f"fineharbor review {source.name} --override clean.caption_min_words=3",
        ]
    )
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    body = [
        f"<h1>{escape(source_name)}</h1>",
        f'<p><span class="badge {status}">{escape(status)}</span> {escape(why)}</p>',
        f'<p class="meta">reader {escape(source.reader)} · role {escape(source.role)} · '
        f"priority {source.priority} · license {escape(source.license)} · "
        f"{escape(source.location)} · generated {generated}</p>",
        f"<h2>Mapping (fingerprint {mapping_fingerprint(source)})</h2><pre>{escape(mapping)}</pre>",
        "<h2>Decisions</h2>",
        _table(["when", "who", "action", "what", "note"], decisions)
        if decisions
        else "<p>(none yet)</p>",
        f"<p>{len(state.flagged)} flagged samples; overrides: "
        f"{escape(str(state.overrides) if state.overrides else 'none')}</p>",
        "<h2>Stage metrics</h2>",
        _table(["stage", "rows in", "kept", "rejected"], funnel)
        if funnel
        else "<p>(nothing materialized yet)</p>",
        _samples_section(storage, UNIFIED, source_name, state.flagged, sample_size, seed, worker),
        _samples_section(storage, CLEANED, source_name, state.flagged, sample_size, seed, worker),
        _rejects_section(storage, source_name, worker),
        f"<h2>Decide</h2><pre>{escape(commands)}</pre>",
    ]
    return _document(f"review: {source_name}", "".join(body))


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def render_index(project: ProjectConfig, reviews: ReviewLog) -> str:
    rows = []
    for source in project.sources:
        status, why = _status(source, reviews)
        link = f'<a href="{escape(source.name)}.html">{escape(source.name)}</a>'
        badge = f'<span class="badge {status}">{escape(status)}</span>'
        rows.append((link, escape(source.role), badge, escape(why)))
    table = _table(["source", "role", "status", "why"], rows, raw=True)
    return _document("fineharbor review", f"<h1>Review</h1>{table}")


def _write(storage: Storage, path: str, text: str) -> None:
    """Atomic: a reader never opens a half-written page."""
    storage.fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp"
    with storage.fs.open_output_stream(tmp) as out:
        out.write(text.encode("utf-8"))
    storage.fs.move(tmp, path)


def write_review_page(
    storage: Storage,
    project: ProjectConfig,
    reviews: ReviewLog,
    source: str,
    worker: ThumbnailWorker | None = None,
) -> str:
    """Render one source's page and the index; returns the page's path."""
    path = page_path(storage, source)
    _write(storage, path, render_review_page(storage, project, reviews, source, worker=worker))
    _write(storage, storage.path(REVIEW_DIR, "index.html"), render_index(project, reviews))
    return path


def write_review_pages(
    storage: Storage,
    project: ProjectConfig,
    reviews: ReviewLog,
    sources: Sequence[str] | None = None,
) -> list[str]:
    with ThumbnailWorker(project.stages.clean) as worker:
        return [
            write_review_page(storage, project, reviews, name, worker)
            for name in (sources or project.partition_keys)
        ]
