"""A 2-task OSFT stream under DP-SGD with every client on the GPU (bench/gpu_check.sh).

quick-stream (tiny BERT, OSFT with adaptive ranks) with a privacy section and the two
clients sharing GPU 0 (resources.num_gpus = 0.5): the run must complete, every client
round must report device cuda, and epsilon must stay within the target. Prints the
summary's rounds, epsilons and accuracy matrix as one JSON line. `--device cpu` runs
the same on the CPU (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    doc = yaml.safe_load((ROOT / "scenarios" / "quick-stream.yaml").read_text())
    doc["name"] = "gpu-osft-dp-stream"
    doc["privacy"] = {"target_epsilon": 8.0, "max_grad_norm": 1.0}
    doc["resources"] = {"num_cpus": 1, "num_gpus": 0.5 if args.device == "cuda" else 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.yaml"
        path.write_text(yaml.safe_dump(doc))
        done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path),
                               "--runs-dir", str(Path(tmp) / "runs"), "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return 1
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    devices = {c.get("last", {}).get("device") for c in summary["clients"].values()}
    epsilons = {p: c.get("epsilon") for p, c in summary["clients"].items()}
    print(json.dumps({"status": summary["status"], "devices": sorted(map(str, devices)),
                      "epsilon": epsilons, "matrix": summary["tasks"]["matrix"],
                      "bwt": summary["tasks"]["bwt"]}))
    ok = summary["status"] == "completed" and devices == {args.device} and all(
        e is not None and e <= 8.0 for e in epsilons.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
