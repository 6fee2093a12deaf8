"""The linear probe behind FWT: separable features give ~1, random ones chance; the
features are what the task head reads; the ServerApp records a probe per task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.data.tasks import label_counts, server_test_set
from clients.models.heads import activate_task, task_heads
from clients.models.factory import build_model
from clients.training.loop import evaluate
from scenarios.loader import load_scenario
from server.runs.continual import PROBE_SOURCE, task_summary
from server.runs.store import MetricsStore
from server.serverapp.app import record_task_evals
from server.serverapp.probe import halves, head_inputs, probe_accuracy
from tests.conftest import ROOT


def clusters(num_labels: int, size: int, dim: int, spread: float, seed: int):
    """`size` rows of `dim` features around one random centre per label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % num_labels
    centres = rng.normal(size=(num_labels, dim)) * 5
    return centres[labels] + rng.normal(size=(size, dim)) * spread, labels


def test_separable_features_probe_near_one_random_features_near_chance() -> None:
    features, labels = clusters(4, 300, 32, spread=0.5, seed=0)
    assert probe_accuracy(features, labels, seed=0) > 0.98
    noise = np.random.default_rng(1).normal(size=(300, 32))
    assert abs(probe_accuracy(noise, labels, seed=0) - 0.25) < 0.12  # chance: 1/4
    assert probe_accuracy(noise, labels, seed=0) == probe_accuracy(noise, labels, seed=0)


def test_halves_are_stratified_disjoint_and_seeded() -> None:
    labels = np.array([0] * 10 + [1] * 6 + [2] * 3)
    fit, score = halves(labels, seed=3)
    assert sorted([*fit, *score]) == list(range(19)) and not set(fit) & set(score)
    assert [int((labels[score] == k).sum()) for k in range(3)] == [5, 3, 1]
    assert np.array_equal(fit, halves(labels, seed=3)[0])
    assert not np.array_equal(fit, halves(labels, seed=4)[0])


def test_edge_cases_one_label_and_diverged_features() -> None:
    assert probe_accuracy(np.zeros((6, 3)), np.zeros(6, dtype=int), seed=0) == 1.0
    assert probe_accuracy(np.full((6, 3), np.nan), np.arange(6) % 2, seed=0) is None


@pytest.fixture(scope="module")
def stream():
    """quick-stream with its tiny BERT and a head per task."""
    scenario = load_scenario(ROOT / "scenarios" / "quick-stream.yaml")
    model = build_model(scenario.model, label_counts(scenario)[0], scenario.seed, "full",
                        label_counts=label_counts(scenario))
    return scenario, model


def test_the_probe_reads_what_the_active_head_reads(stream) -> None:
    scenario, model = stream
    activate_task(model, 1)
    test_set = server_test_set(scenario, 1)
    with head_inputs(model) as captured:
        evaluate(model, test_set, torch.device("cpu"), batch_size=32)
    features = torch.cat(captured)
    assert features.shape == (len(test_set), model.config.hidden_size)
    with torch.no_grad():
        logits = task_heads(model).heads[1](features)
        input_ids, mask, types, _ = test_set.tensors
        expected = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert not any(h._forward_pre_hooks for h in model.modules())  # hooks removed


def test_record_task_evals_stores_a_probe_per_task(stream, tmp_path) -> None:
    scenario, model = stream
    store = MetricsStore(tmp_path / "m.sqlite")
    store.create_run("r", scenario.name, {})
    record_task_evals(model, scenario, store, "r", after_task=-1, device=torch.device("cpu"))
    record_task_evals(model, scenario, store, "r", after_task=0, device=torch.device("cpu"))
    rows = store.task_evals("r")
    assert [(r["after_task"], r["task"]) for r in rows] == [(-1, 0), (-1, 1), (0, 0), (0, 1)]
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 for r in rows)
    # the same model twice: the probes agree (deterministic), so FWT is exactly 0
    section = task_summary(rows)
    assert section["probe_matrix"] == [section["probe_initial"]]
    assert section["fwt"] == 0.0 and section["fwt_source"] == PROBE_SOURCE
