"""A synthetic release input in storage: the contract's score columns on generated rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from fineharbor.core.config import parse_config
from fineharbor.core.decontam.match import DECONTAM_REJECT_SCHEMA
from fineharbor.core.pipeline import DECONTAMINATED, DEDUPLICATED, SIGNATURES
from fineharbor.core.release.build import RELEASE_INPUT_ASSET
from fineharbor.core.schema import UNIFIED_SCHEMA
from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA
from fineharbor.core.storage import Storage
from fineharbor.testing.images import make_image_bytes

AXES = ("relevance", "image_correspondence", "visual_dependency", "formatting")

SCORED_FIELDS = [
    pa.field("clip_score", pa.float32()),
    pa.field("quality_score", pa.float32()),
    pa.field("punsafe", pa.float32()),
    pa.field("aesthetic_score", pa.float32()),
    pa.field("pwatermark", pa.float32()),
    pa.field("face_count", pa.int32()),
    pa.field("pii_found", pa.list_(pa.string())),
    *[pa.field(f"{a}_ratings", pa.list_(pa.int64())) for a in AXES],
    *[pa.field(f"{a}_min", pa.int64()) for a in AXES],
]
SCORED_SCHEMA = pa.schema([*UNIFIED_SCHEMA, *SCORED_FIELDS])

SOURCES = """
sources:
  - {name: pairs, reader: webdataset, location: x, mapping: {preset: webdataset_caption},
     license: cc-by-4.0}
  - {name: chats, reader: json, location: y, mapping: {preset: llava}, license: apache-2.0}
  - {name: bench, reader: json, location: z, mapping: {preset: llava}, role: benchmark}
"""

_IMAGES: dict[int, bytes] = {}


def image(seed: int) -> bytes:
    if seed not in _IMAGES:
        _IMAGES[seed] = make_image_bytes(seed, size=(64, 48))
    return _IMAGES[seed]


def rows(source: str, n: int, turns: int, scored: bool, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    # the image signals from a generator of their own: the other columns keep their values
    signal_rng = np.random.default_rng([seed, 1])
    out = []
    for i in range(n):
        punsafe, pwatermark = signal_rng.uniform(0, 1, 2)
        aesthetic, faces = signal_rng.uniform(2, 8), signal_rng.integers(0, 3)
        ratings = {a: rng.integers(1, 6, turns).tolist() for a in AXES}
        row = {
            "sample_id": f"{source}-{i:04d}",
            "source": source,
            "origin_uri": None,
            "origin_key": f"k{i}",
            "images": [{"bytes": image(seed * 1000 + i), "path": f"{i}.jpg"}],
            "texts": [
                {"user": f"q{t}", "assistant": f"{source} answer {i}.{t}"} for t in range(turns)
            ],
            "clip_score": float(rng.uniform(0.1, 0.5)) if scored else None,
            "quality_score": float(rng.uniform(0, 3)) if scored else None,
            "punsafe": float(punsafe) if scored else None,
            "aesthetic_score": float(aesthetic) if scored else None,
            "pwatermark": float(pwatermark) if scored else None,
            "face_count": int(faces) if scored else None,
            # cleaning's personal-data matches: one in every 7th sample, two in every 11th
            "pii_found": ["EMAIL_ADDRESS"] * ((i % 7 == 3) + 2 * (i % 11 == 5)),
        }
        for a in AXES:
            row[f"{a}_ratings"] = ratings[a] if scored else None
            row[f"{a}_min"] = min(ratings[a]) if scored else None
        out.append(row)
    return out


def write_input(
    storage: Storage, scored: bool = True, n_pairs: int = 40, n_chats: int = 20
) -> None:
    """Release input + the stage outputs the card's SQL models read (dedup, decontam,
    signatures)."""
    schema = SCORED_SCHEMA if scored else UNIFIED_SCHEMA
    data = {
        "pairs": rows("pairs", n_pairs, 1, scored, 1),
        "chats": rows("chats", n_chats, 3, scored, 2),
        "bench": [],
    }
    rng = np.random.default_rng(0)
    for source, samples in data.items():
        table = pa.Table.from_pylist(samples, schema=schema)
        with storage.writer(RELEASE_INPUT_ASSET, source, schema) as w:
            w.write(table)  # scoring keeps every row
        with storage.writer(
            DECONTAMINATED, source, schema, reject_schema=DECONTAM_REJECT_SCHEMA
        ) as w:
            w.write(table)
            if source == "bench":
                w.reject(
                    pa.Table.from_pylist(
                        [
                            {
                                "sample_id": "bench-0",
                                "source": "bench",
                                "origin_key": "b0",
                                "reason": "benchmark_source",
                                "detail": "",
                            }
                        ],
                        schema=DECONTAM_REJECT_SCHEMA,
                    )
                )
        with storage.writer(DEDUPLICATED, source, schema) as w:
            w.write(table)
        signatures = [
            {
                "sample_id": r["sample_id"],
                "source": source,
                "image_index": 0,
                "phash": int(rng.integers(-(2**63), 2**63 - 1)),
                "copy_embedding": rng.normal(size=8).astype(np.float16).tolist(),
            }
            for r in samples
        ]
        with storage.writer(SIGNATURES, source, SIGNATURE_SCHEMA) as w:
            w.write(pa.Table.from_pylist(signatures, schema=SIGNATURE_SCHEMA))


def project(tmp_path: Path, release: str = "", stages: str = ""):
    text = (
        SOURCES
        + (f"release:\n{release}" if release else "")
        + (f"stages:\n{stages}" if stages else "")
    )
    import yaml

    return parse_config(yaml.safe_load(text), tmp_path)
