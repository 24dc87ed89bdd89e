"""What every benchmark returns, and the helpers they share.

A stage's ``run(size)`` returns :class:`Measurement` rows: the stage's own time on ``rows`` items
and, measured in the same process on the same data, the time of a baseline that does the same
job another way (``baseline`` says which). The suite (``bench/suite.py``) runs each stage at each
size in a fresh process and adds peak memory and the growth exponent.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    """One timed variant of a stage at one size, with its same-run baseline."""

    name: str  # "stage" or "stage/variant"
    rows: int  # items processed (the throughput unit)
    seconds: float  # best of the repeats
    baseline: str  # what the baseline does ("" when there is none)
    baseline_seconds: float | None  # same rows, same run
    unit: str = "rows"
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    @property
    def ratio(self) -> float | None:
        """Stage throughput / baseline throughput (> 1: the stage is faster)."""
        if not self.baseline_seconds or self.seconds <= 0:
            return None
        return self.baseline_seconds / self.seconds

    def as_dict(self) -> dict:
        return asdict(self)


def best_time(function: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """The smallest wall time of ``repeats`` calls (the usual practice on a shared machine) and
    the last call's result."""
    best, result = math.inf, None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of the children it waited for, MiB (Linux).

    This process's own peak is ``VmHWM`` from /proc: ``ru_maxrss`` survives ``exec``, so a
    process started by a large parent would report the parent's peak."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    except OSError:
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def growth_exponent(n_small: int, t_small: float, n_large: int, t_large: float) -> float | None:
    """k in t ~ n^k between two sizes: log(t_large / t_small) / log(n_large / n_small)."""
    if n_small <= 0 or n_large <= n_small or t_small <= 0 or t_large <= 0:
        return None
    return math.log(t_large / t_small) / math.log(n_large / n_small)


def n_log_n_exponent(n_small: int, n_large: int) -> float:
    """The exponent n log n shows between two sizes: 1 + log(log n_l / log n_s) / log(n_l / n_s)."""
    return 1 + math.log(math.log(n_large) / math.log(n_small)) / math.log(n_large / n_small)


def within_n_log_n(exponent: float | None, n_small: int, n_large: int, tolerance: float) -> bool:
    return exponent is not None and exponent <= n_log_n_exponent(n_small, n_large) + tolerance
