"""Simulation scale: 10, 100 and 1000 virtual clients, 10 per round, tiny model.

For each federation size, one `orthofed run` of a tiny-BERT scenario whose every client
holds the same number of examples (20), so each round does the same work whatever the
size; wall time per round (rounds after the first, from the store's timestamps) and
peak memory of the ServerApp's process and of the whole process tree (RSS summed over
every descendant, sampled every 0.5 s), side by side, with the ratio to 10 clients.
Target (issue 7): per-round time and memory flat, at most 1.2x from 10 to 1000.

Usage: python bench/sim_scale.py [--sizes 10 100 1000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.runs.store import MetricsStore  # noqa: E402


def scenario(size: int, rounds: int) -> dict:
    return {
        "name": f"scale-{size}", "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 24,
                  "lora": {"rank": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 20 * size,
                            "test_size": 200}, "partitioning": {"kind": "iid"},
                 "local_eval_fraction": 0.0},
        "federation": {"num_clients": size, "clients_per_round": 10, "rounds": rounds,
                       "local_steps": 5, "batch_size": 16,
                       "optimizer": {"name": "adamw", "lr": 0.01}},
        "strategy": {"name": "fedavg-lora"},
        "resources": {"num_cpus": 1},
    }


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(RSS of the ServerApp process, RSS of the whole tree) in bytes."""
    server, total = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
            total += rss
            if "flwr-simulation" in " ".join(proc.cmdline()):
                server = max(server, rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return server, total


def measure(size: int, rounds: int, tmp: Path) -> dict:
    path = tmp / f"scale-{size}.yaml"
    path.write_text(yaml.safe_dump(scenario(size, rounds)))
    runs_dir = tmp / f"runs-{size}"
    started = time.time()
    run = subprocess.Popen([sys.executable, "-m", "server.cli", "run", str(path), "--runs-dir",
                            str(runs_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    root, peak_server, peak_tree = psutil.Process(run.pid), 0, 0
    while run.poll() is None:
        server, tree = tree_rss(root)
        peak_server, peak_tree = max(peak_server, server), max(peak_tree, tree)
        time.sleep(0.5)
    store = MetricsStore.in_dir(runs_dir)
    (run_row,) = store.list_runs()
    if run_row["status"] != "completed":
        raise SystemExit(f"{size} clients: {run_row['status']}: {run_row['message']}")
    times = store.round_times(run_row["id"])  # round 0 (initial eval), 1, 2, ...
    per_round = [b - a for a, b in zip(times[1:], times[2:], strict=False)]
    return {"round_s": statistics.median(per_round), "server_mb": peak_server / 2**20,
            "tree_mb": peak_tree / 2**20, "wall_s": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(f"tiny BERT + LoRA, 10 clients per round, 5 local steps, 20 examples per client, "
          f"{args.rounds} rounds; per-round time = median over rounds 2..{args.rounds}")
    print(f"{'clients':>8} {'s/round':>8} {'ratio':>6} {'server MB':>10} {'ratio':>6} "
          f"{'tree MB':>8} {'ratio':>6} {'wall s':>7}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            row = measure(size, args.rounds, Path(tmp))
            base = base or row
            print(f"{size:8d} {row['round_s']:8.2f} {row['round_s'] / base['round_s']:5.2f}x "
                  f"{row['server_mb']:10.0f} {row['server_mb'] / base['server_mb']:5.2f}x "
                  f"{row['tree_mb']:8.0f} {row['tree_mb'] / base['tree_mb']:5.2f}x "
                  f"{row['wall_s']:7.0f}", flush=True)


if __name__ == "__main__":
    main()
