"""DP-SGD accounting against Opacus's own accountants, and the DP training loop."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant
from torch.utils.data import TensorDataset

from clients.training.dp_training import dp_train_steps
from clients.training.dp_training import noise_only_step as _noise_only
from clients.models.factory import build_model, trainable_state
from clients.training.privacy import (
    PrivacyState,
    epsilon_of,
    noise_for_budget,
    planned_rounds,
    sample_rate,
)
from clients.training.loop import make_optimizer
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec, PrivacySpec
from tests.conftest import ROOT

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, oracle", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_matches_an_accountant_stepped_one_step_at_a_time(name, oracle) -> None:
    history = [(1.1, 0.05, 40), (1.1, 0.05, 40), (1.1, 0.08, 25)]
    acc = oracle()
    for sigma, q, steps in history:
        for _ in range(steps):  # what Opacus's optimizer hook does after every step
            acc.step(noise_multiplier=sigma, sample_rate=q)
    assert epsilon_of(history, 1e-5, name) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_sizing_for_the_whole_participation_stays_within_budget() -> None:
    """PRIVACY_AND_MODELS.md's example: q = 0.1, 20 steps a round, 5 rounds, eps 6."""
    spec = PrivacySpec(target_epsilon=6.0, delta=1e-5)
    q, per_round, rounds = 0.1, 20, 5
    sigma = noise_for_budget(spec, q, per_round * rounds)
    ledger = PrivacyState(0, sigma)
    spent = []
    for _ in range(rounds):
        assert ledger.can_train(spec, q, per_round)
        ledger.history.append((sigma, q, per_round))
        spent.append(ledger.epsilon(spec))
    assert spent == sorted(spent) and spent[-1] <= 6.0 and spent[-1] > 5.9
    assert not ledger.can_train(spec, q, per_round)  # a sixth round would pass the target
    # The naive way: sigma sized for ONE round, reused every round, ends far over budget.
    naive = noise_for_budget(spec, q, per_round)
    naive_eps = epsilon_of([(naive, q, per_round)] * rounds, spec.delta, "rdp")
    assert naive < sigma and naive_eps > 1.5 * spec.target_epsilon


def test_ledger_round_trips_through_a_record() -> None:
    ledger = PrivacyState(3, 1.25, [(1.25, 0.01, 10), (1.25, 0.02, 10)])
    assert PrivacyState.from_record(ledger.to_record()) == ledger


def test_planned_rounds_and_sample_rate() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "agnews-fedavg-lora.yaml")
    assert planned_rounds(scenario) == 5  # 10 rounds x 3 of 6 clients
    assert sample_rate(100, 32) == 1 / 4  # 1 / len(DataLoader), as Opacus takes it


@pytest.fixture(scope="module")
def tiny():
    scenario = load_scenario(ROOT / "scenarios" / "quick.yaml")
    from clients.data.tasks import client_data
    return scenario, client_data(scenario, 0)


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off, so one-sample-at-a-time backward passes are an exact oracle."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def first(data: TensorDataset, n: int) -> TensorDataset:
    return TensorDataset(*[t[:n] for t in data.tensors])


@pytest.mark.parametrize("trains", ["lora-b", "full"])
def test_without_noise_or_clipping_dp_sgd_is_plain_sgd(tiny, trains) -> None:
    """sigma = 0, C = inf, q = 1 (batch >= data): the DP step must be the plain step."""
    scenario, data = tiny
    batch, sgd = first(data.train, 16), OptimizerSpec(name="sgd", lr=0.1)
    plain = no_dropout(build_model(scenario.model, 3, 0, trains))
    from clients.training.loop import train_steps
    train_steps(plain, batch, 1, 16, make_optimizer(plain, sgd), torch.Generator(), CPU)
    private = no_dropout(build_model(scenario.model, 3, 0, trains))
    frozen = {n: p.detach().clone() for n, p in private.named_parameters() if not p.requires_grad}
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=1e9)
    dp_train_steps(private, batch, 1, 16, make_optimizer(private, sgd), spec, 0.0, [], CPU)
    want, got = trainable_state(plain), trainable_state(private)
    start = trainable_state(build_model(scenario.model, 3, 0, trains))
    assert any(not torch.equal(want[n], start[n]) for n in want)  # the step did something
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-7)
    for name, param in private.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"
    assert all(getattr(p, "grad_sample", None) is None for p in private.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in private.modules())


