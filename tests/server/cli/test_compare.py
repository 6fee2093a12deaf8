"""`orthofed compare`: one line per run, a scenario's seeds summarised by mean and
sample std (checked against numpy), the plots written, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.cli.commands import main
from server.runs.status import RunStatus
from server.runs.store import MetricsStore
from tests.server.runs.stored import finished_run

PNG = b"\x89PNG\r\n\x1a\n"
CURVES = {("fedsvd", 0): [0.5, 0.7, 0.8], ("fedsvd", 1): [0.5, 0.6, 0.9],
          ("fedsvd", 2): [0.5, 0.75, 0.7], ("ffa-lora", 0): [0.5, 0.55, 0.6]}


def recorded(store: MetricsStore) -> list[str]:
    ids = []
    for (name, seed), curve in CURVES.items():
        run_id = f"{name}-s{seed}"
        store.create_run(run_id, name, {"name": name, "seed": seed})
        store.set_status(run_id, RunStatus.RUNNING)
        for round_, accuracy in enumerate(curve):
            store.record_round(run_id, round_, 0, eval={"eval-acc": accuracy,
                                                        "eval-loss": 1 - accuracy})
            if round_:
                store.record_clients(run_id, round_, {0: {"epsilon": round_ * (seed + 1.0)},
                                                      1: {"epsilon": 0.5 * round_}}, [])
        store.set_status(run_id, RunStatus.COMPLETED)
        ids.append(run_id)
    return ids


def test_seeds_of_a_scenario_are_summarised_by_mean_and_spread(tmp_path, capsys,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells to the terminal's width
    store = MetricsStore.in_dir(tmp_path)
    ids = recorded(store)
    out = tmp_path / "cmp"
    assert main(["compare", *ids, "--runs-dir", str(tmp_path), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["run_id"]: row for row in result["runs"]}
    assert rows["fedsvd-s1"]["final"] == 0.9 and rows["fedsvd-s2"]["best"] == 0.75
    assert rows["fedsvd-s2"]["best_round"] == 1 and rows["fedsvd-s1"]["rounds"] == 2
    assert rows["fedsvd-s2"]["epsilon"] == 6.0  # the largest any client spent
    assert rows["fedsvd-s0"]["aa"] is None  # a single task
    fedsvd, ffa = result["groups"]
    finals = np.array([CURVES[("fedsvd", s)][-1] for s in range(3)])
    assert (fedsvd["name"], fedsvd["runs"], fedsvd["seeds"]) == ("fedsvd", 3, [0, 1, 2])
    assert fedsvd["final_mean"] == pytest.approx(finals.mean())
    assert fedsvd["final_std"] == pytest.approx(finals.std(ddof=1))
    assert (fedsvd["final_min"], fedsvd["final_max"]) == (0.7, 0.9)
    assert ffa["runs"] == 1 and ffa["final_std"] is None
    assert [p.rsplit("/", 1)[1] for p in result["plots"]] == ["curves.png"]  # no stream
    assert (out / "curves.png").read_bytes()[:8] == PNG

    assert main(["compare", *ids, "--runs-dir", str(tmp_path), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fedsvd: mean ± std" in table and "0.800 ± 0.100" in table  # final over 3 seeds
    assert "ffa-lora: mean" not in table  # one run: nothing to summarise


def test_a_loss_is_best_at_its_lowest(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    ids = recorded(store)
    assert main(["compare", ids[1], "--runs-dir", str(tmp_path), "--metric", "eval-loss",
                 "--out", str(tmp_path / "cmp"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["runs"][0]
    assert row["best"] == pytest.approx(0.1) and row["best_round"] == 2


def test_streams_get_their_accuracy_matrices_side_by_side(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    finished_run(store, "s-1")
    finished_run(store, "s-2")
    assert main(["compare", "s-1", "s-2", "--runs-dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"][0]["aa"] == pytest.approx((0.7 + 0.8) / 2)
    assert result["runs"][0]["bwt"] == pytest.approx(0.7 - 0.9)
    assert (tmp_path / "compare" / "tasks.png").read_bytes()[:8] == PNG


def test_an_unknown_run_or_metric_is_refused_by_name(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    ids = recorded(store)
    assert main(["compare", ids[0], "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "compare: no run 'nope' in" in capsys.readouterr().err
    assert main(["compare", ids[0], "--runs-dir", str(tmp_path), "--metric", "eval-f1"]) == 2
    assert ("compare: --metric 'eval-f1': none of these runs recorded it; they recorded "
            "['eval-acc', 'eval-loss']") in capsys.readouterr().err
    assert not (tmp_path / "compare").exists()  # nothing written for a refused comparison
