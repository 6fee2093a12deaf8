"""Linear probes of what the task heads read: forward transfer through a fitted readout.

With a head per task and only the active head trained, the accuracy a[j-1][j] goes
through task j's untrained head: its drift around chance is no transfer (ALGORITHMS.md
section 3). A probe fits a fresh linear readout instead: multinomial logistic regression
on the pooled features the task head reads (x -> softmax(W x + b), Alain & Bengio 2016),
computed by the global encoder as it stands (frozen: the probe trains nothing of it),
fitted on one seeded half of task j's server test split and scored on the other half.
p[i][j] - p_initial[j] is then what training on tasks 0..i did for task j's
representation, readout excluded.

Captured in the same forward pass as the accuracy evaluation, so its cost is the fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from clients.models.heads import TaskHeads


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every input of the model's task heads, (B, hidden) per forward,
    in call order (on the CPU, float32)."""
    heads = [m for m in model.modules() if isinstance(m, TaskHeads)]
    if not heads:
        raise ValueError("a linear probe needs the model's task heads (a task stream)")
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    hooks = [head.register_forward_pre_hook(keep) for head in heads]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the fitting and the scoring half: each label's rows shuffled
    (seeded) and dealt alternately, so both halves hold every label of two rows or more."""
    rng = np.random.default_rng(seed)
    fit, score = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fit.extend(rows[0::2])
        score.extend(rows[1::2])
    return np.sort(np.array(fit, dtype=int)), np.sort(np.array(score, dtype=int))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    """Held-out accuracy of a logistic regression on `features` (N, D) -> `labels` (N,):
    fitted on one half (`halves`), scored on the other. Features are standardised with
    the fitting half's statistics (lbfgs converges on raw BERT features only slowly);
    lbfgs is deterministic, so equal features give equal probes. None when the features
    are not finite (a diverged model): a metric must not end the run."""
    from sklearn.linear_model import (
        LogisticRegression,  # imported here: ~1 s, server only
    )
    from sklearn.preprocessing import StandardScaler

    if not np.isfinite(features).all():
        return None
    fit, score = halves(labels, seed)
    if len(score) == 0:
        raise ValueError(f"a probe needs two rows of some label, got {len(labels)} rows")
    classes = np.unique(labels[fit])
    if len(classes) == 1:  # nothing to separate: the probe predicts the one label it saw
        return float(np.mean(labels[score] == classes[0]))
    scaler = StandardScaler().fit(features[fit])
    readout = LogisticRegression(max_iter=1000)
    readout.fit(scaler.transform(features[fit]), labels[fit])
    return float(readout.score(scaler.transform(features[score]), labels[score]))
