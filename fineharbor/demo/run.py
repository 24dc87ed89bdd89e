"""What `fineharbor demo` does around the pipeline run: serve the URL source, generate the demo
sources (reused when nothing they depend on changed), train the demo's copy detector and CLIP,
and score the planted defects the run caught. The command itself is ``cmd_demo`` in
:mod:`fineharbor.cli`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from fineharbor.core.config import ProjectConfig, fineharbor_home, load_config
from fineharbor.demo.generate import generate_demo
from fineharbor.demo.server import serve_directory

GENERATOR_FILES = (
    "charts.py",
    "documents.py",
    "generate.py",
    "gui.py",
    "images.py",
    "pii.py",
    "scenes.py",
    "server.py",
)
"""The modules whose code decides the generated demo sources."""


def serve_demo_urls(stack: contextlib.ExitStack, directory: Path, preferred: int) -> str:
    """Serve the demo's URL source for the rest of the run, from before the demo is generated
    (its URLs name the port, so the port is held from the start); another free port when the
    preferred one is taken. Returns the base URL."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return stack.enter_context(serve_directory(directory, port=preferred))
    except OSError:
        return stack.enter_context(serve_directory(directory, port=0))


def demo_images(config) -> Iterator[bytes]:
    """Every image of the demo's local train sources, read with the project's own readers."""
    from fineharbor.core.readers import read_source

    for source in config.sources:
        if source.role != "train" or source.reader == "url_list":
            continue
        for kept, _ in read_source(source, config.stages.ingest):
            for images in kept.column("images").to_pylist():
                yield from (image["bytes"] for image in images or [])


def demo_sources_stamp(seed: int, scale: float, base_url: str) -> str:
    """What the generated demo sources depend on: the arguments and the generator's code (its
    modules only: changing how the demo is trained or printed does not regenerate it)."""
    digest = hashlib.sha256(f"{seed}:{scale}:{base_url}".encode())
    for name in GENERATOR_FILES:
        path = Path(__file__).with_name(name)
        digest.update(path.read_bytes())
    return digest.hexdigest()


