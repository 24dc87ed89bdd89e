"""Peak memory of the global duplicate-cluster build against the formula in docs/scale.md.

    .venv/bin/python bench/global_memory.py [--sizes 100000 1000000] [--dim 256]

For each N it writes N image signatures into a fresh storage root the way the signatures stage
does (one ``image_signatures`` partition per source, ``SIGNATURE_SCHEMA``: a sha256 of the
pixels, a 64-bit phash, its mirror and six turned phashes, an L2-normalised float16
``copy_embedding`` of ``--dim`` values), in a child process, so generating the data never counts
towards the peak. Vectors lie around 1,000 centres; 1% of the images are exact copies of another
(same pixel hash) and 2% near copies (cosine ~0.97, phash a few bits apart).

A second, fresh process then does what ``build_duplicate_clusters`` does, minus the pixel
verification (which needs the images): ``read_dedup_signatures`` streams only the columns the
search reads, ``find_duplicates`` runs the hash signals and the copy-embedding search (the exact
faiss search up to ``exact_search_limit`` vectors, the k-means forest above) and unions the
pairs, and ``signature_diversity`` streams the vectors once more. The per-sample table that
``compact_samples`` would build from the cleaned partitions is made directly (one image, a
caption, an URL per sample). It prints seconds, clusters, peak RSS (``VmHWM``), the RSS after
imports, and the formula's prediction.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineharbor.core.dedup.params import DedupParams
from fineharbor.core.dedup.search import multi_hash_layout

SOURCES = ("web", "charts")
BATCH = 50_000
CENTRES = 1_000


def _vm(field: str) -> float:
    """A /proc/self/status figure (VmHWM, VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def predicted_mib(
    n: int, dim: int, binary_exact_limit: int, id_bytes: int = 17, max_distance: int = 4
) -> dict[str, float]:
    """docs/scale.md's formula for duplicate_clusters with hash signals and one embedding:
    bytes per signature = S + max(2T - 2d, T + 4d, T + 2d + H + F), plus a fixed ~200 MiB of
    Arrow reader and allocator pages on top of the imports."""
    table = (id_bytes + 4) + 4 + 8 + 68 + 8 + 8 + 52 + (2 * dim + 4)  # T: the Arrow row
    samples = 2 * (id_bytes + 4) + 8 + 4 + 8 + 8 + 250  # S: per-sample table + Python keys
    # H: 8 codes an image (own, mirror, six turns) as int64, as the bytes faiss reads and as
    # faiss's stored copy, plus the one multi-hash table built at a time (above
    # binary_exact_limit): each code's id (8 bytes, ~1.5x for vector growth) and a map node of
    # ~80 bytes per distinct key (of 2**piece_bits); node ids and range-search output
    layout = multi_hash_layout(8 * n, max_distance) if n > binary_exact_limit else None
    hashes = 8 * 24 + 200
    if layout:
        keys = 2**layout.piece_bits * -math.expm1(-8 * n / 2**layout.piece_bits)
        hashes += 8 * 12 + 80 * keys / n
    forest = 8 + 64 + 24  # F: a tree's leaf ids, root scores, pairs
    per_signature = samples + max(
        2 * table - 2 * dim, table + 4 * dim, table + 2 * dim + hashes + forest
    )
    return {
        "bytes_per_signature": round(per_signature),
        "data_mib": 200 + n * per_signature / 2**20,
    }


def generate(root: str, n: int, dim: int, seed: int = 0) -> None:
    import pyarrow as pa

    from fineharbor.core.pipeline import SIGNATURES
    from fineharbor.core.signatures.compute import SIGNATURE_SCHEMA
    from fineharbor.core.storage import Storage

    storage = Storage(root)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    per_source = np.array_split(np.arange(n), len(SOURCES))
    for source, rows in zip(SOURCES, per_source, strict=True):
        with storage.writer(SIGNATURES, source, SIGNATURE_SCHEMA) as writer:
            for start in range(0, rows.size, BATCH):
                index = rows[start : start + BATCH]
                m = index.size
                vectors = centres[rng.integers(0, CENTRES, m)] + rng.standard_normal((m, dim))
                phash = rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64)
                pixels = np.array([f"{k:064x}" for k in index.tolist()], dtype=object)
                # copies of the previous row of the batch: exact (1%) and near (2%)
                draw = rng.random(m)
                exact = np.flatnonzero(draw[1:] < 0.01) + 1
                near = np.flatnonzero((draw[1:] >= 0.01) & (draw[1:] < 0.03)) + 1
                vectors[exact] = vectors[exact - 1]
                pixels[exact] = pixels[exact - 1]
                phash[exact] = phash[exact - 1]
                vectors[near] = vectors[near - 1] + 0.25 * rng.standard_normal((near.size, dim))
                phash[near] = phash[near - 1] ^ np.int64(0b101)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                flat = pa.array(vectors.astype(np.float16).ravel(), pa.float16())
                offsets = pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32))
                turns = rng.integers(-(2**63), 2**63 - 1, m * 6, dtype=np.int64)
                turn_offsets = pa.array(np.arange(0, (m + 1) * 6, 6, dtype=np.int32))
                columns = {
                    "sample_id": pa.array([f"{source}-{k:012d}" for k in index.tolist()]),
                    "source": pa.array([source] * m),
                    "image_index": pa.array(np.zeros(m, np.int32)),
                    "width": pa.array(np.full(m, 640, np.int32)),
                    "height": pa.array(np.full(m, 480, np.int32)),
                    "sha256_bytes": pa.array(pixels.tolist(), pa.string()),
                    "sha256_pixels": pa.array(pixels.tolist(), pa.string()),
                    "phash": pa.array(phash),
                    "phash_flip": pa.array(rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64)),
                    "phash_dihedral": pa.ListArray.from_arrays(turn_offsets, pa.array(turns)),
                    "copy_embedding": pa.ListArray.from_arrays(offsets, flat),
                    "clip_embedding": pa.nulls(m, pa.list_(pa.float16())),
                    "error": pa.nulls(m, pa.string()),
                }
                writer.write(pa.table(columns, schema=SIGNATURE_SCHEMA))


