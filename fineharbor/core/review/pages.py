"""A static, self-contained HTML review page per source.

What a person needs to approve or reject a source: its mapping and review status, the stage
funnel, a fixed random sample of unified and cleaned samples with their images (thumbnails as
``data:`` URIs) and turns, and the rejects of every stage grouped by reason with examples. Every
text from the data is HTML-escaped, and the page forbids scripts and remote loads with a
Content-Security-Policy, so a hostile caption can neither inject markup nor phone home.
Pages are written under ``review/`` of the storage root (``FINEHARBOR_HOME/review/``).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import io
import posixpath
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import yaml
from PIL import Image

from fineharbor.core.config import ProjectConfig, SourceConfig
from fineharbor.core.review.decisions import (
    Approve,
    Decision,
    Flag,
    Override,
    ReviewLog,
    mapping_fingerprint,
)
from fineharbor.core.review.gate import release_gate
from fineharbor.core.stages import CLEANED, RAW, UNIFIED
from fineharbor.core.storage import DATA, REJECTS, Storage

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
    "image_signatures",
    "deduplicated_samples",
    "decontaminated_samples",
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
    for batch in storage.iter_batches(asset, source, kind=kind, batch_size=512):
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


def thumbnail(data: bytes | None) -> str:
    """An <img> with a JPEG thumbnail as a data URI, or a note when the bytes do not decode."""
    if not data:
        return '<div class="broken">no image bytes</div>'
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            rgb = image.convert("RGB")
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=80)
    except Exception as error:  # any decoder failure is shown, never raised
        return (
            f'<div class="broken">undecodable image ({len(data)} bytes): {escape(str(error))}</div>'
        )
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
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


def _card(row: dict, flagged: dict[str, str], note: str = "") -> str:
    images = row.get("images") or []
    parts = [thumbnail(image.get("bytes")) for image in images[:MAX_IMAGES_PER_SAMPLE]]
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
    storage: Storage, asset: str, source: str, flagged: dict[str, str], n: int, seed: int
) -> str:
    total = storage.count_rows(asset, source) if storage.has_partition(asset, source) else 0
    ids = sample_ids(storage, asset, source, n, seed)
    rows = rows_by_id(storage, asset, source, ids)
    cards = "".join(_card(rows[i], flagged) for i in ids if i in rows)
    title = f"{asset}: {len(ids)} of {total} (fixed sample, seed {seed})"
    body = f'<div class="grid">{cards}</div>' if cards else "<p>(not materialized yet)</p>"
    return f"<h2>{escape(title)}</h2>{body}"


def _rejects_section(storage: Storage, source: str) -> str:
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
                cards.append(_card(shown, {}, note=example["detail"] or ""))
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
) -> str:
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
        _samples_section(storage, UNIFIED, source_name, state.flagged, sample_size, seed),
        _samples_section(storage, CLEANED, source_name, state.flagged, sample_size, seed),
        _rejects_section(storage, source_name),
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
    storage: Storage, project: ProjectConfig, reviews: ReviewLog, source: str
) -> str:
    """Render one source's page and the index; returns the page's path."""
    path = page_path(storage, source)
    _write(storage, path, render_review_page(storage, project, reviews, source))
    _write(storage, storage.path(REVIEW_DIR, "index.html"), render_index(project, reviews))
    return path


def write_review_pages(
    storage: Storage,
    project: ProjectConfig,
    reviews: ReviewLog,
    sources: Sequence[str] | None = None,
) -> list[str]:
    return [
        write_review_page(storage, project, reviews, name)
        for name in (sources or project.partition_keys)
    ]
