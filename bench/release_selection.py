"""Peak memory of the release selection (`core/release/select.py`) on N synthetic candidates.

    .venv/bin/python bench/release_selection.py [--sizes 100000 1000000]

Each size runs in a fresh process. Candidates are generated batch by batch (1,024 rows, as
`release_mix` reads its input), so the input never counts towards the peak: two train sources
with ids of ~22 characters and origin keys of ~30, 1-3 turns with judge ratings, every score
column and the personal-data matches. The recipe exercises every stage of the selection: two
thresholds, a judge minimum, a source weight and cap, and concept balancing (the concept table,
two levels, is built before the baseline is taken, as `release_mix` reads it whole). It prints
seconds, selected and rejected counts, the peak RSS (``VmHWM``) above the RSS before selecting,
and that delta per candidate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = ("pairs", "chats")
BATCH = 1024
TURN = pa.struct([("user", pa.string()), ("assistant", pa.string())])


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def sample_ids(source: str, start: int, stop: int) -> list[str]:
    return [f"{source}-{i:016x}" for i in range(start, stop)]


def batches(source: str, n: int, seed: int):
    rng = np.random.default_rng([seed, len(source)])
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        ids = sample_ids(source, start, start + size)
        turns = rng.integers(1, 4, size)
        texts = [[{"user": "q", "assistant": "a"}] * int(t) for t in turns]
        ratings = [rng.integers(1, 6, int(t)).tolist() for t in turns]
        yield pa.record_batch(
            {
                "sample_id": pa.array(ids, pa.string()),
                "source": pa.array([source] * size, pa.string()),
                "origin_key": pa.array(
                    [f"shard-{(start + i) // 10_000:05d}.tar:{start + i:09d}" for i in range(size)]
                ),
                "texts": pa.array(texts, pa.list_(TURN)),
                "clip_score": pa.array(rng.uniform(0.1, 0.5, size), pa.float32()),
                "quality_score": pa.array(rng.uniform(0, 3, size), pa.float32()),
                "punsafe": pa.array(rng.uniform(0, 1, size), pa.float32()),
                "pwatermark": pa.array(rng.uniform(0, 1, size), pa.float32()),
                "aesthetic_score": pa.array(rng.uniform(2, 8, size), pa.float32()),
                "face_count": pa.array(rng.integers(0, 3, size), pa.int32()),
                "pii_found": pa.array([["EMAIL"] * (i % 7 == 3) for i in range(size)]),
                "relevance_ratings": pa.array(ratings, pa.list_(pa.int64())),
            }
        )


def concept_table(n_per_source: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = [i for s in SOURCES for i in sample_ids(s, 0, n_per_source)]
    fine = rng.integers(0, 1000, len(ids))
    paths = np.stack([fine, fine // 50], axis=1).astype(np.int64)
    clusters = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * len(ids) + 1, 2), pa.int32()), pa.array(paths.ravel())
    )
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "clusters": clusters,
            "distance": pa.array(rng.uniform(0, 1, len(ids)), pa.float32()),
        }
    )


def run_one(n: int) -> dict:
    from fineharbor.core.release.params import ReleaseRecipe
    from fineharbor.core.release.select import Candidates

    recipe = ReleaseRecipe(
        clip_score_min=0.2,
        pwatermark_max=0.9,
        min_ratings={"relevance": 2},
        sources=[{"name": "pairs", "weight": 0.9}, {"name": "chats", "cap": n // 4}],
        balancing={"enabled": True, "target_fraction": 0.8},
    )
    import fineharbor.core.dedup.clusters  # noqa: F401  (the balancing's import, not its data)

    per_source = n // len(SOURCES)
    clusters = concept_table(per_source, 0)
    before = _vm("VmRSS")
    start = time.perf_counter()
    candidates = Candidates(recipe)
    for source in SOURCES:
        for batch in batches(source, per_source, 0):
            candidates.admit(batch, source)
    candidates.apply_source_mix()
    candidates.balance(clusters)
    rejects = candidates.rejects()
    selected = sum(len(candidates.chosen(source)) for source in candidates.sources())
    return {
        "candidates": n,
        "seconds": round(time.perf_counter() - start, 1),
        "selected": selected,
        "rejected": rejects.num_rows,
        "rss_before_mb": round(before / 2**20),
        "peak_delta_mb": round((_vm("VmHWM") - before) / 2**20),
        "bytes_per_candidate": round((_vm("VmHWM") - before) / n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], check=True, capture_output=True, text=True
        )
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
