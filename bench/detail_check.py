"""The dedup detail check in a dense neighbourhood, before and after it streamed by budget.

    .venv/bin/python bench/detail_check.py [--charts 2000] [--pairs 60000] [--rows 20000]
                                           [--before-rev REV]

``--charts`` templated bar charts (``fineharbor.testing.copies.templated_charts``, 400x300
PNG) in record batches of 256 rows, as ``cleaned_samples`` partitions are streamed (with
``--rows``, from a Parquet file padded to that many rows, so each stream reads as much as
duplicate_clusters does at that size). Random
pairs of them are put through the full-frame fit on 64 px thumbnails and the ones it confirms
(about 1 in 12: look-alikes from one template) are what the detail check gets, in the order
the verifier hands them over. Each variant runs only the detail check on the same confirmed
pairs and reports its seconds, how often it streamed the batches and the pairs it refuted:

* ``before``: ``verify.py`` at ``--before-rev`` (loaded from git): one full stream per chunk of
  256 images, every residual in the main process;
* ``after``: this tree, the default budget (256 MiB, 1,024 views of 512 px), in process and
  with worker processes; then a budget of ``--small-budget-mb`` to show several passes.

The refuted pairs must be the same in every variant.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dedup import _before_module
from fineharbor.core.dedup.verify import (
    PairVerifier,
    batches_thumbnail_loader,
    full_frame,
    is_colour,
    thumbnail,
)
from fineharbor.testing.copies import encode, templated_charts

BEFORE_REV = "8d6da91"  # the last commit that streamed the detail views 256 images at a time


class Opened:
    """``open_batches``: the in-memory batches, or a Parquet file read 256 rows a batch."""

    def __init__(self, batches: list[pa.RecordBatch] | Path) -> None:
        self.batches = batches
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if isinstance(self.batches, Path):
            return pq.ParquetFile(self.batches).iter_batches(256)
        return iter(self.batches)


def confirmed_pairs(charts: list, count: int, seed: int) -> list[tuple[tuple, int]]:
    """(pair, turn) of the random pairs the full frame confirms, sorted as the verifier
    hands them to the detail check."""
    thumbs = [thumbnail(chart, 64).pixels for chart in charts]
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(charts), (count, 2))
    drawn = np.unique(np.sort(drawn[drawn[:, 0] != drawn[:, 1]], axis=1), axis=0)
    out = []
    for start in range(0, len(drawn), 2048):
        part = drawn[start : start + 2048]
        a = np.stack([thumbs[i] for i in part[:, 0]]).astype(np.float32)
        b = np.stack([thumbs[j] for j in part[:, 1]]).astype(np.float32)
        ncc, worst, turn = full_frame(a, b, is_colour(a) & is_colour(b))
        passed = ((ncc >= 0.90) & (worst <= 16.0)).tolist()
        for (i, j), ok, t in zip(part.tolist(), passed, turn.tolist(), strict=True):
            if ok:
                out.append(((_key(i), _key(j)), int(t)))
    return sorted(out)


def _key(index: int) -> tuple[str, int]:
    return (f"c{index:05d}", 0)


def run(name: str, verifier, opened: Opened, confirmed: list) -> set:
    started = time.perf_counter()
    verifier._check_details(confirmed)
    seconds = time.perf_counter() - started
    refuted = {pair for pair, ok in verifier.verdicts.items() if not ok}
    passes = getattr(verifier, "detail_passes", opened.calls)
    print(
        f"{name:<44} {seconds:8.1f} s  streams {opened.calls:4d}  passes {passes:4d}  "
        f"checked {verifier.detail_checked:6d}  refuted {len(refuted):6d}",
        flush=True,
    )
    return refuted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charts", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=60_000, help="random pairs drawn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small-budget-mb", type=int, default=64)
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="stream a Parquet file of this many rows (the charts, then rows in no pair), as "
        "duplicate_clusters streams cleaned_samples; 0: the charts' batches in memory",
    )
    parser.add_argument("--skip-small-budget", action="store_true")
    args = parser.parse_args(argv)

    charts = templated_charts(args.charts, seed=1)
    rows = [
        {"sample_id": _key(k)[0], "images": [{"bytes": encode(c, "PNG"), "path": None}]}
        for k, c in enumerate(charts)
    ]
    batches = [pa.RecordBatch.from_pylist(rows[k : k + 256]) for k in range(0, len(rows), 256)]
    if args.rows > len(rows):
        # rows in no pair (copies of the charts' bytes under other ids): what a stream also reads
        path = Path(tempfile.mkdtemp(prefix="fh-detail-")) / "cleaned.parquet"
        with pq.ParquetWriter(path, batches[0].schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
            for start in range(len(rows), args.rows, 256):
                extra = [
                    {"sample_id": f"x{k:07d}", "images": rows[k % len(rows)]["images"]}
                    for k in range(start, min(args.rows, start + 256))
                ]
                writer.write_batch(pa.RecordBatch.from_pylist(extra, schema=batches[0].schema))
        batches = path
        print(f"streaming {args.rows} rows from {path} ({path.stat().st_size / 1e6:.0f} MB)")
    confirmed = confirmed_pairs(charts, args.pairs, seed=2)
    images = len({k for pair, _ in confirmed for k in pair})
    print(
        f"{args.charts} templated charts, {len(confirmed)} pairs confirmed by the full frame "
        f"({images} images) go to the detail check"
    )
    results = {}
    if not args.skip_before:
        before = _before_module(args.before_rev)
        if before is None:
            print(f"before: not measured (no git revision {args.before_rev})")
        else:
            opened = Opened(batches)
            verifier = before.PairVerifier(before.batches_thumbnail_loader(opened))
            results["before"] = run(f"before ({args.before_rev})", verifier, opened, confirmed)
    variants = [
        ("after, default budget, in process", {"workers": 1}),
        (f"after, default budget, {args.workers} workers", {"workers": args.workers}),
        (
            f"after, {args.small_budget_mb} MiB budget, {args.workers} workers",
            {"workers": args.workers, "detail_budget_bytes": args.small_budget_mb * 2**20},
        ),
    ]
    if args.skip_small_budget:
        variants = variants[:2]
    for name, options in variants:
        opened = Opened(batches)
        verifier = PairVerifier(batches_thumbnail_loader(opened), **options)
        results[name] = run(name, verifier, opened, confirmed)
    same = len({frozenset(r) for r in results.values()}) == 1
    print(f"same refuted pairs in every variant: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
