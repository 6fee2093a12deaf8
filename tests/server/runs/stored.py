"""Runs written into a store the way the ServerApp writes them, for tests that read."""

from __future__ import annotations

from server.runs.status import RunStatus
from server.runs.store import MetricsStore


def finished_run(store: MetricsStore, run_id: str = "done-1", rounds: int = 3) -> str:
    """A completed run with rounds, clients, a 2-task matrix and its linear probes,
    written as the ServerApp would."""
    store.create_run(run_id, "done", {"name": "done"})
    store.set_status(run_id, RunStatus.RUNNING)
    for r in range(rounds + 1):
        store.record_round(run_id, r, r // 2, train={"train-loss": 1.0 / (r + 1)},
                           eval={"eval-acc": 0.1 * r})
        store.record_clients(run_id, r, {0: {"epsilon": 0.5 * r, "num-examples": 10}}, [])
    store.record_task_evals(run_id, -1, [("a", 0.5, 1.0), ("b", 0.3, 1.0)], [0.6, 0.4])
    store.record_task_evals(run_id, 0, [("a", 0.9, 1.0), ("b", 0.35, 1.0)], [0.95, 0.55])
    store.record_task_evals(run_id, 1, [("a", 0.7, 1.0), ("b", 0.8, 1.0)], [0.9, 0.85])
    store.set_status(run_id, RunStatus.COMPLETED)
    return run_id
