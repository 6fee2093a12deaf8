"""One study of a running sweep (a grid cell and method) as an Optuna study.

Tuning: each Optuna trial is a setting of the study's tuned axes, run once per tuning
seed; its value is the mean of the runs' validation scores (server.runs.sweep_report).
Grid search enqueues every grid setting not yet finished (Optuna's `enqueue_trial`),
random and TPE search ask `RandomSampler` / `TPESampler`; the MedianPruner sees the
mean validation metric over the setting's seeds at each round they all reached. Then
the report: the best trial's setting on every report seed. A study resumed in a new
process finds its finished trials in Optuna's storage; trials left RUNNING by a killed
sweep are failed and enqueued again (their completed runs are reused by digest).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from scenarios.sweep import Study, digest, scenario_document
from scenarios.sweep_spec import SearchSpec, SweepSpec
from server.orchestration.sweep_jobs import RunJob
from server.runs.store import MetricsStore
from server.runs.summary import build_summary
from server.runs.sweep_report import run_score, setting_key
from server.runs.sweep_store import SweepStore

optuna.logging.set_verbosity(optuna.logging.WARNING)
OPTUNA_FILE = "optuna.sqlite"


def optuna_storage(runs_dir: Path) -> optuna.storages.RDBStorage:
    """Optuna's storage for every sweep of a runs directory, beside the run store."""
    return optuna.storages.RDBStorage(f"sqlite:///{runs_dir / OPTUNA_FILE}",
                                      engine_kwargs={"connect_args": {"timeout": 30}})


def sampler_for(search: SearchSpec) -> optuna.samplers.BaseSampler:
    """Grid settings are all enqueued; the sampler then only fills what is not."""
    if search.kind == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    return optuna.samplers.RandomSampler(seed=search.seed)


def pruner_for(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials,
                                           n_warmup_steps=search.warmup_rounds)
    return optuna.pruners.NopPruner()


@dataclass
class TrialRun:
    """A setting being tuned: its trial, its jobs and how each ended."""

    trial: optuna.Trial
    setting: dict[str, Any]
    jobs: list[RunJob]
    ended: dict[int, tuple[str, float | None]] = field(default_factory=dict)  # seed -> (status, score)
    reported: int = 0                # the last round reported to the pruner
    pruned: bool = False


