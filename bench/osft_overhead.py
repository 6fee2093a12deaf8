"""What OSFT costs: step time and peak memory of OSFT vs plain full fine-tuning, and the
task-start SVDs against one task's training, on MiniLM, side by side in one run.

Each training configuration runs in its own subprocess (peak RSS = ru_maxrss of that
process), one after the other: plain full fine-tuning (AdamW), then OSFT with every
target matrix preserving the given share of its rank (the adaptive rule averages trr =
0.8; the cost is linear in k). Then the SVDs a task start needs for every target weight:
full thin SVD (what server.serverapp.osft_plan runs) vs torch.svd_lowrank (randomized, top k only),
compared with one task of the osft-cl-4task scenario (rounds x clients per round x local
steps, at the measured OSFT step time).
Targets (issue 5): step time <= 1.25x, peak memory <= 1.3x, task-start SVDs < 10% of a task.

Usage: python bench/osft_overhead.py [--steps 10] [--batch 16] [--shares 0.5 0.8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(batch: int):
    import torch

    from clients.data import tokenize
    from clients.models import build_model, build_tokenizer
    from clients.synthetic import make_examples
    from scenarios.schema import ModelSpec

    torch.set_num_threads(2)
    spec = ModelSpec(name="minilm", max_length=64)
    rows = [{"text": e["sentence"] * 3, "text_pair": None, "label": e["label"]}
            for e in make_examples(3, batch * 8, seed=0)]
    return build_model(spec, 3, 0, "full"), tokenize(rows, build_tokenizer(spec), 64)


def measure(share: float, steps: int, batch: int) -> dict:
    """In this process: seconds per step after one warm-up step, and peak RSS."""
    import torch

    from clients.osft import basis
    from clients.osft_training import projected_updates
    from clients.training import make_optimizer, train_steps
    from scenarios.schema import BERT_LINEAR_LAYERS, OptimizerSpec
    from server.serverapp.osft_plan import target_weights

    model, data = build(batch)
    optimizer = make_optimizer(model, OptimizerSpec(name="adamw", lr=1e-5))
    bases = {}
    if share > 0:
        for name, w in target_weights(model, BERT_LINEAR_LAYERS).items():
            bases[name] = basis(w.detach(), int(share * min(w.shape)))
    cpu = torch.device("cpu")

    def run(n: int) -> None:
        with projected_updates(model, optimizer, bases):
            train_steps(model, data, n, batch, optimizer, torch.Generator().manual_seed(0), cpu)

    run(1)
    start = time.perf_counter()
    run(steps)
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def svd_times(share: float) -> dict:
    """Seconds for the bases of every target weight: full thin SVD vs randomized top-k."""
    import torch

    from clients.osft import basis
    from scenarios.schema import BERT_LINEAR_LAYERS
    from server.serverapp.osft_plan import target_weights

    model, _ = build(16)
    weights = [w.detach() for w in target_weights(model, BERT_LINEAR_LAYERS).values()]
    start = time.perf_counter()
    for w in weights:
        basis(w, int(share * min(w.shape)))
    full = time.perf_counter() - start
    start = time.perf_counter()
    for w in weights:
        k = int(share * min(w.shape))
        torch.svd_lowrank(w, q=min(k + 10, min(w.shape)), niter=2)
    lowrank = time.perf_counter() - start
    return {"full_s": full, "lowrank_s": lowrank, "matrices": len(weights)}


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--task-steps", type=int, default=60,
                        help="steps of one task: osft-cl-4task has 3 rounds x 2 clients x 10")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)    # child: train
    parser.add_argument("--svd", type=float, help=argparse.SUPPRESS)    # child: SVDs
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps, args.batch)))
        return
    if args.svd is not None:
        print(json.dumps(svd_times(args.svd)))
        return
    common = ["--steps", str(args.steps), "--batch", str(args.batch)]
    print(f"MiniLM full fine-tuning, AdamW, batch {args.batch}, sequence 64, {args.steps} timed "
          "steps, each row its own process")
    plain = child(["--one", "0", *common])
    print(f"{'configuration':>28} {'step s':>8} {'ratio':>7} {'peak MB':>8} {'ratio':>7}")
    print(f"{'plain full fine-tuning':>28} {plain['step_s']:8.3f} {'1.00x':>7} "
          f"{plain['peak_mb']:8.0f} {'1.00x':>7}", flush=True)
    for share in args.shares:
        row = child(["--one", str(share), *common])
        print(f"{f'OSFT, {share:.0%} of rank kept':>28} {row['step_s']:8.3f} "
              f"{row['step_s'] / plain['step_s']:6.2f}x {row['peak_mb']:8.0f} "
              f"{row['peak_mb'] / plain['peak_mb']:6.2f}x", flush=True)
        svd = child(["--svd", str(share)])
        task = args.task_steps * row["step_s"]
        print(f"{'':>28} task-start SVDs of {svd['matrices']} matrices: full "
              f"{svd['full_s']:.2f} s ({svd['full_s'] / task:.1%} of a {args.task_steps}-step "
              f"task, {task:.0f} s), randomized top-k {svd['lowrank_s']:.2f} s "
              f"({svd['lowrank_s'] / task:.1%})", flush=True)


if __name__ == "__main__":
    main()
