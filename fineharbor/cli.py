"""The `fineharbor` command: demo, materialize, sql, status, map-source, review, review-pages."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from fineharbor.core.config import (
    ConfigError,
    default_config_path,
    fineharbor_home,
    fineharbor_state,
    load_config,
)

DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def _use_persistent_instance(state: Path) -> Path:
    """Point Dagster at an instance in the local state directory (FINEHARBOR_STATE, by default
    FINEHARBOR_HOME when it is local), so runs show up in `dagster dev`."""
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(state / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if DAGSTER_YAML.exists() and not (dagster_home / "dagster.yaml").exists():
        shutil.copy(DAGSTER_YAML, dagster_home / "dagster.yaml")
    return dagster_home


def _partition_keys(config, name: str) -> list[str]:
    """A source's partitions (all its shards), or the one partition a shard key names."""
    source = config.source(name)  # an unknown name fails, naming the configured sources
    return source.partitions if name == source.name else [name]


INTERRUPTED_STATUS = 130  # the shell's status for a command stopped by SIGINT
REFETCH_ENV = "FINEHARBOR_REFETCH"
"""Set to 1 by `materialize --refetch`: the URL download store fetches every URL again."""


def materialize_all(
    sources: Sequence[str] | None = None,
    *,
    force: bool = False,
    dry_run: bool = False,
    refetch: bool = False,
    definitions=None,
    instance=None,
):
    """Bring the named sources (default: all) and the global stages up to date: only the asset
    partitions that are missing or stale, and what they feed (`defs/plan.py`); ``force`` redoes
    everything; ``refetch`` re-reads url_list sources, downloading every URL again. Prints the
    plan and each run; returns the plan's `Outcome` (None for a dry run or when nothing is
    due)."""
    import dagster as dg

    from fineharbor.core.readers import source_state
    from fineharbor.defs.partitions import source_partitions
    from fineharbor.defs.plan import build_plan, execute_plan

    if definitions is None:
        from fineharbor.definitions import defs as definitions
    config = load_config()
    if not config.sources:
        raise ConfigError(
            f"{default_config_path()}: no sources to materialize: `sources:` is empty (add one, "
            "or propose one with `fineharbor map-source PATH --write`)"
        )
    from fineharbor.core.models import report_missing_models

    report_missing_models(config, deep=True)  # pretrained tags too: this run loads them anyway
    if sys.stderr.isatty():  # progress bars of reading, downloading, decoding, embedding
        from fineharbor.defs.factory import PROGRESS_ENV

        os.environ.setdefault(PROGRESS_ENV, "1")
    names = (
        list(dict.fromkeys(k for name in sources for k in _partition_keys(config, name)))
        if sources
        else config.partition_keys
    )
    instance = instance or dg.DagsterInstance.get()
    repository = definitions.get_repository_def()
    states = {name: source_state(config.source(name)) for name in names}
    if not dry_run:
        known = set(instance.get_dynamic_partitions(source_partitions.name))
        instance.add_dynamic_partitions(
            source_partitions.name, [n for n in names if n not in known]
        )
    reread = {
        name: "--refetch: download every URL again"
        for name in names
        if refetch and config.source(name).reader == "url_list"
    }
    steps = build_plan(
        instance,
        repository,
        config.partition_keys,
        names,
        force=force,
        source_states=states,
        reread=reread,
    )
    print_plan(steps, verbose=dry_run)
    if dry_run or not steps:
        return None
    # The run's events are in the instance (and the UI); the terminal gets warnings only.
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def report(step, status: str, seconds: float) -> None:
        print(f"  {step.label:<36} {status:<7} {seconds:6.1f}s", flush=True)

    tags = {"fineharbor/trigger": "force" if force else "cli"}
    if refetch:  # read by the URL download store (core/download.py)
        os.environ[REFETCH_ENV] = "1"
        tags["fineharbor/refetch"] = "1"
    with _interrupts_as_keyboard_interrupt():
        return execute_plan(
            steps, repository, instance, run_config=quiet, tags=tags, on_step=report
        )


