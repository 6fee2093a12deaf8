"""Check (c): FedSVD's aggregation on the GPU against the plain weighted mean.

Ten clients' LoRA B factors for LLaMA-7B's q and v projections (32 layers x 2 = 64
pairs, d = 4096, r = 8) and the global A, as float32 tensors on the device:
  mean   : B_bar = sum_k w_k B_k (the plain weighted mean: FFA-LoRA's aggregation)
  fedsvd : B_bar, then strategies.fedsvd.refactorize_state (the 64 pairs in one batch,
           float64 inside) -> B_new, A_new with B_new A_new = B_bar A
timed interleaved (target: fedsvd <= 1.5x mean), and the product's error
max_pair ||B_new A_new - B_bar A||_F / ||B_bar A||_F against the dense float64 product
(target <= 1e-6). Beside them: the same two from host arrays (what a server holds when
the replies arrive: copy in, aggregate, copy out; the ratio the target is read on, since
with resident tensors the mean is a few microseconds of bandwidth and the ratio measures
kernel launches and the r x r solves), and the shipped strategies' aggregate_train on the
host (FFA-LoRA against FedSVD on hand-built Flower replies: bench/refactorize.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from common import interleaved, ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: refactorize.py


def shapes(smoke: bool) -> tuple[int, int, int, int]:
    """(pairs, d, r, clients)"""
    return (8, 256, 8, 10) if smoke else (64, 4096, 8, 10)


def run(work: Path, device: torch.device, smoke: bool) -> dict:
    from strategies.fedsvd import refactorize_state

    pairs, d, r, clients = shapes(smoke)
    g = torch.Generator().manual_seed(0)
    host_b = torch.randn(clients, pairs, d, r, generator=g) * 0.01
    host_a = torch.linalg.qr(torch.randn(pairs, d, r, generator=g)).Q.mT.contiguous()  # (P, r, d)
    weights = torch.rand(clients, generator=g)
    weights /= weights.sum()
    b, a, w = host_b.to(device), host_a.to(device), weights.to(device)

    def mean(stacked: torch.Tensor) -> torch.Tensor:
        return torch.einsum("k,kpor->por", w, stacked)                      # (P, d, r)

    def fedsvd(stacked: torch.Tensor, a_now: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {}
        for i, b_bar in enumerate(mean(stacked)):
            state[f"l{i}.lora_B.w"], state[f"l{i}.lora_A.w"] = b_bar, a_now[i]
        return refactorize_state(state)

    repeats = 5 if smoke else 15
    resident = interleaved({"mean": lambda: mean(b), "fedsvd": lambda: fedsvd(b, a)},
                           repeats, device)
    transfers = interleaved({
        "mean": lambda: mean(host_b.to(device)).cpu(),
        "fedsvd": lambda: {k: v.cpu() for k, v in fedsvd(host_b.to(device),
                                                        host_a.to(device)).items()},
    }, repeats, device)
    out, b_bar = fedsvd(b, a), mean(b)
    errors = []
    for i in range(pairs):
        dense = b_bar[i].double() @ a[i].double()
        got = out[f"l{i}.lora_B.w"].double() @ out[f"l{i}.lora_A.w"].double()
        errors.append(float((got - dense).norm() / dense.norm()))
    on_device = all(t.device.type == device.type for t in out.values())
    from refactorize import llama_aggregation

    shipped = llama_aggregation(clients, pairs // 2, d, r, repeats)
    host_ratio = ratio(transfers, "fedsvd", "mean")
    return {"pairs": pairs, "d": d, "r": r, "clients": clients, "repeats": repeats,
            "resident_s": {n: sorted(t)[len(t) // 2] for n, t in resident.items()},
            "resident_ratio": ratio(resident, "fedsvd", "mean"),
            "from_host_s": {n: sorted(t)[len(t) // 2] for n, t in transfers.items()},
            "from_host_ratio": host_ratio,
            "shipped_on_host": {k: shipped[k] for k in ("mean_s", "fedsvd_s", "ratio",
                                                        "ratio_min", "ratio_max", "max_rel_err")},
            "max_product_error": max(errors), "outputs_on_device": on_device,
            "met": host_ratio["median"] <= 1.5 and max(errors) <= 1e-6 and on_device}
