"""A sweep's progress in the terminal: one bar for the whole sweep, one status line per
study (its phase, runs ended of planned, the best validation score so far)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from scenarios.sweep import Study
    from scenarios.sweep_spec import SweepSpec
    from server.orchestration.sweep_jobs import RunJob
    from server.orchestration.sweep_study import StudyRun


def planned_runs(study: Study, spec: SweepSpec) -> int:
    return study.planned_runs(spec)


class SweepProgress:
    """Context manager around rich's Progress, advanced as runs end."""

    def __init__(self, name: str, studies: list[StudyRun], console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.sweep = self.progress.add_task(f"sweep {name}", total=sum(planned_runs(s.study, s.spec) for s in studies))
        self.lines = {s.study.key: self.progress.add_task(
            f"  {s.study.key}: {s.phase}", total=planned_runs(s.study, s.spec)) for s in studies}

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance(self, study: StudyRun, job: RunJob, status: str) -> None:
        """One run of `study` ended with `status`."""
        self.progress.advance(self.sweep)
        best = ""
        try:
            trial = study.optuna.best_trial
            best = f", best {study.spec.selection.metric} {trial.value:.4f}"
        except ValueError:  # nothing complete yet
            pass
        self.progress.update(self.lines[study.study.key], advance=1,
                             description=f"  {study.study.key}: {study.phase}{best}"
                             f" (last: {job.phase} seed {job.seed} {status})")
