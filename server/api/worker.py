"""The process the API's queue starts for each run (server.api.queue): executes a
pending run of the store to its end, as `orthofed run` would, without the user's CLI.

    python -m server.api.worker run RUN_ID --runs-dir DIR     # a posted run, first time
    python -m server.api.worker resume RUN_ID --runs-dir DIR  # one that ran before
    ... --superlink HOST:PORT   # on that federation's SuperLink (orthofed serve's setting)

`run` takes the scenario from the file the submission wrote (the run's scenario_path);
`resume` continues from the run's newest checkpoint, like `orthofed resume`. Exit status
as orthofed's (server.orchestration.execution): 0 completed, 1 failed, 2 invalid, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from server.orchestration.execution import (
    EXIT_FAILED,
    EXIT_INVALID,
    claim_for_resume,
    continue_run,
    execute,
    existing_run_store,
    load_checked,
    superlink_flag,
)
from server.runs.status import RunStatus
from server.runs.store import MetricsStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.api.worker",
        description="Execute a run of the API's queue (started by server.api.queue).")
    parser.add_argument("mode", choices=("run", "resume"),
                        help="run: a pending run, first time; resume: one that ran before")
    parser.add_argument("run_id")
    parser.add_argument("--runs-dir", type=Path, required=True,
                        help="where the run's store is (the API's runs_dir)")
    parser.add_argument("--superlink", type=superlink_flag, default=None, metavar="HOST:PORT",
                        help="run on this SuperLink's federation instead of a local simulation")
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir.resolve()
    if args.mode == "run":
        return run(args.run_id, runs_dir, args.superlink)
    return resume(args.run_id, runs_dir, args.superlink)


def run(run_id: str, runs_dir: Path, superlink: str | None = None) -> int:
    """Execute a pending run that never started; exit 2 (the run marked failed) when
    its scenario file no longer validates."""
    store = MetricsStore.in_dir(runs_dir)
    row = store.get_run(run_id)
    if row is None or row["status"] != RunStatus.PENDING:
        state = "unknown" if row is None else row["status"]
        print(f"run {run_id}: not a pending run of {store.path} ({state})", file=sys.stderr)
        return EXIT_FAILED
    file = Path(row["scenario_path"] or "")  # written by server.api.submission
    scenario = load_checked(file, Console(stderr=True)) if row["scenario_path"] else None
    if scenario is None:
        store.set_status(run_id, RunStatus.FAILED, "invalid scenario file")
        return EXIT_INVALID
    return execute(scenario, file, run_id, runs_dir, as_json=False, deployment=False,
                   resume=False, superlink=superlink)


def resume(run_id: str, runs_dir: Path, superlink: str | None = None) -> int:
    """Continue a run from its newest checkpoint. The queue reopened it (pending) before
    starting this process; a run no longer pending (cancelled meanwhile) is claimed here
    as `orthofed resume` would, and refused the same way."""
    store = existing_run_store("resume", run_id, runs_dir)
    if store is None:
        return EXIT_INVALID
    row = store.get_run(run_id)
    if row["status"] != RunStatus.PENDING and not claim_for_resume(store, row, runs_dir):
        return EXIT_INVALID
    return continue_run(store, row, runs_dir, as_json=False, deployment=False,
                        superlink=superlink)


if __name__ == "__main__":
    sys.exit(main())
