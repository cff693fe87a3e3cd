"""The one wall-clock timing helper of the benchmark scripts (run as `python benchmarks/<script>.py`).

A measurement is `repeats` timed windows of `iters` calls each, after `warmup` untimed calls.
`sync` waits for all queued device work (jax.block_until_ready on the newest output,
torch.cuda.synchronize); it closes the warm-up and every window, so a window's wall time covers
exactly its own calls even when the calls only enqueue work. A function that blocks by itself
needs no `sync`. The figures are milliseconds per call: median, min and max over the windows.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


def _no_sync() -> None:
    pass


def timed(fn: Callable[[], object], repeats: int, *, warmup: int = 1, iters: int = 1,
          window_s: float | None = None, sync: Callable[[], object] = _no_sync) -> dict[str, float]:
    """{"ms", "ms_min", "ms_max", "repeats", "iters"} of `fn` (see the module docstring).

    window_s: instead of `iters`, as many calls per window as fill about `window_s` seconds
    (from one timed call after the warm-up; 1 to 200), for figures that short calls would make noisy.
    """
    if window_s is not None:
        for _ in range(warmup):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        iters = max(1, min(200, math.ceil(window_s / (time.perf_counter() - start))))
        warmup = 0
    return timed_alternating({"": fn}, repeats, warmup=warmup, iters=iters, sync=sync)[""]


def timed_alternating(fns: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1, iters: int = 1,
                      sync: Callable[[], object] = _no_sync, settle: int = 0) -> dict[str, dict[str, float]]:
    """`timed` for several functions, their windows in turn (a, b, c, a, b, c, ...), per name.

    On a shared machine the load drifts: alternating exposes every function to the same drift,
    so their ratios hold even when the absolute figures do not.
    settle: untimed calls of a function right before each of its windows, so that no window
    starts right after another function's. On the 2-core CPU a JAX train step that directly
    followed a torch one took 8.6-10.2 s against 5.8-6.0 s after a JAX one (torch after JAX:
    3.8-3.9 s against 3.4-3.5 s; docs/BENCHMARKS.md), whatever torch leaves behind lasting one call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                for _ in range(settle):
                    fn()
                sync()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3 / iters)
    return {name: {"ms": statistics.median(t), "ms_min": min(t), "ms_max": max(t), "repeats": repeats, "iters": iters}
            for name, t in times.items()}