@contextlib.contextmanager
def _interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM stops the command like Ctrl-C does (Dagster turns either into a failed run while
    a job runs; between jobs this raises KeyboardInterrupt, which the plan's execution catches)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_plan(steps, verbose: bool) -> None:
    """The plan: a line per run; with ``verbose`` (a dry run), each asset and why it is due."""
    if not steps:
        print(
            "nothing to do: every partition and global stage is up to date "
            "(--force redoes everything)",
            flush=True,
        )
        return
    per_job: dict[str, int] = {}
    for step in steps:
        per_job[step.job] = per_job.get(step.job, 0) + 1
    runs = ", ".join(f"{job} x{n}" if n > 1 else job for job, n in per_job.items())
    print(f"plan: {len(steps)} run{'s' if len(steps) > 1 else ''} ({runs})", flush=True)
    if not verbose:
        return
    for step in steps:
        print(f"  {step.label}", flush=True)
        for asset, why in step.reasons.items():
            print(f"      {asset:<24} {why}", flush=True)


def print_outcome(outcome) -> int:
    """The failures, interrupt and held-back work of a run, on stderr; the exit status."""
    if outcome is None:
        return 0
    if outcome.interrupted:
        finished = ", ".join(step.label for step in outcome.done) or "nothing"
        print(
            f"interrupted: stopped during {outcome.not_run[0].label}; finished before it: "
            f"{finished}; not finished: {len(outcome.not_run)} of the plan's runs (the next "
            "materialize picks them up)",
            file=sys.stderr,
        )
        return INTERRUPTED_STATUS
    if outcome.failed:
        print("FAILED:", file=sys.stderr)
        for step, assets in outcome.failed:
            where = f"partition {step.partition}" if step.partition else "global"
            print(f"  job {step.job:<18} {where:<28} assets: {', '.join(assets)}", file=sys.stderr)
    for step, why in outcome.held_back:
        where = f"partition {step.partition}" if step.partition else "global"
        print(
            f"  not run: job {step.job} {where} ({', '.join(step.assets)}): {why}",
            file=sys.stderr,
        )
    return 0 if outcome.success else 1


def print_review_status() -> None:
    """When no train source is approved, the release is not written: say which sources await
    a review and the command that approves each."""
    from fineharbor.core.release.build import awaiting_review
    from fineharbor.core.review.decisions import load_reviews, reviews_path
    from fineharbor.core.review.gate import review_release_gate

    config = load_config()
    if not config.release.require_review:
        return
    log = load_reviews(reviews_path(default_config_path()), config)
    waiting = awaiting_review(config, review_release_gate(log, config))
    if not waiting:
        return
    print(
        "\nrelease not written: no train source is approved yet. Look at the review pages "
        f"(fineharbor review-pages, under {fineharbor_home()}/review/), then:"
    )
    for name, why in waiting.items():
        command = f"fineharbor review {name} --approve"
        print(f"  {command:<52} # {why.split(':')[0]}")
    print("and run fineharbor materialize again (only the release is redone).")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
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
    with connect_in_memory(Storage(fineharbor_home()), tables) as connection:
        cursor = connection.execute(query)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description] if cursor.description else []
    return columns, rows


def funnel() -> tuple[list[str], list[tuple]]:
    return run_sql("select * from source_funnel")


def cmd_demo(args: argparse.Namespace) -> int:
    from fineharbor.demo.run import prepare_demo, print_planted_defect_scores

    home = fineharbor_home()
    os.environ.setdefault("FINEHARBOR_HOME", home)
    state = fineharbor_state()  # the demo's sources and models are local files
    dagster_home = _use_persistent_instance(state)
    load_config(check_models=False)  # a bad file fails now; the demo trains its models next
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        config, base_url = prepare_demo(
            stack,
            state,
            seed=args.seed,
            scale=args.scale,
            port=args.port,
            force=args.force,
            model_steps=args.model_steps,
            clip_steps=args.clip_steps,
        )
        print(
            f"[3/4] materializing what is missing or stale (URL source served at {base_url})",
            flush=True,
        )
        outcome = materialize_all(force=args.force)
    status = print_outcome(outcome)
    if status == INTERRUPTED_STATUS:
        return status
    print("[4/4] summary", flush=True)
    print_table(*funnel())
    if outcome is None or outcome.success:
        print_planted_defect_scores(config, state)
    print_review_status()
    elapsed = time.perf_counter() - started
    print(
        f"\ndone in {elapsed:.0f}s. Next:\n"
        f"  DAGSTER_HOME={dagster_home} .venv/bin/dagster dev -w workspace.yaml   # runs, lineage\n"
        f'  duckdb {state / "catalog.duckdb"} -c "select source, count(*) from unified_samples '
        f'group by 1"\n'
        f'  .venv/bin/fineharbor sql "select reason, count(*) from raw_samples_rejects group by 1"'
    )
    return status