def test_per_sample_clipping_matches_one_sample_at_a_time(tiny) -> None:
    """sigma = 0, q = 1, small C: the update is -lr * mean_i clip_C(g_i), with each g_i
    from its own backward pass (the oracle)."""
    from clients.training.loop import forward_loss

    scenario, data = tiny
    batch, clip, lr = first(data.train, 4), 1e-3, 1.0
    oracle = no_dropout(build_model(scenario.model, 3, 0, "lora-b")).train()
    params = {n: p for n, p in oracle.named_parameters() if p.requires_grad}
    update = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(4):
        oracle.zero_grad()
        forward_loss(oracle, [t[i:i + 1] for t in batch.tensors])[0].backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params.values()))
        assert norm > clip  # so clipping really acts
        for n, p in params.items():
            update[n] -= lr * p.grad * min(1.0, clip / norm.item()) / 4
    private = no_dropout(build_model(scenario.model, 3, 0, "lora-b"))
    start = trainable_state(private)
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=clip)
    dp_train_steps(private, batch, 1, 4, make_optimizer(private, OptimizerSpec(name="sgd", lr=lr)),
                   spec, 0.0, [], CPU)
    scale = max(u.abs().max().item() for u in update.values())
    assert scale > 1e-5
    for name, value in trainable_state(private).items():  # float32: agree to ~1e-4 of the step
        torch.testing.assert_close(value - start[name], update[name], rtol=1e-3, atol=1e-4 * scale)


def test_empty_poisson_batches_are_counted_noise_only_steps(tiny, monkeypatch) -> None:
    import clients.training.dp_training as dp

    scenario, data = tiny
    few = TensorDataset(*[t[:3] for t in data.train.tensors])  # q = 1/3: empty batches happen
    empty = []  # P(a batch of 3 rows at q = 1/3 is empty) = (2/3)^3; over 30 steps, some are

    def counted(dp_optimizer) -> None:
        empty.append(1)
        _noise_only(dp_optimizer)

    monkeypatch.setattr(dp, "noise_only_step", counted)
    torch.manual_seed(0)
    model = build_model(scenario.model, 3, 0, "lora-b")
    before = trainable_state(model)
    spec = PrivacySpec(target_epsilon=1000.0)
    result, history = dp_train_steps(model, few, 30, 1, make_optimizer(model, OptimizerSpec()),
                                     spec, 0.5, [], CPU, seed=0)
    assert history == [(0.5, 1 / 3, 30)]  # every step counted, the empty ones too
    assert result.steps == 30 and len(empty) > 0
    assert any(not torch.equal(v, before[n]) for n, v in trainable_state(model).items())


def test_dp_trained_adapter_lowers_the_loss_at_a_large_epsilon(quick_document, write_scenario) -> None:
    """Pretrained MiniLM, LoRA-B + head under DP-SGD (epsilon 1e4): the loss falls.
    (The tiny random BERT learns too slowly under clipping for this check.)"""
    from clients.data.tasks import client_data
    from clients.training.loop import evaluate

    quick_document["model"]["name"] = "minilm"
    scenario = load_scenario(write_scenario(quick_document))
    data = client_data(scenario, 0)
    probe = first(data.train, 64)
    torch.manual_seed(0)
    model = build_model(scenario.model, data.num_labels, 0, "lora-b")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate(model, probe, CPU).loss
    spec = PrivacySpec(target_epsilon=1e4, max_grad_norm=1.0)
    sigma = noise_for_budget(spec, sample_rate(len(data.train), 16), 20)
    dp_train_steps(model, data.train, 20, 16,
                   make_optimizer(model, OptimizerSpec(name="sgd", lr=0.5)), spec, sigma, [], CPU)
    after = evaluate(model, probe, CPU).loss
    assert sigma > 0.01 and after < before - 0.1, (sigma, before, after)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"


