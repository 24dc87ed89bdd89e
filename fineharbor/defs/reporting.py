"""Turns a core StageReport into Dagster metadata and the blocking data checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa

from fineharbor.core.catalog import rows_sql
from fineharbor.core.config import ProjectConfig
from fineharbor.core.stage_io import StageReport
from fineharbor.core.storage import Storage
from fineharbor.core.stored import stored_schema
from fineharbor.defs.resources import FineharborProject

CHECK_CONSERVED = "rows_conserved"
CHECK_UNIQUE = "unique_sample_id"
CHECK_SCHEMA = "schema_matches"


def stage_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """Data-protecting checks, blocking so a bad partition never feeds the next stage."""
    return [
        dg.AssetCheckSpec(
            CHECK_CONSERVED,
            asset=asset,
            blocking=True,
            description="rows in = rows kept + rows rejected for the partition",
        ),
        dg.AssetCheckSpec(
            CHECK_UNIQUE,
            asset=asset,
            blocking=True,
            description="sample_id is unique within the partition",
        ),
        dg.AssetCheckSpec(
            CHECK_SCHEMA,
            asset=asset,
            blocking=True,
            description="the written Parquet schema holds every declared column with its type",
        ),
    ]


@dataclass(frozen=True)
class StageCheck:
    """A stage's own check beside the data-protecting ones: a limit the project file sets.

    ``evaluate`` returns whether the partition passed and the figures shown with the result.
    """

    name: str
    description: str
    evaluate: Callable[[ProjectConfig, StageReport], tuple[bool, dict]]
    blocking: bool = False

    def spec(self, asset: str) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name, asset=asset, blocking=self.blocking, description=self.description
        )

    def result(self, config: ProjectConfig, report: StageReport) -> dg.AssetCheckResult:
        passed, figures = self.evaluate(config, report)
        return dg.AssetCheckResult(check_name=self.name, passed=passed, metadata=figures)


def _files_sql(storage: Storage, files: list[str]) -> str:
    uris = [storage.to_uri(f) for f in files]
    return "[" + ", ".join("'" + u.replace("'", "''") + "'" for u in uris) + "]"


def stage_check_results(
    report: StageReport, storage: Storage, connection: duckdb.DuckDBPyConnection
) -> list[dg.AssetCheckResult]:
    files = storage.files(report.asset, report.partition)
    key = ", ".join(report.key)
    source = f"read_parquet({_files_sql(storage, files)})"
    total, distinct = connection.execute(
        f"select (select count(*) from {source}), "
        f"(select count(*) from (select distinct {key} from {source}))"
    ).fetchall()[0]
    written = storage.schema(report.asset, report.partition)
    mismatched = [
        f.name
        for f in stored_schema(report.asset, report.schema)
        if written.get_field_index(f.name) < 0 or not written.field(f.name).type.equals(f.type)
    ]
    return [
        dg.AssetCheckResult(
            check_name=CHECK_CONSERVED,
            passed=report.conserved,
            metadata={"rows_in": report.rows_in, "kept": report.kept, "rejected": report.rejected},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_UNIQUE,
            passed=total == distinct,
            metadata={"rows": total, "distinct_sample_ids": distinct},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_SCHEMA,
            passed=not mismatched,
            metadata={"mismatched_columns": ", ".join(mismatched) or "none"},
        ),
    ]


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _cell(value: object, limit: int = 80) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(headers: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _preview_columns(schema: pa.Schema) -> tuple[list[str], str]:
    """Headers and select list that show what a stage's rows hold, without bytes or vectors."""
    names = set(schema.names)
    if {"texts", "images"} <= names:
        return (
            ["origin_key", "images", "turns", "first user", "first assistant"],
            "origin_key, len(images), len(texts), texts[1].user, texts[1].assistant",
        )
    if "record" in names:
        return ["origin_key", "images", "record"], "origin_key, len(images), record"
    shown = [
        f.name for f in schema if not (pa.types.is_list(f.type) or pa.types.is_binary(f.type))
    ][:8]
    return shown, ", ".join(shown)


def preview_markdown(
    storage: Storage, report: StageReport, connection: duckdb.DuckDBPyConnection, rows: int = 5
) -> str:
    """A few kept rows and a few rejects, so a person sees what the stage did."""
    files = storage.files(report.asset, report.partition)
    reject_files = storage.files(report.asset, report.partition, kind="rejects")
    headers, columns = _preview_columns(report.schema)
    relation = rows_sql(storage, report.asset, files, with_bytes=False)
    kept = connection.execute(f"select {columns} from {relation} limit {rows}").fetchall()
    rejected = (
        connection.execute(
            "select reason, origin_key, detail from "
            f"read_parquet({_files_sql(storage, reject_files)}) limit {rows}"
        ).fetchall()
        if reject_files
        else []
    )
    reasons = markdown_table(["reason", "rows"], sorted(report.reasons.items()))
    return (
        f"**{report.asset} / {report.partition}**: {report.rows_in} in, {report.kept} kept, "
        f"{report.rejected} rejected ({report.rows_per_second:.0f} rows/s)\n\n"
        f"### Rejects by reason\n{reasons}\n\n"
        f"### Kept (first {rows})\n{markdown_table(headers, kept) if kept else '(none)'}\n\n"
        f"### Rejected (first {rows})\n"
        + (markdown_table(["reason", "origin_key", "detail"], rejected) if rejected else "(none)")
    )


