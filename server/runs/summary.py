"""The run summary that `orthofed run --json` prints and the final table shows.

Shape (DESIGN.md, Interfaces): {"run_id", "status", "message", "rounds": [{"round",
"task", "train", "eval"}], "clients": {"<partition-id>": {"rounds", "failures",
"refusals", "epsilon", "last"}}, "tasks": {"names", "initial", "matrix", "probe_initial",
"probe_matrix", "aa", "bwt", "fwt", "fwt_source", "forgetting"} (FWT of linear probes,
server.runs.continual), "privacy": {"noise", "excludes"}}. Sections that do not apply are
empty; `privacy.excludes` lists what a private run's epsilon does not cover
(scenarios.disclosure), empty when it covers everything its clients released.
"""

from __future__ import annotations

from typing import Any

from scenarios.disclosure import privacy_disclosure
from server.runs.continual import prompted, task_summary
from server.runs.store import MetricsStore


def build_summary(store: MetricsStore, run_id: str) -> dict[str, Any]:
    """Everything the store holds about one run, as plain JSON-able data."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in {store.path}")
    return {
        "run_id": run_id,
        "name": run["name"],
        "status": run["status"],
        "message": run["message"],
        "seconds": (run["ended"] - run["created"]) if run["ended"] else None,
        "rounds": store.rounds(run_id),
        "clients": client_summaries(store, run_id),
        "tasks": task_summary(store.task_evals(run_id), prompted(run["scenario"])),
        "privacy": privacy_disclosure(run["scenario"]),
    }


def client_summaries(store: MetricsStore, run_id: str) -> dict[str, dict[str, Any]]:
    """Per partition id (as a string): rounds trained, failures (and their reasons),
    refusals, the epsilon spent so far and the last round's metrics."""
    clients: dict[str, dict[str, Any]] = {}
    for row in store.client_rounds(run_id):
        entry = clients.setdefault(str(row["partition_id"]),
                                   {"rounds": [], "failures": 0, "refusals": 0})
        metrics = row["metrics"]
        if metrics.get("refused"):
            entry["refusals"] += 1  # a DP client that would have passed its budget
        else:
            entry["rounds"].append(row["round"])
            entry["last"] = metrics
        if "epsilon" in metrics:
            entry["epsilon"] = metrics["epsilon"]  # spent so far, from its accountant
    for failure in store.failures(run_id):
        key = str(failure["partition_id"]) if failure["partition_id"] is not None else "unknown"
        entry = clients.setdefault(key, {"rounds": [], "failures": 0, "refusals": 0})
        entry["failures"] += 1
        entry.setdefault("reasons", []).append(failure["reason"])
    return dict(sorted(clients.items()))