def accountant_rate(num_examples: int, batch_size: int) -> float:
    """The sampling rate Opacus's accountant records for a private loader of that size:
    make_private on a one-weight model, one (noise-only) step, read its history."""
    from opacus import PrivacyEngine

    from clients.training.dp_training import noise_only_step

    model = torch.nn.Linear(1, 1)
    engine = PrivacyEngine(accountant="rdp")
    loader = torch.utils.data.DataLoader(TensorDataset(torch.zeros(num_examples, 1)),
                                         batch_size=batch_size)
    hooks, optimizer, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
        wrap_model=False)
    noise_only_step(optimizer)
    hooks.cleanup()
    ((_, q, steps),) = engine.accountant.history
    assert steps == 1
    return q


def test_the_ledger_uses_the_rate_the_accountant_records_for_every_m_up_to_1000() -> None:
    """m = ceil(n / batch) batches: Opacus samples at 1/m but its accountant records
    1/len(DPDataLoader) = 1/int(1/(1/m)), 1/(m-1) for some m in floating point (93, 99,
    ...). The ledger must plan, check and report with the recorded figure: for every m up
    to 1000 against the DPDataLoader make_private divides by, and through make_private and
    a real step (the accountant's history) for the m where the two rates part and some
    others."""
    from opacus.data_loader import DPDataLoader

    batch, differs = 4, []
    for m in range(1, 1001):
        for n in (batch * (m - 1) + 1, batch * m):  # the fewest and most rows giving m
            loader = torch.utils.data.DataLoader(TensorDataset(torch.zeros(n, 1)),
                                                 batch_size=batch)
            assert sample_rate(n, batch) == 1 / len(DPDataLoader.from_data_loader(loader)), n
        differs += [m] if sample_rate(batch * m, batch) != 1 / m else []
    assert {93, 99, 105, 117} <= set(differs)  # the plan's old 1/m was off exactly there
    for m in [*differs[:8], 1, 2, 3, 10, 92, 94, 500, 1000]:
        assert sample_rate(batch * m, batch) == accountant_rate(batch * m, batch), m


def test_a_client_planned_for_50_rounds_trains_all_50_within_budget() -> None:
    """The issue's case: 2976 rows, batch 32 (m = 93; the accountant records 1/92). Planned
    at 1/93, two of the 50 rounds were refused; planned at the recorded rate, all 50 run
    and the last one ends at the target, not above."""
    spec = PrivacySpec(target_epsilon=6.0, delta=1e-5)
    q, steps = sample_rate(2976, 32), 10
    assert q == 1 / 92
    ledger = PrivacyState(0, noise_for_budget(spec, q, 50 * steps))
    rounds = 0
    while ledger.can_train(spec, q, steps):
        rounds += 1  # Opacus's accountant merges steps at the same (sigma, q): so here
        ledger.history = [(ledger.noise_multiplier, q, rounds * steps)]
    assert rounds == 50 and ledger.epsilon(spec) <= spec.target_epsilon
    assert ledger.epsilon(spec) == pytest.approx(epsilon_of(ledger.history, 1e-5, "rdp"))


# ---- a noise multiplier fixed by the scenario (privacy.noise_multiplier) ----------------

def test_a_fixed_noise_multiplier_never_refuses_and_a_target_does() -> None:
    """No target epsilon, no budget to pass: the same ledger, far past any sensible
    epsilon, may train under a fixed sigma and is refused under a target."""
    ledger = PrivacyState(0, 0.5, [(0.5, 0.5, 2000)])
    fixed = PrivacySpec(noise_multiplier=0.5)
    assert ledger.epsilon(fixed) > 100
    assert ledger.can_train(fixed, 0.5, 10)
    assert not ledger.can_train(PrivacySpec(target_epsilon=100.0), 0.5, 10)
    with pytest.raises(ValueError, match="noise_multiplier 0.5"):
        noise_for_budget(fixed, 0.5, 10)  # nothing to size


