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


def complement(basis_columns: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (d, d - k) of the orthogonal complement of the k orthonormal
    columns U of `basis_columns` (d, k), in their dtype and on their device.

    A fixed Gaussian matrix G (d, d - k) with its span(U) part removed twice ("twice is
    enough": the second pass clears what rounding left of the first), (I - U U^T)^2 G,
    spans the complement almost surely; its thin QR's Q is the basis. Float64 inside.
    Half the time of a complete QR of U at MiniLM's shapes, and as orthogonal to U.
    The basis depends on G, the projector U_c U_c^T it gives does not."""
    d, k = basis_columns.shape
    u = basis_columns.double()
    g = torch.randn(d, d - k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rest = g.to(u.device)
    for _ in range(2):
        rest = rest - u @ (u.T @ rest)
    return torch.linalg.qr(rest)[0].to(basis_columns.dtype).contiguous()


class Projector:
    """P(g) = (I - U U^T) g (I - V^T V) (`project`), in its cheapest form.

    Removing the k preserved directions of a side of length d costs 2 d k per column of
    g; keeping the c = d - k allowed ones, I - U U^T = U_c U_c^T with U_c = complement(U),
    costs 2 d c: at 80 % of the rank preserved the complement is 4x cheaper. The two
    sides act on different indices, so P(g) = L g R can be evaluated from the narrow
    side in: with R = V_c^T V_c, P(g) = (L (g V_c^T)) V_c, and L then acts on a
    d_out x c matrix instead of d_out x d_in. Every form is the same linear map up to
    rounding, so the invariant and the linearity under averaging hold as for `project`.
    The complement is taken only where the thin SVD's factor is square (the side of
    length min(d_out, d_in)); the longer side keeps its preserved basis.
    """

    def __init__(self, u_high: torch.Tensor, v_high: torch.Tensor):
        d_out, k = u_high.shape
        d_in = v_high.shape[1]
        self.left_keeps = 2 * k > d_out and d_out <= d_in
        self.right_keeps = 2 * k > d_in and d_in <= d_out
        self.left = complement(u_high) if self.left_keeps else u_high  # (d_out, k or c)
        self.right = complement(v_high.T) if self.right_keeps else v_high.T  # (d_in, k or c)

    def _left(self, h: torch.Tensor) -> torch.Tensor:
        along = self.left @ (self.left.T @ h)
        return along if self.left_keeps else h - along

    def _right(self, h: torch.Tensor) -> torch.Tensor:
        along = (h @ self.right) @ self.right.T
        return along if self.right_keeps else h - along

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        if self.right_keeps:
            return self._left(g @ self.right) @ self.right.T
        if self.left_keeps:
            return self.left @ self._right(self.left.T @ g)
        return self._right(self._left(g))


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
