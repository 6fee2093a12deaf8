"""A sweep's results as the store holds them: its studies, each study's tuned settings
with their validation scores, the setting it chose, and the report table.

Read by the sweep runner at its end, by `orthofed sweep report NAME` and by the API
(`GET /sweeps/{id}`), from the sweep tables and the runs' own rows, so each always
shows what has finished so far.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from scenarios.sweep_spec import SweepSpec
from server.runs.summary import build_summary
from server.runs.sweep_report import (
    choose,
    metric_curve,
    noise_level,
    report_table,
    run_score,
    setting_key,
    setting_scores,
)
from server.runs.sweep_store import SweepStore


class SummaryCache:
    """Run summaries by run id, built once from the store (a finished run's summary
    does not change)."""

    def __init__(self, store: SweepStore) -> None:
        self.store, self.summaries = store, {}

    def __call__(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.summaries:
            self.summaries[run_id] = build_summary(self.store.runs, run_id)
        return self.summaries[run_id]


def scored_records(store: SweepStore, sweep_id: str, spec: SweepSpec,
                   summaries: SummaryCache) -> list[dict[str, Any]]:
    """The sweep's planned runs, each completed one with its selection `score` (tune)
    or its report metrics `values` (report)."""
    records = store.sweep_runs(sweep_id)
    for record in records:
        record["score"], record["values"] = None, {}
        if record["status"] != "completed" or record["run_id"] is None:
            continue
        summary = summaries(record["run_id"])
        if record["phase"] == "tune":
            record["score"] = run_score(summary, spec.selection.metric, spec.selection.last_rounds)
        else:
            record["values"] = {m: run_score(summary, m, spec.report.last_rounds)
                                for m in spec.report.metrics}
            run = store.runs.get_run(record["run_id"])
            record["noise"] = noise_level(summary, run["scenario"]) if run else None
    return records


def study_results(records: list[dict[str, Any]], spec: SweepSpec) -> list[dict[str, Any]]:
    """Per study (in the order first recorded): its tuned settings and their scores, the
    chosen setting, and its report values {metric: {seed: value}}."""
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_study[record["study"]].append(record)
    out = []
    for study, rows in by_study.items():
        cell, method = study.rsplit("/", 1)
        tuned = setting_scores([r for r in rows if r["phase"] == "tune"], spec.seeds.tune)
        reported = [r for r in rows if r["phase"] == "report"]
        # The runner's choice is the setting its report runs ran with; before those
        # exist, the best validation score so far.
        chosen = choose(tuned, spec.selection.mode) if tuned else None
        if reported:
            chosen = tuned.get(setting_key(reported[0]["setting"]), chosen)
        setting = (reported[0]["setting"] if reported else
                   chosen["setting"] if chosen else None)
        values: dict[str, dict[int, float]] = defaultdict(dict)
        noises = []
        for r in reported:
            if setting is not None and setting_key(r["setting"]) == setting_key(setting):
                noises += [r["noise"]] if r.get("noise") else []
                for metric, value in r["values"].items():
                    if value is not None:
                        values[metric][r["seed"]] = value
        out.append({"study": study, "cell": cell, "method": method, "setting": setting,
                    "selection": None if chosen is None else chosen["mean"],
                    "tuned": list(tuned.values()), "values": dict(values),
                    "noise": merged_noise(noises),
                    "runs": [{k: r[k] for k in ("phase", "setting", "seed", "run_id", "status")}
                             for r in rows]})
    return out


def merged_noise(noises: list[dict[str, float]]) -> dict[str, float] | None:
    """The noise levels of a study's report runs, as one range (None: not private)."""
    if not noises:
        return None
    low = ("sigma_min", "noise_per_coordinate_min")
    high = ("sigma_max", "noise_per_coordinate_max", "max_epsilon")
    merged = {**noises[0]}
    merged.update({k: min(n[k] for n in noises) for k in low})
    merged.update({k: max((n[k] for n in noises if n[k] is not None), default=None) for k in high})
    return merged


def sweep_results(store: SweepStore, sweep_id: str) -> dict[str, Any] | None:
    """Everything about one sweep (None when there is no such sweep): its spec, status,
    studies and the report table over what has finished."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None:
        return None
    spec = SweepSpec.model_validate(sweep["spec"])
    summaries = SummaryCache(store)
    studies = study_results(scored_records(store, sweep_id, spec, summaries), spec)
    table = report_table([s for s in studies if s["values"]], spec.report.metrics,
                         spec.reference_method)
    curves = {s["study"]: {str(r["seed"]): metric_curve(summaries(r["run_id"]), spec.report.metrics[0])
                           for r in s["runs"] if r["phase"] == "report" and r["status"] == "completed"}
              for s in studies}
    return {"id": sweep_id, "status": sweep["status"], "message": sweep["message"],
            "file": sweep["file"], "spec": sweep["spec"], "studies": studies,
            "table": table, "curves": curves}
