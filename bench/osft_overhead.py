"""What OSFT costs: step time and peak memory of OSFT vs plain full fine-tuning, and the
task-start SVDs against one task's training, on MiniLM, side by side in one run.

Step time: one process times blocks of steps of each configuration in turn (plain full
fine-tuning with AdamW; OSFT with every target matrix preserving each given share of
its rank, in the shipped form, clients.training.osft_training: W <- F + P(W_after) with each side
of P in its cheaper basis, and in the reference form the shipped form replaced: a copy
of W before each step and W <- W_before + project(W_after - W_before) with the preserved
bases on both sides), the order rotated every repeat, so machine
noise hits them alike; it prints the median step time and the median, min and max of
the per-repeat ratios to plain. Peak memory: each configuration again in a process of
its own (ru_maxrss). Then the SVDs a task start needs for every target weight: full thin
SVD (what server.serverapp.osft_plan runs) vs torch.svd_lowrank (randomized, top k),
against one task of the osft-cl-4task scenario at the measured OSFT step time.
Targets: step <= 1.15x plain at 80 % preserved (issue 18, median of several runs), peak
memory <= 1.3x, task-start SVDs < 10 % of a task (issue 5).

Usage: python bench/osft_overhead.py [--steps 4] [--repeats 5] [--batch 16] [--shares 0.5 0.8]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(batch: int):
    import torch

    from clients.data.tasks import tokenize
    from clients.models.factory import build_model, build_tokenizer
    from clients.data.synthetic import make_examples
    from scenarios.schema import ModelSpec

    torch.set_num_threads(2)
    spec = ModelSpec(name="minilm", max_length=64)
    rows = [{"text": e["sentence"] * 3, "text_pair": None, "label": e["label"]}
            for e in make_examples(3, batch * 8, seed=0)]
    return build_model(spec, 3, 0, "full"), tokenize(rows, build_tokenizer(spec), 64)


def configurations(shares: list[float]) -> list[tuple[str, float, bool]]:
    """(label, share of rank preserved, shipped form) of every configuration timed."""
    rows = [("plain full fine-tuning", 0.0, True)]
    for share in shares:
        rows += [(f"OSFT {share:.0%}, shipped", share, True),
                 (f"OSFT {share:.0%}, reference", share, False)]
    return rows


@contextmanager
def reference_projection(model, optimizer, bases):
    """OSFT's update constraint in its first form (before issue 18): copy every target
    weight before the step, then W <- W_before + project(W_after - W_before)."""
    import torch

    from clients.training.osft import project

    params = dict(model.named_parameters())
    before = {}

    def remember(*_) -> None:
        for name in bases:
            before[name] = params[name].detach().clone()

    @torch.no_grad()
    def constrain(*_) -> None:
        for name, (u, v) in bases.items():
            start = before.pop(name)
            params[name].copy_(start + project(params[name] - start, u, v))

    hooks = [optimizer.register_step_pre_hook(remember),
             optimizer.register_step_post_hook(constrain)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def runner(model, data, batch: int, share: float, shipped: bool):
    """A function that trains `n` steps of one configuration on the shared model."""
    import torch

    from clients.training.osft import basis
    from clients.training.osft_training import projected_updates
    from clients.training.loop import make_optimizer, train_steps
    from scenarios.schema import BERT_LINEAR_LAYERS, OptimizerSpec
    from server.serverapp.osft_plan import target_weights

    optimizer = make_optimizer(model, OptimizerSpec(name="adamw", lr=1e-5))
    bases = {}
    if share > 0:
        for name, w in target_weights(model, BERT_LINEAR_LAYERS).items():
            bases[name] = basis(w.detach(), int(share * min(w.shape)))
    constraint = projected_updates if shipped else reference_projection
    cpu = torch.device("cpu")

    def run(n: int) -> None:
        with constraint(model, optimizer, bases):
            train_steps(model, data, n, batch, optimizer, torch.Generator().manual_seed(0), cpu)
    return run


def interleaved_times(shares: list[float], steps: int, repeats: int, batch: int) -> dict:
    """Seconds per step of every configuration, block after block in one process."""
    model, data = build(batch)
    configs = configurations(shares)
    runs = [runner(model, data, batch, share, shipped) for _, share, shipped in configs]
    for run in runs:
        run(1)  # warm-up: first-call allocations and lazy imports
    times = [[] for _ in configs]
    for repeat in range(repeats):
        for i in [(repeat + j) % len(configs) for j in range(len(configs))]:
            start = time.perf_counter()
            runs[i](steps)
            times[i].append((time.perf_counter() - start) / steps)
    return {"labels": [label for label, _, _ in configs], "times": times}


def peak_memory(share: float, shipped: bool, steps: int, batch: int) -> dict:
    """In this process: train a few steps of one configuration; peak RSS."""
    model, data = build(batch)
    runner(model, data, batch, share, shipped)(steps)
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def svd_times(share: float) -> dict:
    """Seconds for the bases of every target weight: full thin SVD vs randomized top-k."""
    import torch

    from clients.training.osft import basis
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
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per configuration")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--task-steps", type=int, default=60,
                        help="steps of one task: osft-cl-4task has 3 rounds x 2 clients x 10")
    parser.add_argument("--times", action="store_true", help=argparse.SUPPRESS)  # child
    parser.add_argument("--memory", type=float, help=argparse.SUPPRESS)  # child: peak RSS
    parser.add_argument("--svd", type=float, help=argparse.SUPPRESS)  # child: SVDs
    args = parser.parse_args()
    if args.times:
        print(json.dumps(interleaved_times(args.shares, args.steps, args.repeats, args.batch)))
        return
    if args.memory is not None:
        print(json.dumps(peak_memory(args.memory, True, args.steps, args.batch)))
        return
    if args.svd is not None:
        print(json.dumps(svd_times(args.svd)))
        return
    common = ["--steps", str(args.steps), "--batch", str(args.batch)]
    print(f"MiniLM full fine-tuning, AdamW, batch {args.batch}, sequence 64; {args.repeats} "
          f"interleaved blocks of {args.steps} steps per configuration", flush=True)
    timed = child(["--times", "--repeats", str(args.repeats), "--shares",
                   *map(str, args.shares), *common])
    plain = timed["times"][0]
    memory = {0.0: child(["--memory", "0", *common])["peak_mb"]}
    for share in args.shares:
        memory[share] = child(["--memory", str(share), *common])["peak_mb"]
    print(f"{'configuration':>26} {'step s':>7} {'ratio (min-max)':>20} {'peak MB':>8} {'ratio':>6}")
    for (label, share, shipped), times in zip(configurations(args.shares), timed["times"]):
        ratios = [t / p for t, p in zip(times, plain)]
        mem = (f"{memory[share]:8.0f} {memory[share] / memory[0.0]:5.2f}x" if shipped
               else f"{'':>8} {'':>6}")
        print(f"{label:>26} {statistics.median(times):7.3f} {statistics.median(ratios):6.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}){'':>2} {mem}", flush=True)
    for share in args.shares:
        svd = child(["--svd", str(share)])
        index = 1 + 2 * args.shares.index(share)
        task = args.task_steps * statistics.median(timed["times"][index])
        print(f"{share:.0%} kept: task-start SVDs of {svd['matrices']} matrices: full "
              f"{svd['full_s']:.2f} s ({svd['full_s'] / task:.1%} of a {args.task_steps}-step "
              f"task, {task:.0f} s), randomized top-k {svd['lowrank_s']:.2f} s "
              f"({svd['lowrank_s'] / task:.1%})", flush=True)


if __name__ == "__main__":
    main()
