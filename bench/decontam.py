"""Decontamination: matching train samples against a benchmark index, vs NumPy brute force.

    .venv/bin/python bench/decontam.py [--n 40000] [--benchmark 1000]

Synthetic signatures stand in for the signature stage's output: ``n`` train samples with one
image each (a 64-bit phash and its mirror, a 64-d copy embedding) and a one-turn question, and a
benchmark of ``--benchmark`` images and questions. 1% of the train images are planted copies of
benchmark images (phash 2 bits off, embedding cosine ~0.99) and 1% of the train questions embed
a benchmark question. Timed, in the same run on the same data:

* stage: ``BenchmarkMatcher`` built from the index (``image_rows`` + ``ngram_rows``), then
  ``decontaminate_batch`` on 2,000-sample batches (faiss flat inner product for embeddings,
  faiss binary index for phashes, a dict of 13-gram hashes for text);
* baseline: NumPy brute force of the same signals: every train vector against every benchmark
  vector (matmul), every phash against every benchmark phash (XOR + popcount), and the same
  n-gram set lookup.

Both must flag the same samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, best_time
from fineharbor.core.decontam.index import BENCHMARK_INDEX_SCHEMA, image_rows, ngram_rows
from fineharbor.core.decontam.match import BenchmarkMatcher, decontaminate_batch
from fineharbor.core.decontam.params import DecontamParams
from fineharbor.core.decontam.text import turn_ngrams
from fineharbor.core.schema import UNIFIED_SCHEMA

SIZES = {"tiny": 200, "small": 5_000, "large": 40_000}
BENCHMARK = 1_000
DIM = 64
BATCH = 2_000
WORDS = [f"w{i}" for i in range(5000)]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _signatures(source: str, ids: list[str], phash: np.ndarray, vectors: np.ndarray) -> pa.Table:
    n = len(ids)
    embedding = BENCHMARK_INDEX_SCHEMA.field("embedding").type  # the signatures column type
    return pa.table(
        {
            "sample_id": ids,
            "source": [source] * n,
            "image_index": np.zeros(n, np.int32),
            "phash": phash,
            "phash_flip": phash ^ np.int64(0x5555),
            "copy_embedding": pa.array(list(vectors.astype(np.float16)), embedding),
            "error": pa.nulls(n, pa.string()),
        }
    )


def _question(rng: np.random.Generator, words: int = 20) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words))


def make_data(n: int, m: int, seed: int = 0):
    """(benchmark signatures, benchmark samples, train signatures, train samples)."""
    rng = np.random.default_rng(seed)
    bench_vectors = _unit(rng.standard_normal((m, DIM)))
    bench_phash = rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64)
    bench_ids = [f"b{i}" for i in range(m)]
    bench_questions = [_question(rng) for _ in range(m)]
    vectors = _unit(rng.standard_normal((n, DIM)))
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    copies = rng.choice(n, max(1, n // 100), replace=False)
    originals = rng.integers(0, m, copies.size)
    vectors[copies] = _unit(
        bench_vectors[originals] + 0.01 * rng.standard_normal((copies.size, DIM))
    )
    phash[copies] = bench_phash[originals] ^ np.int64(0b101)  # 2 bits off
    questions = [_question(rng, 12) for _ in range(n)]
    contaminated = rng.choice(n, max(1, n // 100), replace=False)
    for i, b in zip(contaminated, rng.integers(0, m, contaminated.size), strict=True):
        questions[i] = f"{questions[i]} {bench_questions[b]}"
    ids = [f"t{i}" for i in range(n)]
    bench_samples = [
        {"sample_id": s, "source": "bench", "origin_key": s, "texts": [{"user": q}]}
        for s, q in zip(bench_ids, bench_questions, strict=True)
    ]
    samples = pa.Table.from_pylist(
        [
            {
                "sample_id": s,
                "source": "train",
                "origin_key": s,
                "images": [],
                "texts": [{"user": q, "assistant": "an answer"}],
            }
            for s, q in zip(ids, questions, strict=True)
        ],
        schema=UNIFIED_SCHEMA,
    )
    return (
        _signatures("bench", bench_ids, bench_phash, bench_vectors),
        bench_samples,
        _signatures("train", ids, phash, vectors),
        samples,
    )


def stage(index: pa.Table, signatures: pa.Table, samples: pa.Table, params: DecontamParams) -> int:
    matcher = BenchmarkMatcher(index, params)
    rejected = 0
    for start in range(0, samples.num_rows, BATCH):
        batch = samples.slice(start, BATCH)
        _, rejects = decontaminate_batch(batch, signatures.slice(start, BATCH), matcher)
        rejected += rejects.num_rows
    return rejected


def brute_force(
    bench: pa.Table, bench_samples: list[dict], signatures: pa.Table, samples: pa.Table, params
) -> int:
    """The same signals without an index: every train item against every benchmark item."""
    bench_vectors = np.array(bench.column("copy_embedding").to_pylist(), np.float32)
    bench_hashes = bench.column("phash").to_numpy()
    grams: set[int] = set()
    for sample in bench_samples:
        grams |= turn_ngrams(sample["texts"], params.text_fields, params.ngram)
    rejected = 0
    for start in range(0, samples.num_rows, BATCH):
        own = signatures.slice(start, BATCH)
        vectors = np.array(own.column("copy_embedding").to_pylist(), np.float32)
        hit = (vectors @ bench_vectors.T).max(axis=1) >= params.image_threshold
        for column in ("phash", "phash_flip"):
            xor = own.column(column).to_numpy()[:, None] ^ bench_hashes[None, :]
            hit |= np.bitwise_count(xor).min(axis=1) <= params.phash_max_distance
        texts = samples.column("texts").slice(start, BATCH).to_pylist()
        for k, turns in enumerate(texts):
            if not hit[k] and turn_ngrams(turns, ("user", "assistant"), params.ngram) & grams:
                hit[k] = True
        rejected += int(hit.sum())
    return rejected


def run(size: int, benchmark: int = BENCHMARK, repeats: int = 1) -> list[Measurement]:
    params = DecontamParams()
    bench, bench_samples, signatures, samples = make_data(size, benchmark)
    index = pa.concat_tables(
        [
            image_rows(bench, {s["sample_id"]: s["origin_key"] for s in bench_samples}, params),
            ngram_rows(bench_samples, params),
        ]
    )
    seconds, flagged = best_time(lambda: stage(index, signatures, samples, params), repeats)
    base, base_flagged = best_time(
        lambda: brute_force(bench, bench_samples, signatures, samples, params), repeats
    )
    note = f"{flagged} flagged" + ("" if flagged == base_flagged else f", baseline {base_flagged}")
    return [
        Measurement(
            "decontam",
            size,
            seconds,
            f"NumPy brute force vs {benchmark:,} benchmark items",
            base,
            "samples",
            note,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=SIZES["large"])
    parser.add_argument("--benchmark", type=int, default=BENCHMARK)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    (m,) = run(args.n, args.benchmark, args.repeats)
    print(
        f"{m.rows:,} train samples vs {args.benchmark:,} benchmark items: stage {m.rate:,.0f} "
        f"samples/s, brute force {m.rows / m.baseline_seconds:,.0f} samples/s "
        f"({m.ratio:.2f}x); {m.note}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
