"""OSFT vs sequential full fine-tuning vs sequential LoRA on a 4-task CL stream.

Runs scenarios/{osft,seqft,seqlora}-cl-4task.yaml (MiniLM, dbpedia -> amazon -> yelp ->
agnews from ../shared/data/cl_benchmark, 4 clients, a head per task) through
`orthofed run --json`, one after the other, and prints each method's accuracy matrix
(row i: after task i; column j: task j; row "init": the model before the stream),
then AA, BWT, FWT and per-task forgetting side by side.
What the papers found (T5-large, generative, 4-task order 1): OSFT keeps backward
transfer near zero while sequential fine-tuning forgets.

Usage: python bench/cl_stream.py [--methods osft seqft seqlora] [--rounds N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402

METHODS = {"osft": "OSFT", "seqft": "sequential full FT", "seqlora": "sequential LoRA",
           "fedsvd": "FedSVD-LoRA per task"}


def scenario_for(method: str, rounds: int | None, steps: int | None, tmp: Path) -> Path:
    """The method's scenario (fedsvd: the LoRA one with strategy fedsvd), with rounds per
    task and local steps overridden when asked; written with absolute paths."""
    source = "seqlora" if method == "fedsvd" else method
    scenario = load_scenario(ROOT / "scenarios" / f"{source}-cl-4task.yaml")
    fed = scenario.federation.model_copy(update={
        "rounds": rounds or scenario.federation.rounds,
        "local_steps": steps or scenario.federation.local_steps})
    document = scenario.model_copy(update={"federation": fed}).model_dump(mode="json")
    if method == "fedsvd":
        document.update(name="fedsvd-cl-4task", strategy={"name": "fedsvd", "svd_period": 1})
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run(path: Path, runs_dir: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path), "--runs-dir",
                           str(runs_dir), "--json"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show_matrix(label: str, tasks: dict, minutes: float) -> None:
    names = tasks["names"]
    print(f"\n{label} ({minutes:.1f} min): accuracy on each task (columns) after each task (rows)")
    print(f"{'':>10}" + "".join(f"{n:>10}" for n in names))
    print(f"{'init':>10}" + "".join(f"{a:10.3f}" for a in tasks["initial"]))
    for name, row in zip(names, tasks["matrix"], strict=False):
        print(f"{name:>10}" + "".join(f"{a:10.3f}" for a in row))
    print("linear-probe accuracy (what FWT is measured on)")
    print(f"{'init':>10}" + "".join(f"{a:10.3f}" for a in tasks["probe_initial"]))
    for name, row in zip(names, tasks["probe_matrix"], strict=False):
        print(f"{name:>10}" + "".join(f"{a:10.3f}" for a in row))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["osft", "seqft", "seqlora"],
                        choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=None, help="rounds per task")
    parser.add_argument("--steps", type=int, default=None, help="local steps per round")
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = (args.runs_dir or Path(tmp) / "runs").resolve()
        for method in args.methods:
            started = time.time()
            summary = run(scenario_for(method, args.rounds, args.steps, Path(tmp)), runs_dir)
            results[method] = (summary["tasks"], (time.time() - started) / 60)
            show_matrix(METHODS[method], *results[method])
    print(f"\n{'method':>22} {'AA':>7} {'BWT':>7} {'FWT':>7}  forgetting per task   minutes"
          "   (FWT: linear probes)")
    for method, (tasks, minutes) in results.items():
        forgetting = " ".join(f"{f:6.3f}" for f in tasks["forgetting"])
        print(f"{METHODS[method]:>22} {tasks['aa']:7.3f} {tasks['bwt']:7.3f} {tasks['fwt']:7.3f}"
              f"  {forgetting:<21} {minutes:7.1f}")


if __name__ == "__main__":
    main()
