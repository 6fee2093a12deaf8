"""Continual-learning metrics from the accuracy matrix (ALGORITHMS.md section 3).

a[i][j] is the accuracy on task j after training on task i (T tasks, 0-based here),
b[j] the accuracy of the initial model on task j:

    AA  = mean_j a[T-1][j]
    BWT = mean_{j < T-1} (a[T-1][j] - a[j][j])
    FWT = mean_{j > 0} (a[j-1][j] - b[j])
    F_j = max_{j <= i < T-1} a[i][j] - a[T-1][j]   (j < T-1)

Lopez-Paz & Ranzato 2017 (GEM) for BWT and FWT; Chaudhry et al. 2018 for forgetting.
Pure arithmetic; a stream cut short yields the metrics of the rows it has.
"""

from __future__ import annotations

from statistics import mean
from typing import Any


def cl_metrics(initial: list[float], matrix: list[list[float]]) -> dict[str, Any]:
    """AA, BWT, FWT and per-task forgetting of a (complete rows) accuracy matrix.

    `matrix` has one row per finished task, each with an accuracy for every task of the
    stream; metrics that need more rows than exist are None.
    """
    if not matrix:
        return {"aa": None, "bwt": None, "fwt": None, "forgetting": []}
    done = len(matrix)          # tasks trained so far
    last = matrix[-1]
    seen = range(done)          # tasks trained so far: AA and BWT are over these
    bwt = mean(last[j] - matrix[j][j] for j in range(done - 1)) if done > 1 else None
    fwt_terms = [matrix[j - 1][j] - initial[j] for j in range(1, min(done + 1, len(initial)))]
    forgetting = [max(matrix[i][j] for i in range(j, done - 1)) - last[j]
                  for j in range(done - 1)]
    return {"aa": mean(last[j] for j in seen), "bwt": bwt,
            "fwt": mean(fwt_terms) if fwt_terms else None, "forgetting": forgetting}


def task_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's "tasks" section from the store's task_evals rows: task names, the
    initial accuracies, the matrix, and the metrics. Empty for a single-task run."""
    if not rows:
        return {}
    first = min(r["after_task"] for r in rows)
    names = [r["name"] for r in sorted((r for r in rows if r["after_task"] == first),
                                       key=lambda r: r["task"])]
    by_row: dict[int, list[float]] = {}
    for r in sorted(rows, key=lambda r: (r["after_task"], r["task"])):
        by_row.setdefault(r["after_task"], []).append(r["accuracy"])
    initial = by_row.pop(-1, [])
    matrix = [by_row[i] for i in sorted(by_row)]
    return {"names": names, "initial": initial, "matrix": matrix,
            **cl_metrics(initial, matrix)}
