"""A simulation on an existing Ray cluster of two hosts: `ray start --head` on one host
(a network namespace), a Ray worker node on another; `orthofed run` with RAY_ADDRESS
places its clients on both nodes (each client's per-round metrics name the node it ran
on), starts no Ray of its own, never shuts the cluster down, and leaves it running for
the next run. Skipped, saying why, where network namespaces cannot be made.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest
import yaml

from server.runs.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.netns import Hosts, namespaces_problem

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.xdist_group("ray-cluster")]
RAY_PORT = 6379


@pytest.fixture
def cluster(tmp_path):
    problem = namespaces_problem()
    if problem:
        pytest.skip(problem)
    hosts = Hosts(["head", "worker"]).up()
    # Ray's socket paths must stay under 107 characters: a short temp dir of its own.
    temp = f"/tmp/ray-{hosts.tag}"
    head = f"{hosts.address['head']}:{RAY_PORT}"
    try:
        for host, flags in (("head", ["--head", f"--port={RAY_PORT}", "--num-cpus=1",
                                      f"--temp-dir={temp}", "--include-dashboard=false"]),
                            ("worker", [f"--address={head}", "--num-cpus=2"])):
            done = hosts.run(host, ["ray", "start", *flags, "--disable-usage-stats",
                                    f"--node-ip-address={hosts.address[host]}"], timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert wait_nodes(hosts, head, 2), "the worker node did not join the cluster"
        yield hosts, head
    finally:
        hosts.down()  # kills every process of both hosts: the cluster with them
        shutil.rmtree(temp, ignore_errors=True)


def alive_nodes(hosts: Hosts, head: str) -> int:
    status = hosts.run("head", ["ray", "status", f"--address={head}"], timeout=60)
    if status.returncode != 0 or "Active:" not in status.stdout:
        return 0
    active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


def wait_nodes(hosts: Hosts, head: str, count: int, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while alive_nodes(hosts, head) != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def test_clients_run_on_both_nodes_and_the_cluster_stays_up(cluster, tmp_path) -> None:
    hosts, head = cluster
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["federation"].update(rounds=1, local_steps=5)
    scenario = tmp_path / "cluster.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    runs_dir = tmp_path / "runs"
    for attempt in range(2):  # a second run finds the cluster as the first left it
        done = hosts.run("head", [sys.executable, "-m", "server.cli", "run", str(scenario),
                                  "--runs-dir", str(runs_dir)], timeout=600, cwd=ROOT,
                         env=dict(os.environ, RAY_ADDRESS=head, HF_HUB_OFFLINE="1"))
        assert done.returncode == 0, done.stderr[-3000:]
        assert wait_nodes(hosts, head, 2, timeout=30), f"run {attempt}: the cluster shrank"
    store = MetricsStore.in_dir(runs_dir)
    runs = store.list_runs(limit=10)
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs)
    for run in runs:
        nodes = {r["metrics"]["node"] for r in store.client_rounds(run["id"])}
        # 3 clients of 1 CPU each on a head of 1 CPU and a worker of 2: both nodes train.
        assert nodes == {hosts.address["head"], hosts.address["worker"]}, nodes
