"""The demo's planted PII: the cases the generator plants (every type in several formats, hard
negatives beside them), the detector's recall and precision on them inside demo texts, and the
table `fineharbor demo` prints from the cleaning's output."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineharbor.core.cleaning import pii
from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.pipeline import CLEANED
from fineharbor.core.schema import REJECT_SCHEMA, reject_row
from fineharbor.core.storage import Storage
from fineharbor.demo import charts, scenes
from fineharbor.demo.generate import GT_SCHEMA
from fineharbor.demo.pii import planted_cases, planted_pii_scores, score
from fineharbor.demo.run import print_planted_pii


def _shape(sentence: str) -> str:
    """The format of a planted value: digits and letters masked, punctuation kept."""
    return re.sub(r"[a-z]+", "a", re.sub(r"\d+", "9", sentence.lower()))


def test_planted_cases_cover_every_type_in_several_formats_and_hard_negatives():
    cases = planted_cases(np.random.default_rng(0), 300)
    assert cases == planted_cases(np.random.default_rng(0), 300)  # deterministic
    for kind in pii.TYPES:
        holding = [c for c in cases if kind in c.types]
        assert len(holding) >= 30, kind
        assert len({_shape(c.sentence) for c in holding}) >= 5, kind
    negatives = {c.kind for c in cases if not c.types}
    assert {"version", "date", "isbn", "price", "order_number"} <= negatives
    assert sum(not c.types for c in cases) == 100


def test_the_detector_finds_the_planted_pii_in_demo_texts():
    """Planted sentences appended to demo captions and chart answers (as the generator does),
    plus clean chart Q&A full of numbers: recall >= 0.95 at precision >= 0.95."""
    rng = np.random.default_rng(7)
    regions = CleanParams().pii_phone_regions
    planted, found, negatives = {}, {}, []
    for i, case in enumerate(planted_cases(rng, 600)):
        if i % 2:
            text = f"{scenes.caption(scenes.random_scene(rng), rng)} {case.sentence}"
        else:
            chart = charts.random_chart(rng)
            _, answer = charts.qa_pairs(chart, rng)[0]
            text = f"{answer} {case.sentence}"
        if case.types:
            planted[i] = case.types
        else:
            negatives.append(i)
        found[i] = [m.type for m in pii.find(text, regions)]
    for j in range(300):
        chart = charts.random_chart(rng)
        texts = [charts.caption(chart, rng), *(a for _, a in charts.qa_pairs(chart, rng))]
        found[f"chart{j}"] = [m.type for t in texts for m in pii.find(t, regions)]
    scores = score(planted, found, negatives)
    print(f"\nPII recall {scores.recall:.3f} precision {scores.precision:.3f}: {scores.rows()}")
    assert scores.recall >= 0.95 and scores.precision >= 0.95
    assert all(row["recall"] >= 0.9 for row in scores.rows())
    assert scores.negatives == 200 and scores.negatives_flagged <= 10


def test_scores_count_each_record_and_type_once():
    scores = score(
        planted={
            "a": ["EMAIL_ADDRESS", "PHONE_NUMBER"],
            "b": ["IBAN_CODE"],
            "gone": ["IP_ADDRESS"],
        },
        found={"a": ["EMAIL_ADDRESS", "EMAIL_ADDRESS"], "b": ["IBAN_CODE"], "n": ["CREDIT_CARD"]},
        negatives=["n", "m"],
    )
    assert (scores.recall, scores.precision) == (2 / 3, 2 / 3)
    assert scores.misses == {"PHONE_NUMBER": 1} and scores.false_positives == {"CREDIT_CARD": 1}
    assert (scores.records, scores.negatives, scores.negatives_flagged) == (3, 1, 1)


def _truth(path, rows: list[tuple[str, str, str, str]]) -> None:
    table = [{"source": s, "origin_key": k, "defect": d, "transform": t} for s, k, d, t in rows]
    pq.write_table(pa.Table.from_pylist(table, schema=GT_SCHEMA), path)


def test_the_demo_prints_recall_and_precision_from_the_cleaned_rows(tmp_path, capsys):
    storage = Storage(str(tmp_path / "home"))
    schema = pa.schema([("origin_key", pa.string()), ("pii_found", pa.list_(pa.string()))])
    with storage.writer(CLEANED, "wds", schema) as writer:
        writer.write(
            pa.table(
                {
                    "origin_key": ["a", "b", "c", "d"],
                    "pii_found": [["EMAIL_ADDRESS"], [], ["PHONE_NUMBER"], []],
                },
                schema=schema,
            )
        )
        writer.reject(
            pa.Table.from_pylist(
                [reject_row("wds", "e", "pii_found", "IBAN_CODE, CREDIT_CARD x2")],
                schema=REJECT_SCHEMA,
            )
        )
    truth = tmp_path / "ground_truth.parquet"
    _truth(
        truth,
        [
            ("wds", "a", "pii", "EMAIL_ADDRESS"),
            ("wds", "b", "pii", "STREET_ADDRESS"),  # missed
            ("wds", "c", "pii_negative", "order_number"),  # flagged: a false positive
            ("wds", "e", "pii", "IBAN_CODE,CREDIT_CARD"),  # dropped, types from the detail
            ("wds", "f", "watermark", None),
        ],
    )
    print_planted_pii(storage, truth)
    out = capsys.readouterr().out
    assert "planted PII found" in out
    assert re.search(r"STREET_ADDRESS\s+1\s+0\s+0\s+0\.000", out), out
    assert re.search(r"PHONE_NUMBER\s+0\s+0\s+1\s+1\.000\s+0\.000", out), out
    assert "PII recall 0.750 at precision 0.750 over 5 samples; 1 of 1 hard negatives" in out


def test_nothing_is_printed_when_pii_detection_was_off(tmp_path, capsys):
    storage = Storage(str(tmp_path / "home"))
    schema = pa.schema([("origin_key", pa.string()), ("pii_found", pa.list_(pa.string()))])
    with storage.writer(CLEANED, "wds", schema) as writer:
        writer.write(pa.table({"origin_key": ["a"], "pii_found": [None]}, schema=schema))
    truth = tmp_path / "ground_truth.parquet"
    _truth(truth, [("wds", "a", "pii", "EMAIL_ADDRESS")])
    assert planted_pii_scores(storage, truth) is None
    print_planted_pii(storage, truth)
    assert capsys.readouterr().out == ""
