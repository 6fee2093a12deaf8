"""`orthofed sweep FILE`: run a sweep's studies on N workers, tune on validation data,
report on test data, resumable.

Each study (a grid cell and method) is an Optuna study in RUNS_DIR/optuna.sqlite, beside
the run store. A grid search enqueues its settings; random and TPE search ask Optuna's
samplers; a setting (an Optuna trial) runs once per tuning seed and scores the mean of
their validation metric; Optuna's MedianPruner, when asked for, stops a setting whose
rounds fall behind, cancelling its runs. When a study's search ends, the best setting
runs on the report seeds. Runs are ordinary `orthofed run` processes (sweep_jobs), at
most `workers` at a time; a run's scenario digest keys it, so a resumed sweep reruns
nothing that completed and continues what was cut short from its checkpoint.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import yaml
from rich.console import Console

from scenarios.sweep import Sweep, digest, scenario_document
from server.orchestration.sweep_jobs import EXIT_INTERRUPTED, RunJob, command, execute_job
from server.orchestration.sweep_progress import SweepProgress
from server.orchestration.sweep_study import StudyRun, optuna_storage
from server.runs.status import RunStatus
from server.runs.sweep_results import sweep_results
from server.runs.sweep_store import SweepStore

POLL_S = 2.0  # how often running settings are checked for pruning


class SweepRunner:
    """The scheduler: keeps up to `workers` runs going, feeds each study's outcomes
    back to its Optuna study, and records every run in the store."""

    def __init__(self, sweep: Sweep, runs_dir: Path, workers: int, file: Path | None,
                 superlink: str | None = None, console: Console | None = None) -> None:
        self.sweep, self.spec = sweep, sweep.spec
        self.runs_dir, self.workers, self.superlink = runs_dir.resolve(), workers, superlink
        self.file = file
        self.store = SweepStore(self.runs_dir)
        self.folder = self.runs_dir / "sweeps" / self.spec.name
        self.console = console or Console(stderr=True)
        self.running: dict[Future, RunJob] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(self, report: Callable[[], None] | None = None) -> int:
        """Run the sweep to its end, then `report()` (its files are written before the
        sweep is marked finished, so a reader that waits for the status finds them);
        0 when every study reported, 1 when one failed, 130 when interrupted (its runs
        are cancelled and resume later)."""
        self.store.start_sweep(self.spec.name, self.spec.model_dump(mode="json"),
                               str(self.file) if self.file else None, os.getpid())
        storage = optuna_storage(self.runs_dir)
        studies = [StudyRun(study, self.spec, storage) for study in self.sweep.studies]
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupted = False
        with SweepProgress(self.spec.name, studies, self.console) as progress, \
                ThreadPoolExecutor(self.workers, thread_name_prefix="sweep-run") as pool:
            try:
                self.schedule(studies, pool, progress)
            except KeyboardInterrupt:  # before the pool's exit, which waits for its runs
                interrupted = True
                self.cancel_all()
        if interrupted:
            self.store.set_sweep_status(self.spec.name, RunStatus.CANCELLED,
                                        "interrupted; `orthofed sweep FILE` resumes it")
            self.console.print(f"sweep {self.spec.name}: cancelled; run it again to resume")
            return EXIT_INTERRUPTED
        if report is not None:
            report()
        failed = [s.study.key for s in studies if s.phase == "failed"]
        status = RunStatus.FAILED if failed else RunStatus.COMPLETED
        message = f"studies without a result: {', '.join(failed)}" if failed else None
        self.store.set_sweep_status(self.spec.name, status, message)
        return 1 if failed else 0

    def schedule(self, studies: list[StudyRun], pool: ThreadPoolExecutor,
                 progress: SweepProgress) -> None:
        """Until every study is done: start jobs while workers are free, collect the
        ones that end, and let the pruner look at the running settings."""
        while True:
            for study in studies:
                while len(self.running) < self.workers:
                    job = study.next_job(self.spec.name, self.sweep.folder)
                    if job is None:
                        break
                    self.store.record_run(self.spec.name, job.study, job.phase, job.digest,
                                          job.setting, job.seed, "queued")
                    self.running[pool.submit(self.execute, job)] = job
            if not self.running:
                if all(s.phase in ("done", "failed") for s in studies):
                    return
                # next_job moves a study from tuning to its report in one call, so a
                # pass that starts nothing with nothing running means a stuck study.
                stuck = [s.study.key for s in studies if s.phase not in ("done", "failed")]
                raise RuntimeError(f"sweep scheduler: nothing to run for {stuck}")
            finished, _ = wait(self.running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                job = self.running.pop(future)
                status, message = future.result()
                self.store.record_run(self.spec.name, job.study, job.phase, job.digest,
                                      job.setting, job.seed, status, job.run_id, message)
                owner = next(s for s in studies if s.study.key == job.study)
                owner.job_ended(job, status, self.store)
                progress.advance(owner, job, status)
            for study in studies:
                study.check_pruning(self.store.runs)

    def execute(self, job: RunJob) -> tuple[str, str | None]:
        """Run one job (a worker thread): reuse a completed run of the same scenario,
        continue an unfinished one of this sweep, else start it. (status, message)."""
        if job.cancel.is_set():  # its setting was pruned while it waited for a worker
            return "pruned", "stopped by the sweep before it started"
        reused = self.store.completed_run(job.digest)
        if reused is not None:
            job.run_id = reused
            return "completed", "reused a completed run of the same scenario"
        scenario_file = self.folder / "scenarios" / f"{job.digest}.yaml"
        scenario_file.parent.mkdir(parents=True, exist_ok=True)
        scenario_file.write_text(yaml.safe_dump(job.document, sort_keys=False))
        unfinished = self.store.unfinished_run(self.spec.name, job.digest)
        outcome = self.launch(job, scenario_file, unfinished)
        if unfinished is not None and outcome.returncode == 2 and not job.cancel.is_set():
            job.run_id = None  # the cut-short run cannot be resumed: start afresh
            outcome = self.launch(job, scenario_file, None)
        if outcome.returncode == 0:
            return "completed", None
        if job.cancel.is_set() and outcome.returncode == EXIT_INTERRUPTED:
            return ("pruned" if job.phase == "tune" else "cancelled"), "stopped by the sweep"
        return "failed", outcome.error_tail[-2000:] or f"exit {outcome.returncode}"

    def launch(self, job: RunJob, scenario_file: Path, resume_id: str | None):
        argv = command(job, scenario_file, self.runs_dir, resume_id, self.superlink)

        def started(job: RunJob) -> None:
            self.store.record_run(self.spec.name, job.study, job.phase, job.digest,
                                  job.setting, job.seed, "running", job.run_id)

        return execute_job(job, argv, self.env, started)

    def cancel_all(self) -> None:
        """Cancel every running job and wait for its run to stop (Ctrl-C of each)."""
        for job in self.running.values():
            job.cancel.set()
        wait(self.running)
        for future, job in self.running.items():
            status, message = future.result()
            self.store.record_run(self.spec.name, job.study, job.phase, job.digest,
                                  job.setting, job.seed, "cancelled", job.run_id, message)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


__all__ = ["SweepRunner", "digest", "scenario_document", "sweep_results"]
