"""Data loading, partitioning (flwr-datasets) and tokenization."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import yaml
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner

from clients.data.tasks import (
    build_partitioner,
    cached_task,
    client_data,
    load_task,
    partition,
    stratified_split,
    tokenize,
)
from clients.models.factory import build_tokenizer
from clients.data.synthetic import make_examples
from scenarios.loader import load_scenario
from scenarios.schema import DirichletPartitioning, IidPartitioning
from scenarios.stream import task_plans
from tests.conftest import ROOT, SHARED_DATA, needs_shared_data


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
    for half in (train, test):  # shuffled, not grouped by label: every slice has all
        assert len({r["label"] for r in half[:len(half) // 4]}) == 4


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


# ---- label shares of the partitions ------------------------------------------------

def label_shares(rows: list[dict]) -> dict[int, float]:
    counts = Counter(r["label"] for r in rows)
    return {label: count / len(rows) for label, count in counts.items()}


def total_variation(p: dict[int, float], q: dict[int, float]) -> float:
    return sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in p.keys() | q.keys()) / 2


def iid_bound(num_labels: int, size: int) -> float:
    """How far an IID sample of `size` rows may stray from the task's label shares:
    a few times sqrt(C/n) (the expected TV distance of a multinomial sample is about
    0.4 sqrt(C/n)), never below 0.05."""
    return max(0.05, 1.5 * math.sqrt(num_labels / size))


def assert_iid(parts: list[list[dict]], rows: list[dict], where: str) -> None:
    task = label_shares(rows)
    for pid, part in enumerate(parts):
        distance = total_variation(label_shares(part), task)
        bound = iid_bound(len(task), len(part))
        assert distance < bound, f"{where}: client {pid} TV {distance:.3f} >= {bound:.3f}"


IID_SHIPPED = [p.name for p in sorted((ROOT / "scenarios").glob("*.yaml"))
            if yaml.safe_load(p.read_text())["data"].get("partitioning", {}).get("kind") == "iid"]


@pytest.mark.parametrize("name", IID_SHIPPED)
def test_iid_partitions_of_every_shipped_task_keep_its_label_shares(name) -> None:
    """Every task of every shipped iid scenario (single-file CL tasks, split by
    stratified_split, included): each client's label shares stay near the task's."""
    try:
        scenario = load_scenario(ROOT / "scenarios" / name)
    except Exception as exc:  # noqa: BLE001 - a shipped scenario needs ../shared/data
        if not SHARED_DATA.exists():
            pytest.skip(f"shared data not present: {exc}")
        raise
    clients = scenario.federation.num_clients
    for plan in task_plans(scenario):
        task = cached_task(plan.data, scenario.seed)
        parts = [partition(task, plan.data, clients, i, scenario.seed) for i in range(clients)]
        assert sum(len(p) for p in parts) == len(task.train)
        assert_iid(parts, task.train, f"{name} task {plan.name}")


def test_iid_partitions_of_label_sorted_rows_are_iid() -> None:
    """Rows in label order (what stratified_split used to return): the raw
    IidPartitioner shards fail the bound, ours pass it."""
    rows = sorted(({"text": e["sentence"], "label": e["label"]}
                   for e in make_examples(3, 600, seed=0)), key=lambda r: r["label"])
    raw = IidPartitioner(num_partitions=2)
    raw.dataset = Dataset.from_list(rows)
    with pytest.raises(AssertionError, match="client 0 TV"):
        assert_iid([raw.load_partition(i).to_list() for i in range(2)], rows, "raw")
    ours = build_partitioner(rows, IidPartitioning(kind="iid"), 2, seed=0)
    assert_iid([ours.load_partition(i).to_list() for i in range(2)], rows, "ours")


def dirichlet_counts(rows: list[dict], alpha: float, clients: int, seed: int,
                     min_size: int = 0) -> list[Counter]:
    parts = build_partitioner(rows, DirichletPartitioning(kind="dirichlet", alpha=alpha,
                                                          min_partition_size=min_size),
                              clients, seed)
    return [Counter(r["label"] for r in parts.load_partition(i).to_list())
            for i in range(clients)]


def dirichlet_oracle(rows: list[dict], alpha: float, clients: int, seed: int) -> list[Counter]:
    """Per-client label counts as Dirichlet label skew prescribes (Hsu et al. 2019): for
    each label in order, proportions p ~ Dir(alpha 1) from the seeded generator, the
    label's n_k rows cut at floor(cumsum(p) n_k). No dependence on the row order."""
    rng, totals = np.random.default_rng(seed), Counter(r["label"] for r in rows)
    counts = [Counter() for _ in range(clients)]
    for label in sorted(totals):
        cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * totals[label]).astype(int)[:-1]
        edges = [0, *cuts.tolist(), totals[label]]
        for pid in range(clients):
            if edges[pid + 1] > edges[pid]:
                counts[pid][label] = edges[pid + 1] - edges[pid]
    return counts


@needs_shared_data("cl_benchmark", "agnews")
def test_dirichlet_partitions_follow_the_draws_whatever_the_row_order() -> None:
    """The shipped Dirichlet scenario's task: the partitioner's per-client label counts
    are the oracle's, and the same for the file's order and for label-sorted rows."""
    scenario = load_scenario(ROOT / "scenarios" / "agnews-fedavg-lora.yaml")
    rows, clients = cached_task(scenario.data, scenario.seed).train, scenario.federation.num_clients
    alpha, seed = scenario.data.partitioning.alpha, scenario.seed
    as_shipped = dirichlet_counts(rows, alpha, clients, seed)
    assert as_shipped == dirichlet_oracle(rows, alpha, clients, seed)
    assert dirichlet_counts(sorted(rows, key=lambda r: r["label"]), alpha, clients, seed) \
        == as_shipped
    assert min(sum(c.values()) for c in as_shipped) >= scenario.data.partitioning.min_partition_size


def test_dirichlet_with_a_large_alpha_is_close_to_iid_even_on_sorted_rows() -> None:
    rows = sorted(({"text": e["sentence"], "label": e["label"]}
                   for e in make_examples(4, 2000, seed=1)), key=lambda r: r["label"])
    parts = build_partitioner(rows, DirichletPartitioning(kind="dirichlet", alpha=1e4), 4, 0)
    assert_iid([parts.load_partition(i).to_list() for i in range(4)], rows, "alpha 1e4")
