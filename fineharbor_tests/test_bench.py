"""The benchmark suite (bench/suite.py): table, growth exponent, history. Timings are never
asserted; the suite runs two cheap stages at tiny sizes."""

import json
import math

import pytest

from bench.common import Measurement, growth_exponent, n_log_n_exponent, within_n_log_n
from bench.suite import STAGES, compare, main, read_history, resolve_size, rows_of, table


def test_growth_exponent_recovers_power_laws_and_n_log_n():
    assert growth_exponent(100, 1.0, 1000, 10.0) == pytest.approx(1.0)
    assert growth_exponent(100, 1.0, 1000, 100.0) == pytest.approx(2.0)
    assert growth_exponent(1000, 2.0, 4000, 2.0) == pytest.approx(0.0)
    # t = n log n exactly gives the n log n bound exactly
    n0, n1 = 500, 4000
    exponent = growth_exponent(n0, n0 * math.log(n0), n1, n1 * math.log(n1))
    assert exponent == pytest.approx(n_log_n_exponent(n0, n1))
    assert 1.0 < n_log_n_exponent(n0, n1) < 1.2
    assert within_n_log_n(exponent, n0, n1, tolerance=1e-9)
    assert not within_n_log_n(2.0, n0, n1, tolerance=0.15)  # quadratic is flagged
    assert not within_n_log_n(None, n0, n1, tolerance=0.15)
    assert growth_exponent(100, 1.0, 100, 2.0) is None  # no size change: no exponent


def test_rows_put_the_exponent_on_the_largest_size_only():
    def result(size: int, seconds: float) -> dict:
        m = Measurement("s/v", size, seconds, "naive", seconds * 2, "rows")
        return {"stage": "s", "size": size, "peak_mb": 10.0, "measurements": [m.as_dict()]}

    rows = rows_of([result(100, 1.0), result(800, 64.0), {"stage": "t", "size": 5, "error": "x"}])
    small, large, failed = rows
    assert "exponent" not in small
    assert large["exponent"] == pytest.approx(2.0)
    assert large["within_n_log_n"] is False
    assert small["ratio"] == pytest.approx(2.0)  # baseline took twice as long: stage 2x faster
    assert failed["error"] == "x"
    text = table(rows)
    assert "> n log n" in text and "ERROR: x" in text


def test_named_sizes_resolve_per_stage_and_integers_pass_through():
    for stage in STAGES:
        assert resolve_size(stage, "small") < resolve_size(stage, "large")
    assert resolve_size("decontam", "123") == 123
    with pytest.raises(SystemExit):
        resolve_size("decontam", "huge")


@pytest.mark.slow  # runs every stage benchmark in subprocesses (~10 s)
def test_suite_prints_every_stage_and_size_and_keeps_a_history(tmp_path, capsys):
    history = tmp_path / "history.jsonl"
    sizes = [40, 160]
    code = main(
        [
            "--sizes",
            ",".join(map(str, sizes)),
            "--stages",
            "decontam,download",
            "--out",
            str(history),
            "--compare",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    seen = {(c[0], int(c[1].split()[0].replace(",", ""))) for c in cells}
    assert seen == {(name, n) for name in ("decontam", "download") for n in sizes}
    for c in cells:  # every row has a rate, a baseline and its ratio, and a peak memory
        assert c[4] != "-" and c[6].endswith("x") and float(c[7].replace(",", "")) > 0
    large_rows = [c for c in cells if c[1].startswith("160")]
    assert all(c[8] and c[10] for c in large_rows)  # exponent and verdict on the large size
    assert "no previous run" in out

    (entry,) = read_history(history)
    assert entry["sizes"] == ["40", "160"] and entry["stages"] == ["decontam", "download"]
    assert entry["machine"]["cpus"] >= 1 and entry["date"] and "commit" in entry
    assert {(r["name"], r["rows"]) for r in entry["rows"]} == seen
    json.dumps(entry)  # plain JSON all the way down

    # the next run compares against this one, figure by figure
    report = compare(entry["rows"], entry)
    assert report.count("+0%") == len(seen)


def test_global_memory_bench_builds_the_clusters_it_plants(tmp_path):
    """bench/global_memory.py runs outside the suite (minutes at 1M): a small build keeps it in
    step with the dedup stage's schemas (it broke once when samples gained a column)."""
    from bench.global_memory import build, generate

    generate(str(tmp_path), 2_000, 32)
    result = build(str(tmp_path), 2_000, binary_exact_limit=500)  # the multi-hash search
    assert result["n"] == 2_000
    assert result["dropped"] > 0 and result["cluster_rows"] > result["dropped"]
    assert set(result["edges"]) >= {"exact_pixels", "phash"}
