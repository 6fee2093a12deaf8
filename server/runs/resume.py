"""Whether a run may be resumed, and the scenario file it resumes with.

A run resumes from its newest checkpoint (server.serverapp.checkpoint) when it ended without
completing (failed, cancelled) or was abandoned: still `running` in the store but no
process of it left (its machine crashed, it was SIGKILLed). It resumes with the
scenario it was validated with, as the store holds it, not with whatever its file says
now: written to runs/<id>/scenario.yaml for the ServerApp and clients.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from server.runs.status import RunStatus



# What a run's processes run: orthofed itself (the CLI, or the API queue's worker),
# Flower's, Ray's (a shell or an editor that merely names the run folder does not keep a
# run alive).
RUN_PROGRAMS = ("server.cli", "server.api.worker", "orthofed", "flower-", "flwr", "ray")


def runs_our_program(cmdline: list[str]) -> bool:
    """Whether a command line runs one of RUN_PROGRAMS (or a program inside Ray's
    package): judged by the program and, for an interpreter, the script or module it runs
    (the first three words, by their last path component), not by the arguments, where
    a folder named like one (a checkout in ~/orthofed, `tail -f .../flower.log`, `tee`)
    would pass for it."""
    words = cmdline[:3]
    names = [Path(word).name for word in words]
    return (any(name.startswith(program) for name in names for program in RUN_PROGRAMS)
            or any("/ray/" in word for word in words))  # Ray's binaries (gcs_server, ...)


def run_processes(run_id: str, run_dir: Path) -> list[psutil.Process]:
    """Live processes of a run other than this one: orthofed, Flower or Ray processes
    whose command line names the run (its `orthofed` process, its SuperLink's database
    path) or that work in its folder (SuperNodes, Ray workers). This process's
    ancestors are not the run either: they are what started it (`timeout 600 orthofed
    resume ID`, nohup, `bash -c`, a scheduler, the API serving the queue), and their
    command lines may name the run."""
    me = psutil.Process()
    ignored = {me.pid, *(parent.pid for parent in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if proc.info["pid"] in ignored or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue  # a zombie is dead, only not yet reaped by its parent
            words = proc.info["cmdline"] or []
            ours = run_id in " ".join(words) or proc.info["cwd"] == str(run_dir)
            if ours and runs_our_program(words):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def resume_refusal(run: dict, runs_dir: Path) -> str | None:
    """Why `run` (a store row) cannot be resumed now, or None when it can. Whatever the
    store says, a run with live processes (one still stopping after a cancel, one the
    store lost track of) is not resumed under them."""
    status = run["status"]
    if status == RunStatus.COMPLETED:
        return "it completed: there is nothing to resume"
    if status == RunStatus.PENDING:
        return "it is already waiting to run"
    alive = run_processes(run["id"], runs_dir / run["id"])
    if alive:
        pids = ", ".join(str(p.pid) for p in alive[:5])
        return f"it is still running (pids {pids}); cancel it or wait for it to stop"
    return None

