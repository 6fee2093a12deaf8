"""Orthogonal FedSVD (`fedsvd-osft`): the pure math of a LoRA adapter kept off OSFT's
preserved subspaces (no Flower, no models).

Joins "FedSVD: Adaptive Orthogonalization for Private Federated Learning with LoRA"
(arXiv 2505.12805) and "Sculpting Subspaces" (Nayak et al., 2025); ALGORITHMS.md
sections 1 and 2. At the start of task t the server splits each LoRA target's base
weight W (d_out x d_in, earlier tasks' adapters merged in) by its SVD into the top-k
triplets earlier tasks rely on, U_h (d_out x k), V_h (k x d_in), and the rest. With
P_U = I - U_h U_h^T and P_V = I - V_h^T V_h:

- A starts as r orthonormal rows inside the complement of V_h: a seeded Gaussian
  projected by P_V, then orthonormalized (`complement_rows`). Needs r <= d_in - k.
- Clients train B only (A frozen, as FedSVD) and every optimizer step's update of B is
  projected, B <- B_before + P_U (B_after - B_before) (clients.training.osft_training with an
  empty right basis; after Opacus's noise under DP: post-processing, no privacy cost).
- The server averages B (P_U is linear: the mean of projected B's is projected) and
  re-factorizes B A = U S V^T (strategies.fedsvd.refactorize; B = U S, A = V^T): V's
  rows lie in A's row space, so stay orthogonal to V_h; U's columns in B's column
  space, so stay orthogonal to U_h.

Hence every update s B A satisfies U_h^T (s B A) = 0 and (s B A) V_h^T = 0, and each
preserved triplet (u_i, s_i, v_i) of W stays a singular triplet of W + s B A. At the
task end the adapter is merged into W and the next task recomputes the bases. Clients
send only B (r x d_out per target), as FedSVD does, instead of OSFT's full matrices.
"""

from __future__ import annotations

import torch


def complement_rows(v_high: torch.Tensor, rank: int, d_in: int,
                    generator: torch.Generator) -> torch.Tensor:
    """A (rank x d_in) with orthonormal rows, each orthogonal to every row of v_high
    (k x d_in, orthonormal rows): A A^T = I_r, A V_h^T = 0.

    G ~ N(0, 1) of shape (rank, d_in) from `generator`; G <- G P_V; A = Q^T for the thin
    QR G^T = Q R (Q's columns span G's rows, which lie in the complement). Computed in
    float64 and projected a second time after the QR, so roundoff leaves no component
    along V_h above ~1e-15; returned in v_high's dtype.
    """
    k = v_high.shape[0]
    if v_high.shape[1] != d_in:
        raise ValueError(f"v_high is {tuple(v_high.shape)}, not k x d_in = k x {d_in}")
    if not 0 < rank <= d_in - k:
        raise ValueError(f"rank {rank} must be in [1, d_in - k = {d_in} - {k} = {d_in - k}]: "
                         "A's rows must fit in the complement of the preserved subspace")
    v = v_high.double()
    g = torch.randn(rank, d_in, generator=generator, dtype=torch.float64)
    g = g - (g @ v.T) @ v
    q, _ = torch.linalg.qr(g.T)                        # (d_in, rank): orthonormal columns
    a = q.T - (q.T @ v.T) @ v                          # roundoff back out of the complement
    return torch.linalg.qr(a.T)[0].T.to(v_high.dtype)  # re-orthonormalize (no-op in exact math)


def left_basis_only(u_high: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (u_high, v_high) pair that makes clients.training.osft.project act as P_U alone on a
    B of shape (d_out, rank): the left basis as given, an empty (0 x rank) right one."""
    return u_high, torch.zeros(0, rank, dtype=u_high.dtype)
