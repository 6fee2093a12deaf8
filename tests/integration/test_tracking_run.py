"""A real `orthofed run` (Flower's simulation engine) with both trackers on: the
ServerApp's TensorBoard event files and MLflow run, read back with the libraries'
own readers, hold what orthofed's store holds, epsilon included."""

from __future__ import annotations

import pytest
import yaml

from server.runs.store import MetricsStore
from server.tracking.tracked_store import MLFLOW_STORE, TENSORBOARD_DIR
from tests.conftest import ROOT
from tests.integration.helpers import ONE_CLIENT_PROCESS, last_json_line, run_orthofed
from tests.server.tracking.test_tracking import mlflow_run, tensorboard_scalars

pytestmark = pytest.mark.integration


def test_a_private_run_reaches_tensorboard_and_mlflow(tmp_path, runs_dir) -> None:
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["federation"].update(rounds=2, local_steps=5)
    doc["resources"] = ONE_CLIENT_PROCESS
    doc["privacy"] = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}
    doc["tracking"] = {"tensorboard": True, "mlflow": True}
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = run_orthofed("run", str(path), "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = last_json_line(done.stdout)["run_id"]
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
    client, run = mlflow_run(f"sqlite:///{runs_dir.resolve() / MLFLOW_STORE}", "quick", run_id)
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
