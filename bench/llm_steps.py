"""What each method's local step costs on a decoder LLM: time and peak memory, side by side.

SmolLM2-135M-Instruct (or --model tiny-llama) on instruction-formatted AG News rows
from ../shared/data/cl_benchmark (prompt + answer, the loss on the answer tokens),
batch 8: plain full fine-tuning (every weight but the tied embedding), LoRA-B (r = 8 on
q_proj and v_proj, FedSVD / FFA-LoRA's trainable set), OSFT (full fine-tuning with every
step of the 210 attention and MLP matrices projected off half of each one's singular
subspace), and each under DP-SGD (Opacus, hooks mode, per-example clipping). Each
configuration runs in its own process, one after the other in this run, so its peak
memory (ru_maxrss) is its own; the ratios are to plain full fine-tuning measured in the
same run. Targets (issue 16): DP LoRA-B <= 1.3x the non-private LoRA-B step.

Step time: one call of --steps steps (as a client's round makes it, DP's per-round setup
included), divided by the steps, after a one-step warm-up call.

Usage: python bench/llm_steps.py [--model smollm2] [--steps 5] [--batch 8] [--length 96]
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

CONFIGS = ("full", "lora-b", "lora-b+dp", "osft", "osft+dp", "full+dp")


def measure(model_name: str, config: str, steps: int, batch: int, length: int) -> dict:
    """In this process: `steps` timed steps after one warm-up step; peak RSS."""
    import torch

    from clients.data.tasks import tokenized
    from clients.training.dp_training import dp_train_steps
    from clients.models.factory import build_model, osft_targets
    from clients.training.osft import basis
    from clients.training.osft_training import projected_updates
    from clients.training.loop import make_optimizer, train_steps
    from scenarios.loader import load_scenario
    from scenarios.schema import OptimizerSpec, PrivacySpec
    from server.serverapp.osft_plan import target_weights

    torch.set_num_threads(2)
    scenario = load_scenario({
        "name": "llm-steps", "model": {"name": model_name, "max_length": length},
        "data": {"source": {"kind": "cl-json",
                            "path": str(ROOT.parent / "shared/data/cl_benchmark/agnews")}},
        "federation": {"num_clients": 1, "clients_per_round": 1, "rounds": 1},
        "strategy": {"name": "fedavg"}})
    from clients.data.tasks import cached_task
    rows = cached_task(scenario.data, 0).train[: batch * 8]
    data = tokenized(rows, scenario, 0, "train")
    trains = "lora-b" if config.startswith("lora-b") else "full"
    model = build_model(scenario.model, 4, 0, trains)
    optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=1e-4))
    bases = {}
    if config.startswith("osft"):
        for name, weight in target_weights(model, osft_targets(scenario.model, None)).items():
            bases[name] = basis(weight.detach(), min(weight.shape) // 2)
    cpu, private = torch.device("cpu"), config.endswith("+dp")

    def run(n: int) -> None:
        with projected_updates(model, optimizer, bases):
            if private:
                dp_train_steps(model, data, n, batch, optimizer,
                               PrivacySpec(target_epsilon=8.0, max_grad_norm=1.0), 1.0, [], cpu)
            else:
                train_steps(model, data, n, batch, optimizer, torch.Generator().manual_seed(0), cpu)

    run(1)  # warm-up: first-call allocations and lazy imports
    # One call of `steps` steps, as a client's round makes it (DP's setup included once).
    started = time.perf_counter()
    run(steps)
    return {"step_s": (time.perf_counter() - started) / steps,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "preserved_matrices": len(bases)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a configuration, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.steps, args.batch, args.length)))
        return
    print(f"{args.model}, batch {args.batch}, max_length {args.length}, mean of {args.steps} "
          "steps after a warm-up, each row its own process")
    print(f"{'config':>10} {'trainable':>11} {'step s':>8} {'/ full':>7} {'/ lora-b':>9} "
          f"{'peak MB':>8} {'/ full':>7}")
    rows: dict[str, dict] = {}
    for config in args.configs:
        done = subprocess.run([sys.executable, __file__, "--one", config, "--model", args.model,
                               "--steps", str(args.steps), "--batch", str(args.batch),
                               "--length", str(args.length)],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(f"{config:>10} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}")
            continue
        row = rows[config] = json.loads(done.stdout.strip().splitlines()[-1])
        full, lora = rows.get("full"), rows.get("lora-b")
        vs_full = f"{row['step_s'] / full['step_s']:.2f}x" if full else "-"
        vs_lora = f"{row['step_s'] / lora['step_s']:.2f}x" if lora and "lora" in config else "-"
        mem = f"{row['peak_mb'] / full['peak_mb']:.2f}x" if full else "-"
        print(f"{config:>10} {row['trainable']:>11} {row['step_s']:8.2f} {vs_full:>7} "
              f"{vs_lora:>9} {row['peak_mb']:8.0f} {mem:>7}", flush=True)


if __name__ == "__main__":
    main()
