"""Sweeps started over HTTP: one `orthofed sweep FILE --workers N` process each.

A posted sweep's file goes to RUNS_DIR/sweeps/NAME/sweep.yaml and runs as
`python -m server.cli sweep FILE --runs-dir RUNS_DIR --workers N` (server.cli.sweep), in
a session of its own, its output in RUNS_DIR/sweeps/NAME/sweep.log; the sweep's runs
are that process's `orthofed run` children, ordinary runs of the store (not the run
queue's: they do not count against its concurrency). The sweep records its own status;
this module refuses a second start of a running sweep, cancels one (SIGINT: it cancels
its runs and records 'cancelled'), marks failed a sweep whose process ended without
recording an end, and stops the sweeps it started when the API shuts down (they resume
when posted again: a completed run is never run again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from server.api.submission import SubmissionError
from server.api.sweep_submission import SweepSubmission
from server.runs.layout import PROJECT_ROOT
from server.runs.resume import runs_our_program
from server.runs.status import RunStatus
from server.runs.sweep_store import SweepStore

STOP_WAIT_S = 60.0  # a sweep stopping Ctrl-Cs its runs, which stop their Flower processes


class SweepProcesses:
    """The `orthofed sweep` processes of one runs directory."""

    def __init__(self, store: SweepStore, runs_dir: Path, workers: int = 1,
                 superlink: str | None = None) -> None:
        self.store, self.runs_dir = store, runs_dir.resolve()
        self.workers, self.superlink = workers, superlink
        self.children: dict[str, subprocess.Popen] = {}  # by sweep name: started here
        self.lock = threading.Lock()

    def folder(self, name: str) -> Path:
        return self.runs_dir / "sweeps" / name

    def start(self, submission: SweepSubmission) -> None:
        """Write the sweep's file and start its process; a 409 while it runs."""
        name = submission.name
        with self.lock:
            self._reap()
            if self._process(name) is not None:
                raise SubmissionError(409, f"sweep {name!r} is running; cancel it "
                                      f"(POST /sweeps/{name}/cancel) or wait for it to end")
            file = self.folder(name) / "sweep.yaml"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(yaml.safe_dump(submission.document, sort_keys=False))
            command = [sys.executable, "-m", "server.cli", "sweep", str(file),
                       "--runs-dir", str(self.runs_dir), "--workers", str(self.workers),
                       *(["--superlink", self.superlink] if self.superlink else [])]
            process = self.spawn(command, file.parent / "sweep.log")
            self.children[name] = process
            # Recorded now, so GET /sweeps/NAME answers at once; the process records the
            # same when it has checked the file, then its end.
            self.store.start_sweep(name, submission.spec, str(file), process.pid)

    @staticmethod
    def spawn(command: list[str], log: Path) -> subprocess.Popen:
        """Start `command` in a session of its own (a Ctrl-C of the API's terminal is
        not its: stop() stops it, once), its output appended to `log`."""
        with log.open("ab") as out:
            return subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def cancel(self, name: str) -> str | None:
        """SIGINT a running sweep (it cancels its runs, then records 'cancelled'); the
        reason why not, or None when signalled."""
        with self.lock:
            self._reap()
            sweep = self.store.get_sweep(name)
            process = self._process(name)
            if sweep["status"] != RunStatus.RUNNING or process is None:
                return f"it is not running ({sweep['status']})"
            process.send_signal(signal.SIGINT)
            return None

    def reap(self) -> None:
        """Mark failed each sweep the store says is running whose process has ended."""
        with self.lock:
            self._reap()

    def _reap(self) -> None:
        for name in [n for n, p in self.children.items() if p.poll() is not None]:
            del self.children[name]
        for sweep in self.store.list_sweeps():
            if sweep["status"] == RunStatus.RUNNING and self._process(sweep["id"]) is None:
                log = os.path.relpath(self.folder(sweep["id"]) / "sweep.log", self.runs_dir)
                self.store.set_sweep_status(
                    sweep["id"], RunStatus.FAILED, "its process ended without recording "
                    f"an end; see {log} in the runs folder; post it again to resume it")

    def _process(self, name: str) -> subprocess.Popen | psutil.Process | None:
        """The live process of sweep `name`: started here, or (an earlier API process,
        `orthofed sweep` in a terminal) the one the store names."""
        child = self.children.get(name)
        if child is not None and child.poll() is None:
            return child
        sweep = self.store.get_sweep(name)
        return None if sweep is None else sweep_process(sweep["pid"])

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop the sweeps started here (SIGTERM: each cancels its runs and records
        'cancelled'; one that has ended is left to finish writing its report), killing
        any still there after `wait_s`."""
        with self.lock:
            live = {n: p for n, p in self.children.items() if p.poll() is None}
            for name, process in live.items():
                sweep = self.store.get_sweep(name)
                if sweep is None or sweep["status"] == RunStatus.RUNNING:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + wait_s
            for process in live.values():
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._reap()


def sweep_process(pid: int | None) -> psutil.Process | None:
    """The process `pid` if it is alive and runs `orthofed sweep` (not a reused pid)."""
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        if (process.status() != psutil.STATUS_ZOMBIE and "sweep" in cmdline
                and runs_our_program(cmdline)):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return None
