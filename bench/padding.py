"""What padding costs: batches padded to max_length vs trimmed to their longest row.

MiniLM (LoRA B + head, mean pooling, max_length 64) on the FedSVD SST-2 split: training
steps of batch 32 on client 0's rows, padded vs trimmed; and one evaluation pass over
val.jsonl (872 rows, batch 128) padded, trimmed in a random order, and trimmed in order
of length (what the server does). The variants run alternately in this process, so the
ratios are measured side by side; it prints medians and each ratio to the padded time.

Usage: python bench/padding.py [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.data.tasks import client_data, server_test_set  # noqa: E402
from clients.models.factory import build_model  # noqa: E402
from clients.training.loop import forward_loss, make_optimizer, trim_padding  # noqa: E402
from scenarios.loader import load_scenario  # noqa: E402
from scenarios.schema import OptimizerSpec  # noqa: E402
from timing import seconds_each  # noqa: E402


def steps_fn(model, batches, optimizer, trim: bool):
    def run() -> None:
        for batch in batches:
            batch = trim_padding(batch) if trim else batch
            optimizer.zero_grad(set_to_none=True)
            forward_loss(model, batch)[0].backward()
            optimizer.step()
    return run


def eval_fn(model, data, trim: bool):
    @torch.no_grad()
    def run() -> None:
        for batch in DataLoader(data, batch_size=128):
            forward_loss(model, trim_padding(batch) if trim else batch)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    scenario = load_scenario(ROOT / "scenarios" / "fedsvd-sst2.yaml")
    train = client_data(scenario, 0).train
    batches = [list(b) for _, b in zip(range(args.steps), DataLoader(train, batch_size=32,
                                                                     shuffle=True))]
    ordered = server_test_set(scenario)  # ordered by length
    shuffled = TensorDataset(*[t[torch.randperm(len(ordered))] for t in ordered.tensors])
    model = build_model(scenario.model, 2, 0, "lora-b")
    optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=0.5))
    timings: dict[str, list[float]] = {k: [] for k in (
        "train-padded", "train-trimmed", "eval-padded", "eval-trimmed", "eval-by-length")}
    model.train()
    for _ in range(args.repeats):  # alternate: the machine's drift hits both alike
        timings["train-padded"] += seconds_each(steps_fn(model, batches, optimizer, False), 1)
        timings["train-trimmed"] += seconds_each(steps_fn(model, batches, optimizer, True), 1)
    model.eval()
    for _ in range(args.repeats):
        timings["eval-padded"] += seconds_each(eval_fn(model, shuffled, False), 1)
        timings["eval-trimmed"] += seconds_each(eval_fn(model, shuffled, True), 1)
        timings["eval-by-length"] += seconds_each(eval_fn(model, ordered, True), 1)
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"{args.steps} training steps of batch 32 (client 0), {len(ordered)}-row evaluation; "
          f"medians of {args.repeats}")
    for key, seconds in med.items():
        what = key.split("-")[0]
        print(f"{key:>15}: {seconds:6.2f} s   padded / this {med[what + '-padded'] / seconds:5.2f}x")


if __name__ == "__main__":
    main()
