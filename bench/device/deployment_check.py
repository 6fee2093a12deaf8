"""Check (a): Flower's deployment engine on one GPU against one plain PyTorch loop.

A SuperLink and 4 warm SuperNodes (`orthofed run --deployment`, resources.devices [0]:
every node's CUDA_VISIBLE_DEVICES is GPU 0) run FedSVD under DP-SGD (epsilon 6, PRV)
on a LLaMA-architecture model of 365M parameters (common.WIDTHS["deploy"]; LoRA r 8 on
q_proj, v_proj, clients train B) over a generated 3-topic task. Then the same DP-SGD
steps (same model, data partitions, batch, sigma and sample rate; Opacus through
clients.training.dp_training) for the 4 clients one after another in this one process, no Flower.

Reported: the federation's later rounds (round 2 on: round 1 includes each node's
imports and model build), the plain loop's rounds, their ratio (target <= 1.3x), and
the GPU's utilisation and memory sampled from nvidia-smi during the federated run. A
federated round also holds what the plain loop has not: the server's SVD
re-factorization and its evaluation of the global model (32 test rows).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from common import GpuSampler, interleaved, llama_folder

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 4


def scenario(model_dir: Path, gpu: bool, smoke: bool) -> dict:
    rounds, steps, batch = (2, 2, 4) if smoke else (4, 10, 16)
    return {
        "name": "device-fedsvd-dp", "seed": 0,
        "description": "FedSVD under DP on a LLaMA-architecture model, 4 SuperNodes on one GPU.",
        "model": {"name": str(model_dir), "kind": "causal-lm", "max_length": 32,
                  "lora": {"rank": 8, "alpha": 8, "dropout": 0.05}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 1600,
                            "test_size": 64},
                 "partitioning": {"kind": "iid"}, "server_eval_max": 32},
        "federation": {"num_clients": CLIENTS, "clients_per_round": CLIENTS, "rounds": rounds,
                       "local_steps": steps, "batch_size": batch,
                       "optimizer": {"name": "sgd", "lr": 0.5}},
        "privacy": {"target_epsilon": 6.0, "delta": 1e-5, "max_grad_norm": 2.0,
                    "accountant": "prv"},
        "strategy": {"name": "fedsvd"},
        "resources": {"num_cpus": 2 if gpu else 1, "devices": [0] if gpu else []},
    }


def federated(path: Path, runs_dir: Path) -> dict:
    """`orthofed run --deployment` of the scenario; its rounds' seconds and the GPU's
    samples."""
    from server.runs.store import MetricsStore

    with GpuSampler() as gpu:
        done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path),
                               "--runs-dir", str(runs_dir), "--deployment", "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=420,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"orthofed run --deployment exited {done.returncode}: "
                           f"{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    times = MetricsStore.in_dir(runs_dir).round_times(summary["run_id"])
    rounds = [b - a for a, b in zip(times, times[1:])]  # round 0's evaluation first
    return {"round_s": rounds, "later_round_s": statistics.median(rounds[1:] or rounds),
            "status": summary["status"], "gpu": gpu.summary(),
            "client_devices": sorted({str(c.get("last", {}).get("device"))
                                      for c in summary["clients"].values()}),
            "epsilon": {p: c.get("epsilon") for p, c in summary["clients"].items()}}


def plain_rounds(path: Path, device: torch.device, rounds: int) -> dict:
    """The clients' DP-SGD steps of a round back to back in this process, no Flower,
    `rounds` times (after one warm-up round)."""
    from clients.data.tasks import client_data
    from clients.training.dp_training import dp_train_steps
    from clients.models.factory import build_model
    from clients.training.privacy import noise_for_budget, planned_rounds, sample_rate
    from clients.training.loop import make_optimizer
    from scenarios.loader import load_scenario

    loaded = load_scenario(path)
    fed, spec = loaded.federation, loaded.privacy
    model = build_model(loaded.model, 3, loaded.seed, "lora-b", device)
    data = [client_data(loaded, p).train for p in range(CLIENTS)]
    sigma = noise_for_budget(spec, sample_rate(len(data[0]), fed.batch_size),
                             planned_rounds(loaded) * fed.local_steps)

    def one_round() -> None:
        for train in data:
            dp_train_steps(model, train, fed.local_steps, fed.batch_size,
                           make_optimizer(model, fed.optimizer), spec, sigma, [], device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = interleaved({"plain": one_round}, rounds, device)["plain"]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"round_s": seconds, "median_round_s": statistics.median(seconds),
            "peak_allocated_mib": peak}


def run(work: Path, device: torch.device, smoke: bool) -> dict:
    model_dir = work / "llama-deploy"
    params = llama_folder(model_dir, "smoke" if smoke else "deploy")
    path = work / "device-fedsvd-dp.yaml"
    path.write_text(yaml.safe_dump(scenario(model_dir, device.type == "cuda", smoke)))
    fed = federated(path, work / "runs-deploy")
    plain = plain_rounds(path, device, rounds=max(len(fed["round_s"]) - 1, 1))
    value = fed["later_round_s"] / plain["median_round_s"]
    return {"model_parameters": params, "clients": CLIENTS, "federated": fed, "plain": plain,
            "ratio": value, "target": 1.3, "met": value <= 1.3}
