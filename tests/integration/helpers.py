"""Running orthofed and Flower for real, and checking nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from server.orchestration.launcher import free_port
from server.orchestration.processes import is_running
from tests.conftest import ROOT


# Resources of the scenarios the heavier tests build: two CPUs per client, so on CI's two
# cores Ray keeps one ClientApp actor, one process importing torch, transformers, PEFT and
# Opacus per run instead of two (measured: about 18 % less CPU per quick run; the tests
# run two at a time on two cores, so CPU is their time). Tests that need clients to train
# at the same time (a hanging client beside healthy ones, clients on two Ray nodes) keep
# one CPU per client.
ONE_CLIENT_PROCESS = {"num_cpus": 2}


def run_orthofed(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`orthofed ...` in a subprocess, as a user would type it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line or environment mentions `text` (a tmp path)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.environ() if text not in cmdline else {}
            if text in cmdline or any(text in v for v in env.values()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def left_running(text: str, grace_s: float = 10.0) -> list[psutil.Process]:
    """The processes mentioning `text` that are still alive after up to `grace_s`: one
    caught while it exits (listed, then gone or a zombie a moment later) is not left
    running, and only a process that stays alive that long is."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [proc for proc in processes_mentioning(text) if is_running(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def kill_tree_now(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a power cut would."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    kill_all(family)


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    """condition()'s first truthy value, polled; a failed assertion naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(poll)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@contextmanager
def serving(runs_dir: Path, token: str = "it-token", env: dict[str, str] | None = None):
    """`orthofed serve` in its own process (`env`: more ORTHOFED_* settings); stopped
    (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--runs-dir",
         str(runs_dir), "--token", token], cwd=ROOT, start_new_session=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})),
        stdout=subprocess.DEVNULL, stderr=(runs_dir.parent / "serve.log").open("wb"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                (runs_dir.parent / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_gone(pid: int, timeout: float = 60) -> None:
    """Until the run's `orthofed run` process has exited (it is the server's child)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"run process {pid} still alive"
        time.sleep(0.3)


def follow(client: httpx.Client | str, run_id: str, timeout: float = 300) -> list[tuple[str, dict]]:
    """(event, data) of the run's event stream until it ends; `client` an httpx.Client
    (e.g. HTTPS with its CA) or the API's base URL."""
    if isinstance(client, str):
        with httpx.Client(base_url=client) as plain:
            return follow(plain, run_id, timeout)
    events, event = [], None
    with client.stream("GET", f"/runs/{run_id}/events", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event:
                events.append((event, json.loads(line[len("data: "):])))
    return events
