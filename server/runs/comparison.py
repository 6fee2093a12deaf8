"""Runs compared side by side: one row per run, and per scenario name the mean and
spread over its runs (seeds). Pure data from run summaries (server.runs.summary);
`orthofed compare` (server.cli.compare) prints it and draws it.

Row: {"run_id", "name", "seed", "status", "metric", "final", "best", "best_round",
"rounds", "epsilon", "aa", "bwt", "fwt", "seconds"}; epsilon is the largest any client
spent (None without DP), aa/bwt/fwt None for a single task. Group: {"name", "runs",
"seeds", and for each numeric column c: c_mean, c_std (sample standard deviation,
None for one run), c_min, c_max}.
"""

from __future__ import annotations

from statistics import fmean, stdev
from typing import Any

NUMERIC = ("final", "best", "rounds", "epsilon", "aa", "bwt", "fwt", "seconds")


def lower_is_better(metric: str) -> bool:
    """Losses are minimised; every other metric (accuracies) maximised."""
    return "loss" in metric


def metric_curve(summary: dict[str, Any], metric: str) -> list[tuple[int, float]]:
    """(round, value) of `metric`, from the rounds' eval or train metrics."""
    points = []
    for row in summary["rounds"]:
        for section in ("eval", "train"):
            value = row[section].get(metric)
            if isinstance(value, (int, float)):
                points.append((row["round"], float(value)))
                break
    return points


def run_row(summary: dict[str, Any], scenario: dict[str, Any], metric: str) -> dict[str, Any]:
    """One run's line of the comparison."""
    curve = metric_curve(summary, metric)
    pick = min if lower_is_better(metric) else max
    best = pick(curve, key=lambda point: point[1]) if curve else None
    spent = [c["epsilon"] for c in summary["clients"].values() if "epsilon" in c]
    tasks = summary["tasks"] or {}
    return {"run_id": summary["run_id"], "name": summary["name"],
            "seed": scenario.get("seed"), "status": summary["status"], "metric": metric,
            "final": curve[-1][1] if curve else None,
            "best": best[1] if best else None, "best_round": best[0] if best else None,
            "rounds": max((r["round"] for r in summary["rounds"]), default=0),
            "epsilon": max(spent) if spent else None,
            "aa": tasks.get("aa"), "bwt": tasks.get("bwt"), "fwt": tasks.get("fwt"),
            "seconds": summary["seconds"]}


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario name (in first-seen order): how many runs, their seeds, and each
    numeric column's mean, sample std, min and max over the runs that have it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    out = []
    for name, members in groups.items():
        group: dict[str, Any] = {"name": name, "runs": len(members),
                                 "seeds": [m["seed"] for m in members]}
        for column in NUMERIC:
            values = [m[column] for m in members if m[column] is not None]
            group[f"{column}_mean"] = fmean(values) if values else None
            group[f"{column}_std"] = stdev(values) if len(values) > 1 else None
            group[f"{column}_min"] = min(values) if values else None
            group[f"{column}_max"] = max(values) if values else None
        out.append(group)
    return out
