"""Runs sent to a federation that already runs: a SuperLink (deployment engine) and two
warm SuperNodes started here as a user (or compose.yaml) would start them; `orthofed
serve` set to that SuperLink (ORTHOFED_SUPERLINK) trains a posted run on the SuperNodes,
followed to the end over the event stream; `orthofed run --superlink` interrupted with
Ctrl-C stops its run on the SuperLink, which stays up for the next one."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from scenarios.loader import load_scenario
from server.orchestration.launcher import (
    STARTED_RUN,
    flower_env,
    free_port,
    start_superlink,
    start_supernodes,
    stop_tree,
)
from server.runs.layout import RunFolder
from server.runs.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import follow, serving, wait_gone
from tests.integration.test_api_server import TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.long,
              pytest.mark.xdist_group("remote_superlink")]


def two_client_scenario(rounds: int) -> str:
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["name"] = "remote"
    doc["federation"].update(num_clients=2, clients_per_round=2, rounds=rounds, local_steps=10,
                             round_timeout=60.0)
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """(SuperLink address, its folder): a deployment SuperLink and 2 warm SuperNodes on
    loopback, their state and logs in a folder of their own (not a run's)."""
    home = RunFolder.of(tmp_path_factory.mktemp("federation"), "superlink")
    home.path.mkdir(parents=True)
    port = free_port()
    superlink = start_superlink(home, port, simulation=False)
    scenario_file = home.path / "nodes.yaml"
    scenario_file.write_text(two_client_scenario(1))
    nodes = start_supernodes(home, port, load_scenario(scenario_file))
    try:
        yield f"127.0.0.1:{port}", home
    finally:
        for node in nodes:
            stop_tree(node, grace_s=2.0)
        stop_tree(superlink, grace_s=2.0)


def served_messages(home: RunFolder) -> int:
    """Messages the warm SuperNodes have completed so far, from their logs (each line
    appears twice there: Flower's console handler and the log file's)."""
    served = r"\[warm-node\] message (\d+) served in this process: completed"
    return sum(len(set(re.findall(served, home.supernode_log(p).read_text())))
               for p in range(2))


def test_the_api_trains_posted_runs_on_the_federations_supernodes(federation, runs_dir) -> None:
    address, home = federation
    runs_dir.mkdir(parents=True)
    before = served_messages(home)
    with serving(runs_dir, env={"ORTHOFED_SUPERLINK": address}) as base:
        posted = httpx.post(f"{base}/runs", content=two_client_scenario(2),
                            headers={**TOKEN, "Content-Type": "application/yaml"}, timeout=120)
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["id"]
        events = follow(base, run_id)
        store = MetricsStore.in_dir(runs_dir)
        log = (runs_dir / run_id / "orthofed.log").read_text()
        statuses = [d["status"] for e, d in events if e == "status"]
        assert statuses[-1] == "completed", log[-3000:]
        assert f"on the SuperLink at {address}" in log
        rounds = store.rounds(run_id)
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert [d for e, d in events if e == "round"] == rounds
        clients = httpx.get(f"{base}/runs/{run_id}/clients", timeout=60).json()["clients"]
        assert [c["rounds"] for c in clients] == [[1, 2], [1, 2]]
        wait_gone(store.get_run(run_id)["pid"])
    # It trained on the federation's SuperNodes (the partition query and 2 training
    # messages on each), and nothing of Flower was started for the run itself.
    assert served_messages(home) - before == 6
    run_folder = RunFolder.of(runs_dir, run_id)
    assert not run_folder.superlink_log.exists() and not list(run_folder.path.glob("supernode-*"))


def flower_runs(home: RunFolder, run_folder: RunFolder) -> dict[str, str]:
    """{Flower run id: status} on the SuperLink, from `flwr ls --format json`."""
    done = subprocess.run(["flwr", "ls", "orthofed", "--format", "json"], capture_output=True,
                          text=True, env=flower_env(run_folder), cwd=run_folder.path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return {str(r["run-id"]): r["status"] for r in json.loads(done.stdout)["runs"]}


def test_ctrl_c_stops_the_run_on_the_superlink(federation, runs_dir, tmp_path) -> None:
    address, home = federation
    scenario = tmp_path / "remote.yaml"
    scenario.write_text(two_client_scenario(30))
    err_path = tmp_path / "cli.err"
    # Started with SIGINT ignored, as a shell without job control starts a background
    # command: the CLI must still honour it. stderr goes to a file, never a pipe nobody
    # reads while the run goes on.
    with err_path.open("w") as err_file:
        run = subprocess.Popen([sys.executable, "-m", "server.cli", "run", str(scenario),
                                "--runs-dir", str(runs_dir), "--superlink", address],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err_file,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        store = MetricsStore.in_dir(runs_dir)
        deadline = time.monotonic() + 600
        while not (runs := store.list_runs()) or len(store.rounds(runs[0]["id"])) < 2:
            assert run.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.3)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    err = err_path.read_text()
    assert run.returncode == 130, err[-2000:]
    row = store.get_run(runs[0]["id"])
    assert row["status"] == "cancelled" and row["message"] == "interrupted by the user (Ctrl-C)"
    kept = len(store.rounds(row["id"]))
    run_folder = RunFolder.of(runs_dir, row["id"])
    (flower_id,) = STARTED_RUN.findall(run_folder.flower_log.read_text())
    # Flower's own record of the run: stopped, not still training for nobody.
    deadline = time.monotonic() + 60
    while (status := flower_runs(home, run_folder)[flower_id]) == "running":
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status == "finished:stopped", status
    time.sleep(5)
    assert len(store.rounds(row["id"])) == kept  # nothing more was recorded after the stop
