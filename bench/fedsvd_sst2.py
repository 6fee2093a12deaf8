"""FedSVD vs FFA-LoRA vs FedAvg-LoRA on the FedSVD paper's SST-2 split, at CPU scale.

Runs scenarios/{fedsvd,ffa-lora,fedavg-lora}-sst2.yaml (MiniLM, LoRA r = 8 on query and
value, frozen random head, 6 pre-split clients with Dirichlet 0.5 label skew, 3 per
round) through `orthofed run` for each seed, then prints the accuracy of the final
global model on val.jsonl (872 rows): mean and spread over seeds, and the wall time.
The paper (RoBERTa-large, 100 rounds, non-private): FedSVD 94.26 > FFA-LoRA 94.06 >
FedAvg-LoRA 85.89.

Usage: python bench/fedsvd_sst2.py [--seeds 0 1] [--rounds N] [--epsilon 6] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from scenarios.schema import PrivacySpec  # noqa: E402

METHODS = ("fedsvd", "ffa-lora", "fedavg-lora")


def run_method(method: str, seed: int, rounds: int | None, epsilon: float | None,
               runs_dir: Path, tmp: Path) -> dict:
    """One `orthofed run --json` of the method's scenario with the seed (rounds, and a
    DP budget per client) set."""
    scenario = load_scenario(ROOT / "scenarios" / f"{method}-sst2.yaml")  # paths made absolute
    federation = scenario.federation.model_copy(update={"rounds": rounds or scenario.federation.rounds})
    privacy = None if epsilon is None else PrivacySpec(target_epsilon=epsilon, delta=1e-5,
                                                         max_grad_norm=2.0, accountant="prv")
    scenario = scenario.model_copy(update={"seed": seed, "federation": federation,
                                           "privacy": privacy})
    path = tmp / f"{method}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path), "--runs-dir",
                           str(runs_dir), "--json"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    accs = [r["eval"]["eval-acc"] for r in summary["rounds"]]
    return {"final": accs[-1], "best": max(accs), "last3": statistics.mean(accs[-3:]),
            "curve": accs, "seconds": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epsilon", type=float, default=None,
                        help="DP-SGD with this budget per client (delta 1e-5, C = 2, PRV, as "
                        "in the paper's reference code)")
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = (args.runs_dir or Path(tmp) / "runs").resolve()
        for seed in args.seeds:
            for method in args.methods:
                result = run_method(method, seed, args.rounds, args.epsilon, runs_dir, Path(tmp))
                results[method].append(result)
                print(f"{method:>12} seed {seed}: final {result['final']:.4f}  "
                      f"curve {[round(a, 3) for a in result['curve']]}  "
                      f"{result['seconds'] / 60:.1f} min", flush=True)
    print(f"\n{'method':>12} {'final acc mean':>15} {'spread (sd)':>12} {'last-3 mean':>12} "
          f"{'best-round mean':>16} {'minutes/run':>12}")
    for method, rows in results.items():
        finals = [r["final"] for r in rows]
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(f"{method:>12} {100 * statistics.mean(finals):15.2f} {100 * spread:12.2f} "
              f"{100 * statistics.mean(r['last3'] for r in rows):12.2f} "
              f"{100 * statistics.mean(r['best'] for r in rows):16.2f} "
              f"{statistics.mean(r['seconds'] for r in rows) / 60:12.1f}")


if __name__ == "__main__":
    main()
