"""server.orchestration.processes: Flower's commands from this environment, and the
kill of whole process trees (no Flower needed: shells and sleeps stand in)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from server.orchestration.processes import (
    BIN_DIR,
    bin_path_first,
    console_script,
    kill_trees,
    wait_dead,
)

# A parent that starts a child that starts a grandchild, all sleeping: a process tree
# like the SuperLink's (superexec -> flwr-simulation -> raylet -> workers).
TREE = 'sleep 300 & sh -c "sleep 300 & sleep 300; true" & wait'


def start_tree() -> subprocess.Popen:
    parent = subprocess.Popen(["sh", "-c", TREE], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(parent.pid).children(recursive=True)) < 4:
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.02)
    return parent


def running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_kill_trees_kills_every_descendant_of_every_process_at_once() -> None:
    trees = [start_tree(), start_tree()]
    pids = [p.pid for t in trees for p in [psutil.Process(t.pid),
                                          *psutil.Process(t.pid).children(recursive=True)]]
    assert len(pids) == 10
    started = time.monotonic()
    kill_trees([*trees, None])
    assert time.monotonic() - started < 5  # no grace period to sit out
    assert running(pids) == []
    assert all(t.returncode is not None for t in trees)  # our own children reaped


def test_kill_trees_skips_processes_already_reaped() -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    kill_trees([done])  # its pid may belong to someone else by now: never signalled
    assert done.returncode == 0


def test_wait_dead_counts_zombies_as_dead() -> None:
    child = subprocess.Popen(["sleep", "300"])
    child.kill()
    started = time.monotonic()
    wait_dead([psutil.Process(child.pid)], timeout_s=5)  # a zombie until we reap it
    assert time.monotonic() - started < 2
    child.wait()


def test_console_scripts_come_from_this_interpreter() -> None:
    assert Path(console_script("flwr")) == BIN_DIR / "flwr"
    assert console_script("no-such-script-here") == "no-such-script-here"
    path = bin_path_first(os.pathsep.join(["/usr/bin", str(BIN_DIR), "/bin"]))
    assert path.split(os.pathsep) == [str(BIN_DIR), "/usr/bin", "/bin"]
    assert Path(sys.executable).parent == BIN_DIR
