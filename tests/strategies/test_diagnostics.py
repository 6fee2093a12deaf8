"""The round diagnostics against independent oracles: scipy's subspace_angles, and the
dense change of W + s B A."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from strategies.diagnostics import (
    ANGLE_MAX,
    ANGLE_MEAN,
    ROW_ROTATION,
    UPDATE_NORM,
    principal_angles,
    round_diagnostics,
    row_rotations,
)

A, B, W = "m.lora_A.default.weight", "m.lora_B.default.weight", "m.base_layer.weight"


def test_principal_angles_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a_now, a_then = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    np.testing.assert_allclose(principal_angles(a_now, a_then),
                               np.sort(subspace_angles(a_now.T, a_then.T)), atol=1e-10)
    rotated = rng.normal(size=(4, 4)) @ a_then  # the same row space, another basis
    np.testing.assert_allclose(principal_angles(rotated, a_then), 0, atol=1e-6)


def test_a_turned_basis_of_the_same_row_space_has_no_angle_but_a_row_rotation() -> None:
    """A Givens rotation by phi of rows 0 and 1 of an orthonormal A: the row space is the
    same (principal angles 0) while those two rows turned by phi and the others not."""
    rng = np.random.default_rng(2)
    a_then = np.linalg.qr(rng.normal(size=(30, 4)))[0].T  # 4 orthonormal rows
    phi = np.radians(25.0)
    givens = np.eye(4)
    givens[:2, :2] = [[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]
    a_now = givens @ a_then
    np.testing.assert_allclose(principal_angles(a_now, a_then), 0, atol=1e-6)
    np.testing.assert_allclose(row_rotations(a_now, a_then), [phi, phi, 0, 0], atol=1e-7)
    np.testing.assert_allclose(row_rotations(-a_now, a_then), [phi, phi, 0, 0], atol=1e-7)
    out = round_diagnostics({A: a_then, B: np.zeros((5, 4))}, {A: a_now, B: np.zeros((5, 4))},
                            {A: a_then, B: np.zeros((5, 4))}, 1.0)
    assert out[ANGLE_MAX] == pytest.approx(0, abs=1e-4)
    assert out[ROW_ROTATION] == pytest.approx(25.0 / 2)


def test_fedsvd_refactorization_keeps_the_row_space_and_turns_the_basis() -> None:
    """What the benchmark's FedSVD angle of 0 means: A' = V^T of B A (a dense SVD,
    independent of strategies.fedsvd) spans the same row space as A."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(12, 4))
    a_new = np.linalg.svd(b @ a, full_matrices=False)[2][:4]
    np.testing.assert_allclose(principal_angles(a_new, a), 0, atol=1e-6)
    assert np.degrees(row_rotations(a_new, a)).mean() > 10


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
