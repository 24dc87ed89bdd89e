"""The whole-pipeline scale benchmark (bench/pipeline.py): its corpus, its report, and one run
from raw to release at a tiny size. Timings are never asserted."""

import io
import json

import pyarrow.dataset as ds
import pytest
from PIL import Image

from bench import pipeline as bench
from fineharbor.core.pipeline import STAGES
from fineharbor.core.schema import make_sample_id


def _samples(root) -> dict[str, dict]:
    """sample id -> row of every source file, ids made as the readers make them."""
    rows = {}
    for source in ("web", "vqa", "bench"):
        table = ds.dataset(root / "sources" / source, format="parquet").to_table()
        for row in table.to_pylist():
            rows[make_sample_id(source, row["key"])] = row
    return rows


def test_corpus_holds_n_samples_and_the_planted_copies_it_names(tmp_path):
    truth = bench.write_corpus(tmp_path, 400)
    rows = _samples(tmp_path)
    assert len(rows) == truth.samples == 400
    assert truth.source_bytes == sum(p.stat().st_size for p in tmp_path.rglob("*.parquet"))
    kinds = {kind for _, _, kind in truth.duplicates}
    assert kinds == {"exact", "reencode", "resize", "crop", "flip"}
    for copy, original, kind in truth.duplicates:
        a, b = rows[copy]["images"][0]["bytes"], rows[original]["images"][0]["bytes"]
        assert (a == b) == (kind == "exact"), kind  # only exact copies share their bytes
    for copy, benchmark, kind in truth.benchmark:
        assert rows[benchmark]["key"].startswith("bench-") and not rows[copy]["key"].startswith(
            "bench-"
        )
        if kind == "question":
            assert rows[copy]["texts"][0]["user"] == rows[benchmark]["texts"][0]["user"]
        if kind == "image_exact":
            assert rows[copy]["images"][0]["bytes"] == rows[benchmark]["images"][0]["bytes"]
    formats = {Image.open(io.BytesIO(r["images"][0]["bytes"])).format for r in rows.values()}
    assert formats == {"JPEG", "PNG", "WEBP"}
    assert len(truth.dense) == 20 and (tmp_path / "fineharbor.yaml").is_file()
    # deterministic: the same N and seed give the same files
    again = bench.write_corpus(tmp_path / "again", 400)
    assert again.as_dict() | {"source_bytes": 0} == truth.as_dict() | {"source_bytes": 0}


def _result(n: int, scale: float) -> dict:
    stages = [
        {
            "stage": s.name,
            "seconds": 2.0 * scale,
            "cpu_s": 3.0 * scale,
            "base_mb": 200.0,
            "peak_mb": 300.0 + (0 if s.per_source else 100 * scale),
            "own_peak_mb": 250.0 + (0 if s.per_source else 100 * scale),
            "bytes": 1000 * n,
            "per_source": s.per_source,
            "metadata": {},
        }
        for s in STAGES
    ]
    return {
        "n": n,
        "source_bytes": 2000 * n,
        "data_bytes": 3000 * n,
        "release_bytes": 500 * n,
        "stages": stages,
        "conservation": {},
        "recall": {"exact": {"found": 3, "planted": 3, "recall": 1.0}},
        "dense_charts": 20,
        "dense_charts_clustered": 0,
    }


def _rows(text: str, first: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with ``first``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_report_has_every_stage_at_every_size_with_growth_on_the_largest():
    results = [_result(1000, 1.0), _result(10_000, 10.0)]  # linear: exponent 1
    text = bench.report(results, fv_source_tb=5.0)
    rows = _rows(text, "stage")
    assert [(r[0], r[1]) for r in rows] == [
        (s.name, n) for s in STAGES for n in ("1,000", "10,000")
    ]
    for small, large in zip(rows[::2], rows[1::2], strict=True):
        assert small[8] == "" and float(large[8]) == pytest.approx(1.0)
        assert large[11] == "≤ n log n"
        assert large[12] == ("1.00x" if STAGES[rows.index(large) // 2].per_source else "3.25x")
    (small, large) = _rows(text, "n")
    assert small[3] == "1.50x" and large[7] == "holds"
    assert _rows(text, "planted")[0] == ["exact", "1.000 (3/3)", "1.000 (3/3)", "no (p = 1.00)"]
    fv = text[text.index("Extrapolation to FineVision") :]
    fv_rows = _rows(fv, "stage")
    assert [r[0] for r in fv_rows] == [s.name for s in STAGES]
    for row, spec in zip(fv_rows, STAGES, strict=True):
        assert (row[5] == "-") == spec.per_source  # memory only for the global stages
        assert row[1] == "3.00" and row[2] == "n log n"  # 27 CPU s more for 9,000 samples
    assert "1.50x the source bytes" in fv


def test_recall_falls_only_when_the_larger_size_misses_significantly_more():
    def counts(found, planted):
        return {"found": found, "planted": planted, "recall": found / planted}

    # 1 miss in 500 at 100k, none in the 50 of 10k: the same rate, too rare for 50 to show
    assert bench.recall_falls(counts(50, 50), counts(499, 500))[0] is False
    assert bench.recall_falls(counts(50, 50), counts(495, 500))[0] is False
    falls, p = bench.recall_falls(counts(100, 100), counts(450, 500))
    assert falls and p < 0.001
    assert bench.recall_falls(counts(90, 100), counts(500, 500))[0] is False  # rose


@pytest.mark.slow
def test_a_tiny_run_from_raw_to_release_finds_every_exact_copy_and_conserves_rows(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FINEHARBOR_CONFIG", str(tmp_path / "n300" / "fineharbor.yaml"))
    monkeypatch.setenv("FINEHARBOR_HOME", str(tmp_path / "n300" / "home"))
    result = bench.one_size(300, tmp_path, timeout=600, threads=1, in_process=True)
    assert [s["stage"] for s in result["stages"]] == [s.name for s in STAGES]
    assert result["conservation"] == {}
    assert result["recall"]["exact"]["recall"] == 1.0
    assert result["recall"]["exact"]["planted"] >= 3
    assert result["recall"]["benchmark_image_exact"]["recall"] == 1.0
    assert result["recall"]["benchmark_question"]["recall"] == 1.0
    assert result["release_bytes"] > 0 and result["data_bytes"] > 0
    text = bench.report([result], fv_source_tb=5.0)
    assert len(_rows(text, "stage")) == len(STAGES)
    json.dumps(result)  # what --json writes


def test_suite_entry_gives_a_measurement_per_stage_and_the_whole(monkeypatch):
    from bench.suite import STAGES as SUITE_STAGES
    from bench.suite import rows_of

    assert SUITE_STAGES["pipeline"] == "bench.pipeline"
    monkeypatch.setattr(bench, "one_size", lambda n, *args, **kwargs: _result(n, n / 1000))
    measurements = bench.run(2000)
    assert [m.name for m in measurements] == [f"pipeline/{s.name}" for s in STAGES] + ["pipeline"]
    assert measurements[-1].seconds == pytest.approx(len(STAGES) * 4.0)
    assert "1.50x source; exact-copy recall 1.000" in measurements[-1].note
    result = {"stage": "pipeline", "size": 2000, "peak_mb": 1.0}
    rows = rows_of([{**result, "measurements": [m.as_dict() for m in measurements]}])
    assert len(rows) == len(STAGES) + 1 and all(r["rows"] == 2000 for r in rows)
