"""Near-duplicate search at scale: faiss vs brute-force NumPy, and phash vs imagededup.

    .venv/bin/python bench/dedup.py [--sizes 10000 100000 1000000] [--dim 256]
                                    [--imagededup-python .venv-bench/bin/python]

Part 1, synthetic signatures. ``n`` L2-normalised vectors drawn around 1,000 centres (real
embeddings are clustered, which is what makes k-means leaves uneven), with 2% of them planted as
near-duplicates of another vector (cosine ~0.95-0.99). Every (method, n) runs in a fresh
process so its peak RSS (``ru_maxrss``) is its own; the data's own size is printed beside it.

* ``faiss``: what ``fineharbor.core.dedup.search.cosine_pairs`` does with the stage defaults:
  exact ``IndexFlatIP`` range search up to ``DedupParams.exact_search_limit`` (10,000) vectors,
  the k-means forest (6 trees, leaves of 256) above; recall of the forest is measured against
  exact NumPy search on 1,000 sampled vectors.
* ``numpy``: blocked matrix products over the upper triangle (``brute_force_cosine_pairs``).
  Where that takes too long (``--numpy-full-limit``), a measured prefix of query blocks is
  extrapolated to the full triangle, and the output says so.

``run(size)`` (the suite's ``dedup`` stage) is part 1 at one size, dim 128, for both the stage's
default search and its forest path at every size, against the same NumPy brute force.

Part 2, images: ``find_duplicates`` with phash + mirror phash + pixel hash against imagededup's
``PHash.find_duplicates`` (max_distance_threshold 10, its default) on the same demo images,
scored on the demo's planted pairs, when imagededup is importable in ``--imagededup-python``
(default: this interpreter; imagededup is never a project dependency).

Part 3, copies a user calls copies: the photo set of ``fineharbor.testing.copies`` (textured
scenes in several sizes, each copy transform, other-angle photos of the same objects), hash
signals only (pixel hash, phash with its mirror and turned hashes, pixel verification) against
imagededup's PHash (default threshold 10) on the same files, recall and wrong pairs per
transform. imagededup is imported in process when installed; its CNN method needs MobileNet
weights from the internet and is not run.

Part 4, verification in a dense neighbourhood: templated bar charts (one template, one bar and
the label changing), every pair among the first ``--dense-images`` verified. Pairs/s of the
verifier before this change (``verify.py`` at ``--before-rev``, one pair at a time, loaded from
git) against the batched verifier in process and with worker processes, on the same pairs in
the same run; then ``find_duplicates`` over all charts with a loose phash threshold, showing
the per-item candidate cap at work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement, growth_exponent
from fineharbor.core.dedup import DedupParams

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.90


# --------------------------------------------------------------------------- part 1


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Clustered unit vectors with 2% planted near-duplicates; returns (vectors, planted)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    planted = n // 50
    copies = rng.choice(n, planted, replace=False)
    sources = rng.integers(0, n, planted)
    noise = rng.uniform(0.1, 0.25, (planted, 1)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[copies] = x[sources] + rng.standard_normal((planted, dim)).astype(
        np.float32
    ) * noise / math.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x), planted


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_faiss(n: int, dim: int, exact_limit: int, out: mp.Queue) -> None:
    import faiss

    from fineharbor.core.dedup.search import (
        ForestParams,
        exact_cosine_pairs,
        forest_cosine_pairs,
        measure_recall,
    )

    x, planted = synthetic(n, dim)
    before = _peak_rss_mib()
    started = time.perf_counter()
    recall = None
    if n <= exact_limit:
        pairs = exact_cosine_pairs(x, THRESHOLD)
        kind = "exact IndexFlatIP"
    else:
        params = DedupParams()
        forest = ForestParams(trees=params.forest_trees, leaf_size=params.forest_leaf_size)
        pairs = forest_cosine_pairs(x, THRESHOLD, forest)
        kind = f"k-means forest, {forest.trees} trees, leaves <= {forest.leaf_size}"
    seconds = time.perf_counter() - started
    if n > exact_limit:
        recall = measure_recall(x, THRESHOLD, pairs, sample=1000).recall
    out.put(
        {
            "method": "faiss",
            "n": n,
            "kind": kind,
            "seconds": seconds,
            "pairs": int(pairs[0].size),
            "planted": planted,
            "recall": recall,
            "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": before,
            "threads": faiss.omp_get_max_threads(),
        }
    )


def run_numpy(n: int, dim: int, full_limit: int, out: mp.Queue) -> None:
    from fineharbor.core.dedup.search import brute_force_cosine_pairs

    x, planted = synthetic(n, dim)
    before = _peak_rss_mib()
    # rows per block: a block of similarities is block x n float32, kept near 1 GiB at most
    block = int(max(256, min(2048, 2**28 // n)))
    if n <= full_limit:
        started = time.perf_counter()
        pairs = brute_force_cosine_pairs(x, THRESHOLD, block=block)
        seconds = time.perf_counter() - started
        out.put(
            {
                "method": "numpy",
                "n": n,
                "kind": "blocked matmul, measured",
                "seconds": seconds,
                "pairs": int(pairs[0].size),
                "planted": planted,
                "peak_rss_mib": _peak_rss_mib(),
                "rss_before_mib": before,
            }
        )
        return
    # Measure the first query blocks (full rows of the upper triangle, the most expensive)
    # for about a minute, then scale by the share of the triangle's work they did.
    started = time.perf_counter()
    work = 0
    start = 0
    while start < n and (time.perf_counter() - started < 60 or start < 4 * block):
        sims = x[start : start + block] @ x[start:].T
        np.nonzero(sims >= THRESHOLD)
        work += min(block, n - start) * (n - start)
        start += block
    measured = time.perf_counter() - started
    total_work = n * (n + 1) / 2
    out.put(
        {
            "method": "numpy",
            "n": n,
            "kind": f"EXTRAPOLATED from {start:,} query rows "
            f"({work / total_work:.2%} of the triangle, {measured:.1f} s)",
            "seconds": measured * total_work / work,
            "pairs": None,
            "planted": planted,
            "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": before,
        }
    )


def measure(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def measure_pair(n: int, dim: int, full_limit: int, exact_limit: int) -> tuple[dict, dict]:
    """faiss (the stage's search) and NumPy brute force on the same n vectors, each in its own
    process."""
    return measure(run_faiss, n, dim, exact_limit), measure(run_numpy, n, dim, full_limit)


SIZES = {"tiny": 1_000, "small": 4_000, "large": 32_000}
SUITE_DIM = 128


def run(size: int, dim: int = SUITE_DIM) -> list[Measurement]:
    """The stage's search (exact below ``exact_search_limit``) and its approximate path (the
    k-means forest it uses above the limit), both against NumPy brute force on the same
    vectors."""
    exact_limit = DedupParams().exact_search_limit
    faiss_row, numpy_row = measure_pair(size, dim, size, exact_limit)
    forest_row = measure(run_faiss, size, dim, 0)
    out = []
    for name, row in (
        ("dedup/cosine_search", faiss_row),
        ("dedup/cosine_search_forest", forest_row),
    ):
        recall = "" if row["recall"] is None else f", recall {row['recall']:.4f}"
        out.append(
            Measurement(
                name,
                size,
                row["seconds"],
                "NumPy blocked brute force",
                numpy_row["seconds"],
                "vectors",
                f"dim {dim}, {row['kind']}, {row['pairs']:,} pairs{recall}",
            )
        )
    return out


def part1(sizes: list[int], dim: int, full_limit: int, exact_limit: int) -> None:
    print(f"\n== near-duplicate vector search, dim {dim}, cosine >= {THRESHOLD} ==")
    rows = []
    for n in sizes:
        data_mib = n * dim * 4 / 2**20
        faiss_row, numpy_row = measure_pair(n, dim, full_limit, exact_limit)
        rows.append((n, faiss_row, numpy_row))
        recall = "" if faiss_row["recall"] is None else f", recall {faiss_row['recall']:.4f}"
        print(f"\nn = {n:,} (data {data_mib:,.0f} MiB float32, {faiss_row['planted']:,} planted)")
        for row in (faiss_row, numpy_row):
            pairs = "" if row["pairs"] is None else f", {row['pairs']:,} pairs"
            print(
                f"  {row['method']:<6} {row['seconds']:>10.2f} s  peak RSS "
                f"{row['peak_rss_mib']:>8,.0f} MiB  [{row['kind']}{pairs}"
                f"{recall if row is faiss_row else ''}]"
            )
        print(f"  speed-up faiss vs numpy: {numpy_row['seconds'] / faiss_row['seconds']:.1f}x")
    if len(rows) > 1:
        print("\ngrowth exponent (slope of log time vs log n):")
        for (n0, f0, b0), (n1, f1, b1) in itertools.pairwise(rows):
            fast = growth_exponent(n0, f0["seconds"], n1, f1["seconds"])
            slow = growth_exponent(n0, b0["seconds"], n1, b1["seconds"])
            print(f"  {n0:,} -> {n1:,}: faiss {fast:.2f}, numpy {slow:.2f}")


# --------------------------------------------------------------------------- part 2

IMAGEDEDUP_SCRIPT = r"""
import json, sys, time
from imagededup.methods import PHash
hasher = PHash(verbose=False)
started = time.perf_counter()
encodings = hasher.encode_images(image_dir=sys.argv[1], recursive=False, num_enc_workers=0)
duplicates = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=10,
                                    num_dist_workers=0)
