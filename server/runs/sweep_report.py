"""A sweep's results: each run's scores, the setting each study chooses on validation
data, and the report table on test data with paired differences.

Pure functions of run summaries (server.runs.summary's shape) and plain records: the
sweep runner and `orthofed sweep report` feed them from the store. A run's score of a
per-round metric is its mean over the run's last `last_rounds` evaluated rounds (the
initial model's round 0 left out); a stream's summary (`tasks.aa`) is read as it is.
A study chooses the setting with the best mean validation score over its tuning seeds;
the report gives that setting's test metrics over fresh seeds, and each method minus
the reference method paired by seed, Holm-corrected across the table per metric.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from server.runs.statistics import holm, paired_difference, spread


def metric_curve(summary: dict[str, Any], metric: str) -> list[tuple[int, float]]:
    """(round, value) of a per-round server metric, rounds after 0."""
    return [(r["round"], float(r["eval"][metric])) for r in summary.get("rounds", [])
            if r["round"] > 0 and metric in (r.get("eval") or {})]


def run_score(summary: dict[str, Any], metric: str, last_rounds: int) -> float | None:
    """One run's score of `metric` (None when the run did not record it)."""
    if metric.startswith("tasks."):
        value = (summary.get("tasks") or {}).get(metric.removeprefix("tasks."))
        return None if value is None else float(value)
    curve = metric_curve(summary, metric)
    if not curve:
        return None
    return statistics.fmean(value for _, value in curve[-last_rounds:])


def noise_level(summary: dict[str, Any], scenario: dict[str, Any]) -> dict[str, float] | None:
    """A private run's DP noise: its clients' noise multipliers sigma, the clip norm C
    and expected batch B, the noise's standard deviation per coordinate of the mean
    clipped gradient, sigma C / B (what the FedSVD reference reaches: 0.008-0.012), and
    the most epsilon any client spent. None for a non-private run."""
    privacy = scenario.get("privacy")
    sigmas = [c["last"]["noise-multiplier"] for c in summary.get("clients", {}).values()
              if "noise-multiplier" in c.get("last", {})]
    if not privacy or not sigmas:
        return None
    clip, batch = privacy["max_grad_norm"], scenario["federation"]["batch_size"]
    epsilons = [c["epsilon"] for c in summary["clients"].values() if "epsilon" in c]
    return {"sigma_min": min(sigmas), "sigma_max": max(sigmas), "clip": clip, "batch": batch,
            "noise_per_coordinate_min": min(sigmas) * clip / batch,
            "noise_per_coordinate_max": max(sigmas) * clip / batch,
            "max_epsilon": max(epsilons, default=None)}


def setting_key(setting: dict[str, Any]) -> str:
    return json.dumps(setting, sort_keys=True)


def setting_scores(records: Iterable[dict[str, Any]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per tuned setting of one study: its mean score over the tuning seeds, once every
    seed's run completed with a score (a setting missing one is left out), and how many
    of its runs were pruned."""
    by_setting: dict[str, dict[int, float]] = defaultdict(dict)
    settings, pruned = {}, defaultdict(int)
    for record in records:
        key = setting_key(record["setting"])
        settings[key] = record["setting"]
        if record["status"] == "pruned":
            pruned[key] += 1
        elif record["status"] == "completed" and record.get("score") is not None:
            by_setting[key][record["seed"]] = record["score"]
    out = {}
    for key, setting in settings.items():
        scores = by_setting.get(key, {})
        complete = all(seed in scores for seed in seeds)
        out[key] = {"setting": setting, "pruned": pruned[key] > 0,
                    "scores": [scores[s] for s in seeds if s in scores],
                    "mean": statistics.fmean(scores[s] for s in seeds) if complete else None}
    return out


def choose(candidates: dict[str, dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The candidate setting with the best mean (max or min); None when none scored.
    Ties go to the first in the order given."""
    scored = [c for c in candidates.values() if c["mean"] is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda c: sign * c["mean"])


def report_table(studies: Sequence[dict[str, Any]], metrics: Sequence[str],
                 reference: str) -> dict[str, Any]:
    """The report: per study (cell, method, chosen setting, {metric: {seed: value}}),
    each metric's spread over seeds; per cell and method other than the reference, its
    paired difference to the reference over their common seeds, with Holm-adjusted
    p-values across all such differences of that metric."""
    rows = []
    for study in studies:
        values = study["values"]
        rows.append({**{k: study[k] for k in ("cell", "method", "setting", "selection")},
                     "noise": study.get("noise"),
                     "seeds": {m: sorted(values.get(m, {})) for m in metrics},
                     "values": {m: values.get(m, {}) for m in metrics},
                     "spread": {m: spread(list(values[m].values())).as_dict()
                                for m in metrics if values.get(m)}})
    differences = paired_rows(rows, metrics, reference)
    for metric in metrics:
        chosen = [d for d in differences if d["metric"] == metric]
        for d, adjusted in zip(chosen, holm([d["p_value"] for d in chosen]), strict=True):
            d["p_holm"] = adjusted
    return {"reference": reference, "metrics": list(metrics), "rows": rows,
            "differences": differences}


def paired_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str],
                reference: str) -> list[dict[str, Any]]:
    """method - reference per cell and metric, paired by seed (seeds both have)."""
    by_cell = {(r["cell"], r["method"]): r for r in rows}
    out = []
    for row in rows:
        ref = by_cell.get((row["cell"], reference))
        if row["method"] == reference or ref is None:
            continue
        for metric in metrics:
            mine, theirs = row["values"].get(metric, {}), ref["values"].get(metric, {})
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                continue
            diff = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
            out.append({"cell": row["cell"], "method": row["method"], "metric": metric,
                        "seeds": seeds, **diff.as_dict()})
    return out
