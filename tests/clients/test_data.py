"""Data loading, partitioning (flwr-datasets) and tokenization."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from clients.data import client_data, load_task, partition, stratified_split, tokenize
from clients.models import build_tokenizer
from clients.synthetic import make_examples
from scenarios.loader import load_scenario
from tests.conftest import SHARED_DATA, needs_shared_data


def test_generated_data_is_seeded_and_balanced() -> None:
    one, two = make_examples(3, 300, seed=4), make_examples(3, 300, seed=4)
    assert one == two and one != make_examples(3, 300, seed=5)
    assert Counter(e["label"] for e in one) == {0: 100, 1: 100, 2: 100}


def test_iid_partitions_cover_the_data_once(quick_document, write_scenario) -> None:
    scenario = load_scenario(write_scenario(quick_document))
    task = load_task(scenario.data, scenario.seed)
    parts = [partition(task, scenario.data, 3, i, scenario.seed) for i in range(3)]
    assert sorted(len(p) for p in parts) == [300, 300, 300]
    texts = [e["text"] + str(e["label"]) for p in parts for e in p]
    assert Counter(texts) == Counter(e["text"] + str(e["label"]) for e in task.train)


def test_dirichlet_partitions_are_label_skewed(quick_document, write_scenario) -> None:
    quick_document["data"]["partitioning"] = {"kind": "dirichlet", "alpha": 0.1}
    scenario = load_scenario(write_scenario(quick_document))
    task = load_task(scenario.data, scenario.seed)
    parts = [partition(task, scenario.data, 3, i, scenario.seed) for i in range(3)]
    assert sum(len(p) for p in parts) == len(task.train)
    shares = [max(Counter(e["label"] for e in p).values()) / len(p) for p in parts]
    assert max(shares) > 0.6  # alpha 0.1: some client is dominated by one label
    again = partition(task, scenario.data, 3, 0, scenario.seed)
    assert again == parts[0]  # seeded


def test_presplit_reads_one_file_per_client(quick_document, write_scenario, tmp_path) -> None:
    for i, labels in enumerate([[0, 0, 1], [1, 1]]):
        rows = [{"sentence1": f"text {i} {j}", "sentence2": None, "label": lab}
                for j, lab in enumerate(labels)]
        (tmp_path / f"p{i}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "val.jsonl").write_text('{"sentence1": "v", "label": 0}\n{"sentence1": "w", "label": 1}')
    quick_document["federation"].update(num_clients=2, clients_per_round=2)
    quick_document["data"] = {
        "source": {"kind": "jsonl", "train": ["p0.jsonl", "p1.jsonl"], "test": "val.jsonl"},
        "partitioning": {"kind": "presplit"}, "text_field": "sentence1",
    }
    scenario = load_scenario(write_scenario(quick_document))
    task = load_task(scenario.data, scenario.seed)
    assert task.train == [] and task.label_names == ("0", "1")
    second = partition(task, scenario.data, 2, 1, scenario.seed)
    assert [e["label"] for e in second] == [1, 1] and second[0]["text"] == "text 1 0"


def test_a_bad_row_names_the_missing_field(quick_document, write_scenario, tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text('{"text": "no sentence1 here", "label": 0}')
    (tmp_path / "val.jsonl").write_text('{"sentence1": "v", "label": 0}')
    quick_document["federation"].update(num_clients=1, clients_per_round=1)
    quick_document["data"] = {"source": {"kind": "jsonl", "train": ["p.jsonl"], "test": "val.jsonl"},
                              "partitioning": {"kind": "presplit"}, "text_field": "sentence1"}
    scenario = load_scenario(write_scenario(quick_document))
    with pytest.raises(ValueError, match="no field 'sentence1'"):
        partition(load_task(scenario.data, 0), scenario.data, 1, 0, 0)


def test_stratified_split_holds_out_each_label() -> None:
    rows = [{"label": str(i % 4), "sentence": str(i)} for i in range(400)]
    train, test = stratified_split(rows, 0.25, seed=1, label_field="label")
    assert len(test) == 100 and Counter(r["label"] for r in test) == {str(i): 25 for i in range(4)}
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in test}


def test_tokenize_pads_to_max_length(quick_document, write_scenario) -> None:
    scenario = load_scenario(write_scenario(quick_document))
    examples = make_examples(2, 10, seed=0)
    rows = [{"text": e["sentence"], "text_pair": None, "label": e["label"]} for e in examples]
    tensors = tokenize(rows, build_tokenizer(scenario.model), 24).tensors
    assert [tuple(t.shape) for t in tensors] == [(10, 24)] * 3 + [(10,)]


def test_client_data_is_tokenized_once_per_process(quick_document, write_scenario) -> None:
    scenario = load_scenario(write_scenario(quick_document))
    assert client_data(scenario, 0) is client_data(scenario, 0)
    data = client_data(scenario, 0)
    assert len(data.train) + len(data.local_eval) == 300 and data.num_labels == 3


@needs_shared_data("cl_benchmark", "dbpedia")
def test_cl_benchmark_task_without_train_file_is_split(quick_document, write_scenario) -> None:
    quick_document["data"]["source"] = {"kind": "cl-json",
                                        "path": str(SHARED_DATA / "cl_benchmark" / "dbpedia")}
    scenario = load_scenario(write_scenario(quick_document))
    task = load_task(scenario.data, scenario.seed)
    assert len(task.label_names) == 14
    assert len(task.train) + len(task.test) == 7600 and len(task.test) == pytest.approx(1520, abs=14)
