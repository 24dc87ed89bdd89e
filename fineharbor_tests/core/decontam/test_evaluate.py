import pyarrow as pa

from fineharbor.core.decontam.evaluate import ALL, evaluate_decontamination
from fineharbor.core.schema import make_sample_id

TRUTH = pa.table(
    {
        "source": ["a", "a", "b", "b"],
        "origin_key": ["c1", "c2", "c3", "x"],
        "defect": ["benchmark_copy", "benchmark_copy", "benchmark_copy", "corrupt_image"],
        "of_source": ["bench", "bench", "bench", None],
        "of_origin_key": ["q1", "q2", "q3", None],
        "transform": ["crop", "flip", "crop", None],
    }
)


def rejects(rows: list[tuple[str, str, str]]) -> pa.Table:
    return pa.table(
        {
            "sample_id": [r[0] for r in rows],
            "reason": [r[1] for r in rows],
            "matched_origin_key": [r[2] for r in rows],
        }
    )


def test_recall_per_transform_matched_originals_and_false_positives():
    c1, c2, c3 = (make_sample_id(s, k) for s, k in [("a", "c1"), ("a", "c2"), ("b", "c3")])
    clean = [make_sample_id("a", f"k{i}") for i in range(8)]
    checked = {c1, c2, c3, *clean}
    report = evaluate_decontamination(
        checked,
        rejects(
            [
                (c1, "benchmark_match", "q1"),
                (c2, "benchmark_match", "q9"),  # flagged, but against the wrong benchmark row
                (clean[0], "benchmark_match", "q5"),  # a false positive
                (clean[1], "benchmark_source", None),  # not a match: not counted
            ]
        ),
        TRUTH,
    )
    assert report.by_transform[ALL].planted == 3
    assert report.by_transform[ALL].flagged == 2
    assert report.by_transform[ALL].matched_original == 1
    assert report.by_transform["crop"].recall == 0.5
    assert report.by_transform["crop"].missed == [c3]
    assert report.by_transform["flip"].recall == 1.0
    assert report.false_positives == [clean[0]]
    assert report.clean_samples == 8
    assert report.false_positive_rate == 1 / 8


def test_copies_dropped_upstream_are_not_counted():
    c1 = make_sample_id("a", "c1")
    report = evaluate_decontamination({c1}, rejects([(c1, "benchmark_match", "q1")]), TRUTH)
    assert report.by_transform[ALL].planted == 1
    assert report.by_transform[ALL].recall == 1.0
    assert report.clean_samples == 0
