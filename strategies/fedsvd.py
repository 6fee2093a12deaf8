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

import warnings
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from strategies.ffa_lora import FfaLora
from strategies.npy_arrays import read_only_values, with_values

LORA_A, LORA_B = ".lora_A.", ".lora_B."


def refactorize(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_new, A_new) with B_new A_new = B A, A_new's rows orthonormal, B_new = U S.

    b: (..., d_out, r), a: (..., r, d_in); leading dimensions are a batch of pairs
    (refactorize_state stacks the layers of one shape, so one call serves them all).
    Never builds the d_out x d_in product, and takes the SVD of an r x r matrix only.
    Through the Cholesky factors of the r x r Gram matrices (Cholesky QR, no d x r
    orthogonal factor is ever formed):
        B^T B = L_b L_b^T,  A A^T = L_a L_a^T   (so B = Q_b L_b^T, A^T = Q_a L_a^T)
        L_b^T L_a = U S W^T                      (r x r)
        B A = Q_b (L_b^T L_a) Q_a^T = (B L_b^-T U) S (W^T L_a^-1 A)
                 ->  B_new = B M,  M = L_b^-T U S;   A_new = N^T A,  N = L_a^-T W.
    M N^T = L_b^-T (L_b^T L_a) L_a^-T = I exactly, so B_new A_new = B (M N^T) A: how far
    the computed M N^T is from I is the product's error, N^T (A A^T) N = I is A_new's
    orthonormality and M^T (B^T B) M = S^2 B_new's orthogonal columns; all three are
    checked (r x r), and a batch with an error above 1e-9, or
    whose Gram matrix is singular (a B of rank < r, e.g. all zeros), takes the
    Householder form instead (`refactorize_householder`). Float64 inside, returned in
    the input dtype.
    """
    dtype, r = b.dtype, b.shape[-1]
    if a.shape[-2] != r or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"b is {tuple(b.shape)} and a is {tuple(a.shape)}: inner dims differ")
    b64, a64 = b.double(), a.double()
    gram_a, gram_b = a64 @ a64.mT, b64.mT @ b64
    l_b, info_b = torch.linalg.cholesky_ex(gram_b)
    l_a, info_a = torch.linalg.cholesky_ex(gram_a)
    if bool((info_b != 0).any() or (info_a != 0).any()):
        return refactorize_householder(b, a)
    u, s, wh = torch.linalg.svd(l_b.mT @ l_a)
    m = torch.linalg.solve_triangular(l_b.mT, u * s.unsqueeze(-2), upper=True)
    n = torch.linalg.solve_triangular(l_a.mT, wh.mT, upper=True)
    eye = torch.eye(r, dtype=torch.float64, device=b.device)
    product_error = (m @ n.mT - eye).abs().amax()
    orthonormality_error = (n.mT @ gram_a @ n - eye).abs().amax()
    squares = s.square()  # B_new = U S: B_new^T B_new = S^2, relative to the largest
    column_error = ((m.mT @ gram_b @ m - torch.diag_embed(squares)).abs().amax(dim=(-2, -1))
                    / squares.amax(dim=-1).clamp_min(1e-300)).amax()
    if max(product_error, orthonormality_error, column_error) > 1e-9:  # cond(B)^2 hurts
        return refactorize_householder(b, a)
    return (b64 @ m).to(dtype), (n.mT @ a64).to(dtype)


def refactorize_householder(b: torch.Tensor, a: torch.Tensor,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`refactorize` through Householder QRs, for any B and A (rank-deficient too):
        B = Q_b R_b,  A^T = Q_a R_a      (thin QRs; R_b: k_b x r, R_a: k_a x r)
        R_b R_a^T = U S W^T               (k_b x k_a, k = min(r, dim))
        B A = (Q_b U) S (Q_a W)^T  ->  B_new = Q_b U S,  A_new = W^T Q_a^T
    Cost O((d_out + d_in) r^2). When the product has rank below r (r > min(d_out,
    d_in)), the extra rows of A_new and columns of B_new are zero."""
    dtype = b.dtype
    q_b, r_b = torch.linalg.qr(b.double())                         # (d_out, k_b), (k_b, r)
    q_a, r_a = torch.linalg.qr(a.mT.double())                      # (d_in, k_a), (k_a, r)
    u, s, wh = torch.linalg.svd(r_b @ r_a.mT, full_matrices=False)  # (k_b, m), (m,), (m, k_a)
    b_new = torch.zeros(b.shape, dtype=torch.float64, device=b.device)
    a_new = torch.zeros(a.shape, dtype=torch.float64, device=a.device)
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
        # Only the LoRA pairs change: every other array (a trained head) passes through
        # as the same Array, never decoded and re-encoded. The pairs are read as views
        # of the message bytes and written back with their own headers (npy_arrays):
        # np.load and np.save were a third of this step's cost over the plain mean.
        with warnings.catch_warnings():
            # read only: refactorize_state stacks them into new tensors before any math
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            pairs = refactorize_state({k: torch.from_numpy(read_only_values(v))
                                       for k, v in arrays.items() if LORA_A in k or LORA_B in k})
        return ArrayRecord(array_dict={k: with_values(v, pairs[k].numpy()) if k in pairs else v
                                       for k, v in arrays.items()}), metrics
