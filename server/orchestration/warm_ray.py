"""One local Ray for many simulation runs: start it once, pass its address to every run.

A simulation run without RAY_ADDRESS starts a Ray of its own (GCS, raylet, dashboard
head and agents, log monitor) and the launcher kills it at the end: a few seconds of
start-up and a few seconds of CPU per run. Given RAY_ADDRESS, Flower's simulation joins
that Ray instead (its clients become the cluster's workers for the run, and leave with
it); the ClientApps still start afresh in each run (a Ray job's workers are its own).

    with warm_ray(num_cpus=2) as env:          # {"RAY_ADDRESS": "127.0.0.1:PORT"}
        for file in scenario_files:
            subprocess.run(["orthofed", "run", file], env={**os.environ, **env})

Runs that share one Ray at the same time each size their actor pool to the whole
cluster (Flower's pool_size_from_resources), so the second waits for the first's
actors: give each of N parallel workers its own warm Ray with num_cpus its share of the
cores. bench/startup_reuse.py measures the saving per run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from server.orchestration.processes import console_script, free_port, kill_trees, wait_dead

STARTUP_TIMEOUT_S = 120.0
# What `ray start` prints once every process of the node runs (ray 2.x, scripts.py).
STARTED = "Ray runtime started"


@contextmanager
def warm_ray(num_cpus: int | None = None, num_gpus: int | None = None,
             timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[dict[str, str]]:
    """A local Ray head (`ray start --head --block`) on free ports, dashboard off,
    `num_cpus`/`num_gpus` its resources (None: Ray detects them); yields the environment
    to add to each run's ({"RAY_ADDRESS": ...}). At exit, also when the body raises,
    every process of it is killed by PID (never `ray stop`, which would stop every Ray
    of the machine) and its temp dir removed."""
    # Short and private: Ray's socket paths must stay under 107 characters, and every
    # process of this Ray names the dir on its command line.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port = free_port()
    log_path = Path(temp) / "ray-start.log"
    command = [
        console_script("ray"), "start", "--head", "--block", f"--port={port}",
        f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        *([f"--num-cpus={num_cpus}"] if num_cpus is not None else []),
        *([f"--num-gpus={num_gpus}"] if num_gpus is not None else []),
    ]
    with log_path.open("ab") as log:
        head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_started(head, log_path, timeout_s)
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        kill_trees([head])
        _kill_mentioning(temp)  # a worker orphaned before the end (its raylet gone)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_started(head: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Return once `ray start` says the node runs; a RuntimeError with its log's tail
    when it exits first or takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while STARTED not in log_path.read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with {head.returncode}" if head.returncode is not None
                   else f"did not start within {timeout_s:.0f} s")
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"ray start --head {why}: {tail}")
        time.sleep(0.1)


def _kill_mentioning(text: str) -> None:
    """SIGKILL live processes whose command line mentions `text` (this Ray's temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(proc.info["cmdline"] or []):
                proc.kill()
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    wait_dead(found, 5.0)
