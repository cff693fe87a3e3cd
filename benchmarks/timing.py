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


def timed_alternating(fns: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1) -> dict[str, dict[str, float]]:
    """`timed` for several functions called in turn (a, b, c, a, b, c, ...), per name.

    On a shared machine the load drifts: alternating exposes every function to the same drift,
    so their ratios hold even when the absolute figures do not.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"ms": round(statistics.median(t), 2), "ms_min": round(min(t), 2), "ms_max": round(max(t), 2)}
            for name, t in times.items()}