def one_round(scenario, node_state, start: dict, server_round: int, sent=None):
    """Partition 0's reply to one train message carrying the global tensors `start`
    (and, if given, the ledger record the server sends back)."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from clients.app import train_round
    from strategies import keys

    content = RecordDict({keys.ARRAYS: ArrayRecord(start), keys.CONFIG: ConfigRecord(
        {keys.SERVER_ROUND: server_round, keys.TASK_ID: 0})})
    if sent is not None:
        content[keys.PRIVACY_STATE] = ConfigRecord(sent)
    return train_round(scenario, 0, content, node_state)


def opacus_rate(num_examples: int, batch_size: int) -> float:
    """The oracle's sampling rate: 1 / the length of Opacus's own Poisson loader."""
    from opacus.data_loader import DPDataLoader

    loader = torch.utils.data.DataLoader(TensorDataset(torch.zeros(num_examples, 1)),
                                         batch_size=batch_size)
    return 1 / len(DPDataLoader.from_data_loader(loader))


@pytest.mark.parametrize("name, oracle", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_a_client_trains_with_the_fixed_sigma_and_reports_opacus_epsilon(
        quick_document, write_scenario, monkeypatch, name, oracle) -> None:
    """privacy.noise_multiplier 0.7 through the ClientApp's round, twice: Opacus's
    optimizer noises at exactly 0.7, the ledger records (0.7, q, steps so far), and each reply's
    epsilon equals a fresh Opacus accountant stepped once per step at (0.7, q)."""
    import opacus

    import clients.training.dp_training as dp
    from clients.app import cached_model
    from clients.data.tasks import client_data
    from clients.models.factory import global_state
    from strategies import keys

    sigmas = []

    class Spy(opacus.PrivacyEngine):
        def make_private(self, **kwargs):
            made = super().make_private(**kwargs)
            sigmas.append(made[1].noise_multiplier)  # (hooks, optimizer, ..., loader)
            return made

    monkeypatch.setattr(dp, "PrivacyEngine", Spy)
    quick_document["federation"]["local_steps"] = 3
    quick_document["privacy"] = {"noise_multiplier": 0.7, "accountant": name}
    scenario = load_scenario(write_scenario(quick_document))
    q = opacus_rate(len(client_data(scenario, 0).train), scenario.federation.batch_size)
    start = {k: v.clone() for k, v in global_state(cached_model(scenario, "cpu")).items()}
    node_state, acc = RecordDict(), oracle()
    for server_round in (1, 2):
        reply = one_round(scenario, node_state, start, server_round)
        metrics = reply[keys.METRICS]
        assert keys.REFUSED not in metrics and keys.ARRAYS in reply
        for _ in range(3):
            acc.step(noise_multiplier=0.7, sample_rate=q)
        assert metrics[keys.NOISE_MULTIPLIER] == 0.7 and metrics[keys.SAMPLE_RATE] == q
        assert metrics[keys.EPSILON] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
        ledger = PrivacyState.from_record(dict(reply[keys.PRIVACY_STATE]))
        assert ledger.history == [(0.7, q, 3 * server_round)]  # Opacus merges equal steps
    assert sigmas == [0.7, 0.7]


@pytest.mark.parametrize("privacy, refused", [({"noise_multiplier": 0.7}, False),
                                              ({"target_epsilon": 50.0}, True)],
                         ids=["fixed-sigma", "target"])
def test_a_spent_client_trains_on_under_a_fixed_sigma(quick_document, write_scenario,
                                                      privacy, refused) -> None:
    """A ledger sent back at epsilon far past 50: under a fixed sigma the client trains and
    reports the larger epsilon; under target_epsilon 50 it refuses the round."""
    from clients.app import cached_model
    from clients.models.factory import global_state
    from strategies import keys

    quick_document["federation"]["local_steps"] = 2
    quick_document["privacy"] = privacy
    scenario = load_scenario(write_scenario(quick_document))
    start = {k: v.clone() for k, v in global_state(cached_model(scenario, "cpu")).items()}
    spent = PrivacyState(0, 0.7, [(0.7, 0.5, 1000)])
    assert spent.epsilon(scenario.privacy) > 50
    reply = one_round(scenario, RecordDict(), start, 1, spent.to_record())
    metrics = reply[keys.METRICS]
    assert (metrics.get(keys.REFUSED) == 1) is refused and (keys.ARRAYS in reply) is not refused
    if not refused:
        assert metrics[keys.EPSILON] > spent.epsilon(scenario.privacy)
