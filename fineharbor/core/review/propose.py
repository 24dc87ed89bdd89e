"""Assisted schema mapping: inspect a new source and propose its config block.

``propose_source(path)`` finds the reader from the files (Parquet with image structs, JSON/JSONL,
tar shards, URL lists, image folders with sidecars), reads a few records through that reader,
and proposes a mapping from what the records hold: turn lists (``{user, assistant}``), chat
lists (role + content keys, ``<image>`` placeholders), question/answer pairs, captions, image
path fields and a stable id field. Optionally a judge backend (an LLM) proposes a mapping too.
Every proposal is dry-run through the real reader and mapping code on the sampled records; the
one that maps more of them wins, and the evidence says what was seen and why.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import TypeAdapter, ValidationError

from fineharbor.core.config import (
    SOURCE_NAME,
    IngestParams,
    MappingSpec,
    SourceConfig,
    fineharbor_home,
    is_uri,
    load_config,
)
from fineharbor.core.judge.backend import JudgeBackend, JudgeRequest
from fineharbor.core.judge.params import JudgeParams
from fineharbor.core.judge.rate import make_backends
from fineharbor.core.mapping import map_batch
from fineharbor.core.readers import read_source
from fineharbor.core.readers.common import BatchBuilder
from fineharbor.core.readers.fields import get_path
from fineharbor.core.readers.hf_parquet import image_columns
from fineharbor.core.readers.json_records import json_values, jsonl_records
from fineharbor.core.readers.url_list import iter_rows
from fineharbor.core.schema import RAW_SCHEMA, REJECT_SCHEMA

SAMPLE_RECORDS = 16
MAX_LISTED = 20_000
FALLBACK = "no known text field"  # evidence of a low-confidence guess: an LLM may overrule it
_PROBE = MappingSpec()  # readers need a mapping; inspection maps nothing
IMAGE_ONLY = "no text field: image-only samples (texts: [])"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Leading bytes of image formats people keep under other names (or none): judged by content.
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG / MPO
    b"\x89PNG",
    b"GIF8",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"8BPS",  # Photoshop
    b"DDS ",
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"\xffO\xffQ",  # JPEG 2000 codestream
    b"qoif",
)
_NETPBM = re.compile(rb"^P[1-7]\s")

ROLE_KEYS = ("from", "role", "speaker")
CONTENT_KEYS = ("value", "content", "text", "message")
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "bot")
QUESTION_NAMES = ("question", "query", "prompt", "instruction", "goal", "input", "q")
ANSWER_NAMES = ("answer", "response", "output", "action", "target", "label", "a")
CAPTION_NAMES = ("caption", "txt", "text", "alt_text", "description", "title", "sentence")
ID_NAMES = ("id", "key", "uid", "uuid", "sample_id", "qid", "question_id")
READERS_WITH_ORIGIN_KEY = ("hf_parquet", "json", "url_list", "hf_dataset", "interleaved")
_SOURCE_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


class ProposalError(ValueError):
    """The path cannot be inspected (missing, or no format fineharbor reads)."""


@dataclass
class Inspection:
    """What a source's first records look like, read through the reader that will ingest it."""

    name: str
    reader: str
    options: dict[str, Any]  # reader options of the config block (location, image_root, ...)
    raw: pa.Table  # sampled raw rows (RAW_SCHEMA), as the mapping will see them
    read_rejects: pa.Table
    evidence: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict]:
        return [json.loads(r) for r in self.raw.column("record").to_pylist()]

    @property
    def image_counts(self) -> list[int]:
        return [len(i or []) for i in self.raw.column("images").to_pylist()]


@dataclass
class DryRun:
    mapped: int
    total: int
    reasons: dict[str, int]
    examples: list[list[dict]]  # unified turns of the first mapped samples
    summary: list[str] = field(default_factory=list)  # per reason: count/total, first detail
    image_only: int = 0  # mapped samples without text

    @property
    def score(self) -> tuple[int, int]:
        """Samples with text first: a caption field no record has maps every image as an
        image-only sample, which must not beat a mapping that finds the text."""
        return self.mapped - self.image_only, self.mapped

    def describe(self) -> str:
        rejected = ", ".join(f"{r} x{n}" for r, n in self.reasons.items())
        only = f", {self.image_only} of them image-only" if self.image_only else ""
        return f"{self.mapped}/{self.total} sampled records map{only}" + (
            f" (rejected: {rejected})" if rejected else ""
        )


