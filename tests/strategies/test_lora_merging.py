"""FLoRA and FedEx-LoRA against a dense float64 oracle of their aggregation rules, with
hand-built replies, and their exactness in a real PEFT model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from strategies.fedex_lora import FedExLora
from strategies.flora import Flora, kaiming_uniform_a
from tests.strategies.replies import as_server, error_reply, train_reply

W, A, B, HEAD = ("m.base_layer.weight", "m.lora_A.default.weight", "m.lora_B.default.weight",
                 "classifier.weight")
D_OUT, R, D_IN = 6, 3, 5


def client_factors(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return ([rng.normal(size=(D_OUT, R)) for _ in range(count)],
            [rng.normal(size=(R, D_IN)) for _ in range(count)],
            [rng.normal(size=(2, D_OUT)) for _ in range(count)])


def run_round(strategy, w: np.ndarray, bs, as_, heads, ns, server_round: int = 1, extra=()):
    as_server()
    strategy.global_arrays = ArrayRecord(array_dict={   # as configure_train sets it
        HEAD: Array(np.zeros((2, D_OUT))), W: Array(w), A: Array(np.zeros((R, D_IN))),
        B: Array(np.zeros((D_OUT, R)))})
    replies = [train_reply(k + 1, k, {HEAD: h, A: a, B: b}, n)
               for k, (b, a, h, n) in enumerate(zip(bs, as_, heads, ns))]
    arrays, _ = strategy.aggregate_train(server_round, [*replies, *extra])
    return {k: v.numpy() for k, v in arrays.items()}


def oracle_sum(bs, as_, ns) -> np.ndarray:
    """sum_k w_k B_k A_k, one client at a time in float64."""
    total = np.zeros((D_OUT, D_IN))
    for b, a, n in zip(bs, as_, ns):
        total += n / sum(ns) * (b @ a)
    return total


def test_flora_merges_the_weighted_sum_of_products_and_restarts_the_adapter() -> None:
    bs, as_, heads = client_factors(3)
    ns, w, scaling = [1, 2, 5], np.random.default_rng(9).normal(size=(D_OUT, D_IN)), 2.0
    out = run_round(Flora(lora_scaling=scaling, seed=4), w, bs, as_, heads, ns)
    np.testing.assert_allclose(out[W], w + scaling * oracle_sum(bs, as_, ns), rtol=1e-12)
    assert np.count_nonzero(out[B]) == 0
    bound = 1 / np.sqrt(D_IN)  # PEFT's kaiming_uniform_(a=sqrt(5))
    assert out[A].shape == (R, D_IN) and np.abs(out[A]).max() <= bound
    assert np.abs(out[A]).max() > bound / 2  # drawn, not zeros
    np.testing.assert_allclose(out[HEAD], sum(n * h for n, h in zip(ns, heads)) / sum(ns))
    assert list(out) == [HEAD, W, A, B]  # the global model's order


def test_flora_redraws_a_per_round_and_layer_reproducibly() -> None:
    first = kaiming_uniform_a((R, D_IN), seed=0, server_round=1, layer=W)
    assert np.array_equal(first, kaiming_uniform_a((R, D_IN), 0, 1, W))  # a resumed run
    for other in (kaiming_uniform_a((R, D_IN), 0, 2, W), kaiming_uniform_a((R, D_IN), 1, 1, W),
                  kaiming_uniform_a((R, D_IN), 0, 1, "n.base_layer.weight")):
        assert not np.allclose(first, other)
    # Uniform on +-1/sqrt(d_in): the variance of a large draw is bound^2 / 3.
    large = kaiming_uniform_a((64, 400), 0, 1, W)
    assert abs(large.var() - 1 / 400 / 3) < 0.05 / 400


def test_fedex_lora_averages_the_factors_and_folds_the_residual() -> None:
    bs, as_, heads = client_factors(4, seed=1)
    ns, w, scaling = [3, 1, 1, 5], np.random.default_rng(8).normal(size=(D_OUT, D_IN)), 0.5
    out = run_round(FedExLora(lora_scaling=scaling), w, bs, as_, heads, ns)
    b_bar = sum(n * b for n, b in zip(ns, bs)) / sum(ns)
    a_bar = sum(n * a for n, a in zip(ns, as_)) / sum(ns)
    np.testing.assert_allclose(out[B], b_bar, rtol=1e-12)
    np.testing.assert_allclose(out[A], a_bar, rtol=1e-12)
    np.testing.assert_allclose(out[W], w + scaling * (oracle_sum(bs, as_, ns) - b_bar @ a_bar),
                               rtol=1e-12, atol=1e-12)
    # Exact: the served model is the mean of the clients' models (FedAvg-LoRA's is not).
    ideal = w + scaling * oracle_sum(bs, as_, ns)
    np.testing.assert_allclose(out[W] + scaling * out[B] @ out[A], ideal, rtol=1e-12, atol=1e-12)
    assert np.abs(w + scaling * b_bar @ a_bar - ideal).max() > 1e-2  # the residual is real


@pytest.mark.parametrize("strategy", [Flora(lora_scaling=1.0), FedExLora(lora_scaling=1.0)],
                         ids=["flora", "fedex-lora"])
def test_a_failed_client_is_left_out_of_the_merge(strategy) -> None:
    bs, as_, heads = client_factors(2, seed=2)
    w = np.zeros((D_OUT, D_IN))
    out = run_round(strategy, w, bs, as_, heads, [1, 1], extra=[error_reply(9, "boom")])
    np.testing.assert_allclose(out[W] + out[B] @ out[A], oracle_sum(bs, as_, [1, 1]),
                               rtol=1e-10, atol=1e-12)


def test_a_model_without_base_weights_among_the_global_arrays_is_refused() -> None:
    as_server()
    strategy = FedExLora()
    strategy.global_arrays = ArrayRecord(array_dict={A: Array(np.zeros((R, D_IN))),
                                                     B: Array(np.zeros((D_OUT, R)))})
    bs, as_, _ = client_factors(1)
    with pytest.raises(KeyError, match="base_layer.weight"):
        strategy.aggregate_train(1, [train_reply(1, 0, {A: as_[0], B: bs[0]}, 1)])


@pytest.mark.parametrize("cls", [Flora, FedExLora], ids=["flora", "fedex-lora"])
def test_the_merged_peft_model_computes_the_mean_of_the_clients_models(cls) -> None:
    """A real PEFT classifier: after the merge its weights are the weighted mean of the
    clients' merged weights W + s B_k A_k (PEFT's own merge_and_unload as the oracle)."""
    from clients.models.factory import build_model, global_state, load_trainable
    from scenarios.schema import ModelSpec

    spec = ModelSpec(name="tiny-bert", lora={"rank": 4, "alpha": 8})
    server = build_model(spec, 3, seed=0, trains="lora-merged").eval()
    sent = global_state(server)
    assert any(n.endswith(".base_layer.weight") for n in sent)  # the server owns W
    g = torch.Generator().manual_seed(3)
    clients, ns = [], [2, 5]
    for _ in ns:
        state = {n: t + 0.05 * torch.randn(t.shape, generator=g) if "lora_" in n else t
                 for n, t in sent.items() if not n.endswith(".base_layer.weight")}
        clients.append(state)
    expected = {}  # sum_k w_k merged_k per base weight, from PEFT's merge
    for state, n in zip(clients, ns):
        model = build_model(spec, 3, seed=0, trains="lora-merged")
        load_trainable(model, state)
        merged = model.merge_and_unload().state_dict()
        for name in (k for k in sent if k.endswith(".base_layer.weight")):
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
            expected[name] = expected.get(name, 0) + n / sum(ns) * merged[plain].double()
    as_server()
    strategy = cls(lora_scaling=8 / 4)
    strategy.global_arrays = ArrayRecord(sent)
    replies = [train_reply(k + 1, k, {n: t.numpy() for n, t in s.items()}, n)
               for k, (s, n) in enumerate(zip(clients, ns))]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()
    for name, target in expected.items():
        prefix = name.removesuffix(".base_layer.weight")
        b, a = out[f"{prefix}.lora_B.default.weight"], out[f"{prefix}.lora_A.default.weight"]
        served = out[name].double() + 2.0 * b.double() @ a.double()
        torch.testing.assert_close(served, target, rtol=1e-5, atol=1e-5)


def test_flora_and_fedex_lora_clients_train_a_and_b_and_never_send_w() -> None:
    from clients.models.factory import build_model, trainable_state
    from scenarios.schema import ModelSpec

    model = build_model(ModelSpec(name="tiny-bert"), 3, seed=0, trains="lora-merged")
    sent_up = trainable_state(model)
    assert any(".lora_A." in n for n in sent_up) and any(".lora_B." in n for n in sent_up)
    assert not any("base_layer" in n for n in sent_up)