class StudyRun:
    """A study's progress: `tune` -> `report` -> `done`, or `failed` when no setting
    scored or no report run completed."""

    def __init__(self, study: Study, spec: SweepSpec, storage: optuna.storages.BaseStorage) -> None:
        self.study, self.spec = study, spec
        self.optuna = optuna.create_study(
            study_name=f"{spec.name}/{study.key}", storage=storage, load_if_exists=True,
            direction="maximize" if spec.selection.mode == "max" else "minimize",
            sampler=sampler_for(spec.search), pruner=pruner_for(spec.search))
        self.phase = "tune" if study.axes else "report"
        self.kind = study.search_kind(spec.search)
        self.trials: dict[int, TrialRun] = {}
        self.pending: list[RunJob] = []
        self.report_left: int | None = None
        self.reported_ok = 0
        self.best: tuple[dict[str, Any], float | None] | None = None
        if study.axes:
            self.recover_stale_trials()
            if self.kind == "grid":
                self.enqueue_grid()

    # ---- Optuna's side ------------------------------------------------------------

    def recover_stale_trials(self) -> None:
        """Trials a killed sweep left RUNNING: enqueued again, then failed."""
        for trial in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.optuna.enqueue_trial(trial.params, skip_if_exists=True)
            self.optuna.tell(trial.number, state=TrialState.FAIL)

    def enqueue_grid(self) -> None:
        """Every grid setting that no trial finished (complete or pruned) or waits for."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
        known = {setting_key(t.params) for t in self.optuna.get_trials(deepcopy=False, states=states)}
        for setting in self.study.grid():
            if setting_key(setting) not in known:
                self.optuna.enqueue_trial(setting)

    def can_ask(self) -> bool:
        if self.kind == "grid":
            return bool(self.optuna.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        finished = self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                   TrialState.PRUNED))
        return len(finished) + len(self.trials) < self.spec.search.trials

    def ask(self) -> tuple[optuna.Trial, dict[str, Any]]:
        trial = self.optuna.ask()
        setting = {}
        for name, axis in self.study.axes.items():
            if axis.values is not None or self.kind == "grid":
                setting[name] = trial.suggest_categorical(name, list(axis.grid_points()))
            else:
                setting[name] = trial.suggest_float(name, axis.low, axis.high, log=axis.log)
        return trial, setting

    # ---- jobs ----------------------------------------------------------------------

    def next_job(self, sweep: str, folder: Path) -> RunJob | None:
        """The next run to start, or None when this study has none to start now."""
        if not self.pending and self.phase == "tune":
            if self.can_ask():
                trial, setting = self.ask()
                jobs = [self.job("tune", setting, seed, sweep, folder, trial)
                        for seed in self.spec.seeds.tune]
                self.trials[trial.number] = TrialRun(trial, setting, jobs)
                self.pending = list(jobs)
            elif not self.trials:
                self.end_tuning()
        if not self.pending and self.phase == "report" and self.report_left is None:
            setting = self.best[0] if self.best else {}
            self.pending = [self.job("report", setting, seed, sweep, folder)
                            for seed in self.spec.seeds.report]
            self.report_left = len(self.pending)
        return self.pending.pop(0) if self.pending else None

    def job(self, phase: str, setting: dict[str, Any], seed: int, sweep: str, folder: Path,
            trial: optuna.Trial | None = None) -> RunJob:
        document = scenario_document(self.study, setting, seed, sweep, folder)
        return RunJob(self.study.key, phase, setting, seed, document, digest(document), trial)

    def end_tuning(self) -> None:
        """The best complete trial's setting goes to the report; none: the study failed."""
        try:
            best = self.optuna.best_trial
        except ValueError:  # no complete trial: every setting failed or was pruned
            self.phase = "failed"
            return
        self.best = (best.params, best.value)
        self.phase = "report"

    def job_ended(self, job: RunJob, status: str, store: SweepStore) -> None:
        """Book one ended run: a tuning seed (its trial told once all seeds ended) or a
        report seed."""
        if job.phase == "report":
            self.report_left -= 1
            self.reported_ok += status == "completed"
            if self.report_left == 0:
                self.phase = "done" if self.reported_ok else "failed"
            return
        run = self.trials[job.trial.number]
        score = None
        if status == "completed":
            summary = build_summary(store.runs, job.run_id)
            score = run_score(summary, self.spec.selection.metric, self.spec.selection.last_rounds)
        run.ended[job.seed] = (status, score)
        if len(run.ended) == len(run.jobs):
            self.tell(run)

    def tell(self, run: TrialRun) -> None:
        """The trial's outcome: pruned, failed (a run failed or scored nothing), or the
        mean validation score over its seeds."""
        del self.trials[run.trial.number]
        scores = [score for status, score in run.ended.values() if status == "completed"]
        if run.pruned:
            self.optuna.tell(run.trial, state=TrialState.PRUNED)
        elif len(scores) < len(run.jobs) or any(s is None for s in scores):
            self.optuna.tell(run.trial, state=TrialState.FAIL)
        else:
            self.optuna.tell(run.trial, statistics.fmean(scores))

    # ---- pruning -------------------------------------------------------------------

    def check_pruning(self, runs: MetricsStore) -> None:
        """Report each running setting's mean validation metric at every round all its
        seeds reached; cancel the setting's runs when the pruner says so."""
        if self.spec.search.pruner == "none":
            return
        metric = self.spec.selection.metric
        for run in list(self.trials.values()):
            if run.pruned or any(job.run_id is None for job in run.jobs):
                continue
            curves = [{r["round"]: r["eval"][metric] for r in runs.rounds(job.run_id)
                       if r["round"] > 0 and metric in (r.get("eval") or {})} for job in run.jobs]
            common = sorted(set.intersection(*(set(c) for c in curves)))
            for round_ in (r for r in common if r > run.reported):
                run.trial.report(statistics.fmean(c[round_] for c in curves), round_)
                run.reported = round_
            if common and run.trial.should_prune():
                run.pruned = True
                for job in run.jobs:
                    job.cancel.set()
