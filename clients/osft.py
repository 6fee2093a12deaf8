"""OSFT: orthogonal-subspace full fine-tuning, the pure math (no Flower, no models).

"Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning"
(Nayak et al., 2025); ALGORITHMS.md section 2. At a task start each target weight
W (d_out x d_in) is split by its SVD, W = U S V^T, into the top-k triplets that earlier
tasks rely on (U_high, S_high, V_high) and the rest. Every update dW of the task is
projected on both sides,

    P(dW) = (I - U_high U_high^T) dW (I - V_high^T V_high),

so U_high^T P(dW) = 0 and P(dW) V_high^T = 0: the preserved triplets stay singular
triplets of W + P(dW). The projection is linear, so a weighted average of projected
client updates is projected too (FedAvg keeps the guarantee).
"""

from __future__ import annotations

import math

import torch


def basis(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u_high, v_high): the top-k left (d_out, k) and right (k, d_in) singular vectors
    of w, from a thin SVD in float32 (float64 when w is). k = 0 gives empty bases."""
    if not 0 <= k <= min(w.shape):
        raise ValueError(f"k = {k} must be in [0, min(d_out, d_in) = {min(w.shape)}]")
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    u, _, vh = torch.linalg.svd(w.to(dtype), full_matrices=False)
    return u[:, :k].contiguous(), vh[:k].contiguous()


def project(g: torch.Tensor, u_high: torch.Tensor, v_high: torch.Tensor) -> torch.Tensor:
    """g with its components along u_high's columns and v_high's rows removed:
    (I - U U^T) g (I - V^T V), in O(d_out d_in k) time and without any d x d matrix."""
    left = g - u_high @ (u_high.T @ g)
    return left - (left @ v_high.T) @ v_high


def layer_importance(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """Mean cosine similarity between each input vector x_i (rows of `inputs`) and the
    layer's output W x_i, over the first min(d_in, d_out) coordinates."""
    d = min(inputs.shape[-1], outputs.shape[-1])
    cos = torch.nn.functional.cosine_similarity(inputs[..., :d].double(),
                                                outputs[..., :d].double(), dim=-1)
    return float(cos.mean())


def adaptive_ranks(importance: dict[str, float], shapes: dict[str, tuple[int, int]],
                   mrr: float = 0.1, trr: float = 0.8) -> dict[str, int]:
    """Preserved rank per layer by the adaptive rule:

        I_l = importance_l / mean(importance),   r_l = mrr + I_l (trr - mrr),
        k_l = floor(clip(r_l, 0, 1) * min(d_out, d_in)),

    so the mean preserved share is trr and a more important layer keeps more. A
    non-positive mean importance carries no ranking: every layer then keeps trr.
    """
    mean = sum(importance.values()) / len(importance)
    ranks = {}
    for name, value in importance.items():
        share = mrr + (value / mean) * (trr - mrr) if mean > 0 else trr
        ranks[name] = math.floor(min(max(share, 0.0), 1.0) * min(shapes[name]))
    return ranks


def scheduled_rank(shape: tuple[int, int], task_index: int, fraction: float) -> int:
    """The released scripts' schedule: k = floor(max(d_out, d_in) * fraction * t) for
    task t (0-based: the first task preserves nothing), capped one below min(d_out, d_in)
    so every matrix keeps a direction to learn in."""
    return min(math.floor(max(shape) * fraction * task_index), min(shape) - 1)
