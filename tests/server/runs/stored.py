"""Runs written into a store the way the ServerApp writes them, for tests that read."""

from __future__ import annotations

from server.runs.status import RunStatus
from server.runs.store import MetricsStore


def finished_run(store: MetricsStore, run_id: str = "done-1", rounds: int = 3) -> str:
    """A completed private run with rounds, clients, a 2-task matrix and its linear
    probes, written as the ServerApp would: task a for round 1, task b for the rest."""
    store.create_run(run_id, "done", scenario(rounds))
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


def scenario(rounds: int = 3) -> dict:
    """The parts of finished_run's scenario (as stored) that readers show: a private
    2-task stream whose rounds add up to `rounds`."""
    return {"name": "done", "model": {"name": "tiny-bert"},
            "strategy": {"name": "fedavg-lora"},
            "federation": {"num_clients": 1, "clients_per_round": 1, "rounds": 1},
            "privacy": {"target_epsilon": 4.0, "delta": 1e-5},
            "stream": {"tasks": [{"name": "a", "rounds": None},
                                 {"name": "b", "rounds": max(1, rounds - 1)}]}}
