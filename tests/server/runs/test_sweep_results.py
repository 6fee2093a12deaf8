"""A sweep's results from a real SQLite store with hand-built runs: a run's score over
its last rounds, the setting chosen on validation only (the test metric ranks the
settings the other way round), the report over fresh seeds, paired differences to the
reference and Holm's correction, and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from server.runs.status import RunStatus
from server.runs.sweep_files import write_report
from server.runs.sweep_report import noise_level, run_score, setting_scores
from server.runs.sweep_results import sweep_results
from server.runs.sweep_store import SweepStore

SPEC = {"name": "s", "base": {"name": "b"}, "methods": {"ref": {}, "new": {}},
        "tune": {"federation.optimizer.lr": {"values": [0.1, 1.0]}},
        "seeds": {"tune": [0, 1], "report": [10, 11, 12]},
        "selection": {"metric": "val-acc", "last_rounds": 2},
        "report": {"metrics": ["eval-acc"], "last_rounds": 2}, "reference": "ref"}


def add_run(store: SweepStore, study: str, phase: str, lr: float, seed: int,
            val: list[float], test: list[float], status: str = "completed") -> str:
    """A completed run in the store with val-acc and eval-acc per round (round 0 first)."""
    run_id = f"{study.replace('/', '-')}-{phase}-{lr}-{seed}"
    store.runs.create_run(run_id, "b", {"name": "b"})
    for round_, (v, t) in enumerate(zip(val, test, strict=True)):
        store.runs.record_round(run_id, round_, 0, eval={"val-acc": v, "eval-acc": t})
    store.runs.set_status(run_id, RunStatus.COMPLETED if status == "completed" else RunStatus.FAILED)
    store.record_run("s", study, phase, f"{run_id}-digest", {"federation.optimizer.lr": lr},
                     seed, status, run_id)
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> SweepStore:
    store = SweepStore(tmp_path)
    store.start_sweep("s", SPEC, None, None)
    return store


def test_a_runs_score_is_the_mean_of_its_last_rounds_after_round_0() -> None:
    summary = {"rounds": [{"round": 0, "eval": {"val-acc": 0.99}},
                          {"round": 1, "eval": {"val-acc": 0.2}},
                          {"round": 2, "eval": {"val-acc": 0.4}},
                          {"round": 3, "eval": {"val-acc": 0.6}}],
               "tasks": {"aa": 0.7}}
    assert run_score(summary, "val-acc", 2) == pytest.approx(0.5)
    assert run_score(summary, "val-acc", 10) == pytest.approx(0.4)
    assert run_score(summary, "tasks.aa", 1) == 0.7
    assert run_score(summary, "val-loss", 2) is None


def test_a_setting_missing_a_seed_has_no_mean() -> None:
    records = [{"setting": {"x": 1}, "seed": 0, "status": "completed", "score": 0.5},
               {"setting": {"x": 1}, "seed": 1, "status": "failed", "score": None},
               {"setting": {"x": 2}, "seed": 0, "status": "completed", "score": 0.4},
               {"setting": {"x": 2}, "seed": 1, "status": "completed", "score": 0.6}]
    scored = setting_scores(records, [0, 1])
    assert [c["mean"] for c in scored.values()] == [None, pytest.approx(0.5)]


def test_selection_reads_validation_only_and_the_report_pairs_by_seed(store, tmp_path) -> None:
    # lr 1.0 is better on validation, lr 0.1 on test: the choice must follow validation.
    for study in ("all/ref", "all/new"):
        for seed in (0, 1):
            add_run(store, study, "tune", 0.1, seed, [0.1, 0.5, 0.5], [0.1, 0.9, 0.9])
            add_run(store, study, "tune", 1.0, seed, [0.1, 0.7, 0.7], [0.1, 0.2, 0.2])
    ref = {10: 0.70, 11: 0.74, 12: 0.71}
    new = {10: 0.75, 11: 0.80, 12: 0.74}
    for seed in ref:
        add_run(store, "all/ref", "report", 1.0, seed, [0.0, 0.0, 0.0], [0.0, 0.5, ref[seed]])
        add_run(store, "all/new", "report", 1.0, seed, [0.0, 0.0, 0.0], [0.0, 0.5, new[seed]])
    results = sweep_results(store, "s")
    rows = {r["method"]: r for r in results["table"]["rows"]}
    assert rows["new"]["setting"] == {"federation.optimizer.lr": 1.0}
    assert rows["new"]["selection"] == pytest.approx(0.7)
    # eval-acc of a report run: the mean of its last 2 rounds (0.5 and the final value)
    expected_new = [(0.5 + new[s]) / 2 for s in (10, 11, 12)]
    assert rows["new"]["spread"]["eval-acc"]["mean"] == pytest.approx(sum(expected_new) / 3)
    [diff] = results["table"]["differences"]
    expected_ref = [(0.5 + ref[s]) / 2 for s in (10, 11, 12)]
    oracle = stats.ttest_rel(expected_new, expected_ref)
    assert (diff["method"], diff["metric"], diff["seeds"]) == ("new", "eval-acc", [10, 11, 12])
    assert diff["p_value"] == pytest.approx(oracle.pvalue)
    assert diff["p_holm"] == pytest.approx(oracle.pvalue)  # one comparison: Holm changes nothing
    written = write_report(results, tmp_path / "report", {"command": "test", "commit": "abc"})
    assert {p.name for p in written} >= {"report.json", "report.md", "validation.png",
                                         "test_curves.png"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| all | new | lr 1 |" in markdown
    assert json.loads((tmp_path / "report" / "report.json").read_text())["id"] == "s"


def test_holm_corrects_across_cells(store) -> None:
    for cell, gap in (("a", 0.05), ("b", 0.02)):
        for seed, noise in zip((10, 11, 12), (0.0, 0.01, -0.005), strict=True):
            for method, extra in (("ref", 0.0), ("new", gap + noise)):
                add_run(store, f"{cell}/{method}", "report", 1.0, seed, [0, 0, 0],
                        [0, 0.5 + extra, 0.5 + extra])
    diffs = sweep_results(store, "s")["table"]["differences"]
    raw = sorted(d["p_value"] for d in diffs)
    adjusted = sorted(d["p_holm"] for d in diffs)
    assert adjusted == pytest.approx([2 * raw[0], max(2 * raw[0], raw[1])])


def test_a_failed_report_run_is_left_out_not_counted(store) -> None:
    add_run(store, "all/ref", "report", 1.0, 10, [0, 0, 0], [0, 0.5, 0.5])
    add_run(store, "all/ref", "report", 1.0, 11, [0, 0, 0], [0, 0.5, 0.7], status="failed")
    row = sweep_results(store, "s")["table"]["rows"][0]
    assert row["seeds"]["eval-acc"] == [10]


def test_an_unknown_sweep_is_none(store) -> None:
    assert sweep_results(store, "nope") is None


def test_noise_level_is_sigma_c_over_b_of_the_clients() -> None:
    summary = {"clients": {"0": {"last": {"noise-multiplier": 0.5}, "epsilon": 5.1},
                           "1": {"last": {"noise-multiplier": 0.7}, "epsilon": 5.9},
                           "2": {"rounds": [], "failures": 1}}}
    scenario = {"privacy": {"max_grad_norm": 2.0}, "federation": {"batch_size": 64}}
    level = noise_level(summary, scenario)
    assert level["noise_per_coordinate_min"] == pytest.approx(0.5 * 2.0 / 64)
    assert level["noise_per_coordinate_max"] == pytest.approx(0.7 * 2.0 / 64)
    assert level["max_epsilon"] == 5.9
    assert noise_level(summary, {"privacy": None, "federation": {"batch_size": 64}}) is None
