"""What a real `orthofed run` with both trackers on (Flower's simulation engine; the DP
test of test_run_quick) wrote: the ServerApp's TensorBoard event files and MLflow run,
read back with the libraries' own readers, hold what orthofed's store holds, epsilon
included."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.runs.store import MetricsStore
from server.tracking.tracked_store import MLFLOW_STORE, TENSORBOARD_DIR
from tests.server.tracking.test_tracking import mlflow_run, tensorboard_scalars


def assert_tracked(runs_dir: Path, run_id: str, doc: dict) -> None:
    """What the store holds of a private run (tracking: tensorboard and mlflow, target
    epsilon 8) reached TensorBoard and MLflow: the server's accuracy per round and each
    client's epsilon per round. Called by the DP test of test_run_quick (one run checks
    both, a run fewer for CI)."""
    store = MetricsStore.in_dir(runs_dir)
    accuracy = {r["round"]: r["eval"]["eval-acc"] for r in store.rounds(run_id)}
    epsilon = {(r["partition_id"], r["round"]): r["metrics"]["epsilon"]
               for r in store.client_rounds(run_id)}
    assert sorted(accuracy) == [0, 1, 2] and len(epsilon) == 6

    board = tensorboard_scalars(runs_dir / run_id / TENSORBOARD_DIR)
    assert board["eval/eval-acc"] == pytest.approx(accuracy, rel=1e-6)
    for (partition, round_), spent in epsilon.items():
        assert board[f"clients/{partition}/epsilon"][round_] == pytest.approx(spent, rel=1e-6)

    # the default store: sqlite in the runs folder, the scenario's name as experiment
    client, run = mlflow_run(f"sqlite:///{runs_dir.resolve() / MLFLOW_STORE}", doc["name"],
                             run_id)
    assert run.info.run_name == run_id and run.info.status == "FINISHED"
    assert run.data.params["privacy.target_epsilon"] == "8.0"
    assert run.data.params["strategy.name"] == doc["strategy"]["name"]
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                   "eval/eval-acc")}
    assert history == pytest.approx(accuracy, rel=1e-12)
    for partition in range(3):
        spent = {m.step: m.value for m in client.get_metric_history(
            run.info.run_id, f"clients/{partition}/epsilon")}
        assert spent == pytest.approx({r: e for (p, r), e in epsilon.items() if p == partition},
                                      rel=1e-12)
