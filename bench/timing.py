"""Wall-clock seconds of repeated calls, for the benchmarks (run as scripts, so this
folder is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds_each(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, in order."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times
