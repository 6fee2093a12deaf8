"""FedSVD from round 2 on IS FFA-LoRA with an orthonormal basis of rowspace(A0)
(ALGORITHMS.md section 1), checked on real federated rounds of the tiny BERT.

Why it holds: FedSVD's round-1 SVD gives A_1 = V^T, an orthonormal basis of
rowspace(A0) (B_bar of rank r), and every later SVD only rotates it, A_t = R_t A_1
(R_t orthogonal, r x r), with B_t = B'_t R_t^T so that B_t A_t = B'_t A_1. The gradient
of B under A is G A^T (G = dL/d(s B A), per target), so one SGD step moves the product
by -lr s^2 G A^T A, and A^T A = A_1^T R_t^T R_t A_1 = A_1^T A_1: the same step as
FFA-LoRA's under A_1. Clipping sees ||G A^T|| = ||G A_1^T R_t^T|| = ||G A_1^T||: the same
too, per sample (DP-SGD) or per batch (federation.max_grad_norm). Adam is not rotation
invariant (its second moments are per coordinate), hence SGD here. PEFT's Kaiming A0
spans the same rows but is not orthonormal (A0^T A0 != A_1^T A_1): the negative control.

Driven without a Flower simulation, through the project's own code paths: each client
round is the ClientApp's `clients.app.train_round` (the message's A and B loaded into
the client's model, the frozen-weight fingerprint checked, a fresh optimizer, the
round's seeded batches and dropout, `train_steps`, the reply's B), each aggregation the
strategy's `aggregate_train` on hand-built replies (strategies.fedsvd.FedSVD: the
weighted mean of B, then `refactorize`; strategies.ffa_lora.FfaLora: the weighted mean
of B, A kept). The one change: clients.app's model cache hands out float64 copies of the
models it builds (and the server model is float64 too), so the comparison can be held
to 1e-6 over several rounds without float32 round-off; the head is frozen
(model.train_head false, as in FedSVD's reference code).
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from clients import app as client_app
from clients.app import train_round
from clients.data.tasks import client_data
from clients.models.factory import build_model, frozen_fingerprint, global_state, load_trainable
from clients.training.dp_training import dp_train_steps
from clients.training.loop import forward_logits, make_optimizer, train_loss
from scenarios.loader import load_scenario
from scenarios.schema import PrivacySpec, Scenario
from strategies import keys
from strategies.fedsvd import LORA_A, LORA_B, FedSVD
from strategies.ffa_lora import FfaLora
from strategies.registry import trained_set
from tests.strategies.replies import train_reply

CPU = torch.device("cpu")
ROUNDS, CLIENTS, SCALE = 5, 3, 8.0 / 4  # s = alpha / r
TOLERANCE = 1e-6


def scenario(strategy: str, init: str = "default") -> Scenario:
    """Tiny BERT, LoRA rank 4 on q and v, a frozen head, 3 clients of fixed data, plain
    SGD with the reference's clip of each step's gradient to norm 1."""
    return load_scenario({
        "name": "fedsvd-ffa-equivalence", "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 24, "train_head": False,
                  "lora": {"rank": 4, "alpha": 8.0, "init": init,
                           "target_modules": ["query", "value"]}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 240,
                            "test_size": 30}},
        "federation": {"num_clients": CLIENTS, "clients_per_round": CLIENTS, "rounds": ROUNDS,
                       "local_steps": 4, "batch_size": 8, "max_grad_norm": 1.0,
                       "optimizer": {"name": "sgd", "lr": 0.5}},
        "strategy": {"name": strategy},
    })


def float64_model(scenario: Scenario, device: str | torch.device = CPU) -> torch.nn.Module:
    """The model build_model makes for the scenario's strategy, in float64."""
    return build_model(scenario.model, 3, scenario.seed, trained_set(scenario.strategy.name),
                       device).double()


def lora(model: torch.nn.Module, factor: str) -> dict[str, torch.Tensor]:
    """The LoRA `factor` ('A' or 'B') of every target, by parameter name."""
    tag = LORA_A if factor == "A" else LORA_B
    return {n: p.detach().clone() for n, p in model.named_parameters() if tag in n}


