"""Small statistics helpers (nearest-rank percentiles; milliseconds)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``samples`` (``pct`` in 0..100)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, p95, p99, mean and min of ``seconds``, reported in milliseconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "p95_ms": round(percentile(ms, 95), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
        "min_ms": round(min(ms), 4),
    }


class Stopwatch:
    """Wraps a callable and adds up the wall time spent inside it (thread-unsafe by design:
    the benchmarks call it from one thread)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.spent = 0.0
        self.cpu = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - start
            self.cpu += time.thread_time() - cpu

    def take(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this thread) spent inside since the last take."""
        spent, cpu = self.spent, self.cpu
        self.spent = self.cpu = 0.0
        return spent, cpu
