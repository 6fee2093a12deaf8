"""Experiment trackers: a run's metrics sent to TensorBoard and MLflow as rounds land.

The scenario's `tracking` section (scenarios.tracking_spec) names them; the ServerApp
writes through `TrackedStore` (tracked_store.py), which records in orthofed's store
first and then hands the same numbers to each tracker. One module per backend, each
importing its library only when a run asks for it (the quick start never pays the
import). The names are the same in both backends:

    train/<metric>, eval/<metric>        step = global round
    clients/<partition>/<metric>         step = global round (epsilon, train-loss, ...)
    failures                             step = global round (clients that failed)
    tasks/<task name>/accuracy           step = tasks finished (0: before the stream)
    continual/aa, continual/bwt, continual/fwt   step = tasks finished
"""

from __future__ import annotations

from typing import Protocol


class Tracker(Protocol):
    """What a backend does with what the store records (server.tracking.*_tracker)."""

    name: str

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...
