"""Release files: Parquet shards in the Hugging Face `datasets` / FineVision layout, WebDataset
tar shards for caption pairs, and a manifest with a sha256 per file.

Every file is built in memory (one shard at a time) and written once, so its checksum is known
without reading it back; nothing written depends on time or machine, so the same input, recipe
and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fineharbor.core.release.params import RATING_AXES
from fineharbor.core.release.select import min_column, ratings_column

SPLIT = "train"


def _features(include_sample_id: bool) -> pa.Schema:
    """FineVision's columns, typed as `datasets` features so images load as PIL images."""
    import datasets

    spec: dict = {
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List(
            {"user": datasets.Value("string"), "assistant": datasets.Value("string")}
        ),
        "source": datasets.Value("string"),
    }
    for axis in RATING_AXES:
        spec[ratings_column(axis)] = datasets.List(datasets.Value("int64"))
        spec[min_column(axis)] = datasets.Value("int64")
    if include_sample_id:
        spec["sample_id"] = datasets.Value("string")
    return datasets.Features(spec).arrow_schema


def release_schema(include_sample_id: bool) -> pa.Schema:
    """The shards' schema; `images` and `texts` are the unified schema's own types."""
    return _features(include_sample_id)


def release_row(
    row: dict, turns: list[int] | None, include_sample_id: bool, *, blur_faces: bool = False
) -> dict:
    """A FineVision row from an input row: turns filtered, ratings aligned, minimums recomputed,
    and with ``blur_faces`` the row's ``face_boxes`` blurred in its image bytes."""
    texts = row["texts"] or []
    keep = range(len(texts)) if turns is None else turns
    out = {
        "images": blurred_images(row) if blur_faces else row["images"] or [],
        "texts": [texts[i] for i in keep],
        "source": row["source"],
    }
    for axis in RATING_AXES:
        ratings = row.get(ratings_column(axis))
        if ratings is None:
            out[ratings_column(axis)] = None
            out[min_column(axis)] = None
            continue
        kept = [ratings[i] if i < len(ratings) else None for i in keep]
        present = [r for r in kept if r is not None]
        out[ratings_column(axis)] = kept
        out[min_column(axis)] = min(present) if present else None
    if include_sample_id:
        out["sample_id"] = row["sample_id"]
    return out


def blurred_images(row: dict) -> list[dict]:
    """The row's images with the face boxes found by scoring blurred (DataComp); images with no
    box keep their bytes. ``face_boxes`` holds one list per image that had bytes."""
    from fineharbor.core.quality.faces import blur_boxes

    boxes = iter(row.get("face_boxes") or [])
    out = []
    for image in row["images"] or []:
        if image and image.get("bytes"):
            image = {**image, "bytes": blur_boxes(image["bytes"], next(boxes, None) or [])}
        out.append(image)
    return out


def shard_name(source: str, index: int, total: int) -> str:
    return posixpath.join("data", source, f"{SPLIT}-{index:05d}-of-{total:05d}.parquet")


def tar_name(source: str, index: int) -> str:
    return posixpath.join("webdataset", f"{source}-{index:05d}.tar")


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=256)
    return sink.getvalue().to_pybytes()


def image_extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "img"


def tar_member(name: str, data: bytes) -> bytes:
    """One member as a tar holds it (USTAR header, data, padding), with fixed owner, mode and
    mtime: what ``tarfile`` writes for it, so members can be built apart and joined later."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def tar_archive(members: list[bytes]) -> bytes:
    """A tar of members built by :func:`tar_member`, ended as ``tarfile`` ends one (two zero
    blocks, then zeros up to a whole record)."""
    body = b"".join(members)
    end = len(body) + 2 * tarfile.BLOCKSIZE
    return body + bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))


def caption_pair_members(row: dict, key: str, extra: dict) -> list[tuple[str, bytes]] | None:
    """WebDataset members of a caption pair (one image, one turn); None for other samples."""
    images, texts = row["images"] or [], row["texts"] or []
    if len(images) != 1 or len(texts) != 1 or not (images[0] or {}).get("bytes"):
        return None
    data = images[0]["bytes"]
    meta = {
        "sample_id": row["sample_id"],
        "source": row["source"],
        "user": texts[0]["user"],
        **extra,
    }
    return [
        (f"{key}.{image_extension(data)}", data),
        (f"{key}.txt", (texts[0]["assistant"] or "").encode()),
        (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
    ]


@dataclass
class ReleaseFile:
    path: str
    sha256: str
    bytes: int
    rows: int
    kind: str
    source: str | None = None


@dataclass
class ReleaseFiles:
    """Writes files under a (staging) directory and records each one's checksum."""

    fs: pafs.FileSystem
    root: str
    files: list[ReleaseFile] = field(default_factory=list)

    def write(
        self, path: str, data: bytes, rows: int, kind: str, source: str | None = None
    ) -> None:
        target = posixpath.join(self.root, path)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        with self.fs.open_output_stream(target) as stream:
            stream.write(data)
        digest = hashlib.sha256(data).hexdigest()
        self.files.append(ReleaseFile(path, digest, len(data), rows, kind, source))

    def manifest(self, header: dict) -> bytes:
        body = {**header, "files": [asdict(f) for f in self.files]}
        return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()


def verify_manifest(fs: pafs.FileSystem, root: str) -> list[str]:
    """Paths whose bytes no longer match the manifest's sha256 (empty: the release is intact)."""
    with fs.open_input_stream(posixpath.join(root, "manifest.json")) as stream:
        manifest = json.loads(stream.read())
    bad = []
    for entry in manifest["files"]:
        with fs.open_input_stream(posixpath.join(root, entry["path"])) as stream:
            if hashlib.sha256(stream.read()).hexdigest() != entry["sha256"]:
                bad.append(entry["path"])
    return bad
