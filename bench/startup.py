"""Where the quick scenario's wall time goes: Flower start-up vs rounds vs shutdown.

Runs `orthofed run SCENARIO` N times in a row (the first is the coldest: Python
bytecode and the OS file cache are filled by it) and splits each run's wall time with
the timestamps the store recorded:
  launch   : command start -> run row created (imports, scenario checks)
  flower   : run created -> ServerApp running (SuperLink start, submit, ServerApp imports)
  setup    : ServerApp running -> round 0 evaluated (data, model, node discovery)
  round 1  : round 0 -> round 1 (includes Ray start and the ClientApps' first imports)
  rounds>1 : mean time of the later rounds
  shutdown : last round -> command exit (stopping SuperLink, simulation and Ray)
Usage: python bench/startup.py [--runs 2] [--scenario scenarios/quick.yaml]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.runs.store import MetricsStore  # noqa: E402


def one_run(scenario: str, runs_dir: Path) -> dict[str, float]:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", scenario, "--runs-dir",
                           str(runs_dir)], cwd=ROOT, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    store = MetricsStore.in_dir(runs_dir)
    run = store.list_runs()[0]
    times = store.round_times(run["id"])
    later = [b - a for a, b in zip(times[1:], times[2:])]
    return {"wall": ended - started, "launch": run["created"] - started,
            "flower": run["started"] - run["created"], "setup": times[0] - run["started"],
            "round 1": times[1] - times[0], "rounds>1": sum(later) / max(len(later), 1),
            "shutdown": ended - times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scenario", default="scenarios/quick.yaml")
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_run(args.scenario, Path(tmp)))
    keys = list(rows[0])
    print(f"{'run':>5} " + " ".join(f"{k:>9}" for k in keys))
    for i, row in enumerate(rows):
        print(f"{i + 1:>5} " + " ".join(f"{row[k]:9.1f}" for k in keys))
    last = rows[-1]
    startup = last["launch"] + last["flower"] + last["setup"] + last["round 1"] - last["rounds>1"]
    print(f"last run: start-up and shutdown are {(startup + last['shutdown']) / last['wall']:.0%} "
          f"of the wall time; a later round takes {last['rounds>1']:.1f} s")


if __name__ == "__main__":
    main()
