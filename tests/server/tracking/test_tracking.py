"""server.tracking: what TensorBoard's event files and MLflow's store hold after a run
is recorded through TrackedStore, read back with the libraries' own readers and
compared with orthofed's store; a tracker that fails never fails the recording; and
the tracking section's validation."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from scenarios.tracking_spec import TrackingSpec
from server.runs.continual import task_summary
from server.runs.store import STORE_FILE
from server.tracking.tracked_store import TENSORBOARD_DIR, TrackedStore, open_trackers
from tests.conftest import ROOT
from tests.server.runs.stored import finished_run

SCENARIO = {"name": "done", "seed": 3, "federation": {"rounds": 3, "num_clients": 1},
            "model": {"name": "tiny-bert", "lora": {"target_modules": ["query", "value"]}}}


def tensorboard_scalars(log_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file under `log_dir`, by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]}


def mlflow_run(uri: str, experiment: str, run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               filter_string=f"tags.`orthofed.run_id` = '{run_id}'")
    assert len(found) == 1
    return client, found[0]


def expected_scalars(store, run_id: str) -> dict[str, dict[int, float]]:
    """What the trackers should hold, computed from orthofed's own store."""
    expected: dict[str, dict[int, float]] = {}
    for row in store.rounds(run_id):
        for section in ("train", "eval"):
            for key, value in row[section].items():
                expected.setdefault(f"{section}/{key}", {})[row["round"]] = value
    for row in store.client_rounds(run_id):
        for key, value in row["metrics"].items():
            expected.setdefault(f"clients/{row['partition_id']}/{key}", {})[row["round"]] = value
        expected.setdefault("failures", {})[row["round"]] = 0
    tasks = task_summary(store.task_evals(run_id))
    for step, row in enumerate([tasks["initial"], *tasks["matrix"]]):
        for name, accuracy in zip(tasks["names"], row):
            expected.setdefault(f"tasks/{name}/accuracy", {})[step] = accuracy
    # AA, BWT, FWT after each task, from the matrix as it stood then
    for done in (1, 2):
        rows = [r for r in store.task_evals(run_id) if r["after_task"] < done]
        for key, value in task_summary(rows).items():
            if key in ("aa", "bwt", "fwt") and value is not None:
                expected.setdefault(f"continual/{key}", {})[done] = value
    return expected


def test_tensorboard_and_mlflow_hold_what_the_store_holds(tmp_path) -> None:
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "done-1"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = TrackingSpec(tensorboard=True, mlflow=True, mlflow_uri=uri)
    trackers = open_trackers(spec, SCENARIO, "done-1", run_dir, runs_dir)
    assert [t.name for t in trackers] == ["tensorboard", "mlflow"]
    store = TrackedStore(runs_dir / STORE_FILE, trackers, SCENARIO)
    finished_run(store, "done-1")
    store.close_trackers("completed")

    expected = expected_scalars(store, "done-1")
    assert {"continual/aa", "continual/bwt", "continual/fwt", "tasks/b/accuracy",
            "clients/0/epsilon", "eval/eval-acc"} <= set(expected)  # not vacuous
    board = tensorboard_scalars(run_dir / TENSORBOARD_DIR)
    assert set(board) == set(expected)
    for tag, steps in expected.items():
        assert board[tag] == pytest.approx(steps, rel=1e-6), tag  # event files are float32

    client, run = mlflow_run(uri, "done", "done-1")
    assert run.info.run_name == "done-1" and run.info.status == "FINISHED"
    assert run.data.params["federation.rounds"] == "3"
    assert run.data.params["model.lora.target_modules"] == '["query", "value"]'
    for tag, steps in expected.items():
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert history == pytest.approx(steps, rel=1e-12), tag


def test_a_resumed_run_logs_into_its_earlier_mlflow_run(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = TrackingSpec(mlflow=True, mlflow_uri=uri, mlflow_experiment="cmp")
    for round_, status in ((1, "failed"), (2, "completed")):  # a run, then its resume
        store = TrackedStore(tmp_path / STORE_FILE,
                             open_trackers(spec, SCENARIO, "r-1", tmp_path / "r-1", tmp_path),
                             SCENARIO)
        store.record_round("r-1", round_, 0, eval={"eval-acc": 0.1 * round_})
        store.close_trackers(status)
    client, run = mlflow_run(uri, "cmp", "r-1")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/eval-acc")] == [1, 2]


class Broken:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def scalars(self, values, step) -> None:
        self.calls += 1
        raise ConnectionError("tracking server went away")

    def close(self, status) -> None:
        raise ConnectionError("still away")


def test_a_failing_tracker_is_dropped_and_the_store_keeps_everything(tmp_path) -> None:
    broken = Broken()
    store = TrackedStore(tmp_path / STORE_FILE, [broken], SCENARIO)
    finished_run(store, "done-1")
    store.close_trackers("completed")  # raises inside: logged only
    assert broken.calls == 1  # tried once, then off for the rest of the run
    assert [r["round"] for r in store.rounds("done-1")] == [0, 1, 2, 3]
    assert len(store.task_evals("done-1")) == 6


def test_an_unreachable_tracking_server_does_not_stop_the_recording(tmp_path) -> None:
    spec = TrackingSpec(mlflow=True, mlflow_uri="http://127.0.0.1:9")  # discard port: refused
    trackers = open_trackers(spec, SCENARIO, "done-1", tmp_path / "done-1", tmp_path)
    assert trackers == []  # could not start: logged, left out
    store = TrackedStore(tmp_path / STORE_FILE, trackers, SCENARIO)
    finished_run(store, "done-1")
    assert len(store.rounds("done-1")) == 4


def test_mlflow_settings_without_mlflow_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"tracking\.mlflow_uri: only used with "
                       r"tracking\.mlflow: true \(got 'sqlite:///x.db' with mlflow off\)"):
        TrackingSpec(mlflow_uri="sqlite:///x.db")


def test_a_tracker_whose_library_is_missing_is_refused_at_validation(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ValidationError, match=r"tracking\.mlflow: needs the mlflow package, "
                       r"which is not installed: pip install 'orthofed\[tracking\]'"):
        TrackingSpec(mlflow=True)
    assert TrackingSpec(tensorboard=True).tensorboard  # the other one is there


def test_a_run_without_tracking_imports_no_tracking_library() -> None:
    """The quick start's ServerApp never pays for TensorBoard or MLflow."""
    code = ("import sys; import server.serverapp.app; "
            "from scenarios.loader import load_scenario; "
            "from server.tracking.tracked_store import open_trackers; "
            "s = load_scenario('scenarios/quick.yaml'); "
            "assert open_trackers(s.tracking, {}, 'r', None, None) == []; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_task_name_mlflow_would_refuse_is_logged_under_a_safe_key(tmp_path) -> None:
    from server.tracking.mlflow_tracker import MlflowTracker, metric_key

    assert metric_key("tasks/yelp:polarity (v2)/accuracy") == "tasks/yelp:polarity _v2_/accuracy"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "odd", "r-1", SCENARIO)
    tracker.scalars({"tasks/yelp (v2)/accuracy": 0.5}, 1)  # MLflow refuses parentheses
    tracker.close("completed")
    client, run = mlflow_run(uri, "odd", "r-1")
    assert [m.value for m in client.get_metric_history(run.info.run_id,
                                                       "tasks/yelp _v2_/accuracy")] == [0.5]