def stage_metadata(
    report: StageReport, storage: Storage, connection: duckdb.DuckDBPyConnection
) -> dict:
    return {
        "dagster/row_count": report.kept,
        "dagster/column_schema": column_schema(report.schema),
        "rows_in": report.rows_in,
        "rows_rejected": report.rejected,
        "kept_ratio": round(report.kept / report.rows_in, 4) if report.rows_in else 0.0,
        "rejects_by_reason": dg.MetadataValue.json(report.reasons),
        "seconds": round(report.seconds, 3),
        "rows_per_second": round(report.rows_per_second, 1),
        "path": dg.MetadataValue.path(storage.to_uri(storage.dir(report.asset, report.partition))),
        "summary": dg.MetadataValue.md(preview_markdown(storage, report, connection)),
        **report.extra,
    }


def _combined_check(name: str, results: dict[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One result for a check over the partitions of a multi-partition run: it passes when every
    partition passed, and its metadata holds each partition's figures."""
    failed = [partition for partition, result in results.items() if not result.passed]
    first = next(iter(results.values()))
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failed,
        severity=first.severity,
        metadata={
            "partitions": len(results),
            "failed_partitions": ", ".join(failed) or "none",
            "by_partition": dg.MetadataValue.json(
                {
                    partition: {key: value.value for key, value in result.metadata.items()}
                    for partition, result in results.items()
                }
            ),
        },
    )


def partitions_result(
    context: dg.AssetExecutionContext,
    storage: Storage,
    outcomes: list[tuple[StageReport, list[dg.AssetCheckResult]]],
) -> dg.MaterializeResult:
    """The materialization of a per-source stage over the run's partitions, from each
    partition's report and its own check results (beside the data-protecting ones).

    A backfill runs several partitions in one run (`orchestration.partitions_per_run`): each
    partition's materialization event still gets its own metadata (row counts, rejects,
    previews), and each check reports once for the run, failing when any partition failed.
    The queries run on one connection of the asset's `project` resource (DuckDBResource)."""
    project: FineharborProject = context.resources.project
    with project.duckdb_connection() as connection:
        results = [
            (report, [*stage_check_results(report, storage, connection), *extra])
            for report, extra in outcomes
        ]
        metadata = [stage_metadata(report, storage, connection) for report, _ in results]
    if context.has_partition_key:
        return dg.MaterializeResult(metadata=metadata[0], check_results=results[0][1])
    by_check: dict[str, dict[str, dg.AssetCheckResult]] = {}
    for (report, checks), figures in zip(results, metadata, strict=True):
        context.add_asset_metadata(figures, partition_key=report.partition)
        for check in checks:
            by_check.setdefault(check.check_name, {})[str(report.partition)] = check
    return dg.MaterializeResult(
        check_results=[_combined_check(name, found) for name, found in by_check.items()]
    )


def histogram_markdown(
    values: Sequence[float] | pl.Series, title: str, bins: int = 10, digits: int = 0
) -> str:
    """A bar chart as a markdown table: renders in the Dagster UI with no plotting library.
    ``digits``: decimals of the bin edges (scores in [0, 1] need 2)."""
    series = pl.Series(values, dtype=pl.Float64)
    if series.is_empty():
        return f"### {title}\n(no values)"
    low, high = series.min(), series.max()
    width = (high - low) / bins or 1.0
    # Polars counts in one vectorised pass (partitions hold 10^5-10^6 values); the last bin is
    # closed so the maximum lands in it.
    index = ((series - low) / width).floor().cast(pl.Int64).clip(upper_bound=bins - 1)
    counted = dict(index.value_counts().iter_rows())
    counts = [counted.get(i, 0) for i in range(bins)]
    peak = max(counts)
    rows = [
        (
            f"{low + i * width:.{digits}f} - {low + (i + 1) * width:.{digits}f}",
            n,
            "█" * round(30 * n / peak),
        )
        for i, n in enumerate(counts)
    ]
    return f"### {title}\n" + markdown_table(["range", "rows", ""], rows)


def _text_chars(turn: pl.Expr) -> pl.Expr:
    return (
        turn.struct.field("user").str.len_chars() + turn.struct.field("assistant").str.len_chars()
    )


def cleaned_distributions(storage: Storage, report: StageReport) -> dict:
    """Image sizes, text lengths and decoder warnings of what cleaning kept: where a threshold
    would bite.

    Polars over the partition's record batches (two columns, bounded memory): per image the
    longer side, per sample the characters of its turns (a turn with a null text counts as
    unknown; a sample with no known turn has no length)."""
    sides: list[pl.Series] = []
    lengths: list[pl.Series] = []
    warnings = 0
    for batch in storage.iter_batches(
        report.asset, report.partition, columns=["image_info", "texts"], batch_size=4096
    ):
        frame = pl.from_arrow(pa.Table.from_batches([batch]))
        image = pl.col("image_info").explode()
        sides.append(
            frame.select(
                pl.max_horizontal(image.struct.field("width"), image.struct.field("height"))
            ).to_series()
        )
        info_fields = {f.name for f in batch.schema.field("image_info").type.value_type}
        if "decoder_warnings" in info_fields:  # partitions cleaned before it was counted lack it
            warnings += int(frame.select(image.struct.field("decoder_warnings").sum()).item() or 0)
        per_turn = pl.col("texts").list.eval(_text_chars(pl.element()))
        lengths.append(
            frame.select(
                pl.when(per_turn.list.drop_nulls().list.len() > 0).then(per_turn.list.sum())
            ).to_series()
        )
    return {
        "image_sides": dg.MetadataValue.md(
            histogram_markdown(_known(sides), "Longest image side (px)")
        ),
        "text_lengths": dg.MetadataValue.md(
            histogram_markdown(_known(lengths), "Text length per sample (chars)")
        ),
        # kept images only; a rejected image's detail carries its own count
        "decoder_warnings": dg.MetadataValue.int(warnings),
    }


def _known(parts: list[pl.Series]) -> pl.Series:
    return pl.concat(parts).drop_nulls() if parts else pl.Series([], dtype=pl.Int64)
