"""The `fineharbor` command: demo, materialize, sql."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from fineharbor.core.config import ConfigError, default_config_path, fineharbor_home, load_config

DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def _use_persistent_instance(home: Path) -> Path:
    """Point Dagster at an instance under FINEHARBOR_HOME, so runs show up in `dagster dev`."""
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if DAGSTER_YAML.exists() and not (dagster_home / "dagster.yaml").exists():
        shutil.copy(DAGSTER_YAML, dagster_home / "dagster.yaml")
    return dagster_home


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free loopback port")


def materialize_all(sources: Sequence[str] | None = None) -> list[str]:
    """Run every per-source stage for each source, then the global stages; returns failures."""
    import dagster as dg

    from fineharbor.definitions import defs
    from fineharbor.defs.jobs import PIPELINE
    from fineharbor.defs.partitions import source_partitions

    config = load_config()
    names = list(sources) if sources else config.source_names
    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(source_partitions.name))
    instance.add_dynamic_partitions(source_partitions.name, [n for n in names if n not in known])
    # The run's events are in the instance (and the UI); the terminal gets warnings only.
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    failures: list[str] = []
    for job_name, per_partition in PIPELINE:
        job = defs.resolve_job_def(job_name)
        for name in [n for n in names if n not in failures] if per_partition else [None]:
            started = time.perf_counter()
            result = job.execute_in_process(
                partition_key=name, instance=instance, raise_on_error=False, run_config=quiet
            )
            status = "ok" if result.success else "FAILED"
            label = f"{job_name} {name}" if name else job_name
            print(f"  {label:<36} {status:<7} {time.perf_counter() - started:6.1f}s", flush=True)
            if not result.success:
                failures.append(name or job_name)
    return failures


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def run_sql(query: str) -> tuple[list[str], list[tuple]]:
    from fineharbor.core.catalog import connect_in_memory
    from fineharbor.core.storage import Storage
    from fineharbor.defs.resources import STAGE_TABLES
    from fineharbor.defs.sql_models import MODEL_TABLES

    tables = [*STAGE_TABLES, *MODEL_TABLES]
    with connect_in_memory(Storage(str(fineharbor_home())), tables) as connection:
        cursor = connection.execute(query)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description] if cursor.description else []
    return columns, rows


def funnel() -> tuple[list[str], list[tuple]]:
    return run_sql("select * from source_funnel")


def demo_images(config) -> Iterator[bytes]:
    """Every image of the demo's local train sources, read with the project's own readers."""
    from fineharbor.core.readers import read_source

    for source in config.sources:
        if source.role != "train" or source.reader == "url_list":
            continue
        for kept, _ in read_source(source, config.stages.ingest):
            for images in kept.column("images").to_pylist():
                yield from (image["bytes"] for image in images or [])


def train_demo_copy_detector(config, steps: int) -> None:
    """The demo's SSCD stand-in: trained self-supervised on the demo images (no pair labels),
    exported as TorchScript to the path `stages.signatures.sscd_path` names."""
    from fineharbor.core.signatures.train_copy_detector import (
        TrainConfig,
        export_torchscript,
        train_copy_detector,
    )

    target = config.stages.signatures.sscd_path
    if not target or Path(target).exists():
        return
    started = time.perf_counter()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    model = train_copy_detector(demo_images(config), TrainConfig(steps=steps))
    export_torchscript(model, target)
    print(f"      copy detector: {steps} steps in {time.perf_counter() - started:.0f}s", flush=True)


def train_demo_clip_model(config, home: Path, seed: int, steps: int | None) -> None:
    """The demo CLIP: when `stages.clip_score.model` names a local directory that does not exist
    yet, train a tiny open_clip model there on the demo's own pairs (deterministic for a seed,
    a few minutes at most) and print how well it ranks the planted mismatched captions below
    held-out true ones."""
    from fineharbor.core.quality.demo_clip import (
        DemoClipConfig,
        demo_clip_auc,
        demo_pairs,
        load_demo_clip,
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
    pairs = demo_pairs(config, home / "demo" / "ground_truth.parquet")
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    clip_config = DemoClipConfig() if steps is None else DemoClipConfig(steps=steps)
    train_demo_clip(pairs.training(), staging, seed=seed, config=clip_config)
    os.replace(staging, target)  # a killed run leaves no half-written model behind
    embedder = load_demo_clip(target)
    auc, positives, negatives = demo_clip_auc(embedder, pairs)
    auc_all, all_true, _ = demo_clip_auc(embedder, pairs, heldout_only=False)
    print(
        f"      demo CLIP: {clip_config.steps} steps on {len(pairs.training())} pairs in "
        f"{time.perf_counter() - started:.0f}s; ROC AUC of true vs planted mismatched captions "
        f"({negatives}): {auc:.3f} against {positives} held-out true pairs, {auc_all:.3f} "
        f"against all {all_true} true pairs",
        flush=True,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from fineharbor.core.demo import generate_demo
    from fineharbor.core.demo.server import serve_directory

    home = fineharbor_home()
    os.environ.setdefault("FINEHARBOR_HOME", str(home))
    dagster_home = _use_persistent_instance(home)
    load_config()  # fail on a bad project file before generating anything
    started = time.perf_counter()
    port = _free_port(args.port)
    base_url = f"http://127.0.0.1:{port}"
    print(f"[1/4] generating demo sources under {home / 'demo'}", flush=True)
    summary = generate_demo(home, base_url, seed=args.seed, scale=args.scale)
    planted = sum(summary.defects.values())
    print(
        f"      {sum(summary.records.values())} records in {len(summary.records)} sources, "
        f"{planted} planted defects (truth: {summary.ground_truth_path})",
        flush=True,
    )
    config = load_config()
    if config.stages.signatures.sscd_path:
        print("[2/4] training the demo copy detector named in the config", flush=True)
        Path(config.stages.signatures.sscd_path).unlink(missing_ok=True)  # new images, new model
        train_demo_copy_detector(config, args.model_steps)
    else:
        print("[2/4] no demo models configured: hash signatures only", flush=True)
    train_demo_clip_model(config, home, args.seed, args.clip_steps)
    served = home / "demo" / "sources" / "laion_urls" / "_served"
    print(f"[3/4] materializing every asset (URL source served at {base_url})", flush=True)
    with serve_directory(served, port=port):
        failures = materialize_all()
    print("[4/4] summary", flush=True)
    _print_table(*funnel())
    elapsed = time.perf_counter() - started
    print(
        f"\ndone in {elapsed:.0f}s. Next:\n"
        f"  DAGSTER_HOME={dagster_home} .venv/bin/dagster dev -w workspace.yaml   # runs, lineage\n"
        f'  duckdb {home / "catalog.duckdb"} -c "select source, count(*) from unified_samples '
        f'group by 1"\n'
        f'  .venv/bin/fineharbor sql "select reason, count(*) from raw_samples_rejects group by 1"'
    )
    if failures:
        print(f"FAILED partitions/jobs: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    _use_persistent_instance(fineharbor_home())
    failures = materialize_all(args.source or None)
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        columns, rows = run_sql(args.query)
    except duckdb.Error as error:
        print(f"fineharbor sql: {error}", file=sys.stderr)
        return 2
    _print_table(columns, rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fineharbor", description=__doc__)
    parser.add_argument(
        "--config", help=f"project file (default: $FINEHARBOR_CONFIG or {default_config_path()})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="generate the demo sources and run the pipeline")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scale", type=float, default=1.0, help="demo size multiplier")
    demo.add_argument("--port", type=int, default=8765, help="loopback port for the URL source")
    demo.add_argument(
        "--model-steps", type=int, default=200, help="training steps of the demo copy detector"
    )
    demo.add_argument(
        "--clip-steps", type=int, default=None, help="training steps of the demo CLIP (default 300)"
    )
    demo.set_defaults(run=cmd_demo)
    materialize = commands.add_parser("materialize", help="run every stage for some sources")
    materialize.add_argument("source", nargs="*", help="source names (default: all)")
    materialize.set_defaults(run=cmd_materialize)
    sql = commands.add_parser("sql", help="query stage outputs with DuckDB (in memory)")
    sql.add_argument("query")
    sql.set_defaults(run=cmd_sql)
    args = parser.parse_args(argv)
    if args.config:
        os.environ["FINEHARBOR_CONFIG"] = str(Path(args.config).resolve())
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"fineharbor: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
