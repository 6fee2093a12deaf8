"""LoRA's A at the start (model.lora.init): PEFT's own, or an orthonormal basis of it.

PEFT draws A0 Kaiming-uniform (entries U(+-1/sqrt(d_in)), so singular values near
1/sqrt(3) ~ 0.58 when r << d_in) and B0 = 0. 'orthonormal' keeps the r-dimensional
input subspace PEFT drew and changes only its basis: A = Q^T for the thin QR
A0^T = Q R, i.e. Gram-Schmidt of A0's rows. FedSVD's first re-factorization
(B_bar A0 = U S V^T, A_1 = V^T) gives another orthonormal basis of rowspace(A0) (while
B_bar has rank r), and every later one rotates it within that span; SGD and per-sample
clipping do not see such a rotation, so from round 2 on FedSVD is exactly FFA-LoRA
with an orthonormal A of rowspace(A0) (ALGORITHMS.md section 1;
tests/strategies/test_fedsvd_ffa_equivalence.py checks it). PEFT's own
orthogonal options take another subspace ('olora', 'pissa': from the base weight's QR
or SVD, which they also change) or another shape ('orthogonal': A of rank r/2 and a
non-zero B), hence this module.
"""

from __future__ import annotations

import torch
from torch import nn


def orthonormal_rows(a0: torch.Tensor) -> torch.Tensor:
    """A (r x d_in) with orthonormal rows spanning the rows of a0 (r x d_in, rank r).

        A0^T = Q R  (thin QR: Q d_in x r, R r x r upper triangular, diag(R) > 0)
        A = Q^T = R^-T A0:   A A^T = I_r,  rowspace(A) = rowspace(A0),  ||A||_2 = 1

    The sign of each column of Q is fixed by diag(R) > 0 (the QR is then unique: row i
    of A is row i of A0 with its components along rows 1..i-1 removed, normalized), so
    the result does not depend on the LAPACK in use. Computed in float64 on the CPU, so
    the server and every client get the same bits whatever their device; returned in
    a0's dtype and on its device.
    """
    r, d_in = a0.shape
    if r > d_in:
        raise ValueError(f"model.lora.init: 'orthonormal' needs model.lora.rank <= d_in, "
                         f"got rank {r} for a layer with d_in = {d_in}: at most d_in rows can "
                         "be orthonormal; lower model.lora.rank or use init 'default'")
    if a0.is_meta:  # a shape-only model (the device tests): no values to transform
        return a0.clone()
    # A Kaiming draw has full row rank with probability 1, so R is invertible.
    q, rr = torch.linalg.qr(a0.detach().to("cpu", torch.float64).T)  # (d_in, r), (r, r)
    q = q * torch.sign(torch.diagonal(rr))  # column signs so that diag(R) > 0
    return q.T.contiguous().to(device=a0.device, dtype=a0.dtype)


@torch.no_grad()
def apply_lora_init(model: nn.Module, init: str) -> None:
    """Set every LoRA adapter's A as model.lora.init says ('default': PEFT's, untouched;
    'orthonormal': `orthonormal_rows` of PEFT's A0). B stays PEFT's zero either way, so
    the adapted model computes what the base model does."""
    if init == "default":
        return
    if init != "orthonormal":
        raise ValueError(f"model.lora.init: unknown {init!r}; known: default, orthonormal")
    from peft.tuners.lora import LoraLayer  # PEFT is slow to import: only when asked

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                weight = module.lora_A[adapter].weight  # (r, d_in)
                weight.copy_(orthonormal_rows(weight))
