"""OSFT math against independent oracles: numpy's dense SVD, PEFT's OSF projection, and
the preserved-triplet invariant after real training (one client, FedAvg of several,
DP-SGD), on the tiny BERT and the tiny LLaMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft.tuners.osf.utils import project_gradient_to_orthogonal_space

from clients.data.tasks import client_data
from clients.training.dp_training import dp_train_steps
from clients.models.factory import build_model, osft_targets
from clients.training.osft import (
    Projector,
    adaptive_ranks,
    basis,
    complement,
    layer_importance,
    project,
    scheduled_rank,
)
from clients.training.osft_training import projected_updates
from clients.training.loop import make_optimizer, train_steps
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec, PrivacySpec
from server.serverapp.osft_plan import target_weights


def test_basis_spans_the_dense_svds_top_singular_vectors() -> None:
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    u_high, v_high = basis(w, 7)
    assert u_high.shape == (40, 7) and v_high.shape == (7, 24)
    u, _, vh = np.linalg.svd(w.numpy().astype(np.float64), full_matrices=False)
    # Singular vectors are defined up to sign: compare the projectors.
    np.testing.assert_allclose(u_high.numpy() @ u_high.numpy().T, u[:, :7] @ u[:, :7].T, atol=1e-5)
    np.testing.assert_allclose(v_high.numpy().T @ v_high.numpy(), vh[:7].T @ vh[:7], atol=1e-5)
    assert basis(w, 0)[0].shape == (40, 0)
    with pytest.raises(ValueError, match="k = 25"):
        basis(w, 25)


def peft_projection(g: torch.Tensor, u_high: torch.Tensor, v_high: torch.Tensor) -> torch.Tensor:
    """PEFT's OSF projection as the oracle: its dU step removes the U_high column
    components, its dV step the V_high row components; apply both to the same matrix."""
    def svd_dict(grad_u=None, grad_v=None):
        u_low = torch.nn.Parameter(torch.zeros_like(g))
        v_low = torch.nn.Parameter(torch.zeros_like(g))
        s_low = torch.nn.Parameter(torch.zeros(1))
        u_low.grad, v_low.grad = grad_u, grad_v
        return {"U_high": u_high, "V_high": v_high, "U_low": u_low, "S_low": s_low, "V_low": v_low}

    left = svd_dict(grad_u=g.clone())
    project_gradient_to_orthogonal_space(left)
    both = svd_dict(grad_v=left["U_low"].grad.clone())
    project_gradient_to_orthogonal_space(both)
    return both["V_low"].grad


@pytest.mark.parametrize("shape,k", [((32, 32), 5), ((48, 20), 12), ((20, 48), 1)])
def test_project_matches_pefts_osf_projection(shape, k) -> None:
    gen = torch.Generator().manual_seed(k)
    w, g = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    u_high, v_high = basis(w, k)
    ours = project(g, u_high, v_high)
    torch.testing.assert_close(ours, peft_projection(g, u_high, v_high), atol=1e-5, rtol=1e-5)
    # And what it is for: no component left along the preserved directions.
    assert (u_high.T @ ours).abs().max() < 1e-5
    assert (ours @ v_high.T).abs().max() < 1e-5
    torch.testing.assert_close(project(ours, u_high, v_high), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,k,keeps", [
    ((40, 40), 32, (True, True)),      # 80 % kept: both sides through their complements
    ((96, 24), 20, (False, True)),     # tall: the short (input) side only
    ((24, 96), 20, (True, False)),     # wide: the short (output) side only
    ((40, 40), 20, (False, False)),    # half kept: the preserved bases are as cheap
    ((30, 50), 3, (False, False)),
])
def test_projector_is_project_in_every_form(shape, k, keeps) -> None:
    """The shipped projector (complements, narrow side first) against `project`, itself
    checked against PEFT above, on a gradient and on a sum that `project` is linear in."""
    gen = torch.Generator().manual_seed(k)
    w, g = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    u_high, v_high = basis(w, k)
    projector = Projector(u_high, v_high)
    assert (projector.left_keeps, projector.right_keeps) == keeps
    torch.testing.assert_close(projector(g), project(g, u_high, v_high), atol=1e-5, rtol=1e-5)
    assert (u_high.T @ projector(g)).abs().max() < 1e-5
    assert (projector(g) @ v_high.T).abs().max() < 1e-5


def test_complement_spans_exactly_the_rest() -> None:
    u_high, _ = basis(torch.randn(30, 30, generator=torch.Generator().manual_seed(1)), 22)
    rest = complement(u_high)
    assert rest.shape == (30, 8) and rest.dtype == u_high.dtype
    torch.testing.assert_close(rest.T @ rest, torch.eye(8), atol=1e-6, rtol=0)
    assert (u_high.T @ rest).abs().max() < 1e-6
    # Together they resolve the identity: U U^T + U_c U_c^T = I.
    torch.testing.assert_close(u_high @ u_high.T + rest @ rest.T, torch.eye(30), atol=1e-5,
                               rtol=0)


def test_projected_updates_equal_projecting_each_steps_update() -> None:
    """The shipped form W <- F + P(W_after) against the definition, step by step:
    W <- W_before + project(W_after - W_before), under AdamW with weight decay (whose
    update is not the gradient), 80 % of the rank kept."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=gen), torch.randn(64, 30, generator=gen)
    shipped, oracle = torch.nn.Linear(20, 30), torch.nn.Linear(20, 30)
    oracle.load_state_dict(shipped.state_dict())
    start = shipped.weight.detach().clone()
    u_high, v_high = basis(shipped.weight.detach(), 16)
    opt_shipped = torch.optim.AdamW(shipped.parameters(), lr=0.05, weight_decay=0.1)
    opt_oracle = torch.optim.AdamW(oracle.parameters(), lr=0.05, weight_decay=0.1)
    def step(model, opt, i: int) -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[i::6]), y[i::6]).backward()
        opt.step()

    with projected_updates(shipped, opt_shipped, {"weight": (u_high, v_high)}):
        for i in range(6):
            step(shipped, opt_shipped, i)
            before = oracle.weight.detach().clone()
            step(oracle, opt_oracle, i)
            with torch.no_grad():
                oracle.weight.copy_(before + project(oracle.weight - before, u_high, v_high))
    torch.testing.assert_close(shipped.weight, oracle.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shipped.bias, oracle.bias)  # not a target: a plain step
    assert (oracle.weight - start).abs().max() > 0.05  # it trained: the test is not void


