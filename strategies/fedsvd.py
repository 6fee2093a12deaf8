"""FedSVD: FFA-LoRA plus an SVD re-basis of A after every aggregation.

"FedSVD: Adaptive Orthogonalization for Private Federated Learning with LoRA"
(arXiv 2505.12805, NeurIPS 2025); ALGORITHMS.md section 1. Clients train only B under
a frozen A; the server averages B, then re-factorizes the product

    B_bar A_t = U S V^T (thin, rank <= r)   ->   B_{t+1} = U S,   A_{t+1} = V^T

so A's rows become orthonormal right singular vectors (||A||_2 = 1 bounds the per-sample
gradient of B, which helps under DP noise) and the product, hence the model, is
unchanged. B is not reset. The SVD is post-processing: it costs no privacy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from strategies.ffa_lora import FfaLora

LORA_A, LORA_B = ".lora_A.", ".lora_B."


def refactorize(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_new, A_new) with B_new A_new = B A, A_new's rows orthonormal, B_new = U S.

    b: (d_out, r), a: (r, d_in). Never builds the d_out x d_in product:
        A^T = Q R            (thin QR; Q: d_in x k, R: k x r, k = min(r, d_in))
        B R^T = U S W^T      (thin SVD of a d_out x k matrix)
        B A = B R^T Q^T = U S (Q W)^T  ->  B_new = U S,  A_new = W^T Q^T
    Cost O((d_out + d_in) r^2) instead of O(d_out d_in min(d_out, d_in)). Computed in
    float64, returned in the input dtype. When r exceeds min(d_out, d_in) the extra
    rows of A_new and columns of B_new are zero (the product has no more rank).
    """
    dtype, r = b.dtype, b.shape[1]
    if a.shape[0] != r:
        raise ValueError(f"b is {tuple(b.shape)} and a is {tuple(a.shape)}: inner dims differ")
    q, rr = torch.linalg.qr(a.T.double())                          # (d_in, k), (k, r)
    u, s, wh = torch.linalg.svd(b.double() @ rr.T, full_matrices=False)  # (d_out, m), (m,), (m, k)
    b_new = torch.zeros(b.shape, dtype=torch.float64)
    a_new = torch.zeros(a.shape, dtype=torch.float64)
    m = s.shape[0]                                                 # m = min(d_out, r, d_in)
    b_new[:, :m] = u * s                                           # (d_out, m)
    a_new[:m] = wh @ q.T                                           # (m, d_in)
    return b_new.to(dtype), a_new.to(dtype)


def refactorize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every (lora_A, lora_B) pair of a module re-factorized."""
    out = dict(state)
    for name_a in (n for n in state if LORA_A in n):
        name_b = name_a.replace(LORA_A, LORA_B)
        if name_b not in state:
            raise KeyError(f"{name_a} has no matching {name_b}")
        out[name_b], out[name_a] = refactorize(state[name_b], state[name_a])
    return out


class FedSVD(FfaLora):
    """FFA-LoRA's aggregation of B, then `refactorize` every `svd_period` rounds."""

    def __init__(self, svd_period: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.svd_period = svd_period

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or server_round % self.svd_period:
            return arrays, metrics
        state = refactorize_state({k: torch.from_numpy(v.numpy()) for k, v in arrays.items()})
        return ArrayRecord(array_dict={k: Array(v.numpy()) for k, v in state.items()}), metrics