def cmd_materialize(args: argparse.Namespace) -> int:
    _use_persistent_instance(fineharbor_state())
    if not load_config().sources:
        print(
            f"fineharbor materialize: no sources in {default_config_path()}: add one under "
            "`sources:` (`fineharbor map-source PATH --write` proposes its block)",
            file=sys.stderr,
        )
        return 2
    try:
        outcome = materialize_all(
            [*args.source, *(args.source_option or [])] or None,
            force=args.force,
            dry_run=args.dry_run,
            refetch=args.refetch,
        )
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    status = print_outcome(outcome)
    if status != INTERRUPTED_STATUS:
        print_review_status()
    return status


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        columns, rows = run_sql(args.query)
    except duckdb.Error as error:
        print(f"fineharbor sql: {error}", file=sys.stderr)
        return 2
    print_table(columns, rows)
    return 0


# --------------------------------------------------------------------------- review


def cmd_map_source(args: argparse.Namespace) -> int:
    from fineharbor.core.review.propose import (
        ProposalError,
        proposal_backend,
        proposal_yaml,
        propose_source,
        write_proposal,
    )

    config_path = default_config_path()
    try:
        backend = proposal_backend(load_config().stages.judge) if args.llm else None
        proposal = propose_source(args.path, args.name, backend, args.records, args.image_root)
    except ProposalError as error:
        print(f"fineharbor map-source: {error}", file=sys.stderr)
        return 2
    print(proposal_yaml(proposal, config_path), end="")
    for turns in proposal.dry_run.examples:
        if turns:
            print(f"  # example: {turns[0]['user'][:80]!r} -> {turns[0]['assistant'][:80]!r}")
        else:
            print("  # example: an image-only sample (texts: [])")
    if proposal.dry_run.mapped == 0:
        print(
            f"fineharbor map-source: none of the {proposal.dry_run.total} sampled records maps:",
            file=sys.stderr,
        )
        for line in proposal.dry_run.summary:
            print(f"  {line}", file=sys.stderr)
        if proposal.block["reader"] == "json" and "image_missing" in proposal.dry_run.reasons:
            print(
                "  the images live elsewhere? pass --image-root DIR (image paths are relative "
                "to it)",
                file=sys.stderr,
            )
        return 1
    if not args.write:
        print(f"(not written; add --write to append it to {config_path})")
        return 0
    try:
        write_proposal(proposal, config_path)
    except ProposalError as error:
        print(f"fineharbor map-source: {error}", file=sys.stderr)
        return 2
    print(
        f"written to {config_path}. Next: fineharbor materialize {proposal.name}, look at its "
        f"review page, then fineharbor review {proposal.name} --approve"
    )
    return 0


def _reviewer() -> str:
    import getpass

    return os.environ.get("FINEHARBOR_REVIEWER") or getpass.getuser()


def _unknown_ids(storage, source: str, ids: Sequence[str]) -> list[str]:
    """Ids not among the source's unified samples (none when it is not materialized yet)."""
    from fineharbor.core.pipeline import UNIFIED

    if not storage.has_partition(UNIFIED, source):
        return []
    wanted = set(ids)
    for batch in storage.iter_batches(UNIFIED, source, columns=["sample_id"]):
        wanted -= set(batch.column("sample_id").to_pylist())
    return sorted(wanted)


