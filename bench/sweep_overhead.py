"""What a sweep costs beyond its runs, and how it scales with workers, measured side by
side in one invocation.

1. Expansion and validation: `load_sweep` of a sweep of many cells (every setting of
   every study validated by the scenario loader), per expanded scenario; then the disk
   and model checks (clients.checks.check_scenario) per study.
2. A toy sweep of cheap cells (tiny BERT, 2 clients, 2 rounds) run twice, with
   --workers 1 and --workers N, each in a fresh runs folder: the sweep's wall time
   against the sum of its runs' own wall times (the store's created -> ended, which
   includes each run's Flower start-up: that is the run's cost, not the sweep's); the
   scheduling overhead is wall - sum(run walls) / workers (bounded below by 0 only when
   the workers were never idle), and the report's assembly and files are timed alone.
3. Throughput: completed runs per minute with N workers over with 1 (goal >= 0.8 N on
   N cores).

Usage: python bench/sweep_overhead.py [--workers 2] [--cells 2] [--out bench/results/sweep_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from scenarios.sweep import load_sweep, scenario_document  # noqa: E402

BASE = {"name": "cheap", "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 16, "lora": {"rank": 4, "alpha": 8}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 240,
                            "test_size": 60}, "validation_fraction": 0.25},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 4,
                       "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.01}},
        "strategy": {"name": "fedsvd"}}


def sweep_document(name: str, lrs: list[float], cells: int) -> dict:
    return {"name": name, "base": BASE,
            "methods": {"fedsvd": {"strategy": {"name": "fedsvd"}},
                        "ffa-lora": {"strategy": {"name": "ffa-lora"}}},
            "grid": {"federation.local_steps": list(range(4, 4 + cells))},
            "tune": {"federation.optimizer.lr": {"values": lrs}},
            "seeds": {"tune": [0], "report": [10]},
            "selection": {"metric": "val-acc", "last_rounds": 1},
            "report": {"metrics": ["eval-acc"], "last_rounds": 1}}


def expansion_cost(folder: Path) -> dict:
    """Seconds to expand and validate a sweep of 2 x 8 cells x 2 methods x 10 lrs."""
    from clients.checks import check_scenario

    path = folder / "big.yaml"
    path.write_text(yaml.safe_dump(sweep_document("big", [10 ** (-k / 3) for k in range(10)], 8)))
    started = time.perf_counter()
    sweep = load_sweep(path)
    expanded = time.perf_counter() - started
    settings = sum(len(s.grid()) for s in sweep.studies)
    started = time.perf_counter()
    for study in sweep.studies:
        document = scenario_document(study, study.grid()[0], 0, "big", sweep.folder)
        assert check_scenario(load_scenario(document, base=sweep.folder)) == []
    checked = time.perf_counter() - started
    return {"settings": settings, "expand_validate_s": expanded,
            "per_setting_ms": 1000 * expanded / settings, "studies": len(sweep.studies),
            "checks_s": checked, "per_study_check_ms": 1000 * checked / len(sweep.studies)}


def run_sweep(folder: Path, workers: int, cells: int) -> dict:
    """One toy sweep with `workers`: its wall time, its runs' wall times, the report's."""
    name = f"cheap-w{workers}"
    path, runs = folder / f"{name}.yaml", folder / f"runs-{workers}"
    path.write_text(yaml.safe_dump(sweep_document(name, [0.001, 0.03], cells)))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "server.cli", "sweep", str(path), "--runs-dir",
                           str(runs), "--workers", str(workers)], cwd=ROOT, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep with {workers} workers failed:\n{done.stderr[-3000:]}")
    with sqlite3.connect(runs / "orthofed.sqlite") as db:
        walls = [e - c for c, e in db.execute("SELECT created, ended FROM runs WHERE status = "
                                              "'completed'")]
    started = time.perf_counter()
    report = subprocess.run([sys.executable, "-m", "server.cli", "sweep", "report", name,
                             "--runs-dir", str(runs)], cwd=ROOT, capture_output=True, text=True)
    report_s = time.perf_counter() - started
    assert report.returncode == 0, report.stderr
    return {"workers": workers, "runs": len(walls), "wall_s": wall, "run_wall_sum_s": sum(walls),
            "overhead_s": wall - sum(walls) / workers,
            "overhead_share": (wall - sum(walls) / workers) / (sum(walls) / workers),
            "report_command_s": report_s, "runs_per_min": 60 * len(walls) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"expansion": expansion_cost(folder),
                  "one": run_sweep(folder, 1, args.cells),
                  "many": run_sweep(folder, args.workers, args.cells)}
    many, one = result["many"], result["one"]
    result["throughput_ratio"] = many["runs_per_min"] / one["runs_per_min"]
    result["throughput_goal"] = 0.8 * args.workers
    print(json.dumps(result, indent=1))
    e = result["expansion"]
    print(f"expansion + validation: {e['per_setting_ms']:.1f} ms per setting ({e['settings']}); "
          f"disk/model checks {e['per_study_check_ms']:.0f} ms per study")
    for r in (one, many):
        print(f"{r['workers']} worker(s): {r['runs']} runs in {r['wall_s']:.0f} s, runs' own "
              f"{r['run_wall_sum_s']:.0f} s; sweep overhead {100 * r['overhead_share']:.1f} % "
              f"(goal <= 5 %), report {r['report_command_s']:.1f} s")
    print(f"throughput with {args.workers} workers: {result['throughput_ratio']:.2f}x one "
          f"worker (goal >= {result['throughput_goal']:.1f}x)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
