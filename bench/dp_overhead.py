"""What DP-SGD costs per step: non-private vs Opacus, side by side, and peak memory.

For each model (tiny BERT, MiniLM) and each trainable set (LoRA-B; full fine-tuning;
full fine-tuning with frozen embeddings), it times training steps without DP and with
each clipping mode (privacy.grad_sample_mode: 'hooks' and 'functorch' materialise
per-sample gradients, 'ghost' clips from per-sample norms), every configuration in its
own subprocess, so peak memory (ru_maxrss of that process) belongs to it alone.
With --repeats R the whole grid runs R times, interleaved (every configuration once,
then again), and each ratio is taken within a repeat, against the non-DP row measured
next to it, then the median over repeats: a busy machine slows neighbours alike.
Prints the median step time, DP/non-DP time ratio (and its range over repeats), peak
RSS, its ratio to non-DP, and the RSS the training added over the loaded model.
Targets (issue 18): DP/non-DP <= 1.1x for LoRA-B; full fine-tuning of MiniLM <= 2x
time and <= 1.5x peak memory.

Usage: python bench/dp_overhead.py [--models tiny-bert minilm] [--sets ...]
       [--modes hooks ghost] [--steps 10] [--batch 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ("lora-b", "full", "full-no-emb")
MODES = ("none", "hooks", "functorch", "ghost", "auto")


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(model_name: str, trained: str, mode: str, steps: int, batch: int,
            threads: int) -> dict:
    """In this process: time `steps` steps after one warm-up step; peak RSS."""
    import torch

    from clients.data.tasks import tokenize
    from clients.training.dp_training import dp_train_steps
    from clients.models.factory import build_model, build_tokenizer
    from clients.data.synthetic import make_examples
    from clients.training.loop import make_optimizer, train_steps
    from scenarios.schema import ModelSpec, OptimizerSpec, PrivacySpec

    torch.set_num_threads(threads)
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

    loaded_mb = rss_mb()
    run(1)  # warm-up: first-call allocations and lazy imports
    start = time.perf_counter()
    run(steps)
    seconds = (time.perf_counter() - start) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"step_s": seconds, "peak_mb": peak_mb, "train_mb": peak_mb - loaded_mb,
            "trainable": trainable}


def child(model: str, trained: str, mode: str, args: argparse.Namespace) -> dict | str:
    """One configuration in a fresh process: its row, or the last line of its error."""
    done = subprocess.run([sys.executable, __file__, "--one", model, trained, mode,
                           "--steps", str(args.steps), "--batch", str(args.batch),
                           "--threads", str(args.threads)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["?"])[-1][:60]
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], bases: list[dict]) -> str:
    """A table row's numbers: medians over repeats, each ratio within its repeat."""
    step = statistics.median(r["step_s"] for r in runs)
    peak = statistics.median(r["peak_mb"] for r in runs)
    train = statistics.median(r["train_mb"] for r in runs)
    if not bases:
        return f"{step:8.3f} {'-':>10} {'-':>13} {peak:8.0f} {'-':>9} {train:8.0f}"
    times = sorted(r["step_s"] / b["step_s"] for r, b in zip(runs, bases, strict=True))
    mems = [r["peak_mb"] / b["peak_mb"] for r, b in zip(runs, bases, strict=True)]
    spread = f"{times[0]:.2f}-{times[-1]:.2f}"
    return (f"{step:8.3f} {statistics.median(times):9.2f}x {spread:>13} {peak:8.0f} "
            f"{statistics.median(mems):8.2f}x {train:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny-bert", "minilm"])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--modes", nargs="+", default=["hooks", "ghost"], choices=MODES[1:])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    # One thread: on a shared 2-core machine, two threads spin-wait whenever the other
    # core is taken, and step times swing 10x; one thread's times hold within ~10%.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # model set mode: child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.batch, args.threads)))
        return
    grid = [(m, s, mode) for m in args.models for s in args.sets for mode in ("none", *args.modes)]
    results: dict[tuple, list] = {key: [] for key in grid}
    for _ in range(args.repeats):  # interleaved: each repeat runs the whole grid once
        for key in grid:
            results[key].append(child(*key, args))
    print(f"batch {args.batch}, sequence 64, {args.steps} timed steps, {args.threads} "
          f"thread(s), each row its own process, medians of {args.repeats} interleaved repeats")
    print(f"{'model':>10} {'trains':>12} {'params':>10} {'mode':>6} {'step s':>8} "
          f"{'DP/non-DP':>10} {'time range':>13} {'peak MB':>8} {'mem ratio':>9} "
          f"{'train MB':>8}")
    for model, trained, mode in grid:
        runs = results[(model, trained, mode)]
        failed = next((r for r in runs if isinstance(r, str)), None)
        if failed is not None:
            print(f"{model:>10} {trained:>12} {'':>10} {mode:>6} failed: {failed}")
            continue
        base = results[(model, trained, "none")]
        bases = [] if mode == "none" or any(isinstance(b, str) for b in base) else base
        print(f"{model:>10} {trained:>12} {runs[0]['trainable']:>10} {mode:>6} "
              f"{summary(runs, bases)}", flush=True)


if __name__ == "__main__":
    main()
