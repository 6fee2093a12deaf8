"""Continual-learning metrics on hand-made accuracy matrices, and the summary section
built from a real store."""

from __future__ import annotations

import pytest

from server.runs.continual import NO_PROBES, PROBE_SOURCE, cl_metrics, task_summary
from server.runs.store import MetricsStore

INITIAL = [0.10, 0.20, 0.30]
MATRIX = [
    [0.90, 0.25, 0.30],   # after task 0
    [0.70, 0.80, 0.35],   # after task 1
    [0.60, 0.50, 0.85],   # after task 2
]
PROBE_INITIAL = [0.40, 0.30, 0.50]
PROBES = [
    [0.95, 0.45, 0.55],   # after task 0
    [0.90, 0.85, 0.70],   # after task 1
    [0.85, 0.80, 0.90],   # after task 2
]


def test_metrics_of_a_hand_made_matrix() -> None:
    got = cl_metrics(MATRIX, PROBE_INITIAL, PROBES)
    assert got["aa"] == pytest.approx((0.60 + 0.50 + 0.85) / 3)
    assert got["bwt"] == pytest.approx(((0.60 - 0.90) + (0.50 - 0.80)) / 2)
    # FWT from the probes p[j-1][j] - p_initial[j], not from the heads' a[j-1][j] - b[j]
    assert got["fwt"] == pytest.approx(((0.45 - 0.30) + (0.70 - 0.50)) / 2)
    assert got["fwt_source"] == PROBE_SOURCE and "linear probe" in PROBE_SOURCE
    assert got["forgetting"] == pytest.approx([0.90 - 0.60, 0.80 - 0.50])


def test_without_probes_fwt_is_unavailable_and_says_why() -> None:
    got = cl_metrics(MATRIX)
    assert got["fwt"] is None and got["fwt_source"] == NO_PROBES
    assert got["aa"] == pytest.approx((0.60 + 0.50 + 0.85) / 3)  # the rest is unaffected
    missing = [row[:] for row in PROBES]
    missing[0][1] = None  # the one probe FWT needs from row 0
    got = cl_metrics(MATRIX, PROBE_INITIAL, missing)
    assert got["fwt"] is None and "not measured" in got["fwt_source"]
    one_task = cl_metrics([[0.9]], [0.5], [[0.8]])
    assert one_task["fwt"] is None and "second task" in one_task["fwt_source"]


def test_forgetting_takes_the_best_accuracy_after_learning_not_before() -> None:
    """Task 1 peaks after task 2 here: F_1 uses max over rows 1.. only (0.9 - 0.4)."""
    matrix = [[0.5, 0.95, 0.1], [0.5, 0.6, 0.1], [0.5, 0.9, 0.2], [0.4, 0.4, 0.3]]
    got = cl_metrics([row + [0.0] for row in matrix])
    assert got["forgetting"] == pytest.approx([0.1, 0.5, -0.1])  # F_2 < 0: it improved


def test_a_stream_cut_short_reports_what_its_rows_support() -> None:
    got = cl_metrics(MATRIX[:1], PROBE_INITIAL, PROBES[:1])
    assert got == {"aa": pytest.approx(0.9), "bwt": None, "fwt": pytest.approx(0.15),
                   "fwt_source": PROBE_SOURCE, "forgetting": []}
    before = cl_metrics([], PROBE_INITIAL, [])
    assert before["aa"] is None and before["fwt"] is None and before["forgetting"] == []
    assert "first task ends" in before["fwt_source"]


def test_summary_section_from_the_store(tmp_path) -> None:
    store = MetricsStore(tmp_path / "m.sqlite")
    store.create_run("r", "s", {})
    names = ["dbpedia", "amazon", "agnews"]
    store.record_task_evals("r", -1, [(n, a, 1.0) for n, a in zip(names, INITIAL, strict=True)],
                            PROBE_INITIAL)
    for i, row in enumerate(MATRIX):
        store.record_task_evals("r", i, [(n, a, 1.0) for n, a in zip(names, row, strict=True)],
                                PROBES[i])
    section = task_summary(store.task_evals("r"))
    assert section["names"] == names
    assert section["initial"] == INITIAL and section["matrix"] == MATRIX
    assert section["probe_initial"] == PROBE_INITIAL and section["probe_matrix"] == PROBES
    assert section["bwt"] == pytest.approx(-0.3) and section["fwt"] == pytest.approx(0.175)
    assert task_summary([]) == {}


def test_summary_of_a_run_recorded_without_probes(tmp_path) -> None:
    store = MetricsStore(tmp_path / "m.sqlite")
    store.create_run("old", "s", {})
    for i, row in enumerate([INITIAL, *MATRIX]):
        store.record_task_evals("old", i - 1, [(f"t{j}", a, 1.0) for j, a in enumerate(row)])
    section = task_summary(store.task_evals("old"))
    assert section["probe_initial"] == [] and section["probe_matrix"] == []
    assert section["fwt"] is None and section["fwt_source"] == NO_PROBES
    assert section["bwt"] == pytest.approx(-0.3)
