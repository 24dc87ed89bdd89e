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

and prints wall time, peak RSS, RSS after the data alone, their difference (what clustering
added) and the time ratio.

Usage: python bench/cluster.py [--sizes 100000 1000000] [--levels 1000 100 10] [--iters 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--levels", type=int, nargs="+", default=[1000, 100, 10])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={DIM}, CPU")
    header = (
        f"{'N':>9} {'method':<13} {'clusters':>8} {'seconds':>9} {'peak MB':>9} {'data MB':>8} "
        f"{'extra MB':>9}"
    )
    print(header)
    for n in args.sizes:
        times = {}
        for method in ("hierarchical", "flat"):
            seconds, peak, data, clusters = measure(method, n, args.levels, args.iters)
            times[method] = seconds
            print(
                f"{n:>9} {method:<13} {clusters:>8} {seconds:>9.1f} {peak:>9.0f} {data:>8.0f} "
                f"{peak - data:>9.0f}"
            )
        print(f"{n:>9} ratio hierarchical / flat time: {times['hierarchical'] / times['flat']:.2f}")


if __name__ == "__main__":
    main()
