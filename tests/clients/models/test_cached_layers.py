"""model.cached_layers: the cached model computes what the full one does (eval mode),
runs the bottom layers once per example, trains adapters only above, and trains under
DP-SGD; the scenario refuses it where it is unsafe."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils.data import TensorDataset

from clients.models.cached_layers import CachedBottomEncoder
from clients.models.factory import build_model, load_trainable
from scenarios.schema import ModelSpec


def padded_batch(seed: int = 0, rows: int = 6, width: int = 10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (rows, width), generator=g)
    lengths = torch.randint(3, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    types = torch.zeros_like(ids)
    return ids * mask, mask, types


def cached_encoder(model) -> CachedBottomEncoder:
    return next(m for m in model.modules() if isinstance(m, CachedBottomEncoder))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_cached_model_computes_the_full_models_logits(pooling) -> None:
    full = build_model(ModelSpec(name="tiny-bert", pooling=pooling), 3, seed=0, trains="lora-b")
    cached = build_model(ModelSpec(name="tiny-bert", pooling=pooling, cached_layers=1), 3,
                         seed=0, trains="lora-b")
    # The same adapters on the top layer (layer 1 of full is layer 0 of cached's top).
    g = torch.Generator().manual_seed(5)
    top = {n: torch.randn(p.shape, generator=g) * 0.1 if ".lora_B." in n else p.detach()
           for n, p in cached.named_parameters() if "lora_" in n or "classifier" in n}
    load_trainable(cached, top)
    load_trainable(full, {n.replace("encoder.top.layer.0.", "encoder.layer.1."): t
                          for n, t in top.items()})  # A, B and the head
    full.eval(), cached.eval()
    ids, mask, types = padded_batch()
    expected = full(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    first = cached(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    # A second pass, shorter padding and shuffled: every row from the cache, same logits.
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    width = int(mask.sum(1).max())
    again = cached(input_ids=ids[order, :width], attention_mask=mask[order, :width],
                   token_type_ids=types[order, :width]).logits
    torch.testing.assert_close(again, expected[order], rtol=1e-5, atol=1e-5)
    assert len(cached_encoder(cached).cache) == 6


def test_the_bottom_layers_run_once_per_example_and_hold_no_parameters() -> None:
    model = build_model(ModelSpec(name="tiny-bert", cached_layers=1), 3, seed=0, trains="lora")
    encoder = cached_encoder(model)
    calls = []
    encoder.bottom.layer[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    ids, mask, types = padded_batch(rows=4)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    more_ids, more_mask, more_types = padded_batch(seed=1, rows=4)
    model(input_ids=torch.cat([ids, more_ids]), attention_mask=torch.cat([mask, more_mask]),
          token_type_ids=torch.cat([types, more_types]))
    assert calls == [4, 4]  # the first batch, then only the 4 new rows
    names = [n for n, _ in model.named_parameters()]
    assert not any("bottom" in n for n in names)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".top.layer.0." in n for n in lora)  # adapters above the cache only
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "classifier" in n for n in trained)


def test_a_dp_sgd_step_trains_the_top_adapters() -> None:
    from clients.training.dp_training import dp_train_steps
    from scenarios.schema import PrivacySpec
    from clients.training.loop import make_optimizer
    from scenarios.schema import OptimizerSpec

    model = build_model(ModelSpec(name="tiny-bert", cached_layers=1), 2, seed=0, trains="lora-b")
    ids, mask, types = padded_batch(rows=64)
    data = TensorDataset(ids, mask, types, torch.randint(0, 2, (64,)))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=0.5))
    spec = PrivacySpec(target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0)
    result, history = dp_train_steps(model, data, 3, 16, optimizer, spec, 1.0, [],
                                     torch.device("cpu"), seed=0)
    assert result.steps == 3 and len(history) == 1
    moved = [n for n, p in model.named_parameters() if p.requires_grad
             and not torch.equal(p.detach(), before[n])]
    assert any(".lora_B." in n for n in moved)


def _doc(**model):
    return {"name": "c", "model": {"name": "tiny-bert", **model},
            "data": {"source": {"kind": "generated", "num_labels": 3}},
            "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1}}


def test_the_scenario_refuses_caching_under_a_strategy_that_changes_the_bottom_layers() -> None:
    from pydantic import ValidationError

    from scenarios.schema import Scenario

    Scenario.model_validate({**_doc(cached_layers=1), "strategy": {"name": "fedsvd"}})
    with pytest.raises(ValidationError, match=r"model.cached_layers \(1\).*'osft'"):
        Scenario.model_validate({**_doc(cached_layers=1), "strategy": {"name": "osft"}})


def test_caching_every_layer_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"model.cached_layers: must be between 1 and 1 .*got 2"):
        build_model(ModelSpec(name="tiny-bert", cached_layers=2), 3, seed=0, trains="lora-b")


def test_disk_features_are_shared_by_models_and_equal_the_computed_ones(
        tmp_path, monkeypatch) -> None:
    """model.feature_cache: disk. A second model of the same bottom layers (another
    process or run) reads every row from disk, never runs its bottom layers, and gives
    the first model's logits; another model's bottom layers get a file of their own."""
    monkeypatch.setenv("ORTHOFED_CACHE", str(tmp_path))
    spec = ModelSpec(name="tiny-bert", cached_layers=1, feature_cache="disk")
    ids, mask, types = padded_batch(rows=6)
    first = build_model(spec, 3, seed=0, trains="lora-b").eval()
    expected = first(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    [store_file] = (tmp_path / "features").glob("*.sqlite")

    second = build_model(spec, 3, seed=0, trains="lora-b").eval()
    calls = []
    cached_encoder(second).bottom.layer[0].register_forward_hook(lambda *_: calls.append(1))
    order = torch.tensor([2, 5, 0, 1, 4, 3])
    again = second(input_ids=ids[order], attention_mask=mask[order],
                   token_type_ids=types[order]).logits
    assert calls == []  # every row came from disk
    torch.testing.assert_close(again, expected[order], rtol=1e-5, atol=1e-6)
    for key, value in cached_encoder(first).cache.items():  # bit for bit what was computed
        assert torch.equal(cached_encoder(second).cache[key], value)

    other = build_model(ModelSpec(name="tiny-bert", cached_layers=1, feature_cache="disk",
                                  max_length=16), 3, seed=0, trains="lora-b")
    assert cached_encoder(other).store.path == store_file  # same layers: same file
    copied = copy.deepcopy(other)  # shares the store, and a pickled one reopens the file
    assert cached_encoder(copied).store is cached_encoder(other).store
    assert pickle.loads(pickle.dumps(cached_encoder(other).store)).load(
        list(cached_encoder(first).cache))
    deeper = ModelSpec(name="minilm", cached_layers=2, feature_cache="disk")
    assert cached_encoder(build_model(deeper, 2, seed=0, trains="lora-b")).store.path != store_file


def test_disk_features_without_cached_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="feature_cache: 'disk' keeps the cached bottom"):
        ModelSpec(name="tiny-bert", feature_cache="disk")