print(json.dumps({"seconds": time.perf_counter() - started, "duplicates": duplicates}))
"""


def part2(scale: float, imagededup_python: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from dedup_quality import prepare_demo, print_report

    from fineharbor.core.dedup import DedupParams, compact_samples, find_duplicates
    from fineharbor.core.dedup.evaluate import evaluate_clusters
    from fineharbor.core.dedup.union_find import UnionFind, cluster_id
    from fineharbor.core.dedup.verify import batches_thumbnail_loader
    from fineharbor.core.pipeline import UNIFIED
    from fineharbor.core.signatures import SignatureParams, compute_signatures
    from fineharbor.core.stored import read_stage_rows

    print(f"\n== phash dedup on demo images (scale {scale}): fineharbor vs imagededup ==")
    with tempfile.TemporaryDirectory(prefix="fh-dedup-bench-") as tmp:
        home = Path(tmp) / "home"
        config, storage, names = prepare_demo(home, scale=scale, seed=0)
        images_dir = Path(tmp) / "images"
        images_dir.mkdir()
        # single-image samples only, one file per sample, so both tools see the same set
        owner: dict[str, str] = {}
        for name in names:
            for batch in read_stage_rows(storage, UNIFIED, name, columns=["sample_id", "images"]):
                for sample_id, images in zip(
                    batch.column("sample_id").to_pylist(),
                    batch.column("images").to_pylist(),
                    strict=True,
                ):
                    if images and len(images) == 1 and images[0]["bytes"]:
                        (images_dir / f"{sample_id}.img").write_bytes(images[0]["bytes"])
                        owner[f"{sample_id}.img"] = sample_id
        truth = pq.read_table(home / "demo" / "ground_truth.parquet")
        samples = pa.concat_tables(
            compact_samples(read_stage_rows(storage, UNIFIED, n)) for n in names
        )
        single = [f"{s}.img" in owner for s in samples.column("sample_id").to_pylist()]
        samples = samples.filter(pa.array(single))
        present = set(samples.column("sample_id").to_pylist())
        priorities = {s.name: s.priority for s in config.sources}

        params = SignatureParams(num_workers=0)  # hashes only: no model
        started = time.perf_counter()
        signed = pa.concat_tables(
            [
                t
                for n in names
                for t in compute_signatures(read_stage_rows(storage, UNIFIED, n), params)
            ]
        )
        hash_seconds = time.perf_counter() - started
        loader = batches_thumbnail_loader(
            lambda: itertools.chain.from_iterable(
                read_stage_rows(storage, UNIFIED, n, columns=["sample_id", "images"]) for n in names
            )
        )
        for distance, thumbnails in ((4, None), (10, None), (4, loader), (10, loader)):
            started = time.perf_counter()
            ours = find_duplicates(
                signed,
                samples,
                DedupParams(
                    copy_embedding=False,
                    phash_max_distance=distance,
                    phash_verify_min_cosine=None,
                    url_caption=False,
                    text_exact=False,
                    text_minhash=False,
                ),
                priorities,
                thumbnails,
            ).table
            search_seconds = time.perf_counter() - started
            verified = "pixel-verified" if thumbnails else "unverified"
            print_report(
                f"fineharbor phash<={distance} + mirror phash + pixel hash, {verified}: hashing "
                f"{hash_seconds:.1f} s (shared), search + verification {search_seconds:.2f} s",
                evaluate_clusters(ours, present, truth),
            )

        try:
            done = subprocess.run(
                [imagededup_python, "-c", IMAGEDEDUP_SCRIPT, str(images_dir)],
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            detail = getattr(error, "stderr", "") or error
            print(f"\nimagededup not run ({imagededup_python}): {str(detail).strip()[-300:]}")
            return
        result = json.loads(done.stdout.strip().splitlines()[-1])
        files = sorted(owner)
        position = {f: k for k, f in enumerate(files)}
        union = UnionFind(len(files))
        for name, matches in result["duplicates"].items():
            for other in matches:
                union.union(position[name], position[other])
        rows = []
        for members in union.components():
            ids = [owner[files[m]] for m in members]
            cid = cluster_id(ids)
            rows += [{"sample_id": s, "cluster_id": cid} for s in ids]
        theirs = pa.Table.from_pylist(
            rows, schema=pa.schema([("sample_id", pa.string()), ("cluster_id", pa.string())])
        )
        print_report(
            f"imagededup PHash.find_duplicates (max_distance_threshold=10, no mirror): "
            f"encode + search {result['seconds']:.1f} s",
            evaluate_clusters(theirs, present, truth),
        )


# --------------------------------------------------------------------------- part 3

BEFORE_REV = "a912586"  # the last commit with one-pair-at-a-time colour verification


def _hash_only_clusters(files) -> tuple[dict[str, str], dict, float]:
    """Our clusters of ``files`` (file name -> cluster id), the stage report, and seconds."""
    import pyarrow as pa

    from fineharbor.core.dedup import compact_samples, find_duplicates
    from fineharbor.core.dedup.verify import batches_thumbnail_loader
    from fineharbor.core.signatures import SignatureParams, compute_signatures

    batch = pa.RecordBatch.from_pylist(
        [
            {"sample_id": f.name, "source": "photos", "origin_uri": None, "origin_key": f.name,
             "images": [{"bytes": f.data, "path": f.name}], "texts": []}
            for f in files
        ]
    )  # fmt: skip
    started = time.perf_counter()
    signatures = pa.concat_tables(list(compute_signatures([batch], SignatureParams(num_workers=0))))
    clusters, report = find_duplicates(
        signatures,
        compact_samples([batch]),
        DedupParams(copy_embedding=False, phash_verify_min_cosine=None),
        {},
        thumbnails=batches_thumbnail_loader(lambda: iter([batch])),
    )
    seconds = time.perf_counter() - started
    cluster_of = dict(
        zip(clusters["sample_id"].to_pylist(), clusters["cluster_id"].to_pylist(), strict=True)
    )
    return cluster_of, report, seconds


def _imagededup_clusters(files) -> tuple[dict[str, str], float] | None:
    try:
        from imagededup.methods import PHash
    except ImportError:
        return None
    from fineharbor.core.dedup.union_find import UnionFind

    with tempfile.TemporaryDirectory(prefix="fh-copies-") as tmp:
        for f in files:
            (Path(tmp) / f.name).write_bytes(f.data)
        started = time.perf_counter()
        hasher = PHash(verbose=False)
        encodings = hasher.encode_images(image_dir=tmp, recursive=False, num_enc_workers=0)
        found = hasher.find_duplicates(
            encoding_map=encodings, max_distance_threshold=10, num_dist_workers=0
        )
        seconds = time.perf_counter() - started
    names = sorted(f.name for f in files)
    position = {n: k for k, n in enumerate(names)}
    union = UnionFind(len(names))
    for name, matches in found.items():
        for other in matches:
            union.union(position[name], position[other])
    cluster_of = {}
    for members in union.components():
        for m in members:
            cluster_of[names[m]] = names[min(members)]
    return cluster_of, seconds


def _print_copy_scores(title: str, scores: dict) -> None:
    print(f"\n{title}")
    print(f"{'transform':<14} {'files':>5} {'recall':>7} {'wrong pairs':>11}")
    for transform, row in scores.items():
        recall = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        print(f"{transform:<14} {row['files']:>5} {recall:>7} {row['wrong_pairs']:>11}")


def part3(scenes: int) -> None:
    from fineharbor.testing.copies import copy_set, score_clusters

    files = copy_set(scenes=scenes, seed=7)
    print(f"\n== copies a user calls copies: {len(files)} files, {scenes} scenes ==")
    cluster_of, report, seconds = _hash_only_clusters(files)
    _print_copy_scores(
        f"fineharbor, hash signals only (hashing + search + verification {seconds:.1f} s)",
        score_clusters(files, cluster_of),
    )
    print(f"candidates per signal: {json.dumps(report['candidates'])}")
    theirs = _imagededup_clusters(files)
    if theirs is None:
        print("\nimagededup not installed: its PHash was not run (pip install imagededup)")
        return
    _print_copy_scores(
        f"imagededup PHash (max_distance_threshold=10), encode + search {theirs[1]:.1f} s",
        score_clusters(files, theirs[0]),
    )


# --------------------------------------------------------------------------- part 4


def _before_module(rev: str):
    """``verify.py`` as it was at ``rev``, imported under another name (None without git)."""
    import importlib.util

    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:fineharbor/core/dedup/verify.py"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    path = Path(tempfile.mkdtemp(prefix="fh-verify-before-")) / "verify_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("verify_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def part4(count: int, before_rev: str) -> None:
    import pyarrow as pa

    from fineharbor.core.dedup import compact_samples, find_duplicates
    from fineharbor.core.dedup.verify import PairVerifier, batches_thumbnail_loader, thumbnail
    from fineharbor.core.signatures import SignatureParams, compute_signatures
    from fineharbor.testing.copies import encode, templated_charts

    charts = templated_charts(count, seed=1)
    thumbs = {(f"c{k:04d}", 0): thumbnail(c, 64) for k, c in enumerate(charts)}
    keys = sorted(thumbs)
    pairs = list(itertools.combinations(keys, 2))
    print(f"\n== verification in a dense neighbourhood: {count} templated charts, "
          f"{len(pairs)} pairs ==")  # fmt: skip

    def timed(verifier, some) -> tuple[float, int]:
        started = time.perf_counter()
        passed = sum(verifier.check(some))
        return len(some) / (time.perf_counter() - started), passed

    before = _before_module(before_rev)
    rate_before = None
    if before is not None:
        old = {k: before.thumbnail(c, 64) for k, c in zip(keys, charts, strict=True)}
        subset = pairs[: min(len(pairs), 200)]
        old_verifier = before.PairVerifier(lambda ks: {k: old[k] for k in ks})
        rate_before, passed = timed(old_verifier, subset)
        now = PairVerifier(lambda ks: {k: thumbs[k] for k in ks}, workers=1).check(subset)
        differ = sum(x != y for x, y in zip(old_verifier.check(subset), now, strict=True))
        print(f"before ({before_rev}, one pair at a time): {rate_before:8.1f} pairs/s "
              f"({len(subset)} pairs, {passed} passed; verdicts differing from the batched "
              f"verifier's: {differ})")  # fmt: skip
    else:
        print(f"before: not measured (no git revision {before_rev})")
    for workers in (1, 2):
        verifier = PairVerifier(lambda ks: {k: thumbs[k] for k in ks}, workers=workers)
        rate, passed = timed(verifier, pairs)
        speedup = f", {rate / rate_before:.1f}x before" if rate_before else ""
        print(f"batched (256 pairs a batch), {workers} process(es): {rate:8.1f} pairs/s "
              f"({len(pairs)} pairs, {passed} passed{speedup}); "
              f"{verifier.stats()['passed_full_frame']} confirmed full frame")  # fmt: skip

    many = templated_charts(max(count, 150), seed=2)
    batch = pa.RecordBatch.from_pylist(
        [
            {"sample_id": f"c{k:04d}", "source": "charts", "origin_uri": None,
             "origin_key": str(k), "images": [{"bytes": encode(c, "PNG"), "path": None}],
             "texts": []}
            for k, c in enumerate(many)
        ]
    )  # fmt: skip
    signatures = pa.concat_tables(list(compute_signatures([batch], SignatureParams(num_workers=0))))
    for cap in (None, DedupParams().max_candidates_per_item):
        started = time.perf_counter()
        clusters, report = find_duplicates(
            signatures,
            compact_samples([batch]),
            DedupParams(
                copy_embedding=False, phash_max_distance=10, max_candidates_per_item=cap,
                phash_verify_min_cosine=None,
            ),
            {},
            thumbnails=batches_thumbnail_loader(lambda: iter([batch])),
        )  # fmt: skip
        print(f"find_duplicates, {len(many)} charts, phash <= 10, cap {cap}: "
              f"{time.perf_counter() - started:.1f} s, candidates {report['candidates']}, "
              f"clustered samples {clusters.num_rows}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument(
        "--numpy-full-limit",
        type=int,
        default=100_000,
        help="largest n brute-forced completely; above it the time is extrapolated",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="demo scale for part 2")
    parser.add_argument("--imagededup-python", default=sys.executable)
    parser.add_argument("--copy-scenes", type=int, default=12, help="scenes of part 3")
    parser.add_argument("--dense-images", type=int, default=60, help="charts of part 4")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of 'before'")
    parser.add_argument(
        "--exact-limit",
        type=int,
        default=DedupParams().exact_search_limit,
        help="largest n searched exactly by faiss (the stage's exact_search_limit)",
    )
    parser.add_argument("--skip-vectors", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-copies", action="store_true")
    parser.add_argument("--skip-dense", action="store_true")
    args = parser.parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}")
    if not args.skip_vectors:
        part1(args.sizes, args.dim, args.numpy_full_limit, args.exact_limit)
    if not args.skip_images:
        part2(args.scale, args.imagededup_python)
    if not args.skip_copies:
        part3(args.copy_scenes)
    if not args.skip_dense:
        part4(args.dense_images, args.before_rev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