def test_adaptive_rank_follows_the_rule_on_constructed_layers() -> None:
    """Block rotations by theta have cos(x, W x) = cos(theta) for every x: layers with
    importance exactly 1, 0.5 and 0 (mean 0.5, so I = 2, 1, 0)."""
    def rotation(theta: float, d: int = 10) -> torch.Tensor:
        w = torch.zeros(d, d, dtype=torch.float64)
        for i in range(0, d, 2):
            c, s = np.cos(theta), np.sin(theta)
            w[i:i + 2, i:i + 2] = torch.tensor([[c, -s], [s, c]])
        return w

    x = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layers = {"same": rotation(0.0), "half": rotation(np.pi / 3), "orth": rotation(np.pi / 2)}
    importance = {n: layer_importance(x, x @ w.T) for n, w in layers.items()}
    assert importance == pytest.approx({"same": 1.0, "half": 0.5, "orth": 0.0}, abs=1e-9)
    ranks = adaptive_ranks(importance, {n: (10, 10) for n in layers}, mrr=0.1, trr=0.8)
    # r = 0.1 + I * 0.7: 1.5 (capped at 1) -> 10, 0.8 -> 8, 0.1 -> 1.
    assert ranks == {"same": 10, "half": 8, "orth": 1}
    # A rectangular layer uses min(d_out, d_in); no ranking signal keeps trr everywhere.
    assert adaptive_ranks({"a": 0.0, "b": 0.0}, {"a": (30, 20), "b": (10, 50)}) == {"a": 16, "b": 8}


def test_schedule_grows_with_the_task_and_leaves_room_to_learn() -> None:
    assert scheduled_rank((384, 1536), 0, 0.07) == 0
    assert scheduled_rank((384, 1536), 1, 0.07) == 107      # floor(1536 * 0.07)
    assert scheduled_rank((384, 1536), 3, 0.07) == 322
    assert scheduled_rank((384, 1536), 9, 0.07) == 383      # capped at min - 1


# ---- the invariant after real training --------------------------------------------------


@pytest.fixture(scope="module", params=[("tiny-bert", 0.5), ("tiny-llama", 0.5),
                                        ("tiny-bert", 0.8), ("tiny-llama", 0.8)],
                ids=lambda p: f"{p[0]}-{p[1]:.0%}")
