"""What per-round checkpoints cost: writing one (write, fsync, rename) and reading it back,
against the local training a round does, on MiniLM, side by side in one run.

Two configurations, as the shipped scenarios use them: full fine-tuning (OSFT and
sequential FT streams, osft-cl-4task: the whole encoder is the server's state) and LoRA
(fedsvd-sst2: rank-8 adapters on query and value, plus the head). For each: the median
seconds to save a round checkpoint (server.serverapp.checkpoint.Checkpoints.save, the file the
ServerApp writes after every round) and to load the newest back, the file size, and the
median seconds of one local AdamW step (batch 16, 64 tokens). The ratio divides the
save by the least a round can take: one client's local steps of that scenario (a round
also waits for the slowest client and evaluates, so the real share is smaller).

Usage: python bench/checkpoint_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import seconds_each  # noqa: E402  (bench/ is the script's folder)

CONFIGS = {  # name: (what clients train, local steps per round in the shipped scenario)
    "full fine-tuning (osft-cl-4task)": ("full", 15),
    "LoRA r=8 (fedsvd-sst2)": ("lora-b", 10),
}


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(seconds_each(fn, repeats))


def measure(trains: str, repeats: int) -> dict:
    import torch

    from clients.data.tasks import tokenize
    from clients.models.factory import build_model, build_tokenizer
    from clients.data.synthetic import make_examples
    from clients.training.loop import make_optimizer, train_steps
    from scenarios.schema import ModelSpec, OptimizerSpec
    from server.serverapp.app import stream_checkpoint
    from server.serverapp.checkpoint import Checkpoints, RunState, rng_state

    torch.set_num_threads(2)
    spec = ModelSpec(name="minilm", max_length=64)
    model = build_model(spec, 2, 0, trains)
    rows = [{"text": e["sentence"] * 3, "text_pair": None, "label": e["label"]}
            for e in make_examples(2, 16 * 8, seed=0)]
    data = tokenize(rows, build_tokenizer(spec), 64)
    optimizer = make_optimizer(model, OptimizerSpec(name="adamw", lr=1e-5))
    generator = torch.Generator().manual_seed(0)
    train_steps(model, data, 1, 16, optimizer, generator, torch.device("cpu"))  # warm-up
    step = median_seconds(lambda: train_steps(model, data, 1, 16, optimizer, generator,
                                              torch.device("cpu")), repeats)
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Checkpoints(Path(folder), keep=2)
        rounds = iter(range(1, 10_000))

        def save() -> None:
            checkpoints.save(RunState(round=next(rounds), task=0, task_rounds=1,
                                      model=stream_checkpoint(model, {}), scenario_digest="d",
                                      ledgers={}, rng=rng_state(random.Random(0))))

        save_s = median_seconds(save, repeats)
        load_s = median_seconds(lambda: checkpoints.latest("d"), repeats)
        size_mb = checkpoints.rounds()[0].stat().st_size / 2**20
    return {"step": step, "save": save_s, "load": load_s, "size_mb": size_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    table = Table(title="per-round checkpoint cost, MiniLM (median of "
                        f"{args.repeats}; 2 threads)")
    for column in ("configuration", "file MB", "save s", "load s", "local step s",
                   "save / (local steps x step)"):
        table.add_column(column, justify="right")
    for name, (trains, local_steps) in CONFIGS.items():
        m = measure(trains, args.repeats)
        table.add_row(name, f"{m['size_mb']:.1f}", f"{m['save']:.3f}", f"{m['load']:.3f}",
                      f"{m['step']:.3f}",
                      f"{m['save'] / (local_steps * m['step']):.2%} ({local_steps} steps)")
    Console().print(table)


if __name__ == "__main__":
    main()
