"""model.lora.init: 'orthonormal' against a dense SVD oracle, 'default' against PEFT
called directly, and the scenario's refusals."""

from __future__ import annotations

import pytest
import torch

from clients.models.factory import build_classifier, build_model
from clients.models.lora_init import orthonormal_rows
from scenarios.loader import ScenarioError, load_scenario
from scenarios.schema import LoraSpec, ModelSpec

SEED = 3


def row_space_cosines(a: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between rowspace(a) and rowspace(a0), by the
    dense SVDs of both (the oracle): all 1 when the spans are equal."""
    v = torch.linalg.svd(a.double(), full_matrices=False)[2]    # (r, d_in), orthonormal rows
    v0 = torch.linalg.svd(a0.double(), full_matrices=False)[2]
    return torch.linalg.svdvals(v @ v0.T)


def lora_factors(model: torch.nn.Module, factor: str) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if f".lora_{factor}." in n}


def spec(init: str, **model) -> ModelSpec:
    return ModelSpec(name="tiny-bert", lora=LoraSpec(rank=4, alpha=8.0, init=init), **model)


@pytest.mark.parametrize("r, d_in", [(4, 128), (8, 8), (1, 5), (16, 40)])
def test_orthonormal_rows_span_the_rows_of_a0(r: int, d_in: int) -> None:
    a0 = torch.empty(r, d_in).uniform_(-d_in ** -0.5, d_in ** -0.5,
                                       generator=torch.Generator().manual_seed(r * d_in))
    a = orthonormal_rows(a0)
    assert a.shape == a0.shape and a.dtype == a0.dtype
    torch.testing.assert_close(a.double() @ a.double().T, torch.eye(r, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(row_space_cosines(a, a0), torch.ones(r, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert abs(torch.linalg.matrix_norm(a.double(), ord=2).item() - 1) < 1e-6
    # Gram-Schmidt order (diag(R) > 0): row 0 is A0's row 0, normalized, sign kept.
    torch.testing.assert_close(a[0], a0[0] / a0[0].norm(), rtol=0, atol=1e-6)


def test_more_rows_than_input_dimensions_names_the_fields() -> None:
    with pytest.raises(ValueError, match=r"model.lora.init: 'orthonormal' needs model.lora.rank "
                                         r"<= d_in, got rank 6 for a layer with d_in = 5"):
        orthonormal_rows(torch.randn(6, 5))


@pytest.mark.parametrize("cached_layers", [0, 1])
def test_orthonormal_init_keeps_peft_row_space_and_zero_b(cached_layers: int) -> None:
    """The same seed, the same PEFT draw A0 per target: 'orthonormal' has A A^T = I and
    rowspace(A) = rowspace(A0) (principal angles 0), B = 0, every other weight equal;
    with cached layers the adapters sit on the top layer only, and the same holds."""
    default = build_model(spec("default", cached_layers=cached_layers), 3, SEED, "lora-b")
    ortho = build_model(spec("orthonormal", cached_layers=cached_layers), 3, SEED, "lora-b")
    a0s, as_ = lora_factors(default, "A"), lora_factors(ortho, "A")
    assert list(a0s) == list(as_) and len(as_) == 2 * (2 - cached_layers)  # (q, v) per layer
    for name, a in as_.items():
        eye = torch.eye(a.shape[0], dtype=torch.float64)
        torch.testing.assert_close(a.double() @ a.double().T, eye, rtol=0, atol=1e-6)
        torch.testing.assert_close(row_space_cosines(a, a0s[name]),
                                   torch.ones(a.shape[0], dtype=torch.float64), rtol=0, atol=1e-6)
        # Not vacuous: PEFT's A0 is far from orthonormal (singular values ~ 1/sqrt(3)).
        assert torch.linalg.svdvals(a0s[name]).max() < 0.8
    assert all(torch.count_nonzero(b) == 0 for b in lora_factors(ortho, "B").values())
    others = {n: p for n, p in ortho.state_dict().items() if ".lora_A." not in n}
    for name, tensor in default.state_dict().items():
        if ".lora_A." not in name:
            assert torch.equal(tensor, others[name]), name
    # Deterministic from the seed, as the server and every client build it.
    again = build_model(spec("orthonormal", cached_layers=cached_layers), 3, SEED, "lora-b")
    assert all(torch.equal(a, lora_factors(again, "A")[n]) for n, a in as_.items())


def test_default_init_is_pefts_own_bit_for_bit() -> None:
    """'default' is what PEFT's LoraConfig gives under the seed, with nothing changed."""
    from peft import LoraConfig, get_peft_model

    model_spec = spec("default")
    built = build_model(model_spec, 3, SEED, "lora")
    oracle = build_classifier(model_spec, 3, SEED)
    torch.manual_seed(SEED + 1)  # where build_model draws the adapters
    oracle = get_peft_model(oracle, LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0,
                                               target_modules=["query", "value"], bias="none"))
    expected = oracle.state_dict()
    assert list(built.state_dict()) == list(expected)
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def document(init: str, strategy: str) -> dict:
    return {"name": "lora-init", "seed": SEED,
            "model": {"name": "tiny-bert", "lora": {"rank": 4, "init": init}},
            "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 90,
                                "test_size": 30}},
            "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 1},
            "strategy": {"name": strategy}}


@pytest.mark.parametrize("strategy", ["ffa-lora", "fedsvd", "fedavg-lora", "fedex-lora"])
def test_orthonormal_is_accepted_for_lora_methods_that_keep_a(strategy: str) -> None:
    assert load_scenario(document("orthonormal", strategy)).model.lora.init == "orthonormal"


def test_a_bad_init_is_refused_naming_the_field() -> None:
    with pytest.raises(ScenarioError) as refused:
        load_scenario(document("kaiming", "fedsvd"))
    assert "model.lora.init: must be 'default' or 'orthonormal', got 'kaiming'" in str(refused.value)


@pytest.mark.parametrize("strategy", ["fedsvd-osft", "flora"])
def test_orthonormal_with_a_method_that_draws_a_names_both_fields(strategy: str) -> None:
    with pytest.raises(ScenarioError, match=rf"model.lora.init 'orthonormal' conflicts with "
                                            rf"strategy.name '{strategy}', which draws LoRA's A"):
        load_scenario(document("orthonormal", strategy))
    assert load_scenario(document("default", strategy)).model.lora.init == "default"
