"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/bench_*.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> dict[str, float]:
    """Median, min and max milliseconds per call of `fn` after `warmup` untimed calls.

    `fn` must block until its result is ready (jax.block_until_ready, torch.cuda.synchronize).
    """
    for _ in range(warmup):
        fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": round(statistics.median(times), 2), "ms_min": round(min(times), 2), "ms_max": round(max(times), 2)}