def cmd_review(args: argparse.Namespace) -> int:
    import yaml

    from fineharbor.core.review.decisions import (
        Approve,
        Flag,
        Override,
        Reject,
        effective_stage_params,
        load_reviews,
        mapping_fingerprint,
        now,
        reviews_path,
        save_reviews,
    )
    from fineharbor.core.review.pages import write_review_page
    from fineharbor.core.storage import Storage

    config = load_config()
    path = reviews_path(default_config_path())
    log = load_reviews(path, config)
    try:
        source = config.source(args.source)
    except KeyError as error:
        print(f"fineharbor review: {error.args[0]}", file=sys.stderr)
        return 2
    stamp = {"by": args.by or _reviewer(), "at": now(), "note": args.note or ""}
    decisions = []
    if args.approve:
        decisions.append(Approve(action="approve", mapping=mapping_fingerprint(source), **stamp))
    if args.reject:
        decisions.append(Reject(action="reject", **stamp))
    if args.flag:
        decisions.append(Flag(action="flag", sample_ids=args.flag, **stamp))
        unknown = _unknown_ids(Storage(fineharbor_home()), source.name, args.flag)
        if unknown:
            print(f"warning: not in unified_samples of {source.name}: {', '.join(unknown)}")
    if args.unflag:
        decisions.append(Flag(action="unflag", sample_ids=args.unflag, **stamp))
    overrides = []
    for item in args.override or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"fineharbor review: --override takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides.append(Override(action="override", key=key, value=yaml.safe_load(value), **stamp))
    # validated together with the source's earlier overrides: the result must be consistent
    combined = {**log.state(source.name).overrides, **{o.key: o.value for o in overrides}}
    try:
        effective_stage_params(config.stages, combined)
    except ValueError as error:
        print(f"fineharbor review: {error}", file=sys.stderr)
        return 2
    decisions += overrides
    for decision in decisions:
        log = log.with_decision(source.name, decision)
    if decisions:
        save_reviews(log, path)
        print(f"recorded {len(decisions)} decision(s) for {source.name} in {path}")
    state = log.state(source.name)
    print(
        f"{source.name}: {state.status}; {len(state.flagged)} flagged samples; "
        f"overrides {state.overrides or 'none'}"
    )
    page = write_review_page(Storage(fineharbor_home()), config, log, source.name)
    print(f"review page: {page}")
    return 0


def cmd_review_pages(args: argparse.Namespace) -> int:
    from fineharbor.core.review.decisions import load_reviews, reviews_path
    from fineharbor.core.review.pages import write_review_pages
    from fineharbor.core.storage import Storage

    config = load_config()
    log = load_reviews(reviews_path(default_config_path()), config)
    for page in write_review_pages(Storage(fineharbor_home()), config, log, args.source or None):
        print(page)
    return 0


def add_review_commands(commands: argparse._SubParsersAction) -> None:
    mapper = commands.add_parser(
        "map-source", help="inspect a new source and propose its config block"
    )
    mapper.add_argument("path", help="file or directory of the new source")
    mapper.add_argument("--name", help="source name (default: from the path)")
    mapper.add_argument("--write", action="store_true", help="append it to the project file")
    mapper.add_argument(
        "--llm", action="store_true", help="also ask the judge model (stages.judge) for a mapping"
    )
    mapper.add_argument("--records", type=int, default=16, help="records sampled")
    mapper.add_argument(
        "--image-root", help="directory a JSON source's image paths are relative to"
    )
    mapper.set_defaults(run=cmd_map_source)
    review = commands.add_parser("review", help="record a decision about a source")
    review.add_argument("source")
    verdict = review.add_mutually_exclusive_group()
    verdict.add_argument("--approve", action="store_true", help="approve its mapping and samples")
    verdict.add_argument("--reject", action="store_true", help="keep it out of releases")
    review.add_argument("--flag", nargs="+", metavar="ID", help="sample ids to remove")
    review.add_argument("--unflag", nargs="+", metavar="ID", help="sample ids to restore")
    review.add_argument(
        "--override",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="stage parameters for this source, e.g. clean.caption_min_words=3 clean.min_side=64",
    )
    review.add_argument("--by", help="reviewer (default: $FINEHARBOR_REVIEWER or the user)")
    review.add_argument("--note", help="why")
    review.set_defaults(run=cmd_review)
    pages = commands.add_parser(
        "review-pages", help="write the HTML review pages under FINEHARBOR_HOME/review/"
    )
    pages.add_argument("source", nargs="*", help="source names (default: all)")
    pages.set_defaults(run=cmd_review_pages)


