"""Scenario files: good ones load, bad ones list every error by its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clients.checks import check_scenario
from scenarios.loader import ScenarioError, load_scenario
from scenarios.schema import Scenario
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path) -> None:
    scenario = load_scenario(path)
    assert isinstance(scenario, Scenario)
    if "shared/data" in path.read_text() and not (ROOT.parent / "shared" / "data").exists():
        pytest.skip("shared data not present")
    assert check_scenario(scenario) == []


def test_toml_and_yaml_give_the_same_scenario(quick_document, tmp_path) -> None:
    import tomli_w

    (tmp_path / "q.toml").write_bytes(tomli_w.dumps(quick_document).encode())
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(quick_document))
    assert load_scenario(tmp_path / "q.toml") == load_scenario(tmp_path / "q.yaml")


def test_every_error_is_reported_at_once_by_path(quick_document, write_scenario) -> None:
    doc = quick_document
    doc["model"]["lora"]["rank"] = 0
    doc["federation"]["rounds"] = -2
    doc["federation"]["batch_size"] = "many"
    doc["data"]["partitioning"] = {"kind": "dirichlet", "alpha": 0}
    doc["strategy"] = {"name": "fedavg-lora", "colour": "blue"}
    doc["surprise"] = 1
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(doc))
    errors = caught.value.errors
    assert "model.lora.rank: must be >= 1, got 0" in errors
    assert "federation.rounds: must be >= 1, got -2" in errors
    assert any(e.startswith("federation.batch_size: ") and "'many'" in e for e in errors)
    assert "data.partitioning.alpha: must be > 0, got 0" in errors
    assert any(e.startswith("strategy.colour: unknown key") for e in errors)
    assert any(e.startswith("surprise: unknown key") for e in errors)
    assert len(errors) == 6


def test_unknown_strategy_lists_the_known_ones(quick_document, write_scenario) -> None:
    quick_document["strategy"] = {"name": "fedsgd"}
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    (error,) = caught.value.errors
    assert error.startswith("strategy.name: unknown 'fedsgd'")
    assert "fedavg-lora" in error and "'fedavg'" in error


def test_cross_field_rules(quick_document, write_scenario) -> None:
    quick_document["federation"]["clients_per_round"] = 5
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    assert caught.value.errors == [
        "federation: clients_per_round (5) must be <= num_clients (3)"]


@pytest.mark.parametrize("text, expected", [
    ("model: [unclosed", "not valid YAML"),
    ("- a list\n- not a mapping\n", "must be a mapping of sections, got list"),
])
def test_unreadable_files(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert expected in str(caught.value)


def test_missing_file_and_unknown_suffix(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "absent.yaml")
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ScenarioError, match="unknown scenario format '.json'"):
        load_scenario(tmp_path / "s.json")


def test_non_utf8_file_is_refused(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(path)


def test_relative_data_paths_resolve_against_the_scenario_file(quick_document, tmp_path) -> None:
    quick_document["data"]["source"] = {"kind": "cl-json", "path": "data/agnews"}
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "s.yaml"
    path.write_text(yaml.safe_dump(quick_document))
    assert load_scenario(path).data.source.path == tmp_path / "sub" / "data" / "agnews"


def test_disk_checks_name_missing_data_and_unknown_modules(quick_document, write_scenario) -> None:
    quick_document["data"]["source"] = {"kind": "cl-json", "path": "nowhere"}
    quick_document["model"]["lora"]["target_modules"] = ["query", "q_proj"]
    errors = check_scenario(load_scenario(write_scenario(quick_document)))
    assert len(errors) == 2
    assert errors[0].startswith("data.source.path: no such folder")
    assert errors[1].startswith("model.lora.target_modules: 'q_proj' is not a module of 'tiny-bert'")


def test_unknown_model_is_caught_offline(quick_document, write_scenario) -> None:
    quick_document["model"]["name"] = "no-such-org/no-such-model"
    errors = check_scenario(load_scenario(write_scenario(quick_document)))
    assert errors and errors[0].startswith("model.name: unknown model 'no-such-org/no-such-model'")


def test_presplit_needs_one_file_per_client(quick_document, write_scenario) -> None:
    quick_document["data"] = {
        "source": {"kind": "jsonl", "train": ["a.jsonl", "b.jsonl"], "test": "t.jsonl"},
        "partitioning": {"kind": "presplit"},
    }
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    assert "2 files in data.source.train but federation.num_clients is 3" in str(caught.value)


def test_every_field_is_documented() -> None:
    """extra='forbid' and a description on every field, in every section."""
    seen, todo = set(), [Scenario]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for sub in _models_in(field.annotation):
                todo.append(sub)
    assert len(seen) > 10


def _models_in(annotation) -> list[type]:
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


# ---- task streams -------------------------------------------------------------------


def stream_document(quick_document: dict, stream: dict) -> dict:
    doc = dict(quick_document)
    doc["data"] = {k: v for k, v in doc["data"].items() if k != "source"}
    doc["stream"] = stream
    return doc


def test_a_named_order_expands_to_benchmark_task_folders(quick_document, write_scenario) -> None:
    doc = stream_document(quick_document, {"order": "order-1", "benchmark_dir": "bench-data"})
    path = write_scenario(doc)
    scenario = load_scenario(path)
    assert [t.name for t in scenario.stream.tasks] == ["dbpedia", "amazon", "yelp", "agnews"]
    assert scenario.stream.tasks[2].source.path == path.parent / "bench-data" / "yelp"
    errors = check_scenario(scenario)
    folder = path.parent / "bench-data"
    assert (f"stream.tasks.0.source.path: the stream's task 'dbpedia' is not in the data "
            f"folder '{folder}' (no such folder '{folder / 'dbpedia'}')") in errors


def test_the_long_order_is_the_papers_sequence_within_the_shared_data(quick_document,
                                                                        write_scenario) -> None:
    from scenarios.data_spec import NAMED_ORDERS

    paper = ("MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon",
             "SST-2", "dbpedia", "agnews", "MultiRC", "yahoo")  # Sculpting Subspaces' long one
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cl_benchmark"
    if not root.is_dir():
        pytest.skip(f"{root} (the shared benchmark data) is absent")
    present = tuple(t for t in paper if (root / t).is_dir())
    assert NAMED_ORDERS["long-7"] == present and len(present) == 7
    doc = stream_document(quick_document, {"order": "long-7", "benchmark_dir": str(root)})
    assert check_scenario(load_scenario(write_scenario(doc))) == []


def test_stream_mistakes_are_named(quick_document, write_scenario) -> None:
    both = dict(quick_document, stream={"order": "order-2", "benchmark_dir": "x"})
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(both))
    assert caught.value.errors == ["data.source, stream: give either data.source (one task) "
                                   "or stream (a task stream), not both"]
    for stream, message in [
        ({"order": "order-9", "benchmark_dir": "x"}, "stream.order: "),
        ({"order": "order-1"}, "stream: order 'order-1' needs benchmark_dir"),
        ({}, "stream: a stream needs `tasks`"),
        ({"tasks": [{"name": "a", "source": {"kind": "generated"}, "rounds": 0}]},
         "stream.tasks.0.rounds: must be >= 1, got 0"),
        ({"tasks": [{"name": "a", "source": {"kind": "generated"}},
                    {"name": "a", "source": {"kind": "generated"}}]},
         "stream: task names must be unique, got ['a', 'a']"),
    ]:
        with pytest.raises(ScenarioError) as caught:
            load_scenario(write_scenario(stream_document(quick_document, stream)))
        assert any(e.startswith(message) for e in caught.value.errors), caught.value.errors


def test_osft_settings_are_checked(quick_document, write_scenario) -> None:
    quick_document["strategy"] = {"name": "osft", "mrr": 0.9, "trr": 0.5}
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    assert caught.value.errors == ["strategy: mrr (0.9) must be <= trr (0.5)"]
    quick_document["strategy"] = {"name": "osft", "target_modules": ["query", "gate_proj"]}
    errors = check_scenario(load_scenario(write_scenario(quick_document)))
    assert len(errors) == 1 and errors[0].startswith(
        "strategy.target_modules: 'gate_proj' is not a module of 'tiny-bert'")


@pytest.mark.parametrize("name, kind", [("tiny-llama", "encoder"), ("smollm2", "encoder"),
                                        ("minilm", "causal-lm"), ("tiny-bert", "causal-lm")])
def test_a_named_models_kind_cannot_be_contradicted(quick_document, write_scenario, name, kind) -> None:
    quick_document["model"] = {"name": name, "kind": kind}
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    assert caught.value.errors[0].startswith(f"model: kind: {name!r} is a")


@pytest.mark.parametrize("privacy, expected", [
    ({"target_epsilon": 6.0, "noise_multiplier": 0.6},
     "privacy: give target_epsilon or noise_multiplier, not both (got target_epsilon 6 and "
     "noise_multiplier 0.6)"),
    ({}, "privacy: give target_epsilon or noise_multiplier, not neither"),
    ({"delta": 1e-5, "max_grad_norm": 2.0},
     "privacy: give target_epsilon or noise_multiplier, not neither"),
    ({"noise_multiplier": 0}, "privacy.noise_multiplier: must be > 0, got 0"),
    ({"noise_multiplier": -0.3}, "privacy.noise_multiplier: must be > 0, got -0.3"),
    ({"noise_multiplier": 101}, "privacy.noise_multiplier: must be <= 100, got 101"),
    ({"noise_multiplier": "high"}, "privacy.noise_multiplier: must be a valid number"),
    ({"noise_multiplier": None, "target_epsilon": None},
     "privacy: give target_epsilon or noise_multiplier, not neither"),
], ids=["both", "empty", "neither", "zero", "negative", "too-large", "text", "both-null"])
def test_privacy_takes_exactly_one_noise_plan(quick_document, write_scenario, privacy,
                                              expected) -> None:
    """A budget (target_epsilon) or a fixed sigma (noise_multiplier): exactly one, each
    refusal naming both fields or the bad one by its path, and nothing else refused."""
    quick_document["privacy"] = privacy
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    (error,) = caught.value.errors
    assert error.startswith(expected), error


@pytest.mark.parametrize("privacy", [{"target_epsilon": 6.0}, {"noise_multiplier": 0.3},
                                     {"noise_multiplier": 1.5, "target_epsilon": None}])
def test_either_noise_plan_alone_loads(quick_document, write_scenario, privacy) -> None:
    quick_document["privacy"] = privacy
    spec = load_scenario(write_scenario(quick_document)).privacy
    assert (spec.target_epsilon, spec.noise_multiplier) == (
        privacy.get("target_epsilon"), privacy.get("noise_multiplier"))
