"""`orthofed sweep FILE` and `orthofed sweep report NAME`: many runs as one experiment.

`orthofed sweep FILE` validates every scenario the file expands into (all errors at
once, exit 2), runs the sweep on `--workers` processes (resuming what an earlier
invocation left: a completed run is never run again), then writes its report to
RUNS_DIR/sweeps/NAME/ (report.md, report.json, plots) and prints the tables. Exit 0
when every study reported, 1 when one has no result, 2 for an invalid file, 130 when
interrupted. `orthofed sweep report NAME` rewrites and prints the report of what has
finished so far.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from server.orchestration.execution import EXIT_INVALID, superlink_flag

USAGE = "orthofed sweep FILE [options] | orthofed sweep report NAME [--runs-dir DIR]"


def add_sweep(commands) -> None:
    """The `sweep` command's arguments."""
    sweep = commands.add_parser(
        "sweep", usage=USAGE, help="run a sweep file (tune every method on validation data, "
        "report on test data over fresh seeds), or `sweep report NAME` for its report")
    sweep.add_argument("target", nargs="+", metavar="FILE | report NAME")
    sweep.add_argument("--runs-dir", type=Path, default=Path("runs"),
                       help="where the runs, the store and sweeps/NAME/ go (default: runs)")
    sweep.add_argument("--workers", type=int, default=1,
                       help="runs at once on this host (each run's clients take "
                       "resources.num_cpus each; on a Ray cluster, RAY_ADDRESS, they "
                       "spread over its nodes)")
    sweep.add_argument("--superlink", type=superlink_flag, default=None, metavar="HOST:PORT",
                       help="send every run to the SuperLink of a running federation")
    sweep.add_argument("--plan", action="store_true",
                       help="validate and print the studies and planned runs; run nothing")


def cmd_sweep(args) -> int:
    """Dispatch `sweep FILE` and `sweep report NAME`."""
    target = args.target
    if target[0] == "report" and len(target) == 2:
        return cmd_sweep_report(target[1], args.runs_dir)
    if len(target) != 1:
        print(f"usage: {USAGE}", file=sys.stderr)
        return EXIT_INVALID
    if not 1 <= args.workers <= 256:
        print(f"sweep: --workers: must be between 1 and 256, got {args.workers}", file=sys.stderr)
        return EXIT_INVALID
    return run_sweep_file(Path(target[0]), args.runs_dir.resolve(), args.workers,
                          args.superlink, args.plan)


def checked_sweep(file: Path):
    """The expanded sweep of `file`, or None after printing every problem: the file,
    every expanded scenario, then what they need on disk (data, models)."""
    from clients.checks import check_scenario
    from scenarios.loader import ScenarioError, load_scenario
    from scenarios.sweep import load_sweep, scenario_document

    try:
        sweep = load_sweep(file)
    except ScenarioError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None
    errors = []
    for study in sweep.studies:
        first = (study.grid() if study.search_kind(sweep.spec.search) == "grid"
                 else study.corners())[0]
        document = scenario_document(study, first, sweep.spec.seeds.tune[0], sweep.spec.name,
                                     sweep.folder)
        errors += [f"cell {study.cell}, method {study.method}: {line}"
                   for line in check_scenario(load_scenario(document, base=sweep.folder))]
    for line in dict.fromkeys(errors):
        print(line, file=sys.stderr)
    return None if errors else sweep


def run_sweep_file(file: Path, runs_dir: Path, workers: int, superlink: str | None,
                   plan_only: bool) -> int:
    from server.orchestration.sweep import SweepRunner
    from server.orchestration.sweep_progress import planned_runs

    sweep = checked_sweep(file)
    if sweep is None:
        return EXIT_INVALID
    console = Console(stderr=True)
    if plan_only:
        for study in sweep.studies:
            tunes = f"tunes {', '.join(study.axes)}" if study.axes else "nothing tuned"
            print(f"{study.key}: {tunes}; runs planned: {planned_runs(study, sweep.spec)}")
        return 0
    runner = SweepRunner(sweep, runs_dir, workers, file.resolve(), superlink, console)
    return runner.run(report=lambda: write_and_print(sweep.spec.name, runs_dir, console))


def cmd_sweep_report(name: str, runs_dir: Path) -> int:
    """Rewrite and print a sweep's report; exit 2 for an unknown sweep."""
    from server.runs.store import STORE_FILE
    from server.runs.sweep_store import SweepStore

    runs_dir = runs_dir.resolve()
    if not (runs_dir / STORE_FILE).is_file() or SweepStore(runs_dir).get_sweep(name) is None:
        print(f"sweep report: no sweep {name!r} in {runs_dir} (give --runs-dir)", file=sys.stderr)
        return EXIT_INVALID
    write_and_print(name, runs_dir, Console())
    return 0


def write_and_print(name: str, runs_dir: Path, console: Console) -> None:
    from rich.markdown import Markdown

    from server.runs.sweep_files import write_report
    from server.runs.sweep_results import sweep_results
    from server.runs.sweep_store import SweepStore

    results = sweep_results(SweepStore(runs_dir), name)
    written = write_report(results, runs_dir / "sweeps" / name, provenance())
    console.print(Markdown(written[1].read_text()))
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def provenance() -> dict[str, Any]:
    """The command as typed, and the commit of the code that made the report."""
    from server.runs.layout import PROJECT_ROOT

    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, check=False)
    return {"command": " ".join(["orthofed", *sys.argv[1:]]),
            "commit": done.stdout.strip() or None,
            "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count()}
