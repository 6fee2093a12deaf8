"""Continual-learning metrics on hand-made accuracy matrices, and the summary section
built from a real store."""

from __future__ import annotations

import pytest

from server.continual import cl_metrics, task_summary
from server.store import MetricsStore

INITIAL = [0.10, 0.20, 0.30]
MATRIX = [
    [0.90, 0.25, 0.30],   # after task 0
    [0.70, 0.80, 0.35],   # after task 1
    [0.60, 0.50, 0.85],   # after task 2
]


def test_metrics_of_a_hand_made_matrix() -> None:
    got = cl_metrics(INITIAL, MATRIX)
    assert got["aa"] == pytest.approx((0.60 + 0.50 + 0.85) / 3)
    assert got["bwt"] == pytest.approx(((0.60 - 0.90) + (0.50 - 0.80)) / 2)
    assert got["fwt"] == pytest.approx(((0.25 - 0.20) + (0.35 - 0.30)) / 2)
    assert got["forgetting"] == pytest.approx([0.90 - 0.60, 0.80 - 0.50])


def test_forgetting_takes_the_best_accuracy_after_learning_not_before() -> None:
    """Task 1 peaks after task 2 here: F_1 uses max over rows 1.. only (0.9 - 0.4)."""
    matrix = [[0.5, 0.95, 0.1], [0.5, 0.6, 0.1], [0.5, 0.9, 0.2], [0.4, 0.4, 0.3]]
    got = cl_metrics([0.0, 0.0, 0.0, 0.0], [row + [0.0] for row in matrix])
    assert got["forgetting"] == pytest.approx([0.1, 0.5, -0.1])  # F_2 < 0: it improved


def test_a_stream_cut_short_reports_what_its_rows_support() -> None:
    got = cl_metrics(INITIAL, MATRIX[:1])
    assert got == {"aa": pytest.approx(0.9), "bwt": None, "fwt": pytest.approx(0.05),
                   "forgetting": []}
    assert cl_metrics(INITIAL, []) == {"aa": None, "bwt": None, "fwt": None, "forgetting": []}


def test_summary_section_from_the_store(tmp_path) -> None:
    store = MetricsStore(tmp_path / "m.sqlite")
    store.create_run("r", "s", {})
    names = ["dbpedia", "amazon", "agnews"]
    store.record_task_evals("r", -1, [(n, a, 1.0) for n, a in zip(names, INITIAL, strict=True)])
    for i, row in enumerate(MATRIX):
        store.record_task_evals("r", i, [(n, a, 1.0) for n, a in zip(names, row, strict=True)])
    section = task_summary(store.task_evals("r"))
    assert section["names"] == names
    assert section["initial"] == INITIAL and section["matrix"] == MATRIX
    assert section["bwt"] == pytest.approx(-0.3)
    assert task_summary([]) == {}
