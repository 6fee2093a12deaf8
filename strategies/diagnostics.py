"""Per-round diagnostics of a LoRA aggregation, from the global arrays alone: how far the
adapters' A moved from the task's first round, and how large the round's update was.

Both are computed on the server from what it releases (post-processing: no privacy
cost, nothing un-noised). For each adapted layer l with factors B, A (rank r), base
weight W and scaling s:

    principal angles theta_i between the row spaces of A_t and A_0 (Bjorck and Golub
    1973): cos theta_i = sigma_i(Q_t^T Q_0), Q = orth(A^T) (d_in x r)
    row rotation  phi_i = arccos(|<a_t,i, a_0,i>| / (||a_t,i|| ||a_0,i||)), row i of A:
    how far each of A's directions turned, the basis change the angles above cannot
    see (a new basis of the same row space has theta = 0 but phi > 0)
    update norm  ||Delta||_F,  Delta = sum_l (W' + s B' A') - (W + s B A)  (all layers:
    sqrt(sum_l ||Delta_l||_F^2)), the change of the weights the model computes with

FFA-LoRA keeps A (theta = phi = 0). FedSVD's A' = V^T of B A = U S V^T spans the row
space of B A, which lies inside A's: its principal angles to round 0 stay 0 and only its
basis turns (phi). FedAvg-LoRA and FedEx-LoRA move A's row space (theta > 0); FLoRA
redraws A every round. Dense per layer (d_out x d_in): meant for opt-in runs.
"""

from __future__ import annotations

import numpy as np

LORA_A, LORA_B, BASE = ".lora_A.", ".lora_B.", ".base_layer.weight"

ANGLE_MAX = "diag-a-angle-max-deg"    # mean over layers of the largest principal angle
ANGLE_MEAN = "diag-a-angle-mean-deg"  # mean over layers and angles
ROW_ROTATION = "diag-a-row-rotation-deg"  # mean over layers and rows of phi_i
UPDATE_NORM = "diag-update-norm"


def principal_angles(a_now: np.ndarray, a_then: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the row spaces of two r x d_in A."""
    q_now, _ = np.linalg.qr(a_now.T.astype(np.float64))
    q_then, _ = np.linalg.qr(a_then.T.astype(np.float64))
    cosines = np.clip(np.linalg.svd(q_now.T @ q_then, compute_uv=False), -1.0, 1.0)
    return np.sort(np.arccos(cosines))


def row_rotations(a_now: np.ndarray, a_then: np.ndarray) -> np.ndarray:
    """phi_i (radians): the angle between row i of A now and row i of A then, sign
    ignored (SVD's singular vectors are defined up to sign)."""
    now, then = a_now.astype(np.float64), a_then.astype(np.float64)
    cosines = np.abs(np.sum(now * then, axis=1)) / (
        np.linalg.norm(now, axis=1) * np.linalg.norm(then, axis=1))
    return np.arccos(np.clip(cosines, 0.0, 1.0))


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
    largest, means, rotations, squares = [], [], [], 0.0
    for name_a in names_a:
        angles = np.degrees(principal_angles(after[name_a], first[name_a]))
        largest.append(float(angles[-1]))
        means.append(float(angles.mean()))
        rotations.append(float(np.degrees(row_rotations(after[name_a], first[name_a])).mean()))
        delta = effective_weights(after, name_a, scaling) - effective_weights(before, name_a, scaling)
        squares += float(np.sum(delta ** 2))
    return {ANGLE_MAX: float(np.mean(largest)), ANGLE_MEAN: float(np.mean(means)),
            ROW_ROTATION: float(np.mean(rotations)), UPDATE_NORM: squares ** 0.5}