@dataclass
class Proposal:
    block: dict[str, Any]  # the config block: name, reader, options, mapping
    method: str  # "heuristics" or "llm"
    evidence: list[str]
    dry_run: DryRun
    fields: dict[str, str]

    @property
    def name(self) -> str:
        return self.block["name"]

    def source(self) -> SourceConfig:
        return _SOURCE_ADAPTER.validate_python(self.block)


# --------------------------------------------------------------------------- inspection


def _files(path: Path) -> list[Path]:
    """The files of a location (hidden and `_`-prefixed ones skipped); a landing folder of
    millions of images is judged by its first MAX_LISTED entries."""
    if path.is_file():
        return [path]
    listed = itertools.islice(path.rglob("*"), MAX_LISTED)
    return sorted(
        p
        for p in listed
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".tar.gz" if name.endswith(".tar.gz") else path.suffix.lower()


def _image_suffixes() -> frozenset[str]:
    from PIL import Image

    return frozenset(Image.registered_extensions())


def _looks_like_image(path: Path, suffixes: frozenset[str]) -> bool:
    """By suffix when Pillow knows it, else by the file's first bytes."""
    suffix = _suffix(path)
    if suffix in suffixes:
        return True
    if suffix in (".txt", ".json", ".jsonl", ".parquet", ".csv", ".tsv", *TAR_SUFFIXES):
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return (
        head.startswith(_IMAGE_MAGIC)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or bool(_NETPBM.match(head))
    )


def _url_column(rows: list[dict]) -> str | None:
    for key in rows[0] if rows else []:
        values = [r.get(key) for r in rows]
        if values and all(
            isinstance(v, str) and v.startswith(("http://", "https://")) for v in values
        ):
            return key
    return None


def detect_reader(
    path: Path, image_root: Path | None = None
) -> tuple[str, dict[str, Any], list[str]]:
    """(reader, options, evidence) for a local file or directory. The kind of file most of
    the location holds decides: one stray `.tar` or `.csv` in a folder of images does not
    make it a WebDataset or a URL list."""
    if not path.exists():
        raise ProposalError(
            f"{path} does not exist (a Hugging Face Hub dataset needs a hand-written "
            "`reader: hf_dataset` block; see docs/sources.md)"
        )
    files = _files(path)
    kinds = Counter(_suffix(f) for f in files)
    location = str(path)
    seen = ", ".join(f"{n} {k or '(no suffix)'}" for k, n in kinds.most_common(6))
    evidence = [f"{path}: {len(files)} files ({seen})"]
    suffixes = _image_suffixes()
    images = [f for f in files if _looks_like_image(f, suffixes)]
    tars = [f for f in files if _suffix(f) in TAR_SUFFIXES]
    if tars and len(tars) >= len(images):
        if _document_shard(tars[0]):
            evidence.append(
                f"{tars[0].name}: samples whose .json holds `texts` and `images` lists: "
                "interleaved (MINT-1T shards)"
            )
            return "interleaved", {"location": location}, evidence
        return "webdataset", {"location": location}, [*evidence, "tar shards: WebDataset"]
    if tars:
        evidence.append(f"{len(tars)} tar file(s) among {len(images)} images: not WebDataset")
    # A Parquet file decides even among many images (they may be the files its rows name);
    # a CSV/TSV only when it lists URLs.
    tables = sorted(
        (f for f in files if _suffix(f) in (".parquet", ".csv", ".tsv")),
        key=lambda f: _suffix(f) != ".parquet",
    )
    found = _table_reader(tables[0], location, evidence, bool(images)) if tables else None
    if found:
        return found
    records = [f for f in files if _suffix(f) in (".json", ".jsonl")]
    stems = {f.with_suffix("") for f in images}
    sidecars = [f for f in files if f.suffix in (".txt", ".json") and f.with_suffix("") in stems]
    listings = [f for f in records if f not in set(sidecars)]  # JSON files that are no sidecar
    # Among images, a JSON file is the source's listing only when its records name image
    # files; a stray data.json or a sidecar under another name must not hide the images.
    naming = [f for f in listings if _names_image_files(f, suffixes)]
    if images and (len(sidecars) * 2 >= len(images) or not naming):
        formats = Counter(_suffix(f) or "(no suffix)" for f in images)
        evidence.append(
            f"{len(images)} images ({len(formats)} formats), {len(sidecars)} sidecars sharing "
            "their names: image_folder"
        )
        if listings:
            evidence.append(
                f"{len(listings)} JSON file(s) whose records name no image file: not read "
                "(rejected as unsupported files)"
            )
        return "image_folder", {"location": location}, evidence
    if records:
        root = image_root or (path if path.is_dir() else path.parent)
        evidence.append(f"{len(records)} JSON/JSONL file(s): json, images relative to {root}")
        return "json", {"location": location, "image_root": str(root)}, evidence
    raise ProposalError(
        f"{path}: no Parquet, JSON, tar, URL list or image files found (seen: {seen or 'none'})"
    )


def _document_shard(shard: Path, members: int = 32, max_json_bytes: int = 1 << 24) -> bool:
    """Whether the shard's first JSON member is a document (MINT-1T PDF/ArXiv layout)."""
    try:
        with tarfile.open(shard, "r:*") as archive:
            for member in itertools.islice(archive, members):
                if member.isfile() and member.name.endswith(".json"):
                    if member.size > max_json_bytes:
                        return False
                    handle = archive.extractfile(member)
                    record = json.loads(handle.read()) if handle else None
                    return (
                        isinstance(record, dict)
                        and isinstance(record.get("texts"), list)
                        and isinstance(record.get("images"), list)
                    )
    except (OSError, tarfile.TarError, ValueError):
        return False
    return False


def _names_image_files(listing: Path, suffixes: frozenset[str]) -> bool:
    """Whether one of the listing's first records holds a string ending in an image suffix
    (``"img/0.jpg"``, ``["a.png"]``, ``{"path": "b.webp"}``)."""
    read = jsonl_records if _suffix(listing) == ".jsonl" else json_values
    try:
        parsed = list(_take(read(listing, IngestParams().max_record_bytes), 16))
    except (OSError, ValueError):
        return False
    return any(_holds_image_name(p.record, suffixes, 4) for p in parsed if p.record)


def _holds_image_name(value: Any, suffixes: frozenset[str], depth: int) -> bool:
    if isinstance(value, str):
        return Path(value.split("?", 1)[0]).suffix.lower() in suffixes
    if depth == 0:
        return False
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return any(_holds_image_name(v, suffixes, depth - 1) for v in value[:64])
    return False


def _table_reader(
    first: Path, location: str, evidence: list[str], images: bool
) -> tuple[str, dict[str, Any], list[str]] | None:
    if first.suffix == ".parquet":
        schema = pq.read_schema(first)
        if _obelics(schema):
            evidence.append("Parquet with aligned `images` / `texts` lists: interleaved (OBELICS)")
            return "interleaved", {"location": location}, evidence
        found = image_columns(schema, None)
        if found:
            evidence.append(f"Parquet with image struct column(s) {found}: hf_parquet")
            return "hf_parquet", {"location": location}, evidence
    rows = list(_take(iter_rows(first, 64), 8))
    url = _url_column(rows)
    if url:
        evidence.append(f"column {url!r} holds http(s) URLs: url_list (images downloaded)")
        return "url_list", {"location": location, "url_column": url}, evidence
    if first.suffix == ".parquet":
        evidence.append("Parquet without image structs: hf_parquet")
        return "hf_parquet", {"location": location}, evidence
    if images:
        evidence.append(f"{first.name}: a table without a URL column, beside images: not read")
        return None
    raise ProposalError(f"{first}: a table without a URL column; no reader for it")


def _obelics(schema: pa.Schema) -> bool:
    """OBELICS / MINT-1T documents: `images` and `texts` lists, `texts` of plain strings."""
    fields = {f.name: f.type for f in schema}
    texts, images = fields.get("texts"), fields.get("images")
    return (
        images is not None
        and pa.types.is_list(images)
        and texts is not None
        and pa.types.is_list(texts)
        and pa.types.is_string(texts.value_type)
    )


def _take(items: Iterator, n: int) -> Iterator:
    for index, item in enumerate(items):
        if index >= n:
            return
        yield item


def sample_raw(source: SourceConfig, n: int = SAMPLE_RECORDS) -> tuple[pa.Table, pa.Table]:
    """The first `n` records of a source through its reader (URL lists: rows, no download)."""
    if source.reader == "url_list":
        builder = BatchBuilder(source.name, n)
        root = Path(source.location).parent
        for index, row in enumerate(_take(iter_rows(Path(source.location), n), n)):
            key = get_path(row, source.mapping.origin_key) if source.mapping.origin_key else None
            key = str(key) if key not in (None, "") else f"{Path(source.location).name}:{index}"
            if "$malformed" in row:
                builder.reject(key, "malformed_record", row["$malformed"])
            else:
                builder.keep(key, row, [], origin_uri=str(root))
        kept, rejected = builder.flush()
        return kept, rejected
    kept_parts, rejected_parts, count = [], [], 0
    batches = read_source(source.model_copy(update={"batch_size": n}), IngestParams())
    try:
        for kept, rejected in batches:
            kept_parts.append(kept)
            rejected_parts.append(rejected)
            count += kept.num_rows
            if count >= n:
                break
    finally:
        batches.close()
    kept = pa.concat_tables([RAW_SCHEMA.empty_table(), *kept_parts])
    return kept.slice(0, n), pa.concat_tables([REJECT_SCHEMA.empty_table(), *rejected_parts])


def default_name(path: Path) -> str:
    base = path.name if path.is_dir() else path.parent.name
    name = re.sub(r"[^a-z0-9_\-]+", "_", base.lower()).strip("_-") or "new_source"
    return name if SOURCE_NAME.match(name) else f"s_{name}"[:64]


def reject_summary(rejects: pa.Table, total: int) -> list[str]:
    """One line per reason, most frequent first: ``image_missing: 16/16, first: <detail>``."""
    reasons = rejects.column("reason").to_pylist()
    details = rejects.column("detail").to_pylist()
    firsts: dict[str, str] = {}
    for reason, detail in zip(reasons, details, strict=True):
        firsts.setdefault(reason, " ".join((detail or "").split())[:200])
    return [
        f"{reason}: {count}/{total}, first: {firsts[reason]}"
        for reason, count in Counter(reasons).most_common()
    ]


def _hint(reasons: list[str], reader: str) -> str:
    if reader == "json" and any(r.startswith("image_missing") for r in reasons):
        return "; the images live elsewhere? pass --image-root DIR (paths are relative to it)"
    return ""


def inspect_source(
    path: str | Path,
    name: str | None = None,
    n: int = SAMPLE_RECORDS,
    image_root: str | Path | None = None,
) -> Inspection:
    path = Path(path).expanduser().resolve()
    root = Path(image_root).expanduser().resolve() if image_root else None
    if root is not None and not root.is_dir():
        raise ProposalError(f"--image-root {root} is not a directory")
    reader, options, evidence = detect_reader(path, root)
    name = name or default_name(path)
    probe = _SOURCE_ADAPTER.validate_python(
        {"name": name, "reader": reader, **options, "mapping": _PROBE.model_dump()}
    )
    raw, rejects = sample_raw(probe, n)
    summary = reject_summary(rejects, raw.num_rows + rejects.num_rows)
    if rejects.num_rows:
        evidence.append(f"the reader rejected {rejects.num_rows} records: {'; '.join(summary)}")
    if raw.num_rows == 0:
        raise ProposalError(
            f"{path}: the {reader} reader read no record of the {rejects.num_rows} it saw: "
            + "; ".join(summary)
            + _hint(summary, reader)
        )
    return Inspection(name, reader, options, raw, rejects, evidence)


# --------------------------------------------------------------------------- fields


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "bytes" if set(value) == {"$bytes"} else "object"
    if isinstance(value, list):
        inner = sorted({_type_name(v) for v in value[:20]})
        return f"list[{'|'.join(inner) or 'empty'}]"
    return {str: "str", bool: "bool", int: "int", float: "float"}.get(type(value), "other")


def field_summary(records: list[dict], depth: int = 2) -> dict[str, str]:
    """Dotted path -> type(s) and presence, over the sampled records (nested objects opened)."""
    types: dict[str, Counter] = {}

    def walk(value: Any, prefix: str, level: int) -> None:
        if isinstance(value, dict) and set(value) != {"$bytes"} and level < depth:
            for key, inner in value.items():
                walk(inner, f"{prefix}.{key}" if prefix else str(key), level + 1)
            return
        types.setdefault(prefix, Counter())[_type_name(value)] += 1

    for record in records:
        walk(record, "", 0)
    return {
        path: f"{'|'.join(sorted(counts))} ({sum(counts.values())}/{len(records)})"
        for path, counts in sorted(types.items())
    }


def _paths(records: list[dict]) -> list[str]:
    out: dict[str, None] = {}

    def walk(value: Any, prefix: str, level: int) -> None:
        if isinstance(value, dict) and set(value) != {"$bytes"} and level < 2:
            for key, inner in value.items():
                walk(inner, f"{prefix}.{key}" if prefix else str(key), level + 1)
        elif prefix:
            out[prefix] = None

    for record in records:
        walk(record, "", 0)
    return list(out)


def _values(records: list[dict], path: str) -> list[Any]:
    return [get_path(r, path) for r in records]


def _all(values: list[Any], test) -> bool:
    return bool(values) and all(test(v) for v in values)


def _mostly(values: list[Any], test, share: float = 0.8) -> bool:
    """True when most sampled records pass: one odd record must not hide a field's role."""
    return bool(values) and sum(1 for v in values if test(v)) >= share * len(values)


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower()


def _by_names(candidates: list[str], names: tuple[str, ...]) -> str | None:
    for name in names:
        for path in candidates:
            if _leaf(path) == name:
                return path
    return None


def _is_image_ref(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    suffixes = _image_suffixes()
    return bool(items) and all(
        isinstance(v, str) and os.path.splitext(v.lower())[1] in suffixes for v in items
    )


# --------------------------------------------------------------------------- heuristics


def _chat_rule(records: list[dict], path: str, evidence: list[str]) -> dict[str, Any] | None:
    messages = [m for v in _values(records, path) if isinstance(v, list) for m in v]
    if not messages or not all(isinstance(m, dict) for m in messages):
        return None
    keys = set.intersection(*(set(m) for m in messages))
    if {"user", "assistant"} <= keys:
        evidence.append(f"{path!r} is a list of {{user, assistant}} turns")
        return {"preset": "finevision"} if path == "texts" else {"texts": path}
    role = next((k for k in ROLE_KEYS if k in keys), None)
    content = next((k for k in CONTENT_KEYS if k in keys and k != role), None)
    if role is not None and content is None:  # the one other text key holds the content
        others = [k for k in keys - {role} if all(isinstance(m[k], str) for m in messages)]
        content = others[0] if len(others) == 1 else None
    if role is None or content is None:
        return None
    roles = Counter(str(m[role]) for m in messages)
    users = [r for r in roles if r.lower() in USER_ROLES]
    assistants = [r for r in roles if r.lower() in ASSISTANT_ROLES]
    unknown = [r for r in roles if r not in users and r not in assistants and r != "system"]
    evidence.append(
        f"{path!r} is a chat list: role key {role!r}, content key {content!r}, roles {dict(roles)}"
    )
    if unknown and not users and not assistants and len(unknown) == 2:
        # Two unknown speakers: the one who opens the conversations asks.
        openers = Counter(
            str(v[0][role]) for v in _values(records, path) if isinstance(v, list) and v
        )
        users = [openers.most_common(1)[0][0]]
        assistants = [r for r in unknown if r != users[0]]
        evidence.append(f"roles inferred from order: {users[0]!r} asks, {assistants[0]!r} answers")
    elif unknown:
        evidence.append(f"unknown roles {unknown}: records using them will be rejected")
    rule: dict[str, Any] = {"conversations": path}
    if role != "from":
        rule["role_field"] = role
    if content != "value":
        rule["content_field"] = content
    if not set(users) <= set(USER_ROLES):
        rule["user_roles"] = sorted(set(users) | set(USER_ROLES))
    if not set(assistants) <= set(ASSISTANT_ROLES):
        rule["assistant_roles"] = sorted(set(assistants) | set(ASSISTANT_ROLES))
    if rule == {"conversations": "conversations"}:
        rule = {"preset": "llava"}
    return rule


def _placeholders(records: list[dict], counts: list[int], evidence: list[str]) -> None:
    found = [json.dumps(r).count("<image>") for r in records]
    with_marks = sum(1 for n in found if n)
    if with_marks:
        over = sum(1 for n, c in zip(found, counts, strict=True) if n > c)
        evidence.append(
            f"{with_marks}/{len(records)} records carry <image> placeholders "
            f"({over} with more placeholders than images read)"
        )


def heuristic_mapping(inspection: Inspection) -> tuple[dict[str, Any], list[str]]:
    """A mapping from the sampled records' fields, and the evidence for each choice."""
    records, counts = inspection.records, inspection.image_counts
    evidence: list[str] = []
    paths = _paths(records)
    strings = [
        p
        for p in paths
        if _mostly(_values(records, p), lambda v: isinstance(v, str))
        # the image folder reader's own provenance field: a file name is no caption
        and not (inspection.reader == "image_folder" and p == "file")
    ]
    sidecar_captions = any(isinstance(r.get("txt"), str) for r in records)
    if inspection.reader in ("image_folder", "webdataset") and sidecar_captions:
        # Captions for some files only: the others become image-only samples.
        strings = [*strings, "txt"] if "txt" not in strings else strings
    mapping: dict[str, Any] | None = (
        {"preset": "interleaved"} if inspection.reader == "interleaved" else None
    )
    for path in paths if mapping is None else []:
        values = _values(records, path)
        if _mostly(values, lambda v: isinstance(v, list) and v):
            mapping = _chat_rule(records, path, evidence)
            if mapping:
                break
    if mapping is None:
        question = _by_names(strings, QUESTION_NAMES)
        answer = _by_names([p for p in strings if p != question], ANSWER_NAMES)
        if question and answer:
            mapping = {"question": question, "answer": answer}
            evidence.append(f"question/answer pair: {question!r} -> {answer!r}")
    if mapping is None:
        texts = [p for p in strings if not _mostly(_values(records, p), _is_image_ref)]
        caption = _by_names(texts, CAPTION_NAMES)
        if caption is None and texts:
            caption = max(texts, key=lambda p: sum(len(v or "") for v in _values(records, p)))
            evidence.append(f"{FALLBACK}: the longest string field {caption!r} as caption")
        if caption is None:
            mapping = {}
            evidence.append(IMAGE_ONLY)
        elif inspection.reader == "webdataset" and caption == "txt":
            mapping = {"preset": "webdataset_caption"}
        else:
            mapping = {"caption": caption}
        if caption is not None:
            evidence.append(f"caption pairs: caption from {caption!r}")
    _placeholders(records, counts, evidence)

    refs = [p for p in paths if _mostly(_values(records, p), _is_image_ref)]
    if any(counts):
        evidence.append(
            f"the reader found images for {sum(1 for c in counts if c)}/{len(counts)} records"
        )
    elif refs and inspection.reader in ("json", "hf_parquet", "hf_dataset"):
        mapping["images"] = refs[0]
        evidence.append(f"{refs[0]!r} holds image file paths")
    elif not any(counts) and inspection.reader != "url_list":
        evidence.append("no images found: text-only samples")
    if inspection.reader in READERS_WITH_ORIGIN_KEY:
        key = _origin_key(records, paths, inspection.options.get("url_column"))
        if key:
            mapping["origin_key"] = key
            evidence.append(f"{key!r} is unique in the sample: used as origin_key")
    return mapping, evidence


def _origin_key(records: list[dict], paths: list[str], url_column: str | None) -> str | None:
    scalar = [
        p
        for p in paths
        if p != url_column
        and _all(_values(records, p), lambda v: isinstance(v, str | int) and v != "")
        and len({str(v) for v in _values(records, p)}) == len(records)
    ]
    named = _by_names(scalar, ID_NAMES)
    if named:
        return named
    return next((p for p in scalar if _leaf(p).endswith(("_id", "_key"))), None)


# --------------------------------------------------------------------------- LLM


LLM_SYSTEM = (
    "You map the records of a new dataset into a unified vision-language schema: images plus "
    "a list of {user, assistant} turns. Reply with one JSON object and nothing else."
)


def llm_prompt(inspection: Inspection, fields: dict[str, str], heuristic: dict[str, Any]) -> str:
    def short(value: Any) -> Any:
        if isinstance(value, str):
            return value[:200]
        if isinstance(value, list):
            return [short(v) for v in value[:6]]
        if isinstance(value, dict):
            return {k: short(v) for k, v in list(value.items())[:20]}
        return value

    examples = json.dumps([short(r) for r in inspection.records[:3]], ensure_ascii=False)
    return (
        f"Reader: {inspection.reader}. Images found per record: {inspection.image_counts[:8]}.\n"
        f"Fields (dotted path: type (present/sampled)):\n"
        + "\n".join(f"  {p}: {t}" for p, t in fields.items())
        + f"\nExample records: {examples}\n\n"
        "Mapping keys (all optional, dotted paths into a record):\n"
        "  preset: finevision | llava | laion | webdataset_caption\n"
        "  texts: list of {user, assistant}; conversations: list of chat messages with "
        "role_field, content_field, user_roles, assistant_roles;\n"
        "  question + answer: two text fields; caption: one text field (user_prompt: the "
        "question to pair with it);\n"
        "  images: field with image paths; origin_key: a unique id field.\n"
        f"A rule-based guess was: {json.dumps(heuristic)}\n"
        "Reply with the JSON mapping object only."
    )


def _json_object(reply: str) -> dict[str, Any]:
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    value = json.loads(reply[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError("the reply's JSON is not an object")
    return value


def proposal_backend(params: JudgeParams) -> JudgeBackend:
    """The configured judge's text model, with a reply budget that fits a JSON mapping."""
    if params.backend == "none":
        raise ProposalError(
            "no LLM configured: set stages.judge.backend (openai or transformers) and "
            "stages.judge.text_model in the project file to use --llm"
        )
    text, _ = make_backends(
        params.model_copy(update={"axes": ["formatting"], "max_new_tokens": 512})
    )
    if text is None:
        raise ProposalError("the judge config yields no text model (stages.judge.text_model)")
    return text


def llm_mapping(
    backend: JudgeBackend, inspection: Inspection, fields: dict[str, str], heuristic: dict
) -> tuple[dict[str, Any] | None, str]:
    """(mapping or None, what happened) from one request to the backend."""
    request = JudgeRequest(LLM_SYSTEM, llm_prompt(inspection, fields, heuristic))
    reply = backend.complete([request])[0]
    if reply is None:
        return None, f"LLM {backend.name}: request failed"
    try:
        mapping = MappingSpec.model_validate(_json_object(reply))
    except (ValueError, ValidationError) as error:
        first = str(error).splitlines()[0][:200]
        return None, f"LLM {backend.name}: unusable reply ({first})"
    return mapping.model_dump(
        mode="json", exclude_defaults=True
    ), f"LLM {backend.name} proposed a mapping"


# --------------------------------------------------------------------------- proposal


def dry_run(block: dict[str, Any], n: int = SAMPLE_RECORDS) -> DryRun:
    """Read the first records with the proposed block and map them with the real code."""
    source = _SOURCE_ADAPTER.validate_python(block)
    raw, read_rejects = sample_raw(source, n)
    kept, rejected = map_batch(raw, source.mapping)
    every = pa.concat_tables([read_rejects, rejected])
    texts = kept.column("texts").to_pylist()
    total = raw.num_rows + read_rejects.num_rows
    return DryRun(
        mapped=kept.num_rows,
        total=total,
        reasons=dict(Counter(every.column("reason").to_pylist())),
        examples=texts[:2],
        summary=reject_summary(every, total),
        image_only=sum(1 for t in texts if not t),
    )


def propose_source(
    path: str | Path,
    name: str | None = None,
    backend: JudgeBackend | None = None,
    n: int = SAMPLE_RECORDS,
    image_root: str | Path | None = None,
) -> Proposal:
    """Inspect `path` and propose its config block; `backend` adds an LLM proposal;
    `image_root` is where a JSON source's image paths are relative to."""
    inspection = inspect_source(path, name, n, image_root)
    fields = field_summary(inspection.records)
    mapping, evidence = heuristic_mapping(inspection)
    evidence = inspection.evidence + evidence
    base = {"name": inspection.name, "reader": inspection.reader, **inspection.options}
    block = {**base, "mapping": mapping} if mapping else base  # no mapping: image-only
    result = dry_run(block, n)
    evidence.append(f"heuristics: {result.describe()}")
    method = "heuristics"
    if backend is not None:
        proposed, note = llm_mapping(backend, inspection, fields, mapping)
        evidence.append(note)
        if proposed is not None:
            try:
                llm_result = dry_run({**base, "mapping": proposed}, n)
            except (ValueError, ValidationError) as error:
                evidence.append(f"LLM mapping unusable: {str(error).splitlines()[0][:200]}")
            else:
                evidence.append(f"LLM: {llm_result.describe()}")
                guessed = any(line.startswith(FALLBACK) for line in evidence)
                if llm_result.score > result.score or (
                    guessed and llm_result.score == result.score
                ):
                    block, result, method = {**base, "mapping": proposed}, llm_result, "llm"
    evidence.append(f"chosen: {method}")
    return Proposal(block, method, evidence, result, fields)


# --------------------------------------------------------------------------- config file


def _portable(location: str, config_dir: Path) -> str:
    """${FINEHARBOR_HOME}/... under the data home, relative under the config's directory."""
    path = Path(location)
    home = fineharbor_home()
    if not is_uri(home) and path.is_relative_to(home):
        return "${FINEHARBOR_HOME}/" + path.relative_to(home).as_posix()
    if path.is_relative_to(config_dir):
        return path.relative_to(config_dir).as_posix() or "."
    return location


def proposal_yaml(proposal: Proposal, config_path: str | Path, indent: int = 2) -> str:
    """The proposal as a commented `sources:` list item, indented as the file's items are."""
    config_dir = Path(config_path).expanduser().resolve().parent
    block = dict(proposal.block)
    for key in ("location", "image_root"):
        if key in block:
            block[key] = _portable(block[key], config_dir)
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    comments = [
        f"proposed by `fineharbor map-source` ({proposal.method}) on {when}: check the mapping,",
        f"look at its review page, then `fineharbor review {proposal.name} --approve`.",
        *proposal.evidence,
    ]
    pad = " " * indent
    lines = [f"{pad}# " + " ".join(c.split()) for c in comments]
    body = yaml.safe_dump([block], sort_keys=False, allow_unicode=True, width=100)
    lines += [pad + line for line in body.splitlines()]
    return "\n".join(lines) + "\n"


_TOP_KEY = re.compile(r"^[A-Za-z_][\w\-]*\s*:")


def write_proposal(proposal: Proposal, config_path: str | Path) -> Path:
    """Insert the proposal at the end of the project file's `sources:` list, keeping every
    comment; the new file must load (validated before it replaces the old one)."""
    path = Path(config_path).expanduser().resolve()
    if proposal.name in load_config(path).source_names:
        raise ProposalError(f"{path}: a source named {proposal.name!r} exists; pass --name")
    lines = path.read_text().splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"^sources\s*:", line)]
    start = heads[0] if heads else None
    if start is not None and re.match(r"^sources\s*:\s*\[\s*\]\s*(#.*)?$", lines[start]):
        lines[start] = "sources:"  # a new project's empty flow list becomes a block list
    elif start is not None and not re.match(r"^sources\s*:\s*(#.*)?$", lines[start]):
        start = None
    if start is None:
        raise ProposalError(f"{path}: no block-style `sources:` list to add the source to")
    end = next((i for i in range(start + 1, len(lines)) if _TOP_KEY.match(lines[i])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1
    items = [re.match(r"^(\s*)- ", line) for line in lines[start + 1 : end]]
    indent = next((len(m.group(1)) for m in items if m), 2)
    block = proposal_yaml(proposal, path, indent).splitlines()
    new = [*lines[:end], "", *block, *lines[end:]]
    tmp = path.with_name(f".{path.name}.proposed")
    tmp.write_text("\n".join(new) + "\n")
    try:
        load_config(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
