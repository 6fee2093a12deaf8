"""A MetricsStore that also sends what it records to the run's experiment trackers.

The store stays the record of truth: every write goes to it first, exactly as without
tracking; then the same numbers go to each tracker (server.tracking). A tracker that
raises is logged once and dropped for the rest of the run, so a tracking server that
goes away costs one warning, not a failed run or a timeout every round.
"""

from __future__ import annotations

from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.supercore import log

from server.runs.continual import prompted, task_summary
from server.runs.store import MetricsStore
from server.tracking import Tracker

TENSORBOARD_DIR = "tensorboard"  # in the run's folder
MLFLOW_STORE = "mlflow.db"       # in the runs folder, when no mlflow_uri is given


def open_trackers(tracking: Any, scenario: dict[str, Any], run_id: str, run_dir: Path,
                  runs_dir: Path) -> list[Tracker]:
    """The trackers a scenario's `tracking` section (scenarios.tracking_spec) asks for;
    one that cannot start is logged and left out."""
    wanted = []
    if tracking.tensorboard:
        def tensorboard() -> Tracker:
            from server.tracking.tensorboard_tracker import TensorBoardTracker
            return TensorBoardTracker(run_dir / TENSORBOARD_DIR, scenario)
        wanted.append(("tensorboard", tensorboard))
    if tracking.mlflow:
        def mlflow() -> Tracker:
            from server.tracking.mlflow_tracker import MlflowTracker
            uri = tracking.mlflow_uri or f"sqlite:///{(runs_dir / MLFLOW_STORE).resolve()}"
            return MlflowTracker(uri, tracking.mlflow_experiment or scenario["name"], run_id,
                                 scenario)
        wanted.append(("mlflow", mlflow))
    trackers = []
    for name, start in wanted:
        try:
            trackers.append(start())
        except Exception as exc:  # noqa: BLE001 - tracking never fails the run
            log(WARNING, "tracking: %s could not start, the run goes on without it: %s",
                name, exc)
    return trackers


def round_scalars(train: dict | None, eval: dict | None) -> dict[str, float]:
    """train/<metric> and eval/<metric> of one round's numeric metrics."""
    return {f"{section}/{key}": value
            for section, metrics in (("train", train), ("eval", eval))
            for key, value in (metrics or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def client_scalars(metrics_by_partition: dict[int, dict[str, Any]],
                   failures: list) -> dict[str, float]:
    """clients/<partition>/<metric> of one round, and how many clients failed."""
    values = {f"clients/{partition}/{key}": value
              for partition, metrics in metrics_by_partition.items()
              for key, value in metrics.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    values["failures"] = len(failures)
    return values


def task_scalars(tasks: dict[str, Any], after_task: int) -> dict[str, float]:
    """tasks/<name>/accuracy after `after_task` (-1: before the stream), and AA, BWT and
    FWT where the matrix so far defines them (server.runs.continual)."""
    # the row just recorded is the newest: later rows of a resumed run were dropped
    row = tasks["initial"] if after_task < 0 else tasks["matrix"][-1]
    values = {f"tasks/{name}/accuracy": accuracy for name, accuracy in zip(tasks["names"], row)}
    if after_task >= 0:
        values.update({f"continual/{key}": tasks[key] for key in ("aa", "bwt", "fwt")
                       if tasks.get(key) is not None})
    return values


class TrackedStore(MetricsStore):
    """`MetricsStore` whose round, client and task-evaluation writes also go to
    `trackers`, as they land."""

    def __init__(self, path: str | Path, trackers: list[Tracker],
                 scenario: dict[str, Any]) -> None:
        super().__init__(path)
        self.trackers = list(trackers)
        self.is_prompted = prompted(scenario)

    def _send(self, values: dict[str, float], step: int) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.scalars(values, step)
            except Exception as exc:  # noqa: BLE001 - tracking never fails the run
                self.trackers.remove(tracker)
                log(WARNING, "tracking: %s failed and is off for the rest of this run: %s",
                    tracker.name, exc)

    def record_round(self, run_id: str, round_: int, task: int,
                     train: dict[str, float] | None = None,
                     eval: dict[str, float] | None = None) -> None:
        super().record_round(run_id, round_, task, train=train, eval=eval)
        if values := round_scalars(train, eval):
            self._send(values, round_)

    def record_clients(self, run_id: str, round_: int,
                       metrics_by_partition: dict[int, dict[str, Any]],
                       failures: list[tuple[int | None, str | None, str]]) -> None:
        super().record_clients(run_id, round_, metrics_by_partition, failures)
        self._send(client_scalars(metrics_by_partition, failures), round_)

    def record_task_evals(self, run_id: str, after_task: int,
                          results: list[tuple[str, float, float]],
                          probes: list[float | None] | None = None) -> None:
        super().record_task_evals(run_id, after_task, results, probes)
        tasks = task_summary(self.task_evals(run_id), self.is_prompted)
        self._send(task_scalars(tasks, after_task), after_task + 1)

    def close_trackers(self, status: str) -> None:
        """End every tracker's run with orthofed's final `status`."""
        for tracker in self.trackers:
            try:
                tracker.close(status)
            except Exception as exc:  # noqa: BLE001
                log(WARNING, "tracking: %s could not close: %s", tracker.name, exc)
        self.trackers = []
