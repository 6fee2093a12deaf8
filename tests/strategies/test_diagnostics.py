"""The round diagnostics against independent oracles: scipy's subspace_angles, and the
dense change of W + s B A."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from strategies.diagnostics import (
    ANGLE_MAX,
    ANGLE_MEAN,
    UPDATE_NORM,
    principal_angles,
    round_diagnostics,
)

A, B, W = "m.lora_A.default.weight", "m.lora_B.default.weight", "m.base_layer.weight"


def test_principal_angles_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a_now, a_then = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    np.testing.assert_allclose(principal_angles(a_now, a_then),
                               np.sort(subspace_angles(a_now.T, a_then.T)), atol=1e-10)
    rotated = rng.normal(size=(4, 4)) @ a_then  # the same row space, another basis
    np.testing.assert_allclose(principal_angles(rotated, a_then), 0, atol=1e-6)


@pytest.mark.parametrize("with_base", [False, True])
def test_round_diagnostics_against_the_dense_update(with_base) -> None:
    rng = np.random.default_rng(1)
    first = {A: rng.normal(size=(3, 8)), B: np.zeros((5, 3))}
    before = {A: rng.normal(size=(3, 8)), B: rng.normal(size=(5, 3))}
    after = {A: rng.normal(size=(3, 8)), B: rng.normal(size=(5, 3))}
    if with_base:
        before[W], after[W] = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    scaling = 2.0
    out = round_diagnostics(before, after, first, scaling)
    dense = (after.get(W, 0) + scaling * after[B] @ after[A]
             - before.get(W, 0) - scaling * before[B] @ before[A])
    assert out[UPDATE_NORM] == pytest.approx(np.linalg.norm(dense), rel=1e-12)
    angles = np.degrees(subspace_angles(after[A].T, first[A].T))
    assert out[ANGLE_MAX] == pytest.approx(angles.max(), rel=1e-9)
    assert out[ANGLE_MEAN] == pytest.approx(angles.mean(), rel=1e-9)


def test_full_fine_tuning_reports_the_norm_of_the_change() -> None:
    before, after = {"w": np.ones((2, 2))}, {"w": np.full((2, 2), 3.0)}
    assert round_diagnostics(before, after, before, 1.0) == {UPDATE_NORM: pytest.approx(4.0)}
