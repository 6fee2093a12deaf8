"""Runs started over HTTP: a queue that executes each in a process of its own.

Each run is its own `python -m server.api.worker run ID` process, or `... resume ID`
for a run that ran before (server.api.worker; its own session, so it and its Flower
processes outlive an API restart and finish writing to the store), with `--superlink
HOST:PORT` when the API sends runs to a federation (ServeSettings.superlink). The queue starts
pending runs oldest first, at most `concurrency` at once, and watches the ones
executing: a run whose process is gone while the store still says pending or running
is marked failed with the reason. State lives in the store only, so a new API process
picks up where the last one stopped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from server.runs.layout import PROJECT_ROOT, RunFolder
from server.runs.resume import resume_refusal
from server.runs.status import ACTIVE, RunStatus
from server.runs.store import MetricsStore


class RunQueue:
    """Start and watch the runs of one runs directory."""

    def __init__(self, store: MetricsStore, runs_dir: Path, concurrency: int = 1,
                 poll_s: float = 0.5, superlink: str | None = None) -> None:
        self.store, self.runs_dir = store, runs_dir.resolve()
        self.superlink = superlink  # None: each run simulates locally
        self.concurrency, self.poll_s = concurrency, poll_s
        self.children: dict[str, subprocess.Popen] = {}  # started by this process
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="run-queue", daemon=True)

    def start(self) -> None:
        self.tick()  # recover from a previous API process before serving
        self.thread.start()

    def stop(self) -> None:
        """Stop watching. Runs keep executing (their processes are their own); the next
        API process adopts them."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a bad tick
                print(f"run queue: {type(exc).__name__}: {exc}", file=sys.stderr)

    def tick(self) -> None:
        """Mark vanished runs failed, then start pending runs while there is room."""
        with self.lock:
            executing = 0
            for run in self.store.list_runs(limit=-1, statuses=ACTIVE, oldest_first=True):
                if run["pid"] is None:
                    continue
                if self._alive(run["id"], run["pid"]):
                    executing += 1
                else:
                    self.store.set_status(run["id"], RunStatus.FAILED, (
                        f"its process (pid {run['pid']}) ended without finishing the run; "
                        f"see {RunFolder.of(self.runs_dir, run['id']).queue_log}"))
            waiting = [r for r in self.store.list_runs(limit=-1, statuses=(RunStatus.PENDING,),
                                                       oldest_first=True) if self._handed(r)]
            for run in waiting[: max(self.concurrency - executing, 0)]:
                self._launch(run)

    def _handed(self, run: dict) -> bool:
        """Whether a pending run is the queue's to start: posted (its scenario file is the
        snapshot the submission wrote) or reopened over HTTP (it started before), and no
        process holds it. A run `orthofed run` just created (a sweep's, a terminal's) is
        pending too until its ServerApp starts: its own process executes it."""
        snapshot = str(RunFolder.of(self.runs_dir, run["id"]).snapshot)
        return run["pid"] is None and (run["started"] is not None
                                       or run["scenario_path"] == snapshot)

    def _launch(self, run: dict) -> None:
        run_id = run["id"]
        folder = RunFolder.of(self.runs_dir, run_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        mode = "run" if run["started"] is None else "resume"  # resume: from its checkpoint
        command = [sys.executable, "-m", "server.api.worker", mode, run_id,
                   "--runs-dir", str(self.runs_dir),
                   *(["--superlink", self.superlink] if self.superlink else [])]
        with folder.queue_log.open("ab") as log:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.children[run_id] = process
        self.store.set_pid(run_id, process.pid)

    def _alive(self, run_id: str, pid: int) -> bool:
        """Whether `pid` is still this run's process (not a reused pid)."""
        child = self.children.get(run_id)
        if child is not None:
            if child.poll() is None:  # poll() also reaps our exited children
                return True
            del self.children[run_id]
            return False
        try:
            return run_id in " ".join(psutil.Process(pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def resume(self, run_id: str) -> str | None:
        """Queue an ended or abandoned run to continue from its newest checkpoint; the
        reason why not, or None when queued."""
        with self.lock:
            run = self.store.get_run(run_id)
            refusal = resume_refusal(run, self.runs_dir)
            if refusal is None and not self.store.reopen(run_id):
                refusal = "it changed state meanwhile; try again"
            return refusal

    def cancel(self, run_id: str) -> bool:
        """Cancel a pending or executing run; False when it had already ended. What was
        recorded stays; the run's process gets SIGTERM and stops its Flower processes."""
        with self.lock:
            run = self.store.get_run(run_id)
            if run is None or run["status"] not in ACTIVE:
                return False
            self.store.set_status(run_id, RunStatus.CANCELLED, "cancelled over HTTP")
            if run["pid"] is not None and self._alive(run_id, run["pid"]):
                try:
                    psutil.Process(run["pid"]).send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            return True
