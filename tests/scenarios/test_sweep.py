"""Sweep files: the schema's errors by path, expansion into cells x methods, every
expanded scenario validated up front (all errors at once, each naming its cell and
path), digests that key runs, and the settings a search tries."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from scenarios.loader import ScenarioError
from scenarios.sweep import digest, load_sweep, scenario_document, set_path

BASE = {
    "name": "toy", "seed": 0,
    "model": {"name": "tiny-bert", "max_length": 16, "lora": {"rank": 2, "alpha": 4}},
    "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 120,
                        "test_size": 30}, "validation_fraction": 0.2},
    "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 2,
                   "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedsvd"},
}


def sweep_file(tmp_path: Path, **overrides) -> Path:
    document = {"name": "s", "base": copy.deepcopy(BASE),
                "methods": {"fedsvd": {"strategy": {"name": "fedsvd"}},
                            "ffa-lora": {"strategy.name": "ffa-lora"}},
                "tune": {"federation.optimizer.lr": {"low": 0.01, "high": 1.0, "log": True,
                                                     "num": 3}},
                "seeds": {"tune": [0, 1], "report": [10, 11]}}
    document.update(overrides)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_sweep(path)
    return caught.value.errors


def test_cells_times_methods_with_their_overrides(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"privacy": {"plain": None, "dp": {"target_epsilon": 8}},
                                      "federation.rounds": [2, 3]})
    sweep = load_sweep(path)
    assert [s.key for s in sweep.studies] == [
        f"{p}.{r}/{m}" for p in ("plain", "dp") for r in ("2", "3") for m in ("fedsvd", "ffa-lora")]
    dp = next(s for s in sweep.studies if s.key == "dp.3/ffa-lora")
    assert dp.document["privacy"]["target_epsilon"] == 8.0
    assert dp.document["federation"]["rounds"] == 3
    assert dp.document["strategy"]["name"] == "ffa-lora"
    # A dotted override sets one field: the base's other fields stay.
    assert dp.document["federation"]["optimizer"] == {**dp.document["federation"]["optimizer"],
                                                      "name": "sgd"}


def test_a_log_range_is_a_geometric_grid(tmp_path: Path) -> None:
    study = load_sweep(sweep_file(tmp_path)).studies[0]
    lrs = [s["federation.optimizer.lr"] for s in study.grid()]
    assert lrs == pytest.approx([0.01, 0.1, 1.0])
    assert math.isclose(lrs[1] / lrs[0], lrs[2] / lrs[1], rel_tol=1e-5)


def test_an_axis_of_an_absent_section_is_not_tuned_there(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"privacy": {"plain": None, "dp": {"target_epsilon": 8}}},
                      tune={"privacy.max_grad_norm": {"values": [0.5, 2.0]}})
    studies = {s.key: s for s in load_sweep(path).studies}
    assert studies["plain/fedsvd"].axes == {}
    assert list(studies["dp/fedsvd"].axes) == ["privacy.max_grad_norm"]
    assert [s["privacy.max_grad_norm"] for s in studies["dp/fedsvd"].grid()] == [0.5, 2.0]


def test_every_bad_setting_is_named_by_cell_method_and_path(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"federation.clients_per_round": [2, 5]},
                      tune={"model.lora.rank": {"values": [2, 0]}})
    errors = errors_of(path)
    assert any(e.startswith("cell 5, method fedsvd") and "clients_per_round (5)" in e
               for e in errors), errors
    assert any(e.startswith("cell 2, method ffa-lora, model.lora.rank=0: model.lora.rank:")
               for e in errors), errors
    # Every method of the bad cell, and the bad setting of every good cell.
    assert sum("cell 5" in e for e in errors) == 2
    assert sum("model.lora.rank=0" in e for e in errors) == 2


def test_the_sweeps_own_fields_are_refused_by_path(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, reference="nope", selection={"metric": "eval-acc"},
                      tune={"federation.optimizer.lr": {"low": 0.0, "high": 1.0, "log": True}},
                      search={"kind": "tpe"})
    errors = errors_of(path)
    assert any(e.startswith("selection.metric:") and "validation" in e for e in errors), errors
    assert any(e.startswith("tune.federation.optimizer.lr:") and "low > 0" in e for e in errors)
    assert "search: trials: required for search 'tpe' (settings to try)" in errors, errors
    errors = errors_of(sweep_file(tmp_path, reference="nope"))
    assert errors == ["reference: 'nope' is not one of the methods ['fedsvd', 'ffa-lora']"]


def test_report_seeds_are_fresh_when_settings_are_tuned(tmp_path: Path) -> None:
    seeds = {"tune": [0, 1], "report": [1, 2]}
    errors = errors_of(sweep_file(tmp_path, seeds=seeds))
    assert len(errors) == 1 and errors[0].startswith("seeds: seeds.report must be fresh"), errors
    assert load_sweep(sweep_file(tmp_path, seeds=seeds, tune={})).studies


def test_tuning_without_a_validation_split_is_refused(tmp_path: Path) -> None:
    base = copy.deepcopy(BASE)
    base["data"]["validation_fraction"] = 0.0
    errors = errors_of(sweep_file(tmp_path, base=base))
    assert len(errors) == 2 and all("data.validation_fraction" in e for e in errors)


def test_a_base_file_resolves_relative_to_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "scen").mkdir()
    (tmp_path / "scen" / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = load_sweep(sweep_file(tmp_path, base="scen/base.yaml"))
    assert sweep.studies[0].document["model"]["name"] == "tiny-bert"
    errors = errors_of(sweep_file(tmp_path, base="scen/missing.yaml"))
    assert errors[0].startswith("base (missing.yaml):")


def test_digest_keys_what_runs_not_what_it_is_called(tmp_path: Path) -> None:
    sweep = load_sweep(sweep_file(tmp_path))
    study = sweep.studies[0]
    setting = study.grid()[0]
    one = scenario_document(study, setting, 0, "s", sweep.folder)
    renamed = {**one, "name": "other", "description": "words"}
    assert digest(one) == digest(renamed)
    assert digest(one) != digest(scenario_document(study, setting, 1, "s", sweep.folder))
    assert digest(one) != digest(scenario_document(study, study.grid()[1], 0, "s", sweep.folder))
    # A field written out at its default is the same run as one left out.
    explicit = copy.deepcopy(one)
    set_path(explicit, "model.lora.dropout", 0.0)
    assert digest(explicit) == digest(one)
    assert len(one["name"]) <= 64


def test_random_search_checks_the_ranges_ends(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, search={"kind": "random", "trials": 4},
                      tune={"model.lora.rank": {"low": 0, "high": 4}})
    errors = errors_of(path)
    assert any("model.lora.rank=0" in e for e in errors), errors


def test_sampling_a_grid_no_larger_than_the_trials_is_that_grid(tmp_path: Path) -> None:
    tune = {"federation.optimizer.lr": {"values": [0.1, 0.3, 1.0]}}
    roomy = load_sweep(sweep_file(tmp_path, tune=tune, search={"kind": "tpe", "trials": 5}))
    study = roomy.studies[0]
    assert study.search_kind(roomy.spec.search) == "grid"
    assert study.planned_runs(roomy.spec) == 3 * 2 + 2
    tight = load_sweep(sweep_file(tmp_path, tune=tune, search={"kind": "tpe", "trials": 2}))
    assert tight.studies[0].search_kind(tight.spec.search) == "tpe"
    assert tight.studies[0].planned_runs(tight.spec) == 2 * 2 + 2
    ranged = {"federation.optimizer.lr": {"low": 0.1, "high": 1.0, "num": 2}}
    sampled = load_sweep(sweep_file(tmp_path, tune=ranged, search={"kind": "random", "trials": 9}))
    assert sampled.studies[0].search_kind(sampled.spec.search) == "random"


def test_a_noise_multiplier_axis_without_an_epsilon_target(tmp_path: Path) -> None:
    """Methods compared at equal noise: one cell per sigma, each scenario private with
    that fixed sigma and no target; over a base with a target, the target must be nulled
    in the same cells, else every cell is refused naming both fields."""
    sigmas = [0.3, 0.6, 1.0, 1.5]
    sweep = load_sweep(sweep_file(tmp_path, grid={"privacy.noise_multiplier": sigmas}))
    cells = {s.key: s.document["privacy"] for s in sweep.studies if s.method == "fedsvd"}
    assert cells == {f"{s}/fedsvd": {"noise_multiplier": s} for s in sigmas}
    targeted = {**copy.deepcopy(BASE), "privacy": {"target_epsilon": 6.0}}
    errors = errors_of(sweep_file(tmp_path, base=targeted,
                                  grid={"privacy.noise_multiplier": sigmas}))
    assert len(errors) == 8 and all(
        "privacy: give target_epsilon or noise_multiplier, not both" in e for e in errors)
    sweep = load_sweep(sweep_file(tmp_path, base=targeted, grid={
        "privacy.noise_multiplier": sigmas, "privacy.target_epsilon": [None]}))
    assert [s.document["privacy"] for s in sweep.studies if s.method == "fedsvd"] == [
        {"noise_multiplier": s} for s in sigmas]