def build(root: str, n: int, binary_exact_limit: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    from fineharbor.core.dedup.build import read_dedup_signatures, signature_diversity
    from fineharbor.core.dedup.clusters import find_duplicates
    from fineharbor.core.dedup.params import DedupParams
    from fineharbor.core.dedup.samples import SAMPLE_SCHEMA
    from fineharbor.core.storage import Storage

    storage = Storage(root)
    imported = _vm("VmRSS")
    started = time.perf_counter()
    parts = []
    for source, rows in zip(SOURCES, np.array_split(np.arange(n), len(SOURCES)), strict=True):
        m = rows.size
        parts.append(
            pa.table(
                {
                    "sample_id": [f"{source}-{k:012d}" for k in rows.tolist()],
                    "source": [source] * m,
                    "origin_uri": [f"https://example.org/{k}.jpg" for k in rows.tolist()],
                    "text": [f"a photo, number {k}" for k in rows.tolist()],
                    "n_images": pa.array(np.ones(m, np.int32)),
                    "max_pixels": pa.array(np.full(m, 640 * 480, np.int64)),
                    "quality": pa.nulls(m, pa.float64()),
                    "document": pa.array(np.zeros(m, bool)),
                },
                schema=SAMPLE_SCHEMA,
            )
        )
    samples = pa.concat_tables(parts)
    del parts
    params = DedupParams(binary_exact_limit=binary_exact_limit)
    clusters, report = find_duplicates(
        read_dedup_signatures(
            storage, SOURCES, params, samples.column("sample_id").combine_chunks()
        ),
        samples,
        params,
        {},
    )
    dropped = clusters.filter(pc.invert(clusters.column("is_kept"))).column("sample_id")
    diversity = signature_diversity(storage, SOURCES, "copy_embedding", dropped.combine_chunks())
    return {
        "n": n,
        "seconds": round(time.perf_counter() - started, 1),
        "cluster_rows": clusters.num_rows,
        "dropped": len(dropped),
        "edges": report["edges"],
        "search": report["vector_search"].get("copy_embedding"),
        "diversity": round(diversity.score, 4) if diversity else None,
        "rss_after_imports_mib": round(imported, 1),
        "peak_rss_mib": round(_vm("VmHWM"), 1),
    }


def _child(mode: str, root: str, n: int, dim: int, binary_limit: int) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--root", root, "--sizes", str(n),
         "--dim", str(dim), "--binary-exact-limit", str(binary_limit)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument(
        "--binary-exact-limit",
        type=int,
        default=DedupParams().binary_exact_limit,
        help="DedupParams.binary_exact_limit: phash codes searched flat up to it (quadratic), "
        "multi-hash above (default: the stage's)",
    )
    parser.add_argument("--root", default=None, help="storage root (default: a temp dir)")
    parser.add_argument("--child", choices=("generate", "build"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.root, args.sizes[0], args.dim)
        return
    if args.child == "build":
        print(json.dumps(build(args.root, args.sizes[0], args.binary_exact_limit)))
        return
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.root) as root:
            started = time.perf_counter()
            _child("generate", root, n, args.dim, args.binary_exact_limit)
            generated = time.perf_counter() - started
            result = _child("build", root, n, args.dim, args.binary_exact_limit) or {}
        model = predicted_mib(n, args.dim, args.binary_exact_limit)
        predicted = result.get("rss_after_imports_mib", 0) + model["data_mib"]
        result |= {
            "dim": args.dim,
            "generate_seconds": round(generated, 1),
            "formula_bytes_per_signature": model["bytes_per_signature"],
            "formula_peak_mib": round(predicted, 1),
            "within_3_gb": result.get("peak_rss_mib", float("inf")) <= 3 * 1024,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
