"""Starting Flower's (and Ray's) commands from this environment, and stopping process
trees.

Console scripts are run from the directory of the running interpreter when they are
there: the Flower of this environment, and no shell shim in between (a pyenv
shim costs a bash, `pyenv exec` and a `uname` per command, about 0.2 s each, and a run
starts four: flwr, flower-superlink, flower-superexec, flwr-simulation; the last two
are found on PATH by Flower, hence `bin_path_first`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script(name: str) -> str:
    """The path of the console script `name` (flwr, flower-superlink, ray, ...) beside
    this interpreter, else `name` to be found on PATH."""
    path = BIN_DIR / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else name


def bin_path_first(path: str) -> str:
    """PATH `path` with this interpreter's directory first, so the processes Flower
    starts by name (flower-superexec, flwr-simulation) are this environment's."""
    rest = [p for p in path.split(os.pathsep) if p and Path(p) != BIN_DIR]
    return os.pathsep.join([str(BIN_DIR), *rest])


def stop_tree(process: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """Stop `process` and every descendant: SIGTERM, then SIGKILL after `grace_s`."""
    if process is None:
        return
    try:
        root = psutil.Process(process.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    process.poll()


def kill_trees(processes: Iterable[subprocess.Popen | None], wait_s: float = 5.0) -> None:
    """SIGKILL every process of `processes` and all their descendants, at once.

    For processes whose work is over (the ServerApp recorded the run's end) or must end
    now (Ctrl-C): on SIGTERM Ray's raylet and flwr-simulation linger about 5 s and the
    ClientApp actors not at all, so a grace period only ever ends in SIGKILL. Each
    process is stopped (SIGSTOP) before its children are listed, so none can start one
    that escapes the list (a raylet starting a worker at that moment)."""
    processes = list(processes)
    roots = []
    for process in processes:
        if process is not None and process.poll() is None:  # not reaped: its pid is its own
            try:
                roots.append(psutil.Process(process.pid))
            except psutil.NoSuchProcess:
                pass
    family = _freeze(roots)
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    wait_dead(family, wait_s)
    for process in processes:
        if process is not None:
            try:
                process.wait(timeout=wait_s)  # reap our own children
            except subprocess.TimeoutExpired:
                pass


def wait_dead(family: list[psutil.Process], timeout_s: float) -> None:
    """Until every process of `family` is gone or a zombie (dead: only its parent's
    wait is missing; an orphan's new parent, init, may reap it a second later)."""
    deadline = time.monotonic() + timeout_s
    alive = family
    while alive and time.monotonic() < deadline:
        alive = [proc for proc in alive if is_running(proc)]
        if alive:
            time.sleep(0.01)


def is_running(proc: psutil.Process) -> bool:
    """Alive: neither gone nor a zombie (a zombie is dead, only its parent's wait is missing)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _freeze(roots: list[psutil.Process]) -> list[psutil.Process]:
    """`roots` and all their descendants, each SIGSTOPped before its children are read."""
    family: dict[int, psutil.Process] = {}
    frontier = roots
    while frontier:
        children = []
        for proc in frontier:
            if proc.pid in family:
                continue
            family[proc.pid] = proc
            try:
                proc.send_signal(signal.SIGSTOP)
                children += proc.children()
            except psutil.NoSuchProcess:
                pass
        frontier = children
    return list(family.values())
