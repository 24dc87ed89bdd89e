"""Every stage's benchmark at two sizes, in one table, with a history to compare runs.

    python -m bench [--sizes small,large] [--stages ingest,dedup,...] [--out FILE]
                    [--compare] [--no-save] [--threads 1] [--timeout 600]

Each stage module (``bench/<module>.py``) exposes ``SIZES`` (named sizes: tiny, small, large)
and ``run(size) -> list[Measurement]``: the stage's time and a baseline doing the same job
another way, measured in the same process on the same data. Every (stage, size) runs in a fresh
Python process, so the peak resident memory printed (``ru_maxrss`` of that process and of the
worker processes it waited for) belongs to that stage at that size alone; it includes the
synthetic data the benchmark generated. Stage processes get one OpenMP/BLAS thread by default
(``--threads``): on a 2-core machine shared with other work, torch's and faiss's default two
threads measured 10-60x slower than one (threads spinning while the other core is busy), which
would make the figures measure the neighbours. ``--threads 0`` leaves the libraries' defaults.

The growth exponent is log(t_large / t_small) / log(n_large / n_small) between the smallest and
the largest size; the verdict compares it with what n log n gives between the same sizes
(1 + log(log n_l / log n_s) / log(n_l / n_s)) plus a tolerance for timing noise. It is printed,
never asserted.

Each run's figures are appended, with the git commit, date, machine (CPU count, platform, load)
and sizes, to a JSON-lines history, by default ``bench/results/history.jsonl``: in the checkout,
next to the code it measures, but git-ignored, because figures belong to the machine that
measured them and an append-only file committed from several branches conflicts at every merge
(docs/benchmarks.md keeps a reference table). ``--compare`` prints each figure's change against the
previous entry; ``--out`` names another history file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Measurement,
    growth_exponent,
    n_log_n_exponent,
    peak_rss_mb,
    within_n_log_n,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HISTORY = REPO / "bench" / "results" / "history.jsonl"
MARKER = "BENCH-RESULT "
TOLERANCE = 0.15  # exponent noise allowed above n log n before the verdict says "faster"

# stage name -> module; order = pipeline order
STAGES = {
    "ingest": "bench.ingest",
    "download": "bench.ingest_download",
    "clean": "bench.clean",
    "signatures": "bench.embed_throughput",
    "dedup": "bench.dedup",
    "decontam": "bench.decontam",
    "quality": "bench.quality",
    "cluster": "bench.cluster",
    "release": "bench.release",
    "sql": "bench.sql_models",
    "pipeline": "bench.pipeline",  # every stage above, raw to release, on one generated corpus
}


def resolve_size(stage: str, token: str) -> int:
    """A named size of the stage ('small', 'large', 'tiny') or an integer used as is."""
    token = token.strip()
    if token.isdigit():
        return int(token)
    sizes = importlib.import_module(STAGES[stage]).SIZES
    if token not in sizes:
        raise SystemExit(f"stage {stage!r} has no size {token!r} (known: {', '.join(sizes)})")
    return sizes[token]


# --------------------------------------------------------------------------- one measurement


def worker(stage: str, token: str) -> int:
    """Run one stage at one size in this process and print its result line."""
    module = importlib.import_module(STAGES[stage])
    size = resolve_size(stage, token)
    started = time.perf_counter()
    measurements = module.run(size)
    result = {
        "size": size,
        "measurements": [m.as_dict() for m in measurements],
        "peak_mb": peak_rss_mb(),
        "wall_s": time.perf_counter() - started,
    }
    print(MARKER + json.dumps(result), flush=True)
    return 0


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def measure(stage: str, size: str, timeout: float, threads: int = 1) -> dict:
    """One (stage, size) in a fresh interpreter: its measurements, peak MB, or the error.
    ``size`` is a named size or an integer, resolved in that process (this one stays small: its
    imports would count in the children's ``ru_maxrss``).
    ``threads`` > 0 caps the OpenMP / BLAS threads of torch, faiss and NumPy (0: their default)."""
    capped = {name: str(threads) for name in THREAD_VARIABLES} if threads > 0 else {}
    env = {
        **os.environ,
        **capped,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "bench.suite", "--worker", stage, size]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"stage": stage, "size": size, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {
            "stage": stage,
            "size": size,
            "error": " | ".join(tail) or f"exit {done.returncode}",
        }
    result = json.loads(lines[-1][len(MARKER) :])
    return {"stage": stage, "process_s": time.perf_counter() - started, **result}


# --------------------------------------------------------------------------- the table


def rows_of(results: list[dict]) -> list[dict]:
    """Flat figures: one per measurement and size, with the growth exponent on the largest."""
    flat = []
    for result in results:
        if "error" in result:
            flat.append({"stage": result["stage"], "name": result["stage"], "size": result["size"],
                         "error": result["error"]})  # fmt: skip
            continue
        for raw in result["measurements"]:
            m = Measurement(**raw)
            flat.append(
                {
                    "stage": result["stage"],
                    "name": m.name,
                    "size": result["size"],
                    "rows": m.rows,
                    "unit": m.unit,
                    "seconds": m.seconds,
                    "rate": m.rate,
                    "baseline": m.baseline,
                    "baseline_seconds": m.baseline_seconds,
                    "ratio": m.ratio,
                    "peak_mb": result["peak_mb"],
                    "note": m.note,
                }
            )
    by_name: dict[str, list[dict]] = {}
    for row in flat:
        if "error" not in row:
            by_name.setdefault(row["name"], []).append(row)
    for rows in by_name.values():
        rows.sort(key=lambda r: r["rows"])
        small, large = rows[0], rows[-1]
        if len(rows) < 2 or large["rows"] <= small["rows"]:
            continue
        exponent = growth_exponent(small["rows"], small["seconds"], large["rows"], large["seconds"])
        large["exponent"] = exponent
        large["n_log_n"] = n_log_n_exponent(small["rows"], large["rows"])
        large["within_n_log_n"] = within_n_log_n(exponent, small["rows"], large["rows"], TOLERANCE)
    return flat


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0 and abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    """A markdown table: the figures of every stage at every size."""
    header = [
        "stage", "n", "seconds", "rate/s", "baseline (same run)", "baseline rate/s",
        "vs baseline", "peak MB", "exponent", "n log n", "verdict",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            cells = [r["name"], str(r["size"]), "ERROR: " + r["error"][:120], *[""] * 8]
        else:
            base_rate = r["rows"] / r["baseline_seconds"] if r["baseline_seconds"] else None
            exponent = r.get("exponent")
            verdict = ""
            if "within_n_log_n" in r:
                verdict = "≤ n log n" if r["within_n_log_n"] else "> n log n"
            cells = [
                r["name"],
                f"{r['rows']:,} {r['unit']}",
                _num(r["seconds"], 3),
                _num(r["rate"]),
                r["baseline"] or "-",
                _num(base_rate),
                "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                _num(r["peak_mb"]),
                _num(exponent, 2) if exponent is not None else "",
                _num(r.get("n_log_n"), 2) if "n_log_n" in r else "",
                verdict,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['name']}, n={r['rows']:,}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


# --------------------------------------------------------------------------- history


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def entry(rows: list[dict], sizes: list[str], stages: list[str], threads: int) -> dict:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": round(os.getloadavg()[0], 2),
        },
        "sizes": sizes,
        "stages": stages,
        "threads": threads,
        "rows": rows,
    }


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_history(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def compare(current: list[dict], previous: dict) -> str:
    """Each figure's change against the same (measurement, n) of a previous run."""
    before = {(r["name"], r.get("rows")): r for r in previous["rows"] if "error" not in r}
    lines = [
        f"change against {previous['date']} (commit {previous.get('commit')}, "
        f"{previous['machine']['cpus']} CPUs):",
        "| stage | n | rate/s before | rate/s now | change | vs baseline before | now |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in current:
        old = before.get((r["name"], r.get("rows")))
        if "error" in r or old is None:
            continue
        change = r["rate"] / old["rate"] - 1 if old["rate"] else math.nan
        ratio_old = "-" if old["ratio"] is None else f"{old['ratio']:.2f}x"
        ratio_now = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {_num(old['rate'])} | {_num(r['rate'])} | "
            f"{change:+.0%} | {ratio_old} | {ratio_now} |"
        )
    if len(lines) == 3:
        lines.append("(no figure of this run was measured at the same size before)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="small,large", help="named sizes or integers, comma-separated"
    )
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stage names")
    parser.add_argument("--out", type=Path, default=DEFAULT_HISTORY, help="JSON-lines history")
    parser.add_argument("--no-save", action="store_true", help="do not append to the history")
    parser.add_argument("--compare", action="store_true", help="print the change vs the last run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per stage and size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OpenMP/BLAS threads per stage process (torch, faiss, NumPy); 0 = library default",
    )
    parser.add_argument("--worker", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    print(
        f"cpus {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f}, sizes {sizes}, "
        f"threads {args.threads or 'default'}",
        flush=True,
    )
    results = []
    for stage in stages:
        for token in sizes:
            result = measure(stage, token, args.timeout, args.threads)
            took = result.get("process_s")
            status = result.get("error") or f"n={result['size']:,}, {took:.1f} s with start-up"
            print(f"  {stage} {token}: {status}", flush=True)
            results.append(result)
    rows = rows_of(results)
    print()
    print(table(rows))
    history = read_history(args.out)
    if args.compare:
        print()
        print(compare(rows, history[-1]) if history else f"no previous run in {args.out}")
    if not args.no_save:
        append_history(args.out, entry(rows, sizes, stages, args.threads))
        print(f"\nfigures appended to {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
