"""One run of a sweep: `orthofed run FILE --json` (or `orthofed resume RUN_ID --json` for
a run a killed sweep left unfinished) as a child process that can be cancelled.

The child is the ordinary CLI, so a sweep's run is an ordinary run: its own Flower
processes, its row in the store, its folder. Its run id is read from the first line it
prints, so the sweep records it before the run ends (a sweep killed mid-run resumes it).
The child gets SIGTERM if the sweep dies (Linux's parent-death signal), and cleans up
its Flower processes as on Ctrl-C.
"""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.runs.layout import PROJECT_ROOT

# What execute() prints first on stderr (server.orchestration.execution).
RUN_ID_LINE = re.compile(r"^run (\S+): ")
PR_SET_PDEATHSIG = 1
EXIT_INTERRUPTED = 130


@dataclass
class RunJob:
    """One planned run: which study, phase, setting and seed, and its scenario."""

    study: str
    phase: str                       # tune | report
    setting: dict[str, Any]
    seed: int
    document: dict[str, Any]
    digest: str
    trial: Any = None                # the Optuna trial it scores (tune phase)
    run_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop it


@dataclass(frozen=True)
class RunOutcome:
    """How a job ended: its run id (None when it never started), exit code, and the
    last lines it printed on stderr (why it failed)."""

    run_id: str | None
    returncode: int
    error_tail: str


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the sweep's process dies (SIGKILL
    included), so no run trains on for a sweep that is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def command(job: RunJob, scenario_file: Path, runs_dir: Path, resume_id: str | None,
            superlink: str | None) -> list[str]:
    """The CLI command of a job: a fresh run of its file, or the resume of a run."""
    cli = [sys.executable, "-m", "server.cli"]
    target = ["resume", resume_id] if resume_id else ["run", str(scenario_file)]
    where = ["--superlink", superlink] if superlink else []
    return [*cli, *target, "--runs-dir", str(runs_dir), "--json", *where]


def execute_job(job: RunJob, argv: list[str], env: dict[str, str],
                on_run_id: Callable[[RunJob], None]) -> RunOutcome:
    """Run `argv` to its end (or until the job is cancelled: SIGINT, as Ctrl-C);
    `on_run_id(job)` is called as soon as the run id is known."""
    process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    tail: list[str] = []
    ended = threading.Event()
    watcher = threading.Thread(target=_cancel_when_asked, args=(job, process, ended), daemon=True)
    watcher.start()
    for line in process.stderr:  # until the child closes it (it exits)
        match = RUN_ID_LINE.match(line)
        if match and job.run_id is None:
            job.run_id = match.group(1)
            on_run_id(job)
        tail = (tail + [line.rstrip()])[-20:]
    returncode = process.wait()
    ended.set()
    watcher.join()
    return RunOutcome(job.run_id, returncode, "\n".join(tail))


def _cancel_when_asked(job: RunJob, process: subprocess.Popen, ended: threading.Event) -> None:
    """Ctrl-C the child if the job is cancelled before it ends (the child then stops
    its Flower processes and exits 130)."""
    while not ended.wait(0.2):
        if job.cancel.is_set():
            process.send_signal(signal.SIGINT)
            return
