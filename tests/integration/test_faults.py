"""Client faults injected into real runs (Flower's simulation engine, the real runner,
store and ServerApp): a client that raises, one that hangs past the round timeout, one
whose process dies. Each is recorded as a failure of its round, naming the partition
and why; the round completes with the others when at least federation.min_replies
replied, else the run fails saying which clients failed and why.

The faults come from tests/integration/faulty_app: orthofed's own ClientApp behind a
wrapper that misbehaves in the (partition, round)s the run config names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scenarios.loader import load_scenario
from server.orchestration.launcher import launch
from server.runs.store import MetricsStore
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

FAULTY_APP = Path(__file__).parent / "faulty_app"
PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "orthofed-faulty"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "orthofed"

[tool.flwr.app.components]
serverapp = "server.serverapp.app:app"
clientapp = "faulty_client:app"

[tool.flwr.app.config]
scenario = ""
run-id = ""
runs-dir = ""
resume = false
faults = "{faults}"
hang-seconds = {hang_seconds}
"""


def run_with_faults(tmp_path: Path, runs_dir: Path, faults: str, rounds: int,
                    min_replies: int, round_timeout: float = 30.0) -> str:
    """quick.yaml (3 clients, all sampled each round) through the faulty app; run id.
    The round timeout leaves room for round 1's slowest healthy client: on CI's two
    busy cores that round took over 15 s, and every client then counted as hung."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(FAULTY_APP / "faulty_client.py", app)
    (app / "pyproject.toml").write_text(PYPROJECT.format(faults=faults,
                                                         hang_seconds=3 * round_timeout))
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["federation"].update(rounds=rounds, round_timeout=round_timeout,
                             min_replies=min_replies)
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(doc))
    scenario = load_scenario(path)
    MetricsStore.in_dir(runs_dir).create_run("faulty", scenario.name,
                                             scenario.model_dump(mode="json"), str(path))
    launch(scenario, path, "faulty", runs_dir, app_dir=app)
    return "faulty"


def test_a_raising_and_a_hanging_client_are_recorded_and_the_rounds_go_on(
        tmp_path, runs_dir) -> None:
    run_id = run_with_faults(tmp_path, runs_dir, "0@1=raise,1@2=hang", rounds=2,
                             min_replies=1)
    store = MetricsStore.in_dir(runs_dir)
    run = store.get_run(run_id)
    assert run["status"] == "completed", run["message"]
    rounds = store.rounds(run_id)
    assert [(r["train"].get("clients"), r["train"].get("failures")) for r in rounds[1:]] == [
        (2, 1), (2, 1)]
    assert all(r["eval"] for r in rounds)  # every round evaluated: the others' update used
    failures = [(f["round"], f["partition_id"], f["reason"]) for f in store.failures(run_id)]
    assert failures == [
        (1, 0, "the ClientApp raised RuntimeError: injected fault in round 1"),
        (2, 1, "no reply within the round timeout (the node disappeared or hung)"),
    ]
    trained = {(r["round"], r["partition_id"]) for r in store.client_rounds(run_id)}
    assert trained == {(1, 1), (1, 2), (2, 0), (2, 2)}


def test_a_client_whose_process_dies_fails_a_round_that_needs_every_reply(
        tmp_path, runs_dir) -> None:
    run_id = run_with_faults(tmp_path, runs_dir, "2@1=exit", rounds=2, min_replies=3)
    store = MetricsStore.in_dir(runs_dir)
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert run["message"].startswith(
        "AllClientsFailed: round 1: 2 replied, fewer than federation.min_replies = 3: "
        "partition 2 (node ")
    assert run["message"].endswith("): the client's process died (Ray ActorDiedError: its "
                                   "worker exited unexpectedly, e.g. killed or out of memory)")
    # What the two healthy clients sent in that round is recorded; nothing after it.
    assert sorted(r["partition_id"] for r in store.client_rounds(run_id)) == [0, 1]
    assert [r["round"] for r in store.rounds(run_id)] == [0]
