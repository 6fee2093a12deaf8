"""Task-stream plumbing on the clients: a head per task, stream data, LoRA folded into
the base between tasks, and DP-SGD leaving the other tasks' heads alone."""

from __future__ import annotations

import pytest
import torch

from clients.data.tasks import client_data, label_counts, server_test_set
from clients.training.dp_training import dp_train_steps
from clients.models.heads import activate_task, task_heads
from clients.models.factory import (
    build_model,
    frozen_fingerprint,
    merge_adapters,
    trainable_state,
)
from clients.training.loop import make_optimizer
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec, PrivacySpec
from tests.conftest import ROOT, SHARED_DATA, needs_shared_data


@pytest.fixture(scope="module")
def stream():
    return load_scenario(ROOT / "scenarios" / "quick-stream.yaml")


def test_each_task_has_its_own_data_and_head(stream) -> None:
    assert label_counts(stream) == (3, 2)
    first, second = client_data(stream, 0, 0), client_data(stream, 0, 1)
    assert first.num_labels == 3 and second.num_labels == 2
    assert set(second.train.tensors[3].tolist()) == {0, 1}
    assert len(server_test_set(stream, 1)) == 100
    with pytest.raises(ValueError, match="task-id 2 is not a task of 'quick-stream'"):
        client_data(stream, 0, 2)

    model = build_model(stream.model, 3, 0, "full", label_counts=(3, 2))
    x = torch.randint(0, 1000, (4, 8))
    assert model(input_ids=x).logits.shape == (4, 3)
    activate_task(model, 1)
    assert model(input_ids=x).logits.shape == (4, 2)
    trained_heads = {n for n in trainable_state(model) if ".heads." in n}
    assert trained_heads == {"classifier.heads.1.weight", "classifier.heads.1.bias"}
    with pytest.raises(ValueError, match="task-id 5: the model has 2 task heads"):
        activate_task(model, 5)


def test_fingerprint_ignores_task_heads_but_not_the_encoder(stream) -> None:
    """The server trains head 0 during task 0; a client that never joined task 0 still
    holds head 0 as drawn from the seed. That must not count as a mismatch."""
    server = build_model(stream.model, 2, 0, "lora-b", label_counts=(3, 2))
    client = build_model(stream.model, 2, 0, "lora-b", label_counts=(3, 2))
    activate_task(server, 1)
    activate_task(client, 1)
    with torch.no_grad():
        task_heads(server).heads[0].weight.add_(1.0)
    assert frozen_fingerprint(server) == frozen_fingerprint(client)
    with torch.no_grad():
        next(p for n, p in server.named_parameters() if "embeddings" in n).add_(1e-3)
    assert frozen_fingerprint(server) != frozen_fingerprint(client)


def test_merging_lora_keeps_the_function_and_restarts_b(stream) -> None:
    model = build_model(stream.model, 2, 0, "lora", label_counts=(3, 2)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.1)
    x = torch.randint(0, 1000, (4, 8))
    before = model(input_ids=x).logits
    merged = merge_adapters(model)
    torch.testing.assert_close(model(input_ids=x).logits, before, atol=1e-5, rtol=1e-5)
    assert len(merged) == 4 and all(n.endswith(".base_layer.weight") for n in merged)
    assert all(p.abs().max() == 0 for n, p in model.named_parameters() if ".lora_B." in n)


def test_dp_sgd_never_touches_the_other_tasks_heads(stream) -> None:
    """Opacus adds noise to every parameter it trains: only the active head may train."""
    model = build_model(stream.model, 2, 0, "full", label_counts=(3, 2))
    activate_task(model, 1)
    head0 = task_heads(model).heads[0].weight.detach().clone()
    head1 = task_heads(model).heads[1].weight.detach().clone()
    optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=0.1))
    torch.manual_seed(0)
    dp_train_steps(model, client_data(stream, 0, 1).train, 3, 16, optimizer,
                   PrivacySpec(target_epsilon=8.0), 1.0, [], torch.device("cpu"))
    assert torch.equal(task_heads(model).heads[0].weight, head0)
    assert not torch.equal(task_heads(model).heads[1].weight, head1)


@needs_shared_data("cl_benchmark")
def test_the_benchmark_stream_splits_single_file_tasks() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "osft-cl-4task.yaml")
    dbpedia_folder = (SHARED_DATA / "cl_benchmark" / "dbpedia").resolve()  # paths resolve links
    assert scenario.stream.tasks[0].source.path == dbpedia_folder
    assert label_counts(scenario) == (14, 5, 5, 4)
    from clients.data.tasks import cached_task
    from scenarios.stream import task_plans

    dbpedia = cached_task(task_plans(scenario)[0].data, scenario.seed)  # test.json only
    assert len(dbpedia.train) + len(dbpedia.test) == 7600
    assert len(dbpedia.test) == pytest.approx(0.2 * 7600, abs=14)
