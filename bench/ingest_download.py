"""Benchmark: fineharbor's Downloader against img2dataset on the same loopback server.

Starts an aiohttp server in separate process(es) serving N generated JPEGs (~20-60 KB), writes
a LAION-style URL list (Parquet), then measures images/s for

  (a) ``fineharbor.core.download.Downloader`` (bodies kept in memory, as the url_list reader
      uses it), and
  (b) img2dataset, run from its own virtualenv (``.venv-bench``) as a subprocess, once with
      ``--resize_mode no`` (it still decodes and re-encodes every image) and once with
      ``--disable_all_reencoding True`` (pure download + write, the closest like-for-like),

and prints both and the ratio ours / img2dataset, with a plain aiohttp loop (the same
concurrency, no retries or checks) as the floor. ``run(size)`` (the suite's ``download`` stage)
compares the Downloader with that plain loop only. img2dataset's rate uses the duration in its
own shard stats (so its interpreter start-up is not counted against it); its wall time, start-up
included, is printed beside it.

``--fail-fast`` measures instead how fast an all-fail list is turned into rejects when DNS
fails for every host (issue: 1,000 URLs once took 188 s offline): 1,000 URLs over 50 hosts and
over 1,000 distinct hosts, with this machine's resolver on ``*.invalid`` names, with a resolver
that answers "no such name" after 5 ms, and with one that never answers (EAI_AGAIN after
``--no-answer-s``, as on a machine whose nameserver is unreachable). The baseline is a plain
aiohttp loop that looks up each URL's host (no negative cache), at the same concurrency.

Usage:
    python bench/ingest_download.py [--n 2000] [--concurrency 32] [--repeats 3]
    python bench/ingest_download.py --fail-fast [--concurrency 32] [--no-answer-s 1.0]

img2dataset pins old dependencies, hence the separate venv::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install img2dataset==1.47.0
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(REPO))

from bench.common import Measurement, best_time  # noqa: E402
from fineharbor.core.config import DownloadParams  # noqa: E402
from fineharbor.core.download import Downloader  # noqa: E402

BENCH_VENV = REPO / ".venv-bench"
IMG2DATASET = BENCH_VENV / "bin" / "img2dataset"


def make_jpeg(seed: int) -> bytes:
    """A gradient plus noise: realistic JPEG sizes (about 20-60 KB) at 224-384 px."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(224, 384, size=2))
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    noise = rng.integers(-40, 40, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def make_images(n: int) -> list[bytes]:
    with mp.get_context("fork").Pool() as pool:
        return pool.map(make_jpeg, range(n), chunksize=64)


def serve(sock: socket.socket, images: list[bytes]) -> None:
    """One server process: aiohttp on a listening socket shared with its siblings."""
    from aiohttp import web

    async def image(request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        if not 0 <= index < len(images):
            raise web.HTTPNotFound()
        return web.Response(body=images[index], content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{index}.jpg", image)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


def start_servers(images: list[bytes], processes: int) -> tuple[str, list[mp.Process]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    context = mp.get_context("fork")
    workers = [
        context.Process(target=serve, args=(sock, images), daemon=True) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    sock.close()
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/img/0.jpg")
    return base, workers


def wait_until_up(url: str, timeout_s: float = 15.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bench_ours(urls: list[str], sizes: list[int], concurrency: int) -> tuple[float, int]:
    """Seconds for the whole run (session start to last result) and images downloaded."""
    params = DownloadParams(concurrency=concurrency, retries=0)
    started = time.perf_counter()
    ok = 0
    with Downloader(params, allow_private_addresses=True) as downloader:
        for result, size in zip(downloader.map(urls), sizes, strict=True):
            ok += result.ok and result.content is not None and len(result.content) == size
    return time.perf_counter() - started, ok


def bench_kept(urls: list[str], sizes: list[int], concurrency: int, home: Path) -> None:
    """The content store: a first run that fetches and keeps every image, then a re-run that
    reuses them all (the server still up, so only the store's cost is measured)."""
    from fineharbor.core.download_store import DownloadStore
    from fineharbor.core.storage import Storage

    params = DownloadParams(concurrency=concurrency, retries=0)
    for label in ("fetch + keep", "reuse kept"):
        store = DownloadStore(Storage(str(home)), "bench", params=params)
        started = time.perf_counter()
        with Downloader(params, allow_private_addresses=True) as downloader:
            results = store.fetch(downloader, urls)
            ok = sum(
                r.ok and len(r.content or b"") == size
                for r, size in zip(results, sizes, strict=True)
            )
        seconds = time.perf_counter() - started
        print(
            f"content store, {label}: {seconds:.2f} s, {ok}/{len(urls)} ok, "
            f"{len(urls) / seconds:.0f} img/s (reused {store.stats.reused})"
        )


def bench_plain_aiohttp(urls: list[str], sizes: list[int], concurrency: int) -> tuple[float, int]:
    """The naive baseline: one aiohttp session, ``concurrency`` requests in flight, bodies read
    into memory; no retries, size limits, rate limits, content checks or ordering."""
    import asyncio

    import aiohttp

    async def fetch_all() -> int:
        limit = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def fetch(url: str, size: int) -> bool:
                async with limit, session.get(url) as response:
                    return len(await response.read()) == size

            done = await asyncio.gather(*(fetch(u, s) for u, s in zip(urls, sizes, strict=True)))
            return sum(done)

    started = time.perf_counter()
    ok = asyncio.run(fetch_all())
    return time.perf_counter() - started, ok


SIZES = {"tiny": 50, "small": 300, "large": 2400}


def run(size: int, concurrency: int | None = None, repeats: int = 2) -> list[Measurement]:
    """Our Downloader against the plain aiohttp loop, on one loopback server (1 process)."""
    concurrency = concurrency or DownloadParams().concurrency
    images = [make_jpeg(i % 256) for i in range(min(size, 256))]
    images = (images * (size // len(images) + 1))[:size]
    sizes = [len(image) for image in images]
    base, workers = start_servers(images, 1)
    try:
        urls = [f"{base}/img/{i}.jpg" for i in range(size)]
        seconds, ok = best_time(lambda: bench_ours(urls, sizes, concurrency)[1], repeats)
        plain, plain_ok = best_time(
            lambda: bench_plain_aiohttp(urls, sizes, concurrency)[1], repeats
        )
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
    assert ok == plain_ok == size, f"downloaded {ok} and {plain_ok} of {size}"
    return [
        Measurement(
            "download",
            size,
            seconds,
            f"plain aiohttp, {concurrency} in flight",
            plain,
            "images",
            "loopback aiohttp server, 1 process, same machine",
        )
    ]


def bench_img2dataset(
    url_list: Path, workdir: Path, concurrency: int, extra: list[str]
) -> tuple[float, float, int]:
    """(seconds in img2dataset's shard stats, wall seconds, image files written)."""
    output = Path(tempfile.mkdtemp(prefix="i2d-", dir=workdir))
    command = [
        str(IMG2DATASET),
        "--url_list",
        str(url_list),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--output_folder",
        str(output),
        "--output_format",
        "files",
        "--processes_count",
        "1",
        "--thread_count",
        str(concurrency),
        "--resize_mode",
        "no",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
        *extra,
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"img2dataset failed:\n{completed.stderr[-4000:]}")
    written = sum(1 for _ in output.rglob("*.jpg"))
    durations = [json.loads(p.read_text())["duration"] for p in output.glob("*_stats.json")]
    return (sum(durations) if durations else wall), wall, written


def failing_resolver(errno: int | None, delay_s: float):
    """A resolver factory whose every lookup fails with ``errno`` after ``delay_s`` (None: the
    machine's own resolver)."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    if errno is None:
        return DefaultResolver

    class Failing(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):  # type: ignore[no-untyped-def]
            import asyncio

            await asyncio.sleep(delay_s)
            raise socket.gaierror(errno, "no answer" if errno == socket.EAI_AGAIN else "no name")

        async def close(self) -> None:
            pass

    return Failing


def bench_fail_fast_ours(urls: list[str], resolver, concurrency: int) -> tuple[float, int]:
    """Seconds to turn every URL into a result, and how many were dns_error rejects."""
    params = DownloadParams(concurrency=concurrency)  # default retries and backoff
    started = time.perf_counter()
    with Downloader(params, resolver_factory=resolver) as downloader:
        failed = sum(r.error_code == "dns_error" for r in downloader.map(urls))
    return time.perf_counter() - started, failed


def bench_fail_fast_plain(urls: list[str], resolver, concurrency: int) -> tuple[float, int]:
    """The naive loop: each URL resolves its host itself; no retries."""
    import asyncio

    import aiohttp

    async def fetch_all() -> int:
        limit = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency, resolver=resolver())
        async with aiohttp.ClientSession(connector=connector) as session:

            async def fetch(url: str) -> bool:
                async with limit:
                    try:
                        async with session.get(url) as response:
                            await response.read()
                            return False
                    except aiohttp.ClientConnectorDNSError:
                        return True

            return sum(await asyncio.gather(*(fetch(u) for u in urls)))

    started = time.perf_counter()
    failed = asyncio.run(fetch_all())
    return time.perf_counter() - started, failed


def fail_fast(args: argparse.Namespace) -> None:
    n, concurrency = 1000, args.concurrency
    resolvers = {
        "this machine's resolver": failing_resolver(None, 0.0),
        "no such name after 5 ms": failing_resolver(socket.EAI_NONAME, 0.005),
        f"no answer after {args.no_answer_s:g} s": failing_resolver(
            socket.EAI_AGAIN, args.no_answer_s
        ),
    }
    print(f"all-fail lists of {n} URLs, concurrency {concurrency}; URLs/s (target >= 200)")
    print(f"{'resolver':<28} {'hosts':>6} {'fineharbor':>11} {'plain aiohttp':>14} {'ratio':>7}")
    for label, resolver in resolvers.items():
        for hosts in (50, n):
            urls = [f"http://dead{i % hosts}.invalid/{i}.jpg" for i in range(n)]
            ours, failed = bench_fail_fast_ours(urls, resolver, concurrency)
            assert failed == n, f"{failed} of {n} URLs were dns_error rejects"
            plain, plain_failed = bench_fail_fast_plain(urls, resolver, concurrency)
            assert plain_failed == n, f"plain loop: {plain_failed} of {n} DNS failures"
            print(
                f"{label:<28} {hosts:>6} {n / ours:>11.0f} {n / plain:>14.0f} {plain / ours:>6.1f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--concurrency", type=int, default=DownloadParams().concurrency)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; median reported")
    parser.add_argument("--server-procs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--fail-fast", action="store_true", help="measure all-fail DNS lists")
    parser.add_argument("--no-answer-s", type=float, default=1.0, help="lookup time, no answer")
    args = parser.parse_args()
    if args.fail_fast:
        fail_fast(args)
        return

    print(f"generating {args.n} JPEGs ...", flush=True)
    images = make_images(args.n)
    sizes = [len(image) for image in images]
    print(
        f"  sizes: min {min(sizes) / 1e3:.1f} KB, median {statistics.median(sizes) / 1e3:.1f} KB, "
        f"max {max(sizes) / 1e3:.1f} KB, total {sum(sizes) / 1e6:.1f} MB"
    )
    base, workers = start_servers(images, args.server_procs)
    print(f"server: {base} ({args.server_procs} aiohttp process(es)); cpus: {os.cpu_count()}")
    try:
        with tempfile.TemporaryDirectory(prefix="fh-bench-") as tmp:
            workdir = Path(tmp)
            urls = [f"{base}/img/{i}.jpg" for i in range(args.n)]
            url_list = workdir / "urls.parquet"
            pq.write_table(
                pa.table({"url": urls, "caption": [f"image {i}" for i in range(args.n)]}), url_list
            )
            run_all(args, urls, sizes, url_list, workdir)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)


def run_all(
    args: argparse.Namespace, urls: list[str], sizes: list[int], url_list: Path, workdir: Path
) -> None:
    n, concurrency = args.n, args.concurrency
    ours = []
    for run in range(args.repeats):
        seconds, ok = bench_ours(urls, sizes, concurrency)
        ours.append(n / seconds)
        print(f"fineharbor run {run + 1}: {seconds:.2f} s, {ok}/{n} ok, {n / seconds:.0f} img/s")
    ours_rate = statistics.median(ours)
    print(f"fineharbor Downloader (concurrency {concurrency}): {ours_rate:.0f} images/s (median)")
    bench_kept(urls, sizes, concurrency, workdir / "home")
    plain = statistics.median(
        n / bench_plain_aiohttp(urls, sizes, concurrency)[0] for _ in range(args.repeats)
    )
    print(f"plain aiohttp loop (same concurrency): {plain:.0f} images/s (median)")

    if not IMG2DATASET.exists():
        print(
            "\nimg2dataset not found: create its venv to compare\n"
            f"  python3 -m venv {BENCH_VENV} && {BENCH_VENV}/bin/pip install img2dataset==1.47.0"
        )
        return
    modes = {
        "resize_mode no": [],
        "disable_all_reencoding": ["--disable_all_reencoding", "True"],
    }
    for label, extra in modes.items():
        rates, walls = [], []
        for run in range(args.repeats):
            seconds, wall, written = bench_img2dataset(url_list, workdir, concurrency, extra)
            rates.append(written / seconds)
            walls.append(wall)
            print(
                f"img2dataset [{label}] run {run + 1}: {seconds:.2f} s in shard "
                f"({wall:.2f} s wall with start-up), {written}/{n} files, "
                f"{written / seconds:.0f} img/s"
            )
        rate = statistics.median(rates)
        print(
            f"img2dataset 1.47.0 [{label}] (1 process, {concurrency} threads): {rate:.0f} images/s "
            f"(median; {n / statistics.median(walls):.0f} images/s counting start-up)"
        )
        print(f"ratio ours / img2dataset [{label}]: {ours_rate / rate:.2f}x")


if __name__ == "__main__":
    main()
