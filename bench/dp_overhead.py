"""What DP-SGD costs per step: non-private vs Opacus, side by side, and peak memory.

For each model (tiny BERT, MiniLM) and each trainable set (LoRA-B; full fine-tuning;
full fine-tuning with frozen embeddings), it times training steps without DP and with
each per-sample-gradient mode, every configuration in its own subprocess, one after the
other in this run, so peak memory (ru_maxrss of that process) belongs to it alone.
Prints step time, the DP/non-DP ratio and peak RSS.
Targets (issue 4): DP/non-DP <= 1.2x for LoRA-B, <= 2x for full fine-tuning (best mode).

Usage: python bench/dp_overhead.py [--models tiny-bert minilm] [--steps 5] [--batch 16]
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

SETS = ("lora-b", "full", "full-no-emb")
MODES = ("none", "hooks", "functorch")


def measure(model_name: str, trained: str, mode: str, steps: int, batch: int) -> dict:
    """In this process: time `steps` steps after one warm-up step; peak RSS."""
    import torch

    from clients.data import tokenize
    from clients.dp_training import dp_train_steps
    from clients.models import build_model, build_tokenizer
    from clients.synthetic import make_examples
    from clients.training import make_optimizer, train_steps
    from scenarios.schema import ModelSpec, OptimizerSpec, PrivacySpec

    torch.set_num_threads(2)
    spec = ModelSpec(name=model_name, max_length=64)
    rows = [{"text": e["sentence"] * 3, "text_pair": None, "label": e["label"]}
            for e in make_examples(3, batch * 8, seed=0)]
    data = tokenize(rows, build_tokenizer(spec), 64)
    model = build_model(spec, 3, 0, "lora-b" if trained == "lora-b" else "full")
    if trained == "full-no-emb":
        for name, param in model.named_parameters():
            if ".embeddings." in name:
                param.requires_grad = False
    optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=1e-3))
    cpu = torch.device("cpu")

    def run(n: int) -> None:
        if mode == "none":
            train_steps(model, data, n, batch, optimizer, torch.Generator().manual_seed(0), cpu)
        else:
            privacy = PrivacySpec(target_epsilon=8.0, grad_sample_mode=mode)
            dp_train_steps(model, data, n, batch, optimizer, privacy, 1.0, [], cpu)

    run(1)  # warm-up: first-call allocations and lazy imports
    start = time.perf_counter()
    run(steps)
    seconds = (time.perf_counter() - start) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"step_s": seconds, "peak_mb": peak_mb, "trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny-bert", "minilm"])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--modes", nargs="+", default=list(MODES[1:]), choices=MODES[1:])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # model set mode: child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.batch)))
        return
    print(f"batch {args.batch}, sequence 64, {args.steps} timed steps, each row its own process")
    print(f"{'model':>10} {'trains':>12} {'params':>10} {'mode':>10} {'step s':>8} "
          f"{'DP/non-DP':>10} {'peak MB':>8}")
    for model in args.models:
        for trained in args.sets:
            base = None
            for mode in ("none", *args.modes):
                done = subprocess.run([sys.executable, __file__, "--one", model, trained, mode,
                                       "--steps", str(args.steps), "--batch", str(args.batch)],
                                      capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    error = (done.stderr.strip().splitlines() or ["?"])[-1][:60]
                    print(f"{model:>10} {trained:>12} {'':>10} {mode:>10} failed: {error}")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                base = row["step_s"] if mode == "none" else base
                ratio = f"{row['step_s'] / base:.2f}x" if base else "-"
                print(f"{model:>10} {trained:>12} {row['trainable']:>10} {mode:>10} "
                      f"{row['step_s']:8.3f} {ratio:>10} {row['peak_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