def setup(request):
    """The invariant on both model kinds: a BERT-style encoder, a LLaMA-style decoder
    (attention and MLP projections of every block; the causal LM's loss on its answers),
    with half of every rank kept (the projector's preserved bases on both sides) and 80 %
    (its complements on the short sides)."""
    model_name, share = request.param
    length = 24 if model_name == "tiny-bert" else 48  # room for a prompt's instruction
    scenario = load_scenario({
        "name": "osft-unit", "seed": 0, "model": {"name": model_name, "max_length": length},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 300,
                            "test_size": 30}},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 1,
                       "batch_size": 16},
        "strategy": {"name": "osft"},
    })
    start = build_model(scenario.model, 3, 0, "full")
    weights = target_weights(start, osft_targets(scenario.model, None))
    # Preserve a share of every target matrix, from the weights at the "task start".
    svds = {n: torch.linalg.svd(w.detach().double(), full_matrices=False)
            for n, w in weights.items()}
    bases = {n: basis(w.detach(), int(share * min(w.shape))) for n, w in weights.items()}
    return scenario, start.state_dict(), svds, bases


def train_client(scenario, start_state, bases, partition_id, private=False, mode="auto"):
    """One client's local training from the task-start weights, with OSFT on."""
    model = build_model(scenario.model, 3, 0, "full")
    model.load_state_dict(start_state)
    data = client_data(scenario, partition_id)
    torch.manual_seed(partition_id)
    # AdamW with weight decay: the update is NOT the gradient, the decay touches every
    # direction. Projecting the update (not the gradient) must still hold the invariant.
    optimizer = make_optimizer(model, OptimizerSpec(name="adamw", lr=5e-3, weight_decay=0.01))
    with projected_updates(model, optimizer, bases):
        if private:
            spec = PrivacySpec(target_epsilon=8.0, max_grad_norm=1.0, grad_sample_mode=mode)
            dp_train_steps(model, data.train, 8, 16, optimizer, spec, 1.0, [],
                           torch.device("cpu"))
        else:
            train_steps(model, data.train, 8, 16, optimizer,
                        torch.Generator().manual_seed(partition_id), torch.device("cpu"))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_triplets_preserved(weights: dict, svds: dict, bases: dict, start_state: dict) -> None:
    """W_new v_i = s_i u_i and u_i^T W_new = s_i v_i^T for each preserved triplet i of the
    task-start SVD, relative error < 1e-4; and W really changed (else the test is void)."""
    for name, (u, s, vh) in svds.items():
        k = bases[name][0].shape[1]
        w = weights[name].double()
        right = (w @ vh[:k].T - u[:, :k] * s[:k]).norm() / s[:k].norm()
        left = (u[:, :k].T @ w - s[:k, None] * vh[:k]).norm() / s[:k].norm()
        assert right < 1e-4 and left < 1e-4, (name, float(right), float(left))
        assert (w - start_state[name].double()).norm() / w.norm() > 1e-3, f"{name} did not train"


def test_preserved_triplets_survive_one_clients_training(setup) -> None:
    scenario, start, svds, bases = setup
    assert_triplets_preserved(train_client(scenario, start, bases, 0), svds, bases, start)


def test_preserved_triplets_survive_fedavg_of_several_clients(setup) -> None:
    scenario, start, svds, bases = setup
    clients = [train_client(scenario, start, bases, p) for p in range(3)]
    sizes = [len(client_data(scenario, p).train) for p in range(3)]
    average = {n: sum(c[n] * k for c, k in zip(clients, sizes, strict=True)) / sum(sizes)
               for n in svds}
    assert_triplets_preserved(average, svds, bases, start)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_preserved_triplets_survive_dp_sgd(setup, mode) -> None:
    """Opacus clips and noises the gradient, then steps: the projection runs after the
    noise (post-processing), so the private update is constrained too, whichever way the
    clipped sum is formed (ghost: Opacus's ghost optimizer, the same step hook)."""
    scenario, start, svds, bases = setup
    assert_triplets_preserved(train_client(scenario, start, bases, 1, private=True,
                                           mode=mode), svds, bases, start)


def test_without_projection_the_triplets_move(setup) -> None:
    """The control: the same training with no bases breaks the invariant."""
    scenario, start, svds, bases = setup
    free = train_client(scenario, start, {}, 0)
    name = next(iter(svds))
    u, s, vh = svds[name]
    k = bases[name][0].shape[1]
    moved = (free[name].double() @ vh[:k].T - u[:, :k] * s[:k]).norm() / s[:k].norm()
    assert moved > 1e-2
