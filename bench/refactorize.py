"""FedSVD's re-factorization: the QR form against the dense SVD of B A, side by side.

For each shape and rank it times, in the same process and one after the other,
  dense : torch.linalg.svd(B @ A) truncated to r (float64), what a naive server does
  qr    : strategies.fedsvd.refactorize(B, A) (float64 inside, never builds B @ A:
          Cholesky QR with its certificates, Householder QR where they fail)
and prints the ratio and the max relative error of the product against the dense
product (B_new A_new vs B A, relative to max |B A|). Then, for a LLaMA-7B-shaped adapter
set (q and v of 32 layers, d = 4096, r = 8) from 10 clients, through the real strategies
with hand-built Flower replies, it times FedSVD's aggregation against the plain weighted
mean of the same replies (FFA-LoRA), interleaved, and the batched re-factorization
against the per-layer loop it replaced and against the Householder form alone.

Usage: python bench/refactorize.py [--quick]   (--quick skips d = 4096 and the MLP shape)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import seconds_each  # noqa: E402  (bench/ is the script's folder)

from strategies.fedsvd import FedSVD, refactorize, refactorize_householder  # noqa: E402


def best_of(fn, repeats: int) -> float:
    return min(seconds_each(fn, repeats))


def dense_refactorize(b: torch.Tensor, a: torch.Tensor):
    u, s, vh = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
    r = b.shape[1]
    return u[:, :r] * s[:r], vh[:r]


def compare(d_out: int, d_in: int, r: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(d_out, r, generator=g)
    a = torch.randn(r, d_in, generator=g) / d_in**0.5
    dense_s = best_of(lambda: dense_refactorize(b, a), 1)
    qr_s = best_of(lambda: refactorize(b, a), 5)
    b_new, a_new = refactorize(b, a)
    product = b.double() @ a.double()
    err = ((b_new.double() @ a_new.double() - product).abs().max() / product.abs().max()).item()
    return {"dense_s": dense_s, "qr_s": qr_s, "ratio": dense_s / qr_s, "max_rel_err": err}


def householder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """refactorize_state through the Householder form only (what it was before the
    Cholesky form), batched the same way."""
    from strategies import fedsvd

    shipped, fedsvd.refactorize = fedsvd.refactorize, refactorize_householder
    try:
        return fedsvd.refactorize_state(state)
    finally:
        fedsvd.refactorize = shipped


def per_layer_refactorize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What refactorize_state did before it batched layers: one refactorize per pair."""
    out = dict(state)
    for name_a in (n for n in state if ".lora_A." in n):
        name_b = name_a.replace(".lora_A.", ".lora_B.")
        out[name_b], out[name_a] = refactorize(state[name_b], state[name_a])
    return out


def llama_aggregation(clients: int = 10, layers: int = 32, d: int = 4096, r: int = 8,
                      repeats: int = 15) -> dict[str, float]:
    """Median seconds of the plain weighted mean of B (FFA-LoRA's aggregation) and of
    FedSVD's (the same mean, then the batched re-factorization), on the same hand-built
    replies, interleaved; and the per-layer loop on the averaged state, and the product's
    worst relative error."""
    from flwr.app import Array, ArrayRecord

    from strategies.fedsvd import refactorize_state
    from strategies.ffa_lora import FfaLora
    from tests.strategies.replies import as_server, train_reply

    as_server()
    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.self_attn.{m}_proj" for i in range(layers) for m in ("q", "v")]
    global_arrays = {}
    for n in names:
        global_arrays[f"{n}.lora_A.default.weight"] = rng.normal(size=(r, d)).astype(np.float32)
        global_arrays[f"{n}.lora_B.default.weight"] = np.zeros((d, r), np.float32)
    replies = [train_reply(k + 1, k, {f"{n}.lora_B.default.weight":
                                      rng.normal(size=(d, r)).astype(np.float32) for n in names},
                           int(rng.integers(100, 1000))) for k in range(clients)]
    strategies = {"mean": FfaLora(), "fedsvd": FedSVD()}
    for strategy in strategies.values():
        strategy.global_arrays = ArrayRecord(
            array_dict={k: Array(v) for k, v in global_arrays.items()})
    seconds: dict[str, list[float]] = {name: [] for name in strategies}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both
        for name, strategy in strategies.items():
            seconds[name].extend(seconds_each(lambda s=strategy: s.aggregate_train(1, replies), 1))
    averaged, _ = strategies["mean"].aggregate_train(1, replies)
    state = {k: torch.from_numpy(v.numpy()) for k, v in averaged.items()}
    loop, batched, householder = [], [], []
    for _ in range(repeats):  # interleaved
        loop += seconds_each(lambda: per_layer_refactorize_state(state), 1)
        batched += seconds_each(lambda: refactorize_state(state), 1)
        householder += seconds_each(lambda: householder_state(state), 1)
    new = refactorize_state(state)
    worst = 0.0
    for n in names:
        b, a = state[f"{n}.lora_B.default.weight"].double(), state[f"{n}.lora_A.default.weight"].double()
        nb, na = new[f"{n}.lora_B.default.weight"].double(), new[f"{n}.lora_A.default.weight"].double()
        worst = max(worst, ((nb @ na - b @ a).norm() / (b @ a).norm()).item())
    ratios = [f / m for f, m in zip(seconds["fedsvd"], seconds["mean"], strict=True)]
    return {"mean_s": statistics.median(seconds["mean"]),
            "fedsvd_s": statistics.median(seconds["fedsvd"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "repeats": repeats,
            "loop_s": statistics.median(loop), "batched_s": statistics.median(batched),
            "householder_s": statistics.median(householder),
            "max_rel_err": worst}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    shapes = [(1024, 1024), (2048, 2048)] + ([] if args.quick else [(4096, 4096), (4096, 11008)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'d_out x d_in':>14} {'r':>3} {'dense SVD s':>12} {'refactorize s':>14} "
          f"{'speed-up':>9} {'max rel err':>12}")
    for d_out, d_in in shapes:
        for r in (8, 16):
            row = compare(d_out, d_in, r)
            print(f"{f'{d_out} x {d_in}':>14} {r:>3} {row['dense_s']:12.3f} {row['qr_s']:14.5f} "
                  f"{row['ratio']:8.0f}x {row['max_rel_err']:12.1e}")
    row = llama_aggregation()
    print(f"LLaMA-7B q+v adapters (64 pairs, 4096 x 8), 10 clients, median of {row['repeats']}, "
          "interleaved:")
    print(f"  plain weighted mean of B (FFA-LoRA)    {row['mean_s'] * 1e3:8.1f} ms  1.00x")
    print(f"  FedSVD (mean + batched re-factorize)   {row['fedsvd_s'] * 1e3:8.1f} ms  "
          f"{row['ratio']:.2f}x (median of the per-repeat ratios; "
          f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f})")
    print(f"  re-factorization alone: per-layer loop {row['loop_s'] * 1e3:8.1f} ms, batched "
          f"{row['batched_s'] * 1e3:.1f} ms (loop / batched {row['loop_s'] / row['batched_s']:.2f}); "
          f"product max rel err {row['max_rel_err']:.1e}")
    print(f"  batched, Cholesky form (shipped) {row['batched_s'] * 1e3:.1f} ms vs Householder QR "
          f"form {row['householder_s'] * 1e3:.1f} ms "
          f"({row['householder_s'] / row['batched_s']:.2f}x)")


if __name__ == "__main__":
    main()
