"""Stage reports: histograms and the cleaned-sample distributions (polars), checks and previews
on the project's DuckDB connection."""

import random

import pyarrow as pa

from fineharbor.core.pipeline import CLEANED
from fineharbor.core.stage_io import StageReport
from fineharbor.core.storage import Storage
from fineharbor.defs.reporting import cleaned_distributions, histogram_markdown
from fineharbor.defs.resources import FineharborProject


def _counts(markdown: str) -> list[int]:
    return [int(line.split(" | ")[1]) for line in markdown.splitlines()[3:]]


def test_histogram_bins_close_the_last_one_and_handle_one_value():
    table = histogram_markdown([0, 1, 2, 9, 10, 10], "t", bins=5)
    assert table.splitlines()[3].startswith("| 0 - 2 | 2 |")
    assert _counts(table) == [2, 1, 0, 0, 3]  # 10 (the maximum) lands in the last bin
    assert _counts(histogram_markdown([7, 7, 7], "t", bins=3)) == [3, 0, 0]
    assert histogram_markdown([], "t") == "### t\n(no values)"
    assert "0.25 - 0.50" in histogram_markdown([0.0, 0.3, 1.0], "t", bins=4, digits=2)


INFO = pa.struct([("width", pa.int32()), ("height", pa.int32())])
TURN = pa.struct([("user", pa.string()), ("assistant", pa.string())])
SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("image_info", pa.list_(INFO)), ("texts", pa.list_(TURN))]
)


def test_cleaned_distributions_match_their_sql_definition(tmp_path):
    """The polars computation gives the same figures as the SQL it replaced, nulls included:
    per image greatest(width, height), per sample list_sum of length(user) + length(assistant)."""
    rng = random.Random(0)
    side = [None, 1, 640, 4000]
    text = [None, "", "héllo 👍🏽", "x" * 40, "日本語"]
    rows = [
        {
            "sample_id": str(i),
            "image_info": None
            if i % 17 == 0
            else [
                {"width": rng.choice(side), "height": rng.choice(side)}
                for _ in range(rng.randint(0, 3))
            ],
            "texts": None
            if i % 23 == 0
            else [
                {"user": rng.choice(text), "assistant": rng.choice(text)}
                for _ in range(rng.randint(0, 3))
            ],
        }
        for i in range(600)
    ]
    storage = Storage(str(tmp_path))
    with storage.writer(CLEANED, "src", SCHEMA) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=SCHEMA))
    report = StageReport(CLEANED, "src", 600, 600, 0, {}, 1.0, SCHEMA)
    figures = cleaned_distributions(storage, report)

    project = FineharborProject(home=str(tmp_path), state=str(tmp_path / "state"))
    files = storage.files(CLEANED, "src")
    with project.duckdb_connection() as connection:
        sides = connection.execute(
            "select greatest(i.width, i.height) from "
            "(select unnest(image_info) as i from read_parquet(?))",
            [files],
        ).fetchall()
        lengths = connection.execute(
            "select list_sum(list_transform(texts, lambda t: length(t.user) + "
            "length(t.assistant))) from read_parquet(?)",
            [files],
        ).fetchall()
    expected_sides = [s for (s,) in sides if s is not None]
    expected_lengths = [n for (n,) in lengths if n is not None]
    assert figures["image_sides"].value == histogram_markdown(
        expected_sides, "Longest image side (px)"
    )
    assert figures["text_lengths"].value == histogram_markdown(
        expected_lengths, "Text length per sample (chars)"
    )
    assert sum(_counts(figures["text_lengths"].value)) == len(expected_lengths) > 300
    assert figures["decoder_warnings"].value == 0  # written before the field existed


def test_cleaned_distributions_sum_the_decoder_warnings_of_kept_images(tmp_path):
    info = pa.struct(
        [("width", pa.int32()), ("height", pa.int32()), ("decoder_warnings", pa.int32())]
    )
    schema = pa.schema(
        [("sample_id", pa.string()), ("image_info", pa.list_(info)), ("texts", pa.list_(TURN))]
    )
    rows = [
        {"sample_id": "a", "image_info": [{"width": 9, "height": 9, "decoder_warnings": 2}] * 2},
        {"sample_id": "b", "image_info": [{"width": 9, "height": 9, "decoder_warnings": 3}]},
        {"sample_id": "c", "image_info": []},
    ]
    storage = Storage(str(tmp_path))
    with storage.writer(CLEANED, "src", schema) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=schema))
    report = StageReport(CLEANED, "src", 3, 3, 0, {}, 1.0, schema)
    assert cleaned_distributions(storage, report)["decoder_warnings"].value == 7


def test_project_duckdb_connections_apply_the_configured_settings(tmp_path):
    project = FineharborProject(
        home=str(tmp_path), state=str(tmp_path / "state"), duckdb_config={"threads": 1}
    )
    assert project.duckdb().database == ":memory:"
    with project.duckdb_connection() as connection:
        assert connection.execute("select current_setting('threads')").fetchone() == (1,)
