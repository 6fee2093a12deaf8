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

    b: (..., d_out, r), a: (..., r, d_in); leading dimensions are a batch of pairs
    (refactorize_state stacks the layers of one shape, so one QR and one SVD call serve
    them all). Never builds the d_out x d_in product, and takes the SVD of an r x r
    matrix only:
        B = Q_b R_b,  A^T = Q_a R_a      (thin QRs; R_b: k_b x r, R_a: k_a x r)
        R_b R_a^T = U S W^T               (k_b x k_a, k = min(r, dim))
        B A = Q_b (R_b R_a^T) Q_a^T = (Q_b U) S (Q_a W)^T
                                   ->  B_new = Q_b U S,  A_new = W^T Q_a^T
    Cost O((d_out + d_in) r^2) instead of O(d_out d_in min(d_out, d_in)). Computed in
    float64, returned in the input dtype. When r exceeds min(d_out, d_in) the extra
    rows of A_new and columns of B_new are zero (the product has no more rank).
    """
    dtype, r = b.dtype, b.shape[-1]
    if a.shape[-2] != r or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"b is {tuple(b.shape)} and a is {tuple(a.shape)}: inner dims differ")
    q_b, r_b = torch.linalg.qr(b.double())                         # (d_out, k_b), (k_b, r)
    q_a, r_a = torch.linalg.qr(a.mT.double())                      # (d_in, k_a), (k_a, r)
    u, s, wh = torch.linalg.svd(r_b @ r_a.mT, full_matrices=False)  # (k_b, m), (m,), (m, k_a)
    b_new = torch.zeros(b.shape, dtype=torch.float64)
    a_new = torch.zeros(a.shape, dtype=torch.float64)
    m = s.shape[-1]                                                # m = min(d_out, r, d_in)
    b_new[..., :m] = (q_b @ u) * s.unsqueeze(-2)                   # (d_out, m)
    a_new[..., :m, :] = wh @ q_a.mT                                # (m, d_in)
    return b_new.to(dtype), a_new.to(dtype)


def refactorize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every (lora_A, lora_B) pair of a module re-factorized; pairs of the
    same shapes and dtypes go through `refactorize` as one batch (a LLaMA's 64 q and v
    adapters are one call, not 64)."""
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for name_a in (n for n in state if LORA_A in n):
        name_b = name_a.replace(LORA_A, LORA_B)
        if name_b not in state:
            raise KeyError(f"{name_a} has no matching {name_b}")
        key = (tuple(state[name_b].shape), tuple(state[name_a].shape), state[name_b].dtype,
               state[name_a].dtype)
        groups.setdefault(key, []).append((name_b, name_a))
    out = dict(state)
    for pairs in groups.values():
        b_new, a_new = refactorize(torch.stack([state[nb] for nb, _ in pairs]),
                                   torch.stack([state[na] for _, na in pairs]))
        for i, (name_b, name_a) in enumerate(pairs):
            out[name_b], out[name_a] = b_new[i], a_new[i]
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
