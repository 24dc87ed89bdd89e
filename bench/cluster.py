"""Benchmark: hierarchical k-means (Vo et al.) against one flat faiss k-means, same run, CPU.

For each size N (default 100k and 1M) it draws N synthetic 64-d vectors (a Gaussian mixture
with long-tailed concept sizes, float32) and, each in a fresh process so peak memory is its own:

  hierarchical  fineharbor.core.concepts.hierarchical_kmeans: levels --levels (default
                1000, 100, 10), k-means++ seeding, --iters Lloyd iterations (50, as the paper),
                resampling steps on the upper levels (10 steps, sample sizes 5 and 3), then
                assignment of every point at every level
  flat          faiss.Kmeans with k = the hierarchy's total cluster count (1110), the same
                iterations, trained on every point (max_points_per_centroid raised, as the
                hierarchy's level 1 is), then assignment of every point

and prints wall time, the time ratio and what clustering added to each process's peak RSS
(peak minus the RSS after the data alone).

``run(size)`` (the suite's ``cluster`` stage) does the same at one size with fixed levels
200/20/4 and 20 iterations, so the time should grow linearly in N.

Usage: python bench/cluster.py [--sizes 100000 1000000] [--levels 1000 100 10] [--iters 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Measurement

DIM = 64


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    concepts = 2000
    centers = rng.normal(size=(concepts, DIM)).astype(np.float32) * 3
    weights = 1.0 / np.arange(1, concepts + 1) ** 1.1  # Zipf-like concept sizes
    member = rng.choice(concepts, n, p=weights / weights.sum())
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    for start in range(0, n, 65536):  # in chunks: the data's own footprint stays n x d floats
        x[start : start + 65536] += centers[member[start : start + 65536]]
    return x


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run(method: str, n: int, levels: list[int], iters: int, queue) -> None:
    import faiss

    from fineharbor.core.concepts import ConceptLevel, ConceptParams, hierarchical_kmeans

    x = vectors(n)
    data_mb = _rss_mb()
    started = time.perf_counter()
    if method == "hierarchical":
        params = ConceptParams(
            levels=[
                ConceptLevel(
                    n_clusters=k,
                    n_resamples=0 if i == 0 else 10,
                    sample_size=1 if i == 0 else (5 if i == 1 else 3),
                )
                for i, k in enumerate(levels)
            ],
            n_iters=iters,
            device="cpu",
        )
        hierarchy = hierarchical_kmeans(x, params)
        clusters = sum(hierarchy.n_clusters)
    else:
        k = sum(levels)
        km = faiss.Kmeans(DIM, k, niter=iters, seed=0, max_points_per_centroid=n, verbose=False)
        km.train(x)
        km.index.search(x, 1)
        clusters = k
    queue.put((time.perf_counter() - started, _rss_mb(), data_mb, clusters))


def measure(method: str, n: int, levels: list[int], iters: int) -> tuple[float, float, float, int]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(method, n, levels, iters, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


SIZES = {"tiny": 2_000, "small": 25_000, "large": 200_000}
SUITE_LEVELS = [200, 20, 4]  # fixed cluster counts: time should grow linearly in n
SUITE_ITERS = 20


def run(size: int, levels: list[int] = SUITE_LEVELS, iters: int = SUITE_ITERS) -> list[Measurement]:
    """Hierarchical against flat k-means on ``size`` vectors, each in its own process."""
    hier, peak_h, data_h, clusters = measure("hierarchical", size, levels, iters)
    flat, peak_f, data_f, _ = measure("flat", size, levels, iters)
    note = (
        f"levels {levels}, {iters} iters; extra MB hierarchical {peak_h - data_h:.0f}, "
        f"flat {peak_f - data_f:.0f}"
    )
    return [
        Measurement(
            "cluster/hierarchical",
            size,
            hier,
            f"flat faiss k-means, k={clusters}",
            flat,
            "vectors",
            note,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--levels", type=int, nargs="+", default=[1000, 100, 10])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={DIM}, CPU")
    print(f"{'N':>9} {'hierarchical s':>15} {'flat s':>9} {'ratio':>7}  memory")
    for n in args.sizes:
        (m,) = run(n, args.levels, args.iters)
        print(
            f"{n:>9} {m.seconds:>15.1f} {m.baseline_seconds:>9.1f} "
            f"{m.seconds / m.baseline_seconds:>7.2f}  {m.note}"
        )


if __name__ == "__main__":
    main()
