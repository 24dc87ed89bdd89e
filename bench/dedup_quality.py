"""Duplicate detection quality on the demo's planted duplicates.

    .venv/bin/python bench/dedup_quality.py [--scale 1.0] [--copy-model FILE] [--home DIR]

1. Generates the demo (seed 0) and builds ``unified_samples`` for its train sources (the URL
   source through the loopback server).
2. Trains the demo copy detector (``fineharbor.core.signatures.train_copy_detector``) on the
   images of a *second* demo drawn with another seed, so the detector never saw the evaluated
   images, let alone which of them are planted copies. ``--copy-model`` reuses a file instead.
3. Computes signatures (pixel hash, phash + mirror phash, copy embedding), runs
   ``find_duplicates`` across all train sources with the source priorities of the project file,
   and prints recall and precision per transform against ``ground_truth.parquet``
   (``fineharbor.core.dedup.evaluate`` documents exactly what is counted), for the combined
   signals and for each signal family alone, plus a sweep of the copy-embedding threshold.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fineharbor.core.config import ProjectConfig, load_config
from fineharbor.core.dedup import (
    CovarianceAccumulator,
    DedupParams,
    compact_samples,
    find_duplicates,
)
from fineharbor.core.dedup.evaluate import QualityReport, evaluate_clusters
from fineharbor.core.dedup.verify import batches_thumbnail_loader
from fineharbor.core.ingest import build_raw_samples, build_unified_samples
from fineharbor.core.pipeline import UNIFIED
from fineharbor.core.signatures import SignatureParams, build_embedders, compute_signatures
from fineharbor.core.signatures.train_copy_detector import (
    TrainConfig,
    export_torchscript,
    train_copy_detector,
)
from fineharbor.core.storage import Storage
from fineharbor.core.stored import read_stage_rows
from fineharbor.demo import generate_demo, serve_directory

REPO = Path(__file__).resolve().parents[1]
URL_SOURCE = "laion_urls"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_demo(
    home: Path, *, scale: float, seed: int, with_urls: bool = True
) -> tuple[ProjectConfig, Storage, list[str]]:
    """Generate the demo under ``home`` and build ``unified_samples`` of its train sources."""
    os.environ["FINEHARBOR_HOME"] = str(home)
    port = free_port()
    generate_demo(home, f"http://127.0.0.1:{port}", seed=seed, scale=scale)
    config = load_config(REPO / "fineharbor.yaml")
    storage = Storage(str(home))
    names = [
        s.name for s in config.sources if s.role == "train" and (with_urls or s.name != URL_SOURCE)
    ]
    for name in names:
        served = (
            serve_directory(home / "demo/sources" / URL_SOURCE / "_served", port=port)
            if name == URL_SOURCE
            else contextlib.nullcontext()
        )
        with served:
            build_raw_samples(config, name, storage)
        build_unified_samples(config, name, storage)
    return config, storage, names


def image_bytes(storage: Storage, names: list[str]):
    for name in names:
        for batch in read_stage_rows(storage, UNIFIED, name, columns=["images"]):
            for images in batch.column("images").to_pylist():
                for image in images or []:
                    if image and image.get("bytes"):
                        yield image["bytes"]


def train_detector(out: Path, *, scale: float, seed: int, steps: int) -> Path:
    """Train the demo copy detector on a demo drawn with ``seed`` (not the evaluated one)."""
    with tempfile.TemporaryDirectory(prefix="fh-copy-train-") as tmp:
        started = time.perf_counter()
        _, storage, names = prepare_demo(Path(tmp), scale=scale, seed=seed, with_urls=False)
        print(f"training demo (seed {seed}) built in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        model = train_copy_detector(
            image_bytes(storage, names), TrainConfig(steps=steps, seed=0, log_every=0)
        )
        print(f"copy detector: {steps} steps trained in {time.perf_counter() - started:.0f} s")
    return export_torchscript(model, out)


def signatures(storage: Storage, names: list[str], params: SignatureParams) -> pa.Table:
    embedders = build_embedders(params)
    tables = []
    for name in names:
        tables += list(
            compute_signatures(read_stage_rows(storage, UNIFIED, name), params, embedders)
        )
    return pa.concat_tables(tables)


def print_report(title: str, report: QualityReport) -> None:
    print(f"\n{title}")
    print(
        f"{'transform':<10} {'planted':>7} {'found':>6} {'recall':>7} {'pairs':>6} {'precision':>9}"
    )
    for row in report.rows():
        print(
            f"{row['transform']:<10} {row['planted']:>7} {row['found']:>6} {row['recall']:>7.3f} "
            f"{row['flagged_pairs']:>6} {row['precision']:>9.3f}"
        )
    print(
        f"all predicted pairs: {report.predicted_pairs}, true {report.true_predicted_pairs}, "
        f"precision {report.precision:.3f}; clusters {report.clusters}, within one true group "
        f"{report.pure_clusters} ({report.cluster_precision:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--home", type=Path, help="reuse/keep the evaluated demo here")
    parser.add_argument("--copy-model", type=Path, help="existing copy-detector TorchScript file")
    parser.add_argument("--train-scale", type=float, default=1.0)
    parser.add_argument("--train-steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--reuse", action="store_true", help="--home already holds the built demo: skip building"
    )
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        home = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fh-dq-")))
        started = time.perf_counter()
        if args.reuse and args.home:
            os.environ["FINEHARBOR_HOME"] = str(home)
            config, storage = load_config(REPO / "fineharbor.yaml"), Storage(str(home))
            names = [s.name for s in config.sources if s.role == "train"]
        else:
            config, storage, names = prepare_demo(home, scale=args.scale, seed=0)
        print(f"demo (scale {args.scale}, seed 0) built in {time.perf_counter() - started:.0f} s")
        model = args.copy_model or train_detector(
            home / "models" / "demo_copy_detector.torchscript.pt",
            scale=args.train_scale,
            seed=1,
            steps=args.train_steps,
        )

        params = SignatureParams(sscd_path=str(model), num_workers=args.workers, batch_size=128)
        started = time.perf_counter()
        signed = signatures(storage, names, params)
        seconds = time.perf_counter() - started
        print(f"signatures: {signed.num_rows} images in {seconds:.1f} s")
        samples = pa.concat_tables(
            compact_samples(read_stage_rows(storage, UNIFIED, name)) for name in names
        )
        present = set(samples.column("sample_id").to_pylist())
        truth = pq.read_table(home / "demo" / "ground_truth.parquet")
        priorities = {s.name: s.priority for s in config.sources}

        loader = batches_thumbnail_loader(
            lambda: itertools.chain.from_iterable(
                read_stage_rows(storage, UNIFIED, n, columns=["sample_id", "images"]) for n in names
            )
        )
        defaults = DedupParams()
        gui = tuple(n for n in names if n.startswith("gui_"))
        variants = [
            ("combined signals, stage defaults, pixel verification", defaults, loader),
            (
                f"combined + GUI sources exempt among themselves {gui}",
                DedupParams(near_duplicate_exempt_sources=gui),
                loader,
            ),
            ("combined, no pixel verification", defaults, None),
            (
                "pixel hash + phash/mirror phash only, verified (no embedding)",
                DedupParams(copy_embedding=False, phash_verify_min_cosine=None),
                loader,
            ),
            (
                "pixel hash + phash/mirror phash only, unverified",
                DedupParams(copy_embedding=False, phash_verify_min_cosine=None),
                None,
            ),
            ("copy embedding only, unverified", DedupParams(exact_pixels=False, phash=False), None),
        ]
        for title, dedup, thumbnails in variants:
            started = time.perf_counter()
            clusters, meta = find_duplicates(signed, samples, dedup, priorities, thumbnails)
            seconds = time.perf_counter() - started
            report = evaluate_clusters(clusters, present, truth)
            print_report(f"{title} [{seconds:.1f} s; {meta}]", report)

        clusters = find_duplicates(signed, samples, defaults, priorities, loader).table
        removed = set(clusters.filter(pc.invert(clusters["is_kept"]))["sample_id"].to_pylist())
        before, after = CovarianceAccumulator(), CovarianceAccumulator()
        before.update_table(signed)
        after.update_table(
            signed.filter(pa.array([s not in removed for s in signed["sample_id"].to_pylist()]))
        )
        for label, acc in (("all images", before), ("after dedup", after)):
            d = acc.result()
            print(
                f"\ndiversity of copy embeddings, {label}: n={d.n}, erank {d.effective_rank:.1f}, "
                f"PR {d.participation_ratio:.1f} (d={d.dim}) -> {d.score:.3f}"
            )

        print("\ncopy-embedding threshold sweep (combined signals, pixel verification)")
        header = " ".join(f"{t:>13}" for t in ("exact", "resize", "jpeg", "crop", "flip"))
        print(f"{'threshold':>9} {header} {'all-pairs P':>11} {'verified':>8}")
        for threshold in (0.70, 0.75, 0.80, 0.85, 0.90, 0.95):
            clusters, meta = find_duplicates(
                signed, samples, DedupParams(copy_threshold=threshold), priorities, loader
            )
            report = evaluate_clusters(clusters, present, truth)
            cells = [f"R{s.recall:.2f}/P{s.precision:.2f}" for s in report.by_transform.values()]
            checked = meta["verification"]["pairs_checked"]
            print(
                f"{threshold:>9.2f} "
                + " ".join(f"{c:>13}" for c in cells)
                + f" {report.precision:>11.3f} {checked:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
