"""Continual-learning metrics from the accuracy matrix (ALGORITHMS.md section 3).

a[i][j] is the accuracy on task j after training on task i (T tasks, 0-based here),
b[j] the accuracy of the initial model on task j:

    AA  = mean_j a[T-1][j]
    BWT = mean_{j < T-1} (a[T-1][j] - a[j][j])
    FWT = mean_{j > 0} (p[j-1][j] - p_b[j])
    F_j = max_{j <= i < T-1} a[i][j] - a[T-1][j]   (j < T-1)

FWT is taken on the linear-probe matrix p (server.serverapp.probe), not on a: with a head per
task, a[j-1][j] goes through task j's untrained head, whose readout is random. Runs
without probes (recorded before they existed) get FWT None and say so. A causal LM has no
heads: it answers every task through its prompt and its own output embedding, so its
a[j-1][j] is a real zero-shot accuracy and FWT is taken on a itself (`prompted`).

Lopez-Paz & Ranzato 2017 (GEM) for BWT and FWT; Chaudhry et al. 2018 for forgetting.
Pure arithmetic; a stream cut short yields the metrics of the rows it has.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

PROBE_SOURCE = ("linear probe (logistic regression, server.serverapp.probe) on the pooled features "
                "the task head reads, from the frozen global encoder: fitted on a seeded, "
                "label-stratified half of task j's server test split, scored on the other")
PROMPT_SOURCE = ("the accuracy matrix: a causal LM ranks task j's label options through its "
                 "prompt and its own output embedding, no head trained for the task, so "
                 "a[j-1][j] before task j trains is a zero-shot accuracy")
NO_PROBES = ("unavailable: no linear probes recorded (a run from before they existed); "
             "the accuracy matrix cannot give FWT, its a[j-1][j] goes through task j's "
             "untrained head")


def fwt_basis(source: str | None) -> str:
    """The short name of what FWT was measured on, for captions: 'linear probe', 'the
    accuracy matrix', or 'unavailable'."""
    return (source or "unavailable").split(" (")[0].split(":")[0]


def forward_transfer(initial: list[float | None],
                     matrix: list[list[float | None]]) -> float | None:
    """mean_{j > 0} (matrix[j-1][j] - initial[j]) over the rows there are; None when no
    term exists or one of its values is missing."""
    terms = [(matrix[j - 1][j], initial[j])
             for j in range(1, min(len(matrix) + 1, len(initial)))]
    if not terms or any(a is None or b is None for a, b in terms):
        return None
    return mean(a - b for a, b in terms)


def fwt_unavailable(probe_initial: list[float | None],
                    probe_matrix: list[list[float | None]]) -> str:
    """Why forward_transfer gave None, for the summary's `fwt_source`."""
    if not probe_initial and not probe_matrix:
        return NO_PROBES
    if len(probe_initial or probe_matrix[0]) < 2:
        return "unavailable: needs a second task"
    if not probe_matrix:
        return "unavailable until the first task ends"
    return "unavailable: a probe it needs was not measured"


def cl_metrics(matrix: list[list[float]], probe_initial: list[float | None] | None = None,
               probe_matrix: list[list[float | None]] | None = None,
               prompted_initial: list[float] | None = None) -> dict[str, Any]:
    """AA, BWT and per-task forgetting of a (complete rows) accuracy matrix; FWT of the
    probe matrix and its initial row, or, for a prompted causal LM, of the accuracy
    matrix and its initial row (`prompted_initial`); and where FWT comes from
    (`fwt_source`).

    `matrix` has one row per finished task, each with an accuracy for every task of the
    stream; metrics that need more rows than exist are None.
    """
    probe_initial, probe_matrix = probe_initial or [], probe_matrix or []
    if prompted_initial is not None:
        fwt = forward_transfer(prompted_initial, matrix)
        source = PROMPT_SOURCE if fwt is not None else fwt_unavailable(prompted_initial, matrix)
    else:
        fwt = forward_transfer(probe_initial, probe_matrix)
        source = PROBE_SOURCE if fwt is not None else fwt_unavailable(probe_initial, probe_matrix)
    if not matrix:
        return {"aa": None, "bwt": None, "fwt": fwt, "fwt_source": source, "forgetting": []}
    done = len(matrix)          # tasks trained so far
    last = matrix[-1]
    bwt = mean(last[j] - matrix[j][j] for j in range(done - 1)) if done > 1 else None
    forgetting = [max(matrix[i][j] for i in range(j, done - 1)) - last[j]
                  for j in range(done - 1)]
    return {"aa": mean(last[j] for j in range(done)), "bwt": bwt, "fwt": fwt,
            "fwt_source": source, "forgetting": forgetting}


def prompted(scenario: dict[str, Any]) -> bool:
    """Whether a run's model (its scenario as stored) is a causal LM answering in text;
    False when that cannot be told (no model section; a local model folder since
    removed)."""
    from clients.models.architecture import model_kind  # no torch: the CLI's summary asks
    from scenarios.schema import ModelSpec

    if not isinstance(scenario.get("model"), dict):
        return False
    try:
        return model_kind(ModelSpec.model_validate(scenario["model"])) == "causal-lm"
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return False


def task_summary(rows: list[dict[str, Any]], is_prompted: bool = False) -> dict[str, Any]:
    """The summary's "tasks" section from the store's task_evals rows: task names, the
    initial accuracies, the matrix, the probe matrix and its initial row (empty lists
    when no probe was recorded), and the metrics (FWT on the accuracy matrix when the
    model `is_prompted`, see `prompted`). Empty for a single-task run."""
    if not rows:
        return {}
    first = min(r["after_task"] for r in rows)
    names = [r["name"] for r in sorted((r for r in rows if r["after_task"] == first),
                                       key=lambda r: r["task"])]
    accuracy: dict[int, list[float]] = {}
    probes: dict[int, list[float | None]] = {}
    for r in sorted(rows, key=lambda r: (r["after_task"], r["task"])):
        accuracy.setdefault(r["after_task"], []).append(r["accuracy"])
        probes.setdefault(r["after_task"], []).append(r.get("probe_accuracy"))
    initial = accuracy.pop(-1, [])
    matrix = [accuracy[i] for i in sorted(accuracy)]
    probed = any(p is not None for row in probes.values() for p in row)
    probe_initial = probes.pop(-1, []) if probed else []
    probe_matrix = [probes[i] for i in sorted(probes)] if probed else []
    return {"names": names, "initial": initial, "matrix": matrix,
            "probe_initial": probe_initial, "probe_matrix": probe_matrix,
            **cl_metrics(matrix, probe_initial, probe_matrix,
                         prompted_initial=initial if is_prompted else None)}
