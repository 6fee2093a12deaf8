"""The same scenario on Flower's simulation engine and on its deployment engine, with
warm SuperNodes (clients.node.warm_node: one ClientApp process per node serves the run),
the same with each message's arrays sent one object each instead of packed
(ORTHOFED_PACK_ARRAYS=0), and with Flower's own per-message `flwr-clientapp` processes
(ORTHOFED_COLD_CLIENTS=1),
run one after another in one invocation.

Prints each run's per-round times (from the rounds' recorded timestamps), the median
and mean of the later rounds (round 2 on: round 1 includes the first imports and model
build), and each arrangement's median as a ratio to simulation's.

Usage: python bench/deploy_vs_sim.py [--scenario scenarios/quick.yaml] [--rounds 4]
                                     [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean, median

import yaml
from rich.progress import MofNCompleteColumn, Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.runs.store import MetricsStore  # noqa: E402

ARRANGEMENTS = {"simulation": ([], {}),
                "deployment, warm nodes": (["--deployment"], {}),
                "deployment, warm nodes, arrays unpacked": (["--deployment"],
                                                            {"ORTHOFED_PACK_ARRAYS": "0"}),
                "deployment, Flower's per-message processes": (["--deployment"],
                                                               {"ORTHOFED_COLD_CLIENTS": "1"})}


def round_seconds(scenario: Path, runs_dir: Path, flags: list[str], env: dict[str, str],
                  ) -> tuple[list[float], float]:
    """Seconds of each round (round 0's evaluation excluded) and the command's wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(scenario),
                           "--runs-dir", str(runs_dir), *flags], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    store = MetricsStore.in_dir(runs_dir)
    times = store.round_times(store.list_runs()[0]["id"])
    return [b - a for a, b in zip(times, times[1:])], wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "quick.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs per arrangement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deploy-vs-sim-") as tmp:
        document = yaml.safe_load(args.scenario.read_text())
        document["federation"]["rounds"] = args.rounds
        scenario = Path(tmp) / args.scenario.name
        scenario.write_text(yaml.safe_dump(document))
        later: dict[str, list[float]] = {}
        print(f"{args.scenario.name}, {args.rounds} rounds, {os.cpu_count()} CPUs")
        runs = [(repeat, index, name, flags, env) for repeat in range(args.repeats)
                for index, (name, (flags, env)) in enumerate(ARRANGEMENTS.items())]
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn()) as progress:
            bar = progress.add_task("runs", total=len(runs))
            for repeat, index, name, flags, env in runs:
                seconds, wall = round_seconds(scenario, Path(tmp) / f"runs-{repeat}-{index}",
                                              flags, env)
                later.setdefault(name, []).extend(seconds[1:])
                progress.console.print(f"{name:>44}: rounds " + " ".join(f"{s:5.1f}" for s in seconds)
                                       + f" s; wall {wall:5.1f} s", highlight=False)
                progress.advance(bar)
    base = median(later["simulation"])
    print("\nlater rounds (2 on), median seconds and ratio to simulation:")
    for name, seconds in later.items():
        print(f"{name:>44}: {median(seconds):5.2f} s (mean {fmean(seconds):5.2f})  "
              f"{median(seconds) / base:5.2f}x")


if __name__ == "__main__":
    main()
