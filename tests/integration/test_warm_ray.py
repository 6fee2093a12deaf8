"""server.orchestration.warm_ray: one local Ray that consecutive runs join through
RAY_ADDRESS, and that its context stops, every process of it, at exit: after a normal
body and after one that raises."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from server.orchestration.warm_ray import warm_ray
from server.runs.store import MetricsStore
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def head_of(address: str) -> psutil.Process:
    """The `ray start --head` process serving `address` (127.0.0.1:PORT)."""
    port = address.rpartition(":")[2]
    for proc in psutil.process_iter(["cmdline"]):
        line = proc.info["cmdline"] or []
        if "start" in line and "--head" in line and f"--port={port}" in line:
            return proc
    raise AssertionError(f"no `ray start --head --port={port}` process")


def family(proc: psutil.Process) -> dict[int, str]:
    """pid -> command line of `proc` and its descendants (a Ray worker's is its title,
    `ray::ClientAppActor`; its process name is cut at 15 characters)."""
    found = {}
    try:
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for p in [proc, *children]:
        try:
            found[p.pid] = " ".join(p.cmdline()) or p.name()
        except psutil.Error:
            pass
    return found


def live(pids: set[int], timeout_s: float = 15.0) -> list[str]:
    """Those of `pids` still running (zombies count as gone) after waiting up to
    `timeout_s` for processes on their way out."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def run_watching(runs_dir: Path, env: dict[str, str], head: psutil.Process,
                 seen: dict[int, str]) -> subprocess.CompletedProcess:
    """`orthofed run scenarios/quick.yaml` with `env`, adding the warm Ray's processes
    to `seen` while it runs."""
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", "scenarios/quick.yaml",
                             "--runs-dir", str(runs_dir)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            seen.update(family(head))
            time.sleep(0.2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    finally:
        proc.kill()
        proc.wait()


def test_two_runs_join_one_warm_ray_and_nothing_of_it_is_left(runs_dir) -> None:
    seen: dict[int, str] = {}
    with warm_ray(num_cpus=2) as env:
        head = head_of(env["RAY_ADDRESS"])
        temp = next(a.split("=", 1)[1] for a in head.cmdline() if a.startswith("--temp-dir="))
        for _ in range(2):
            before = {pid for pid, name in seen.items() if "ClientAppActor" in name}
            done = run_watching(runs_dir, env, head, seen)
            assert done.returncode == 0, done.stderr[-3000:]
            actors = {pid for pid, name in seen.items() if "ClientAppActor" in name} - before
            assert actors, f"the run's clients did not run on the warm Ray: {seen}"
        assert head.is_running()  # the Ray outlived both runs
    runs = MetricsStore.in_dir(runs_dir).list_runs()
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert live(set(seen)) == []
    assert not Path(temp).exists()


def test_the_warm_ray_is_stopped_when_the_body_raises() -> None:
    seen: dict[int, str] = {}
    with pytest.raises(RuntimeError, match="the body failed"):
        with warm_ray(num_cpus=1) as env:
            head = head_of(env["RAY_ADDRESS"])
            seen.update(family(head))
            assert any("raylet" in name for name in seen.values()), seen
            raise RuntimeError("the body failed")
    assert live(set(seen)) == []
