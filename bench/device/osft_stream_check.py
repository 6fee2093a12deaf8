"""Check (b): a 2-task OSFT stream under DP-SGD with both clients on the GPU, and what
OSFT and DP cost per step there.

1. `orthofed run --deployment` of two generated tasks (3 topics, then 2 others) learned
   one after the other by 2 SuperNodes sharing GPU 0, OSFT with scheduled preserved
   ranks over every attention and MLP projection of a LLaMA-architecture model
   (common.WIDTHS["stream"], 189M parameters; full fine-tuning but the tied embedding),
   DP-SGD at epsilon 8. Checked: the run completes, every client round reports device
   cuda, epsilon stays within the target, and every matrix task 1 preserved part of
   keeps task 0's top-k singular triplets (server.runs.preserved, <= 1e-4).
2. In this process, on the same model and data, blocks of steps of plain full
   fine-tuning (AdamW), OSFT (80 % of every target's rank preserved: the shipped
   projection, clients.training.osft_training) and DP full fine-tuning (Opacus, the client's
   clipping mode), interleaved; each configuration's peak GPU memory. Targets: OSFT
   <= 1.15x plain, DP <= 2x plain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from common import interleaved, llama_folder, ratio

ROOT = Path(__file__).resolve().parents[2]
EPSILON = 8.0


def scenario(model_dir: Path, gpu: bool, smoke: bool) -> dict:
    rounds, steps, batch = (1, 2, 4) if smoke else (2, 4, 8)
    return {
        "name": "device-osft-dp-stream", "seed": 0,
        "description": "OSFT over 2 generated tasks under DP, 2 SuperNodes on one GPU.",
        "model": {"name": str(model_dir), "kind": "causal-lm", "max_length": 32},
        "data": {"partitioning": {"kind": "iid"}, "server_eval_max": 32},
        "stream": {"tasks": [
            {"name": "topics-a", "source": {"kind": "generated", "num_labels": 3,
                                            "train_size": 400, "test_size": 64}},
            {"name": "topics-b", "source": {"kind": "generated", "num_labels": 2,
                                            "train_size": 400, "test_size": 64,
                                            "first_topic": 5}}]},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": rounds,
                       "local_steps": steps, "batch_size": batch,
                       "optimizer": {"name": "adamw", "lr": 1e-4}},
        "privacy": {"target_epsilon": EPSILON, "max_grad_norm": 1.0},
        "strategy": {"name": "osft", "rank_rule": "schedule"},
        "resources": {"num_cpus": 4 if gpu else 1, "devices": [0] if gpu else []},
    }


def stream_run(path: Path, runs_dir: Path, device: torch.device) -> dict:
    from server.runs.preserved import preserved_triplet_errors

    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path),
                           "--runs-dir", str(runs_dir), "--deployment", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=420,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"orthofed run --deployment exited {done.returncode}: "
                           f"{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    errors = preserved_triplet_errors(runs_dir / summary["run_id"], task=1, device=str(device))
    devices = sorted({str(c.get("last", {}).get("device")) for c in summary["clients"].values()})
    epsilons = {p: c.get("epsilon") for p, c in summary["clients"].items()}
    worst = max((e["error"] for e in errors.values()), default=float("nan"))
    return {"status": summary["status"], "client_devices": devices, "epsilon": epsilons,
            "matrix": summary["tasks"]["matrix"], "preserved_matrices": len(errors),
            "max_triplet_error": worst,
            "min_moved": min((e["moved"] for e in errors.values()), default=float("nan")),
            "all_on_device": devices == [device.type],
            "within_budget": all(e is not None and e <= EPSILON for e in epsilons.values()),
            "invariant_held": bool(errors) and worst <= 1e-4}


def step_costs(path: Path, device: torch.device, smoke: bool) -> dict:
    """Seconds per step and peak memory of plain, OSFT and DP full fine-tuning."""
    from clients.data.tasks import client_data
    from clients.training.dp_training import dp_train_steps
    from clients.models.factory import build_model, osft_targets
    from clients.training.osft import basis
    from clients.training.osft_training import projected_updates
    from clients.training.privacy import noise_for_budget, sample_rate
    from clients.training.loop import make_optimizer, train_steps
    from scenarios.loader import load_scenario
    from server.serverapp.osft_plan import target_weights

    loaded = load_scenario(path)
    fed, spec = loaded.federation, loaded.privacy
    steps, repeats = (1, 2) if smoke else (3, 5)
    model = build_model(loaded.model, 3, loaded.seed, "full", device)
    data = client_data(loaded, 0).train
    optimizer = make_optimizer(model, fed.optimizer)
    bases = {name: basis(w.detach(), int(0.8 * min(w.shape)))
             for name, w in target_weights(model, osft_targets(loaded.model, None)).items()}
    sigma = noise_for_budget(spec, sample_rate(len(data), fed.batch_size), 100)
    generator = torch.Generator().manual_seed(0)
    peaks: dict[str, float] = {}

    def measured(name: str, fn):
        def run() -> None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            fn()
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0),
                                  torch.cuda.max_memory_allocated(device) / 2**20)
        return run

    def plain() -> None:
        train_steps(model, data, steps, fed.batch_size, optimizer, generator, device)

    def osft() -> None:
        with projected_updates(model, optimizer, bases):
            train_steps(model, data, steps, fed.batch_size, optimizer, generator, device)

    def private() -> None:
        dp_train_steps(model, data, steps, fed.batch_size, optimizer, spec, sigma, [], device)

    times = interleaved({"plain": measured("plain", plain), "osft": measured("osft", osft),
                         "dp": measured("dp", private)}, repeats, device)
    per_step = {name: [t / steps for t in ts] for name, ts in times.items()}
    osft_ratio, dp_ratio = ratio(per_step, "osft", "plain"), ratio(per_step, "dp", "plain")
    return {"steps_per_block": steps, "blocks": repeats, "batch": fed.batch_size,
            "step_s": {n: sorted(ts)[len(ts) // 2] for n, ts in per_step.items()},
            "osft_over_plain": osft_ratio, "dp_over_plain": dp_ratio,
            "peak_allocated_mib": peaks or None,
            "dp_peak_over_plain": peaks["dp"] / peaks["plain"] if peaks else None,
            "osft_met": osft_ratio["median"] <= 1.15, "dp_met": dp_ratio["median"] <= 2.0}


def run(work: Path, device: torch.device, smoke: bool) -> dict:
    model_dir = work / "llama-stream"
    params = llama_folder(model_dir, "smoke" if smoke else "stream")
    path = work / "device-osft-dp-stream.yaml"
    path.write_text(yaml.safe_dump(scenario(model_dir, device.type == "cuda", smoke)))
    stream = stream_run(path, work / "runs-stream", device)
    costs = step_costs(path, device, smoke)
    return {"model_parameters": params, "stream": stream, "steps": costs,
            "met": stream["all_on_device"] and stream["invariant_held"]
            and stream["within_budget"] and costs["osft_met"] and costs["dp_met"]}
