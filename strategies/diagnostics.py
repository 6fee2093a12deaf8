"""Per-round diagnostics of a LoRA aggregation, from the global arrays alone: how far the
adapters' A moved from the task's first round, and how large the round's update was.

Both are computed on the server from what it releases (post-processing: no privacy
cost, nothing un-noised). For each adapted layer l with factors B, A (rank r), base
weight W and scaling s:

    principal angles theta_i between the row spaces of A_t and A_0 (Bjorck and Golub
    1973): cos theta_i = sigma_i(Q_t^T Q_0), Q = orth(A^T) (d_in x r)
    update norm  ||Delta||_F,  Delta = sum_l (W' + s B' A') - (W + s B A)  (all layers:
    sqrt(sum_l ||Delta_l||_F^2)), the change of the weights the model computes with

FFA-LoRA keeps A (angles 0); FedSVD rotates A within B A's row space; FLoRA redraws it
every round. Dense per layer (d_out x d_in): meant for opt-in runs.
"""

from __future__ import annotations

import numpy as np

LORA_A, LORA_B, BASE = ".lora_A.", ".lora_B.", ".base_layer.weight"

ANGLE_MAX = "diag-a-angle-max-deg"    # mean over layers of the largest principal angle
ANGLE_MEAN = "diag-a-angle-mean-deg"  # mean over layers and angles
UPDATE_NORM = "diag-update-norm"


def principal_angles(a_now: np.ndarray, a_then: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the row spaces of two r x d_in A."""
    q_now, _ = np.linalg.qr(a_now.T.astype(np.float64))
    q_then, _ = np.linalg.qr(a_then.T.astype(np.float64))
    cosines = np.clip(np.linalg.svd(q_now.T @ q_then, compute_uv=False), -1.0, 1.0)
    return np.sort(np.arccos(cosines))


def effective_weights(arrays: dict[str, np.ndarray], name_a: str, scaling: float) -> np.ndarray:
    """W + s B A of the layer whose A is `name_a` (W = 0 where the base is not sent)."""
    b = arrays[name_a.replace(LORA_A, LORA_B)].astype(np.float64)
    product = scaling * b @ arrays[name_a].astype(np.float64)
    base = arrays.get(name_a.split(LORA_A)[0] + BASE)
    return product if base is None else product + base.astype(np.float64)


def round_diagnostics(before: dict[str, np.ndarray], after: dict[str, np.ndarray],
                      first: dict[str, np.ndarray], scaling: float) -> dict[str, float]:
    """The diagnostics of one round: global arrays at its start (`before`), after its
    aggregation (`after`) and at the task's first round (`first`). Without LoRA arrays
    (full fine-tuning) the update norm is that of every array that changed."""
    names_a = [n for n in after if LORA_A in n]
    if not names_a:
        squares = sum(float(np.sum((after[n].astype(np.float64) - before[n]) ** 2))
                      for n in after if n in before)
        return {UPDATE_NORM: squares ** 0.5}
    largest, means, squares = [], [], 0.0
    for name_a in names_a:
        angles = np.degrees(principal_angles(after[name_a], first[name_a]))
        largest.append(float(angles[-1]))
        means.append(float(angles.mean()))
        delta = effective_weights(after, name_a, scaling) - effective_weights(before, name_a, scaling)
        squares += float(np.sum(delta ** 2))
    return {ANGLE_MAX: float(np.mean(largest)), ANGLE_MEAN: float(np.mean(means)),
            UPDATE_NORM: squares ** 0.5}
