"""PII detection throughput (a script, not a test): rows per second of the cleaning's PII rule
(:mod:`fineharbor.core.cleaning.pii` through the rule of ``RULES``, flag mode) on demo-like
texts, one process.

Three sets of the same size, drawn by the demo generators:

- captions:   scene captions (no digits: only the email pass runs);
- demo mix:   captions and chart answers with a planted PII sentence or hard negative appended
              to 9% of them, as ``fineharbor demo`` plants them;
- numbers:    every row holds a planted sentence (the worst case: every detector runs).

    .venv/bin/python bench/pii.py [--rows 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.rules import Sample, rules_for
from fineharbor.demo import charts, scenes
from fineharbor.demo.pii import planted_cases


def _rows(n: int, share: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = iter(planted_cases(rng, n))
    rows = []
    for i in range(n):
        if i % 2 or share == 0:
            text = scenes.caption(scenes.random_scene(rng), rng)
        else:
            text = charts.qa_pairs(charts.random_chart(rng), rng)[0][1]
        if rng.random() < share:
            text = f"{text} {next(cases).sentence}"
        rows.append({"source": "bench", "texts": [{"user": "", "assistant": text}]})
    return rows


def _rate(rows: list[dict], params: CleanParams, rounds: int) -> float:
    (rule,) = rules_for("pii_found")
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for row in rows:
            rule.check(Sample(row, params), params)  # type: ignore[misc]
        best = min(best, time.perf_counter() - started)
    return len(rows) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = CleanParams(pii_mode="flag")
    for name, share in (("captions", 0.0), ("demo mix", 0.09), ("numbers", 1.0)):
        rows = _rows(args.rows, share, seed=1)
        print(f"{name:<9} {_rate(rows, params, args.rounds):>9,.0f} rows/s  ({args.rows} rows)")


if __name__ == "__main__":
    main()
