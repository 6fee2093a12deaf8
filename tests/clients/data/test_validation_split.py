"""data.validation_fraction: a seeded, stratified share of each task's training rows that
no client sees (neither to train nor for its local eval), for tuning without the test split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from clients.data.synthetic import make_examples
from clients.data.tasks import (
    build_partitioner,
    carve_validation,
    client_rows,
    load_task,
    partition,
    server_validation_set,
    validation_rows,
)
from scenarios.loader import ScenarioError, load_scenario
from scenarios.schema import Scenario
from scenarios.stream import task_plans
from tests.conftest import SHARED_DATA, needs_shared_data

Row = tuple[str, str | None, int]


def key(row: dict) -> Row:
    return row["text"], row["text_pair"], row["label"]


def scenario_of(document: dict, write_scenario, clients: int, fraction: float,
                data: dict | None = None) -> Scenario:
    """`document` with `clients` clients (all sampled) and data.validation_fraction."""
    document["federation"].update(num_clients=clients, clients_per_round=clients)
    document["data"] = {**document["data"], **(data or {}), "validation_fraction": fraction}
    return load_scenario(write_scenario(document))


def assert_held_apart(scenario: Scenario, task_id: int = 0) -> list[Row]:
    """The task's validation rows are a share of its training rows that is in no client's
    rows (training or local eval) and not in the test split; the clients' rows and the
    validation rows together are the training rows, each once. Returns the validation rows."""
    spec = task_plans(scenario)[task_id].data
    unsplit = spec.model_copy(update={"validation_fraction": 0.0})
    whole = load_task(unsplit, scenario.seed)
    clients = scenario.federation.num_clients
    train = whole.train or [r for p in range(clients)  # presplit: the clients' files
                            for r in partition(whole, unsplit, clients, p, scenario.seed)]
    assert len(set(map(key, train))) == len(train), "the source has duplicates"
    held = [key(r) for r in validation_rows(spec, scenario.seed)]
    assert held and len(set(held)) == len(held)
    seen = [key(r) for p in range(clients) for r in client_rows(scenario, p, task_id)[0]]
    assert not set(held) & set(seen), "a client got validation rows"
    assert not set(held) & {key(r) for r in whole.test}, "validation rows in the test split"
    assert Counter(held) + Counter(seen) == Counter(map(key, train))
    return held


@pytest.mark.parametrize("clients", [1, 3, 5])
def test_generated_validation_rows_reach_no_client(quick_document, write_scenario,
                                                   clients) -> None:
    scenario = scenario_of(quick_document, write_scenario, clients, 0.2)
    held = assert_held_apart(scenario)
    assert len(held) == 180  # 0.2 of 900
    # the same rows whatever the client count (the split comes before the partitioner)
    one = scenario_of(quick_document, write_scenario, 1, 0.2)
    assert held == [key(r) for r in validation_rows(one.data, one.seed)]


@pytest.mark.parametrize("clients", [2, 4])
def test_dirichlet_and_stream_tasks_hold_out_their_own(quick_document, write_scenario,
                                                       clients) -> None:
    """Every task of a stream gets its own validation split, under a label-skewed split."""
    source = quick_document["data"].pop("source")
    quick_document["data"]["partitioning"] = {"kind": "dirichlet", "alpha": 1.0}
    quick_document["stream"] = {"tasks": [
        {"name": "a", "source": source},
        {"name": "b", "source": {**source, "first_topic": 3, "train_size": 600}}]}
    scenario = scenario_of(quick_document, write_scenario, clients, 0.25)
    assert [len(assert_held_apart(scenario, t)) for t in (0, 1)] == [225, 150]


@needs_shared_data("cl_benchmark", "SST-2")
@pytest.mark.parametrize("clients", [2, 7])
def test_cl_benchmark_validation_rows_reach_no_client(quick_document, write_scenario,
                                                      clients) -> None:
    scenario = scenario_of(quick_document, write_scenario, clients, 0.1, {"source": {
        "kind": "cl-json", "path": str(SHARED_DATA / "cl_benchmark" / "SST-2")}})
    held = assert_held_apart(scenario)
    assert len(held) == 200  # 0.1 of SST-2's 2000 training rows


def write_cl_task(folder: Path, files: dict[str, int], labels: tuple[str, ...] = ("x", "y")
                  ) -> Path:
    """A CL-benchmark task folder: `files` maps train/test to a row count."""
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    for split, count in files.items():
        rows = [{"sentence": f"{split} {i}", "label": labels[i % 3 % 2]} for i in range(count)]
        (folder / f"{split}.json").write_text(json.dumps(rows))
    return folder


def test_a_one_file_task_keeps_validation_and_test_apart(quick_document, write_scenario,
                                                         tmp_path) -> None:
    """A task with a train file only: test_fraction cuts the test split, then the
    validation split comes out of what is left (a seed of its own: no overlap)."""
    folder = write_cl_task(tmp_path / "one-file", {"train": 300})
    scenario = scenario_of(quick_document, write_scenario, 3, 0.5,
                           {"source": {"kind": "cl-json", "path": str(folder)}})
    assert len(assert_held_apart(scenario)) == 120  # half of the 240 not held out as test


def test_presplit_carves_each_clients_file(quick_document, write_scenario, tmp_path) -> None:
    for i in range(3):
        rows = [{"sentence1": f"client {i} row {j}", "label": j % (2 + i % 2)}
                for j in range(40 + 10 * i)]
        (tmp_path / f"p{i}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text("\n".join(
        json.dumps({"sentence1": f"test {j}", "label": j % 3}) for j in range(30)))
    data = {"source": {"kind": "jsonl", "train": [f"p{i}.jsonl" for i in range(3)],
                       "test": "test.jsonl"}, "partitioning": {"kind": "presplit"},
            "text_field": "sentence1"}
    scenario = scenario_of(quick_document, write_scenario, 3, 0.2, data)
    held = assert_held_apart(scenario)
    mine = Counter(text.split(" row ")[0] for text, _, _ in held)
    assert mine == {"client 0": 8, "client 1": 10, "client 2": 12}  # 0.2 of each file


def test_the_split_is_stratified_seeded_and_moves_with_the_seed() -> None:
    rows = [{"text": e["sentence"], "text_pair": None, "label": e["label"]}
            for e in make_examples(4, 403, seed=0, label_noise=0.2)]
    counts = Counter(r["label"] for r in rows)
    kept, held = carve_validation(rows, 0.3, 5, "rows")
    assert Counter(map(key, kept)) + Counter(map(key, held)) == Counter(map(key, rows))
    for label, count in counts.items():  # within 1 row of proportional
        assert abs(sum(r["label"] == label for r in held) - 0.3 * count) <= 1
    assert {type(r["label"]) for r in kept + held} == {int}
    assert carve_validation(rows, 0.3, 5, "rows") == (kept, held)
    other = carve_validation(rows, 0.3, 6, "rows")[1]
    assert set(map(key, other)) != set(map(key, held))


def test_load_task_splits_by_the_scenario_seed(quick_document, write_scenario, tmp_path) -> None:
    """Files whose rows do not depend on the seed: the split does, and only on it."""
    folder = write_cl_task(tmp_path / "two-files", {"train": 200, "test": 50})
    source = {"source": {"kind": "cl-json", "path": str(folder)}}
    first = scenario_of(quick_document, write_scenario, 3, 0.2, source)
    held = [key(r) for r in load_task(first.data, 0).validation]
    assert held == [key(r) for r in load_task(first.data, 0).validation]
    assert set(held) != {key(r) for r in load_task(first.data, 1).validation}
    assert Counter(label for _, _, label in held) == {0: 27, 1: 13}  # 133 x, 67 y: 0.2 each


def test_no_validation_split_leaves_every_client_as_before(quick_document, write_scenario,
                                                           tmp_path) -> None:
    """validation_fraction 0 (the default): the partitioner sees the source's rows in
    their order, as it always did, and the server gets no validation set."""
    default = load_scenario(write_scenario(quick_document))
    scenario = scenario_of(quick_document, write_scenario, 3, 0.0)
    assert scenario == default and server_validation_set(scenario) is None
    task = load_task(scenario.data, scenario.seed)
    source = scenario.data.source
    assert task.validation == [] and task.train == [
        {"text": e["sentence"], "text_pair": None, "label": e["label"]}
        for e in make_examples(3, 900, scenario.seed, source.label_noise)]
    oracle = build_partitioner(task.train, scenario.data.partitioning, 3, scenario.seed)
    for p in range(3):
        rows, _ = client_rows(scenario, p)
        assert sorted(map(key, rows)) == sorted(map(key, oracle.load_partition(p).to_list()))


def test_the_server_evaluates_a_capped_seeded_validation_subset(quick_document,
                                                                write_scenario) -> None:
    scenario = scenario_of(quick_document, write_scenario, 3, 0.2)
    assert len(server_validation_set(scenario)) == 180
    capped = scenario_of(quick_document, write_scenario, 3, 0.2, {"server_eval_max": 50})
    labels = server_validation_set(capped).tensors[3]
    assert len(labels) == 50 and set(labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "0.2", True])
def test_a_bad_fraction_is_refused_by_its_path(quick_document, write_scenario, value) -> None:
    quick_document["data"]["validation_fraction"] = value
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write_scenario(quick_document))
    (error,) = caught.value.errors
    assert error.startswith("data.validation_fraction: ")


def test_a_share_too_small_to_stratify_names_the_field(quick_document, write_scenario) -> None:
    scenario = scenario_of(quick_document, write_scenario, 3, 0.002)  # 2 rows, 3 labels
    with pytest.raises(ValueError, match=r"^data\.validation_fraction 0\.002: .*3"):
        load_task(scenario.data, scenario.seed)
