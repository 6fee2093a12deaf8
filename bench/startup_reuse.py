"""Per-run wall time of a small scenario with a Ray of its own (cold) vs joining one warm
local Ray (server.orchestration.warm_ray), measured in pairs, side by side.

Each pair runs `orthofed run SCENARIO` once each way (the order alternates pair by pair,
so a drift of the machine's speed falls on both), each in a fresh runs folder. The warm
Ray is started once before the pairs; its start-up is printed apart, as the price a
sweep pays once. Prints every pair, the medians and the median of the ratios warm/cold.

Usage: python bench/startup_reuse.py [--pairs 3] [--scenario scenarios/quick.yaml]
                                     [--num-cpus N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.orchestration.warm_ray import warm_ray  # noqa: E402


def one_run(scenario: str, env: dict[str, str]) -> float:
    """Wall seconds of one `orthofed run` (exit 0 required), in a fresh runs folder."""
    with tempfile.TemporaryDirectory(prefix="startup-reuse-") as runs:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "server.cli", "run", scenario,
                               "--runs-dir", runs], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"orthofed run failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scenario", default="scenarios/quick.yaml")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="the warm Ray's CPUs (default: Ray detects them, as a run's own)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    os.environ.clear()
    os.environ.update(env)  # cold runs must start their own Ray
    started = time.perf_counter()
    with warm_ray(num_cpus=args.num_cpus) as ray_env:
        ray_start = time.perf_counter() - started
        one_run(args.scenario, {})  # warm-up: the OS file cache, for both
        rows = []
        for pair in range(args.pairs):
            order = ("cold", "warm") if pair % 2 == 0 else ("warm", "cold")
            row = {way: one_run(args.scenario, ray_env if way == "warm" else {})
                   for way in order}
            rows.append(row)
            print(f"pair {pair + 1}: cold {row['cold']:6.1f} s  warm {row['warm']:6.1f} s  "
                  f"warm/cold {row['warm'] / row['cold']:.2f}", flush=True)
    cold = statistics.median(r["cold"] for r in rows)
    warm = statistics.median(r["warm"] for r in rows)
    ratio = statistics.median(r["warm"] / r["cold"] for r in rows)
    print(f"{args.scenario}, {args.pairs} pairs: median per run cold {cold:.1f} s, "
          f"warm Ray {warm:.1f} s; median ratio warm/cold {ratio:.2f} "
          f"(saves {cold - warm:.1f} s a run); the warm Ray started once in {ray_start:.1f} s")


if __name__ == "__main__":
    main()