def train_demo_copy_detector(config, steps: int, demo_stamp: str | None = None) -> None:
    """The demo's SSCD stand-in: trained self-supervised on the demo images (no pair labels),
    exported as TorchScript to the path `stages.signatures.sscd_path` names. A model trained
    on the same images with the same steps is reused (its fingerprint sits beside it; with the
    same ``demo_stamp`` as last time, the images are not even read again)."""
    from fineharbor.core.signatures.train_copy_detector import (
        TrainConfig,
        export_torchscript,
        train_copy_detector,
    )

    target = Path(config.stages.signatures.sscd_path)
    quick = target.with_name(target.name + ".demo-stamp")
    same_demo = f"{demo_stamp}:{steps}"
    if demo_stamp and target.exists() and quick.exists() and quick.read_text() == same_demo:
        print(f"      copy detector: reused {target} (same demo sources and steps)", flush=True)
        return
    images = list(demo_images(config))
    digest = hashlib.sha256(f"steps={steps}".encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    stamp = target.with_name(target.name + ".fingerprint")
    if target.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        print(f"      copy detector: reused {target} (same images and steps)", flush=True)
        if demo_stamp:
            quick.write_text(same_demo)
        return
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    model = train_copy_detector(iter(images), TrainConfig(steps=steps))
    export_torchscript(model, str(target))
    stamp.write_text(digest.hexdigest())
    if demo_stamp:
        quick.write_text(same_demo)
    print(f"      copy detector: {steps} steps in {time.perf_counter() - started:.0f}s", flush=True)


def print_planted_defect_scores(config, state: Path) -> None:
    """The demo knows its planted defects: show how many dedup and decontamination caught."""
    from fineharbor.cli import print_table
    from fineharbor.core.storage import Storage
    from fineharbor.demo.quality import score_planted_defects

    scores = score_planted_defects(
        config, Storage(fineharbor_home()), state / "demo" / "ground_truth.parquet"
    )
    print("\nplanted duplicates caught (duplicate_clusters vs ground truth):")
    print_table(
        ["transform", "planted", "found", "recall", "precision"],
        [
            (
                r["transform"],
                r["planted"],
                r["found"],
                f"{r['recall']:.3f}",
                f"{r['precision']:.3f}",
            )
            for r in scores.dedup.rows()
        ],
    )
    print(f"all predicted duplicate pairs: precision {scores.dedup.precision:.3f}")
    print("\nplanted benchmark copies caught (decontaminated_samples vs ground truth):")
    print_table(
        ["transform", "planted", "flagged", "recall", "matched original"],
        [
            (
                r["transform"],
                r["planted"],
                r["flagged"],
                f"{r['recall']:.3f}",
                r["matched_original"],
            )
            for r in scores.decontam.rows()
        ],
    )
    decontam = scores.decontam
    print(
        f"false positives: {len(decontam.false_positives)} of {decontam.clean_samples} clean "
        f"samples ({decontam.false_positive_rate:.2%})"
    )
    print_planted_pii(Storage(fineharbor_home()), state / "demo" / "ground_truth.parquet")
    from fineharbor.demo.watermark import planted_watermark_auc

    marks = planted_watermark_auc(
        Storage(fineharbor_home()), state / "demo" / "ground_truth.parquet"
    )
    if marks is not None:
        print(
            f"\nplanted watermarks (scored_samples.pwatermark): ROC AUC {marks.auc:.3f} "
            f"({marks.watermarked} watermarked vs {marks.clean} clean samples of their sources)"
        )
    from fineharbor.demo.documents import planted_document_aucs

    for doc in planted_document_aucs(
        Storage(fineharbor_home()), state / "demo" / "ground_truth.parquet"
    ):
        print(
            f"planted bad documents (scored_samples.{doc.column}): ROC AUC {doc.auc:.3f} "
            f"({doc.good} good vs {doc.bad} shuffled / boilerplate / unrelated-image documents)"
        )
    from fineharbor.demo.unifilter import compare_classifiers, print_comparison

    truth, models = state / "demo" / "ground_truth.parquet", state / "demo" / "models" / "unifilter"
    print_comparison(compare_classifiers(config, Storage(fineharbor_home()), truth, models))


def print_planted_pii(storage, truth_path: Path) -> None:
    """Recall and precision of the cleaning's PII detection on the planted PII sentences (per
    type), and how many hard negatives it flagged; nothing when PII detection was off."""
    from fineharbor.cli import print_table
    from fineharbor.demo.pii import planted_pii_scores

    scores = planted_pii_scores(storage, truth_path)
    if scores is None:
        return
    print("\nplanted PII found (cleaned_samples.pii_found vs ground truth):")
    print_table(
        ["type", "planted", "found", "false positives", "recall", "precision"],
        [
            (
                r["type"],
                r["planted"],
                r["found"],
                r["false_positives"],
                f"{r['recall']:.3f}",
                f"{r['precision']:.3f}",
            )
            for r in scores.rows()
        ],
    )
    print(
        f"PII recall {scores.recall:.3f} at precision {scores.precision:.3f} over "
        f"{scores.records} samples; {scores.negatives_flagged} of {scores.negatives} hard "
        "negatives (versions, dates, ISBNs, prices, Luhn-failing order numbers...) flagged"
    )


def train_demo_clip_model(config, state: Path, seed: int, steps: int | None) -> None:
    """The demo CLIP: when `stages.clip_score.model` names a local directory that does not exist
    yet, train a tiny open_clip model there on a corpus drawn like the demo's data (never the
    demo's own samples; deterministic for a seed, a few minutes at most) and print how well it
    ranks the demo's planted mismatched captions below the true ones."""
    from fineharbor.demo.clip import (
        DemoClipConfig,
        demo_clip_aucs,
        demo_pairs,
        load_demo_clip,
        pretraining_pairs,
        train_demo_clip,
    )

    model = config.stages.clip_score.model or ""
    if not model.startswith("local-dir:"):
        return
    target = Path(model.removeprefix("local-dir:")).expanduser()
    if target.exists():
        print(f"      demo CLIP: using {target}", flush=True)
        return
    started = time.perf_counter()
    clip_config = DemoClipConfig() if steps is None else DemoClipConfig(steps=steps)
    corpus = pretraining_pairs(clip_config.pretraining_pairs, seed)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    train_demo_clip(corpus, staging, seed=seed, config=clip_config)
    os.replace(staging, target)  # a killed run leaves no half-written model behind
    print(
        f"      demo CLIP: {clip_config.steps} steps on {len(corpus)} pretraining pairs in "
        f"{time.perf_counter() - started:.0f}s; ROC AUC of true vs planted mismatched texts:",
        flush=True,
    )
    pairs = demo_pairs(config, state / "demo" / "ground_truth.parquet")
    for result in demo_clip_aucs(load_demo_clip(target), pairs):
        print(
            f"        {result.kind:<16} {result.auc:.3f}  ({result.true_pairs} true, "
            f"{result.mismatched} mismatched)",
            flush=True,
        )


def train_demo_watermark_model(config, seed: int) -> None:
    """The demo watermark detector: when `stages.signals.watermark_path` names a file that does
    not exist yet, train a small CNN there on pretraining images drawn by the demo's generators
    (never the demo's samples; delete the file to retrain)."""
    from fineharbor.demo.watermark import DemoWatermarkConfig, train_demo_watermark

    signals = config.stages.signals
    if not signals.watermark_path:
        return
    target = Path(signals.watermark_path).expanduser()
    if target.exists():
        print(f"      demo watermark detector: using {target}", flush=True)
        return
    size = DemoWatermarkConfig(image_size=signals.watermark_image_size)
    report = train_demo_watermark(target, seed, size)
    print(
        f"      demo watermark detector: {report.steps} steps on {report.images} pretraining "
        f"images in {report.seconds:.0f}s (train accuracy {report.train_accuracy:.3f})",
        flush=True,
    )


def prepare_demo(
    stack: contextlib.ExitStack,
    state: Path,
    *,
    seed: int,
    scale: float,
    port: int,
    force: bool,
    model_steps: int,
    clip_steps: int | None,
) -> tuple[ProjectConfig, str]:
    """Steps 1 and 2 of `fineharbor demo`: serve the URL source (for as long as ``stack`` is
    open), generate the demo sources unless the same ones are already there, and train the demo
    models the config names. Returns the loaded config and the served base URL."""
    served = state / "demo" / "sources" / "laion_urls" / "_served"
    base_url = serve_demo_urls(stack, served, port)
    stamp = demo_sources_stamp(seed, scale, base_url)
    stamp_file = state / "demo" / ".generated"
    reused = (
        not force
        and stamp_file.exists()
        and stamp_file.read_text() == stamp
        and (state / "demo" / "ground_truth.parquet").exists()
    )
    if reused:  # regenerating would rewrite every file, and every stage would redo its work
        print(
            f"[1/4] demo sources under {state / 'demo'}: reused (same seed, scale, URL and "
            "generator; --force regenerates)",
            flush=True,
        )
    else:
        print(f"[1/4] generating demo sources under {state / 'demo'}", flush=True)
        stamp_file.unlink(missing_ok=True)
        summary = generate_demo(state, base_url, seed=seed, scale=scale)
        stamp_file.write_text(stamp)
        planted = sum(summary.defects.values())
        print(
            f"      {sum(summary.records.values())} records in {len(summary.records)} "
            f"sources, {planted} planted defects (truth: {summary.ground_truth_path})",
            flush=True,
        )
    # the models named but not there yet are the ones trained next: not reported as missing
    config = load_config(check_models=False)
    if config.stages.signatures.sscd_path:
        print("[2/4] training the demo copy detector named in the config", flush=True)
        train_demo_copy_detector(config, model_steps, stamp)
    else:
        print("[2/4] no demo models configured: hash signatures only", flush=True)
    train_demo_clip_model(config, state, seed, clip_steps)
    train_demo_watermark_model(config, seed)
    return config, base_url
