"""The framework on a GPU vs one plain PyTorch loop on the same GPU (bench/gpu_check.sh).

1. `orthofed run` of scenarios/fedsvd-sst2.yaml under DP (epsilon 6) with 4 clients
   (the first 4 pre-split files) all in each round, sharing the GPU
   (resources.num_gpus = 1/4): round time (median after the first), samples per second
   per client, peak GPU memory and mean utilisation (nvidia-smi every 0.5 s).
2. The same DP-SGD steps (Opacus, LoRA-B on MiniLM, same batch, sigma and sample rate)
   in one process, one client after the other, no Flower: samples per second.
The ratio says what the federation (Flower, Ray, message passing, server-side SVD and
evaluation) costs over the bare training. `--smoke` runs a tiny version on any device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from server.runs.store import MetricsStore  # noqa: E402


def gpu_sampler(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """(utilisation %, memory MiB) of GPU 0 every 0.5 s until `stop`."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout
            util, mem = (float(x) for x in out.strip().split(","))
            samples.append((util, mem))
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
        stop.wait(0.5)


def build_scenario(clients: int, rounds: int, steps: int, gpu: bool, tmp: Path) -> Path:
    base = load_scenario(ROOT / "scenarios" / "fedsvd-sst2.yaml")
    doc = base.model_dump(mode="json")
    doc["name"] = "gpu-check"
    doc["data"]["source"]["train"] = doc["data"]["source"]["train"][:clients]
    doc["data"]["server_eval_max"] = 872
    doc["federation"].update(num_clients=clients, clients_per_round=clients, rounds=rounds,
                             local_steps=steps)
    doc["privacy"] = {"target_epsilon": 6.0, "delta": 1e-5, "max_grad_norm": 2.0,
                      "accountant": "prv"}
    doc["resources"] = {"num_cpus": 2 if gpu else 1,
                        "num_gpus": round(1 / clients, 4) if gpu else 0.0}
    path = tmp / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def federated(path: Path, runs_dir: Path) -> dict:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_sampler, args=(samples, stop), daemon=True)
    sampler.start()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path), "--runs-dir",
                           str(runs_dir), "--json"], cwd=ROOT, capture_output=True, text=True)
    stop.set()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    times = MetricsStore.in_dir(runs_dir).round_times(summary["run_id"])
    per_round = [b - a for a, b in zip(times[1:], times[2:], strict=False)] or [times[-1] - times[0]]
    return {"round_s": statistics.median(per_round), "summary": summary,
            "gpu_util": statistics.mean(u for u, _ in samples) if samples else float("nan"),
            "gpu_mem_mb": max((m for _, m in samples), default=float("nan"))}


def plain_loop(path: Path, clients: int, steps: int, device: str) -> dict:
    """The clients' DP-SGD steps back to back in this process, no Flower."""
    import torch

    from clients.data import client_data
    from clients.dp_training import dp_train_steps
    from clients.models import build_model
    from clients.privacy import noise_for_budget, planned_rounds, sample_rate
    from clients.training import make_optimizer

    scenario = load_scenario(path)
    fed, spec = scenario.federation, scenario.privacy
    model = build_model(scenario.model, 2, scenario.seed, "lora-b", device)
    data = [client_data(scenario, p) for p in range(clients)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    q = sample_rate(len(data[0].train), fed.batch_size)
    sigma = noise_for_budget(spec, q, planned_rounds(scenario) * fed.local_steps)
    dp_train_steps(model, data[0].train, 1, fed.batch_size, make_optimizer(model, fed.optimizer),
                   spec, sigma, [], torch.device(device))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for p in range(clients):
        dp_train_steps(model, data[p].train, steps, fed.batch_size,
                       make_optimizer(model, fed.optimizer), spec, sigma, [], torch.device(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"samples_per_s": clients * steps * fed.batch_size / seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="2 clients, 2 rounds, 2 steps")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.rounds, args.steps = 2, 2, 2
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scenario(args.clients, args.rounds, args.steps,
                              args.device.startswith("cuda"), Path(tmp))
        fed = federated(path, Path(tmp) / "runs")
        plain = plain_loop(path, args.clients, args.steps, args.device)
    batch = load_scenario(ROOT / "scenarios" / "fedsvd-sst2.yaml").federation.batch_size
    per_client = args.steps * batch / fed["round_s"]
    devices = {c.get("last", {}).get("device") for c in fed["summary"]["clients"].values()}
    print(f"FedSVD + DP (epsilon 6), MiniLM, {args.clients} clients sharing one GPU, "
          f"{args.steps} steps of batch {batch} per round; client devices: {sorted(devices)}")
    print(f"  federated: {fed['round_s']:.2f} s/round, {per_client:.1f} samples/s per client, "
          f"{per_client * args.clients:.1f} samples/s in all; GPU peak {fed['gpu_mem_mb']:.0f} "
          f"MiB (nvidia-smi, all processes), mean utilisation {fed['gpu_util']:.0f}%")
    print(f"  plain PyTorch loop: {plain['samples_per_s']:.1f} samples/s, peak "
          f"{plain['peak_mb']:.0f} MiB allocated")
    print(f"  federation / plain throughput: {per_client * args.clients / plain['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