def products(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """s B A per target (d_out x d_in), keyed by B's name: what the adapter adds to W."""
    a = lora(model, "A")
    return {n: SCALE * b @ a[n.replace(LORA_B, LORA_A)] for n, b in lora(model, "B").items()}


@torch.no_grad()
def logits(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return forward_logits(model.eval(), batch)


def federated_round(server: torch.nn.Module, strategy: FfaLora, scenario: Scenario,
                    server_round: int) -> None:
    """Every client trains from the server's global state (clients.app.train_round) and
    the strategy aggregates their replies into the server model."""
    arrays = ArrayRecord(global_state(server))
    config = ConfigRecord({keys.SERVER_ROUND: server_round, keys.TASK_ID: 0,
                           keys.FROZEN_FINGERPRINT: frozen_fingerprint(server, frozenset(arrays))})
    replies = []
    for partition in range(CLIENTS):
        content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        reply = train_round(scenario, partition, content, RecordDict())
        sent = reply[keys.ARRAYS].to_torch_state_dict()
        assert sent and all(LORA_B in n for n in sent)  # only B travels (frozen A and head)
        replies.append(train_reply(partition + 1, partition,
                                   {n: t.numpy() for n, t in sent.items()},
                                   int(reply[keys.METRICS][keys.NUM_EXAMPLES])))
    strategy.global_arrays = arrays  # as configure_train sets it
    new, _ = strategy.aggregate_train(server_round, replies)
    load_trainable(server, new.to_torch_state_dict())


def carried_b(b: dict[str, torch.Tensor], a: dict[str, torch.Tensor],
              a_new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """B_new with B_new A_new = B A for an A_new of the same row space as A:
    B_new = B A A_new^+ = B (A A_new^T) (A_new A_new^T)^-1."""
    out = {}
    for name_b, tensor in b.items():
        name_a = name_b.replace(LORA_B, LORA_A)
        gram = a_new[name_a] @ a_new[name_a].T
        out[name_b] = tensor @ torch.linalg.solve(gram, a_new[name_a] @ a[name_a].T).T
    return out


def gap(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """The largest entry-wise difference over every target, relative to the largest
    entry of `one` (the products here are ~1e-3: an absolute 1e-6 would be loose)."""
    return (max(float((one[n] - other[n]).abs().max()) for n in one)
            / max(float(t.abs().max()) for t in one.values()))


def logit_gap(one: torch.Tensor, other: torch.Tensor) -> float:
    """The largest logit difference, relative to the largest logit of `one`."""
    return float((one - other).abs().max() / one.abs().max())


def row_space_cosines(a: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between rowspace(a) and rowspace(a0), from dense
    SVDs (the oracle): all 1 when the spans are equal."""
    v = torch.linalg.svd(a, full_matrices=False)[2]
    v0 = torch.linalg.svd(a0, full_matrices=False)[2]
    return torch.linalg.svdvals(v @ v0.T)


def run_rounds(server: torch.nn.Module, strategy: FfaLora, scenario: Scenario, first: int,
               batch: list[torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Rounds first..ROUNDS; after each, the adapters' products and the logits on `batch`."""
    history = []
    for server_round in range(first, ROUNDS + 1):
        federated_round(server, strategy, scenario, server_round)
        history.append((products(server), logits(server, batch)))
    return history


@pytest.fixture(scope="module")
def float64_clients():
    """clients.app's per-process model cache, handing out float64 copies of what it
    builds (one model per scenario, as one client process keeps)."""
    build = client_app.cached_model.__wrapped__  # the cache's own body, uncached
    built: dict[tuple[Scenario, str], torch.nn.Module] = {}

    def cached_model(scenario: Scenario, device: str) -> torch.nn.Module:
        if (scenario, device) not in built:
            built[scenario, device] = build(scenario, device).double()
        return built[scenario, device]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_app, "cached_model", cached_model)
        yield


STARTS = ("fedsvd-a1", "init-orthonormal", "peft-a0")


@pytest.fixture(scope="module")
def runs(float64_clients) -> dict:
    """FedSVD for ROUNDS rounds; FFA-LoRA for rounds 2..ROUNDS from FedSVD's product after
    round 1, under three frozen A's of rowspace(A0): FedSVD's A_1 itself (B = B_1), the
    A that model.lora.init 'orthonormal' builds (Gram-Schmidt of A0's rows), and PEFT's
    A0 (the negative control); B carried so that each starts with the product B_1 A_1."""
    fedsvd_scenario = scenario("fedsvd")
    batch = [t[:16] for t in client_data(fedsvd_scenario, 0).train.tensors]
    server, strategy = float64_model(fedsvd_scenario), FedSVD()
    a0 = lora(server, "A")
    federated_round(server, strategy, fedsvd_scenario, 1)
    a1, b1 = lora(server, "A"), lora(server, "B")
    out = {"a0": a0, "a1": a1, "first": products(server), "batch": batch,
           "fedsvd": run_rounds(server, strategy, fedsvd_scenario, 2, batch),
           "fedsvd-model": server}
    for start in STARTS:
        ffa_scenario = scenario("ffa-lora", "orthonormal" if start == "init-orthonormal"
                                else "default")
        ffa = float64_model(ffa_scenario)
        a = {"fedsvd-a1": a1, "peft-a0": a0}.get(start) or lora(ffa, "A")
        load_trainable(ffa, {**a, **(b1 if start == "fedsvd-a1" else carried_b(b1, a1, a))})
        # Equal to round-off (1e-16 measured); init 'orthonormal' builds A in float32, so
        # its span is A0's to ~1e-7 only (1e-8 measured).
        assert gap(out["first"], products(ffa)) < 1e-6
        out[start] = run_rounds(ffa, FfaLora(), ffa_scenario, 2, batch)
        out[start + "-a"], out[start + "-model"] = a, ffa
    return out


def test_fedsvd_a_after_round_1_is_an_orthonormal_basis_of_a0_rows(runs) -> None:
    """A_1 = V^T of B_bar A0: orthonormal rows spanning rowspace(A0) (principal angles
    0 by dense SVDs), as does init 'orthonormal' (another basis of it); later SVDs turn
    the basis within that span without leaving it."""
    final_a = lora(runs["fedsvd-model"], "A")
    for name, a0 in runs["a0"].items():
        ones = torch.ones(a0.shape[0], dtype=torch.float64)
        # FedSVD's A's are float64 SVDs; init 'orthonormal' is built in float32.
        for a, atol in ((runs["a1"][name], 1e-10), (final_a[name], 1e-10),
                        (runs["init-orthonormal-a"][name], 1e-6)):
            torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0], dtype=torch.float64),
                                       rtol=0, atol=atol)
            torch.testing.assert_close(row_space_cosines(a, a0), ones, rtol=0, atol=atol)
        # Three different bases of one span: the equivalence below is not one of equal A's.
        assert (runs["a1"][name] - runs["init-orthonormal-a"][name]).abs().max() > 1e-2
        assert (final_a[name] - runs["a1"][name]).abs().max() > 1e-2


@pytest.mark.parametrize("start", ["fedsvd-a1", "init-orthonormal"])
def test_fedsvd_from_round_2_is_ffa_lora_with_an_orthonormal_a(runs, start: str) -> None:
    """Rounds 2..ROUNDS: every target's s B A and the logits on a fixed batch agree to
    1e-6 relative at every round (measured: 1e-15 from A_1, 6e-8 from init 'orthonormal',
    whose float32 A is A0's span to ~1e-7), while the products move by ~1 relative."""
    for server_round, (fedsvd, ffa) in enumerate(zip(runs["fedsvd"], runs[start]), start=2):
        assert gap(fedsvd[0], ffa[0]) < TOLERANCE, (server_round, gap(fedsvd[0], ffa[0]))
        assert logit_gap(fedsvd[1], ffa[1]) < TOLERANCE, (server_round, logit_gap(fedsvd[1], ffa[1]))
    assert gap(runs["fedsvd"][-1][0], runs["first"]) > 0.1  # training moved the adapters


def test_ffa_lora_from_pefts_a0_is_not_fedsvd(runs) -> None:
    """The negative control: the same row space and the same product after round 1,
    but PEFT's Kaiming A0 (singular values ~ 0.58, not 1) scales every later step:
    products and logits leave FedSVD's by far more than the tolerance at every round
    (measured: products 0.3-1 relative, logits 6e-4-2e-3)."""
    for fedsvd, kaiming in zip(runs["fedsvd"], runs["peft-a0"]):
        assert gap(fedsvd[0], kaiming[0]) > 1e5 * TOLERANCE
        assert logit_gap(fedsvd[1], kaiming[1]) > 1e2 * TOLERANCE


def per_sample_norms(model: torch.nn.Module, data: list[torch.Tensor]) -> torch.Tensor:
    """(n,) ||g_i||, each example's gradient over every trained tensor (every B), one
    example at a time (the oracle DP-SGD's per-sample clipping must match); eval mode,
    so no dropout mask enters."""
    model.eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for i in range(len(data[0])):
        model.zero_grad(set_to_none=True)
        train_loss(model, [t[i:i + 1] for t in data]).backward()
        norms.append(torch.sqrt(sum((p.grad ** 2).sum() for p in trained)))
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


def private_round(model: torch.nn.Module, state: dict[str, torch.Tensor], clip: float,
                  ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One client's DP-SGD round through clients.training.dp_training (Opacus, Poisson
    batches seeded, per-sample clipping to `clip`) with the noise multiplier at 0, from
    `state`; returns the products and the round's clipped fraction."""
    load_trainable(model, state)
    spec = scenario("fedsvd")
    torch.manual_seed(11)  # the dropout masks, the same for every parametrization
    result, _ = dp_train_steps(model, client_data(spec, 0).train, 4, 8,
                               make_optimizer(model, spec.federation.optimizer),
                               PrivacySpec(target_epsilon=1.0, max_grad_norm=clip), 0.0, [],
                               CPU, seed=5, diagnose=True)
    return products(model), result.dp_diagnostics


def test_per_sample_clipping_does_not_see_fedsvds_rotation(runs) -> None:
    """After the last round, the same adapter product in three parametrizations: FedSVD's
    (A_T, B_T), FFA-LoRA's (A_1, B) and PEFT's (A0, B_T A_T A0^+). Each example's
    gradient norm over B is the same under the two orthonormal A's (to 1e-9) and not
    under A0 (measured: 4e-16 against 0.42 relative); one DP-SGD round without noise,
    with C the median norm (measured: 96% of the round's examples clipped under the
    orthonormal A's, none under A0), gives the same products (1e-6; 1e-15 measured)
    from the first two, other products from the third."""
    fedsvd = runs["fedsvd-model"]
    a_t, b_t = lora(fedsvd, "A"), lora(fedsvd, "B")
    ffa = runs["fedsvd-a1-model"]
    states = {"fedsvd": {**a_t, **b_t}, "ffa": {**lora(ffa, "A"), **lora(ffa, "B")},
              "peft-a0": {**runs["a0"], **carried_b(b_t, a_t, runs["a0"])}}
    client = float64_model(scenario("fedsvd"))
    norms = {}
    for name, state in states.items():
        load_trainable(client, state)
        norms[name] = per_sample_norms(client, runs["batch"])
    torch.testing.assert_close(norms["ffa"], norms["fedsvd"], rtol=1e-9, atol=0)
    assert float(((norms["peft-a0"] - norms["fedsvd"]) / norms["fedsvd"]).abs().max()) > 1e-2
    clip = float(norms["fedsvd"].median())
    after = {name: private_round(client, state, clip) for name, state in states.items()}
    assert 0 < after["fedsvd"][1]["clipped-fraction"] < 1  # clipping is doing something
    assert after["ffa"][1] == pytest.approx(after["fedsvd"][1], rel=1e-9)
    assert gap(after["fedsvd"][0], after["ffa"][0]) < TOLERANCE
    assert gap(after["fedsvd"][0], after["peft-a0"][0]) > 1e3 * TOLERANCE
