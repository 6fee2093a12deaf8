"""Ray under a simulation: a local run starts Ray without its dashboard, and a run given
RAY_ADDRESS joins that Ray cluster instead of starting its own, and leaves it running.

Flower 1.42's RayBackend calls `ray.init(include_dashboard=False)` unless the backend's
init args say otherwise; Ray 2.55 then still starts its dashboard head, in `--minimal`
mode, which serves no web UI. The first test holds both facts against the processes of a
real run, so a change of either library's default shows here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from server.orchestration.launcher import free_port
from tests.conftest import ROOT
from tests.integration.helpers import kill_all, processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.long]
RAY_DASHBOARD_PORT = 8265  # Ray's default


def start_run(runs_dir, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "scenarios/quick.yaml", "--runs-dir",
         str(runs_dir)], cwd=ROOT, env=dict(os.environ, **(env or {})),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def listening_ports(processes: list[psutil.Process]) -> set[int]:
    ports = set()
    for process in processes:
        try:
            ports |= {c.laddr.port for c in process.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return ports


def test_a_local_simulation_starts_ray_without_its_dashboard(runs_dir) -> None:
    run = start_run(runs_dir)
    try:
        deadline, seen = time.monotonic() + 300, []
        while time.monotonic() < deadline and run.poll() is None:
            seen = [p for p in tree(run.pid) if "raylet" in cmdline(p)]
            if seen:
                break
            time.sleep(0.2)
        assert seen, "the run ended without a raylet: it did not start its own Ray"
        time.sleep(2)  # Ray starts its dashboard head beside the raylet
        processes = tree(run.pid)
        dashboards = [cmdline(p) for p in processes if "dashboard/dashboard.py" in cmdline(p)]
        assert all("--minimal" in line for line in dashboards), dashboards
        assert RAY_DASHBOARD_PORT not in listening_ports(processes)
        # Seen: stop it (Ctrl-C) rather than train to the end, which other tests check.
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130, run.stderr.read()[-2000:]
    finally:
        run.kill()
        run.wait()


@pytest.fixture
def ray_cluster():
    """`ray start --head` on a free port, in its own short temp dir (Ray's socket paths
    must stay under 107 characters); every process of it killed by that dir afterwards
    (never `ray stop`, which stops every Ray of the machine, other tests' included)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port = free_port()
    started = subprocess.run(
        ["ray", "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}",
         "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}", temp
    finally:
        kill_all(processes_mentioning(temp))
        shutil.rmtree(temp, ignore_errors=True)


def worker_logs(temp: str) -> set[str]:
    logs = Path(temp) / "session_latest" / "logs"
    return {path.name for path in logs.iterdir() if path.name.startswith("worker-")}


def cluster_is_up(address: str, timeout_s: float = 60) -> bool:
    """`ray status` lists an active node (it says "No cluster status" for the first few
    seconds after `ray start`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = subprocess.run(["ray", "status", f"--address={address}"],
                                capture_output=True, text=True, timeout=60)
        if status.returncode == 0 and "Active:" in status.stdout:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def test_a_run_given_ray_address_joins_that_cluster_and_leaves_it_running(
        runs_dir, ray_cluster) -> None:
    address, temp = ray_cluster
    cluster = {p.pid for p in processes_mentioning(temp)}
    assert cluster and cluster_is_up(address)
    before = worker_logs(temp)
    run = start_run(runs_dir, env={"RAY_ADDRESS": address})
    try:
        own_raylets = []
        while run.poll() is None:
            own_raylets += [p.pid for p in tree(run.pid) if "raylet" in cmdline(p)]
            time.sleep(0.2)
        assert run.returncode == 0, run.stderr.read()[-2000:]
    finally:
        run.kill()
        run.wait()
    assert own_raylets == []  # it joined the cluster, it started no Ray of its own
    assert cluster <= {p.pid for p in processes_mentioning(temp)}  # nothing of it stopped
    assert cluster_is_up(address)
    # The clients ran on the cluster: it started workers for them (their logs are its).
    assert worker_logs(temp) - before, sorted(before)
