"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_us(
    fn: Callable[[], object], runs: int, after: Callable[[], object] | None = None
) -> float:
    """Median wall time of ``fn`` over ``runs`` calls, in µs; ``after`` runs
    between calls, outside the timed region."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
        if after is not None:
            after()
    return statistics.median(samples) / 1000