def _ago(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def stage_status(instance, graph, storage) -> tuple[list[str], list[tuple]]:
    """One row per stage in lineage order: partitions on disk, rows kept and rejected (Parquet
    footers), the last materialization the Dagster instance recorded, and the partitions that
    are stale (stage config, code or inputs changed since) or missing."""
    from collections import Counter

    from fineharbor.defs.dagster_internals import stale_status_resolver
    from fineharbor.defs.partitions import source_partitions

    resolver = stale_status_resolver(instance, graph)
    partitions = instance.get_dynamic_partitions(source_partitions.name)
    rows = []
    for key in graph.toposorted_asset_keys:
        if key not in graph.materializable_asset_keys:
            continue
        name = key.to_user_string()
        keys = partitions if graph.get(key).is_partitioned else [None]
        if not keys:
            rows.append((name, "0/0", 0, 0, "never", "no partitions"))
            continue
        on_disk = sum(1 for p in keys if storage.files(name, p))
        kept = sum(storage.count_rows(name, p) for p in keys)
        rejected = sum(storage.count_rows(name, p, kind="rejects") for p in keys)
        event = instance.get_latest_materialization_event(key)
        counts = Counter(resolver.get_status(key, p).value.lower() for p in keys)
        stale = {s: n for s, n in counts.items() if s != "fresh"}
        freshness = ", ".join(f"{n} {s}" for s, n in sorted(stale.items())) if stale else "fresh"
        rows.append(
            (
                name,
                f"{on_disk}/{len(keys)}" if keys != [None] else "-",
                kept,
                rejected,
                _ago(event.timestamp) if event else "never",
                freshness,
            )
        )
    columns = ["stage", "partitions", "rows", "rejects", "materialized", "freshness"]
    return columns, rows


def cmd_status(args: argparse.Namespace) -> int:
    import dagster as dg

    from fineharbor.core.storage import Storage
    from fineharbor.definitions import defs

    load_config()  # a missing or invalid project file is an error, not an empty table
    _use_persistent_instance(fineharbor_state())
    with dg.DagsterInstance.get() as instance:
        print_table(*stage_status(instance, defs.resolve_asset_graph(), Storage(fineharbor_home())))
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
    demo.add_argument(
        "--force",
        action="store_true",
        help="regenerate the demo sources and redo every stage, fresh or not",
    )
    demo.set_defaults(run=cmd_demo)
    materialize = commands.add_parser(
        "materialize",
        help="bring sources up to date: only missing or stale partitions and what they feed",
    )
    materialize.add_argument("source", nargs="*", help="source names (default: all)")
    materialize.add_argument(
        "--source",
        dest="source_option",
        action="append",
        metavar="NAME",
        help="a source name (the same as naming it as an argument; repeatable)",
    )
    materialize.add_argument(
        "--force", action="store_true", help="redo every stage of the sources, fresh or not"
    )
    materialize.add_argument(
        "--dry-run", action="store_true", help="print the plan (stage, partition, why); run nothing"
    )
    materialize.add_argument(
        "--refetch",
        action="store_true",
        help=f"download every URL of url_list sources again (sets {REFETCH_ENV}=1)",
    )
    materialize.set_defaults(run=cmd_materialize)
    sql = commands.add_parser("sql", help="query stage outputs with DuckDB (in memory)")
    sql.add_argument("query")
    sql.set_defaults(run=cmd_sql)
    add_review_commands(commands)
    status = commands.add_parser(
        "status", help="one line per stage: rows, rejects, last run, stale partitions"
    )
    status.set_defaults(run=cmd_status)
    args = parser.parse_args(argv)
    if args.config:
        os.environ["FINEHARBOR_CONFIG"] = str(Path(args.config).resolve())
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"fineharbor: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run (a run's interrupt is reported by its command)
        print("fineharbor: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())
