"""Running a scenario with Flower, for both front ends: `orthofed run | resume`
(server.cli) and the API's worker process (server.api.worker).

It loads and checks a scenario, claims a run for resuming, launches Flower through
server.orchestration.launcher (the only module that starts Flower), shows the progress and
prints the summary. Exit status: 0 completed, 1 the run failed, 2 the scenario is invalid
(every error listed, one per line, by its path in the file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from server.runs.status import TERMINAL, RunStatus

if TYPE_CHECKING:
    from scenarios.schema import Scenario
    from server.runs.store import MetricsStore

EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


def superlink_flag(value: str) -> str:
    """--superlink's type: HOST:PORT, else argparse's usage error naming the flag."""
    from server.orchestration.launcher import superlink_address

    try:
        return superlink_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def existing_file(value: str) -> Path:
    """A flag's file: it must exist, else argparse's usage error naming the flag."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return path


def load_checked(file: Path, console: Console):
    """The scenario of `file`, or None after printing every problem (schema, then disk)."""
    from clients.checks import check_scenario
    from scenarios.loader import ScenarioError, load_scenario

    try:
        scenario = load_scenario(file)
    except ScenarioError as exc:
        errors = exc.errors
    else:
        errors = check_scenario(scenario)
    if errors:
        for line in errors:
            print(line, file=sys.stderr)  # one error per line, never wrapped
        return None
    return scenario


def claim_for_resume(store: MetricsStore, run: dict[str, Any], runs_dir: Path) -> bool:
    """Reopen `run` (a store row) for this process, in one step (of two resumers, one
    wins); False after saying why it cannot be resumed."""
    from server.runs.resume import resume_refusal

    refusal = resume_refusal(run, runs_dir)
    if refusal is None and not store.reopen(run["id"], pid=os.getpid()):
        refusal = "another process resumed it first"
    if refusal:
        print(f"resume: run {run['id']}: {refusal}", file=sys.stderr)
        return False
    return True


def continue_run(store: MetricsStore, run: dict[str, Any], runs_dir: Path, as_json: bool,
                 deployment: bool, superlink: str | None = None) -> int:
    """Execute a reopened run from its newest checkpoint, with the scenario the store
    holds (written to the run's folder); exit 2 when that no longer validates."""
    from server.runs.layout import RunFolder

    snapshot = RunFolder.of(runs_dir, run["id"]).write_snapshot(run["scenario"])
    scenario = load_checked(snapshot, Console(stderr=True))  # its data files may have gone
    if scenario is None:
        store.set_status(run["id"], RunStatus.FAILED, "resume: the scenario no longer validates")
        return EXIT_INVALID
    return execute(scenario, snapshot, run["id"], runs_dir, as_json, deployment, resume=True,
                   superlink=superlink)


def execute(scenario: Scenario, file: Path, run_id: str, runs_dir: Path, as_json: bool,
            deployment: bool, resume: bool, superlink: str | None = None) -> int:
    """Launch the run with Flower (here, or on the SuperLink at `superlink`), show its
    progress, then print its summary."""
    from scenarios.stream import total_rounds
    from server.orchestration.launcher import launch
    from server.orchestration.progress import (
        RoundProgress,
        clients_table,
        rounds_table,
        tasks_table,
    )
    from server.runs.store import MetricsStore
    from server.runs.summary import build_summary

    err = Console(stderr=True)
    store = MetricsStore.in_dir(runs_dir)
    where = f" on the SuperLink at {superlink}" if superlink else ""
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C does
    # A shell without job control starts background commands (`orthofed run x &` in a
    # script, a test runner started so) with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: `kill -INT` would then leave the run training to the end.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # The first line names the run (a sweep reads it): an interrupt from then on
        # must leave the run cancelled, not pending, even before Flower starts.
        err.print(f"run {run_id}: {'resuming; ' if resume else ''}logs in "
                  f"{runs_dir / run_id}{where}", highlight=False)
        with RoundProgress(store, run_id, total_rounds(scenario), err) as progress:
            launch(scenario, file, run_id, runs_dir, on_tick=progress.tick,
                   deployment=deployment, resume=resume, superlink=superlink)
    except KeyboardInterrupt:
        if store.get_run(run_id)["status"] not in TERMINAL:  # stopped before `launch` began
            store.set_status(run_id, RunStatus.CANCELLED, "interrupted by the user (Ctrl-C)")
        err.print(f"run {run_id}: cancelled; Flower processes stopped")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a launch problem is the user's to read, not a traceback
        err.print(f"run {run_id}: failed to launch: {exc}", highlight=False)
        return EXIT_FAILED
    summary = build_summary(store, run_id)
    out = Console(stderr=True) if as_json else Console()
    out.print(rounds_table(summary))
    if scenario.privacy is not None or any(c["failures"] for c in summary["clients"].values()):
        out.print(clients_table(summary))
    if summary["tasks"]:
        out.print(tasks_table(summary))
    if summary["status"] != RunStatus.COMPLETED:
        err.print(f"run {run_id}: {summary['status']}: {summary['message']}", highlight=False)
    for pid, client in summary["clients"].items():
        for reason in client.get("reasons", []):
            err.print(f"client {pid} failed: {reason}", highlight=False, markup=False)
    if as_json:
        print(json.dumps(summary))
    return 0 if summary["status"] == RunStatus.COMPLETED else EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def existing_run_store(command: str, run_id: str, runs_dir: Path):
    """The store of `runs_dir` when it holds run `run_id`; else None, after saying why
    (no store there, or no such run, with the most recent ones)."""
    from server.runs.store import STORE_FILE, MetricsStore

    if not (runs_dir / STORE_FILE).is_file():
        print(f"{command}: no metrics store in {runs_dir} (give --runs-dir)", file=sys.stderr)
        return None
    store = MetricsStore.in_dir(runs_dir)
    if store.get_run(run_id) is None:
        recent = [r["id"] for r in store.list_runs(limit=5)]
        print(f"{command}: no run {run_id!r} in {runs_dir}; recent runs: {recent}",
              file=sys.stderr)
        return None
    return store
