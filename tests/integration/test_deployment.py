"""Flower's deployment engine on loopback: a SuperLink and one warm SuperNode per
partition (clients.node.warm_node) started by `orthofed run --deployment`; the same seed
gives the same model as the simulation engine, each node serving every message in one
process; a SuperNode killed mid-run and restarted rejoins, and the run finishes with the
failure recorded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from server.orchestration.launcher import stop_tree
from server.runs.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import last_json_line, run_orthofed

pytestmark = [pytest.mark.integration, pytest.mark.long]


def small_scenario(tmp_path, rounds: int, name: str = "deploy", private: bool = False,
                   seeded_noise: bool = False) -> str:
    """quick.yaml with 2 clients and few rounds (each deployment round is a few seconds
    longer than in simulation: Flower's polling, and the gRPC transfers)."""
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["name"] = name
    doc["federation"].update(num_clients=2, clients_per_round=2, rounds=rounds, local_steps=20,
                             round_timeout=60.0)
    if private:
        doc["privacy"] = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0,
                          "reproducible_noise_voids_guarantee": seeded_noise}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_deployment_engine_matches_the_simulation_engine(tmp_path, runs_dir) -> None:
    """Under DP, so the privacy ledger must survive between rounds in each SuperNode's
    context.state as it does in simulation."""
    # Seeded noise, so the two engines can be compared number for number (fresh noise,
    # the default, differs between any two runs by design).
    scenario = small_scenario(tmp_path, rounds=2, private=True, seeded_noise=True)
    results = {}
    for engine, flags in (("simulation", []), ("deployment", ["--deployment"])):
        done = run_orthofed("run", scenario, "--runs-dir", str(runs_dir), "--json", *flags,
                            timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[engine] = last_json_line(done.stdout)
    sim, dep = results["simulation"], results["deployment"]
    assert dep["status"] == "completed" and [r["round"] for r in dep["rounds"]] == [0, 1, 2]
    # Same seed, same partitions, same per-round seeds, same thread count: same numbers.
    for a, b in zip(sim["rounds"], dep["rounds"], strict=True):
        assert b["eval"]["eval-acc"] == a["eval"]["eval-acc"]
        assert b["eval"]["eval-loss"] == pytest.approx(a["eval"]["eval-loss"], rel=1e-5)
    for partition in ("0", "1"):
        assert dep["clients"][partition]["epsilon"] == pytest.approx(
            sim["clients"][partition]["epsilon"], rel=1e-12)
    spent = [r["metrics"]["epsilon"] for r in MetricsStore.in_dir(runs_dir).client_rounds(
        dep["run_id"]) if r["partition_id"] == 0]
    assert len(spent) == 2 and 0 < spent[0] < spent[1] <= 8.0  # the ledger carried over
    run_dir = runs_dir / dep["run_id"]
    assert sorted(p.name for p in run_dir.glob("supernode-*.log")) == [
        "supernode-0.log", "supernode-1.log"]
    # warm nodes: one process served every message of the run (the partition query and
    # a training message per round), none went to a fresh flwr-clientapp process
    for partition in (0, 1):
        log = (run_dir / f"supernode-{partition}.log").read_text()
        # (logged before each reply is pushed: a run's processes are killed as it ends)
        assert "[warm-node] message 3 served in this process: " in log, log[-2000:]
        assert "[warm-node] message 4 served" not in log
        assert "fresh flwr-clientapp" not in log


def supernode_of(partition: int, run_dir) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = proc.info["cmdline"] or []
            # the warm node (python -m clients.node.warm_node), whose SuperNode is its child
            if ("clients.node.warm_node" in cmdline[:3]
                    and f"partition-id={partition} num-partitions=2" in cmdline
                    and proc.info["cwd"] == str(run_dir)):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_a_supernode_killed_mid_run_rejoins_and_the_run_finishes(tmp_path, runs_dir) -> None:
    """Under DP: the restarted SuperNode has lost its context.state, and carries on
    spending from the ledger the server sends back (its own last report), so its
    epsilon keeps growing instead of starting again from zero."""
    scenario = small_scenario(tmp_path, rounds=4, name="restart", private=True)
    command = [sys.executable, "-m", "server.cli", "run", scenario, "--runs-dir", str(runs_dir),
               "--json", "--deployment"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    restarted: list[subprocess.Popen] = []
    try:
        store = MetricsStore.in_dir(runs_dir)
        deadline = time.monotonic() + 400
        while not (runs := store.list_runs()) or len(store.rounds(runs[0]["id"])) < 2:
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        run_dir = runs_dir / runs[0]["id"]
        node = supernode_of(1, run_dir)
        assert node is not None
        node_command, node_env = node.cmdline(), node.environ()
        for proc in [node, *node.children(recursive=True)]:
            proc.send_signal(signal.SIGKILL)  # the SuperNode and its ClientApp, mid-run
        time.sleep(3)
        with (run_dir / "supernode-1-restarted.log").open("ab") as log:
            restarted.append(subprocess.Popen(node_command, env=node_env, cwd=run_dir,
                                              stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(timeout=60)
        for proc in restarted:
            stop_tree(proc, grace_s=2.0)  # the SuperNode and any ClientApp it started
    summary = last_json_line(out)
    assert summary["status"] == "completed", summary["message"]
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3, 4]
    partition_1 = summary["clients"]["1"]
    assert partition_1["rounds"][-1] == 4, partition_1  # back after the restart
    assert len(partition_1["rounds"]) < 4 and partition_1["failures"] >= 1, partition_1
    # its failures are its own: attributed by the node it was sampled as, with a reason
    assert len(partition_1["reasons"]) == partition_1["failures"] and all(partition_1["reasons"])
    spent = [r["metrics"]["epsilon"] for r in MetricsStore.in_dir(runs_dir).client_rounds(
        summary["run_id"]) if r["partition_id"] == 1]
    assert len(spent) == len(partition_1["rounds"]) and spent == sorted(set(spent)), spent
