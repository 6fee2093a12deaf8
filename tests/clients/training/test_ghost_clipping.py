"""Ghost clipping with book-keeping (clients.training.ghost_clipping) against independent oracles:
each example's gradient from its own backward pass, clipped with Opacus's factor
c_i = min(1, C / (||g_i|| + 1e-6)), summed; in float64, so agreement is to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import clients.training.ghost_clipping as ghost
from clients.training.dp_training import dp_train_steps
from clients.training.ghost_clipping import BookKeepingHooks, GhostClippedLoss, embedding_norms
from clients.models.factory import build_model, trainable_state
from clients.training.loop import make_optimizer, train_loss
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec, PrivacySpec
from tests.conftest import ROOT

CPU = torch.device("cpu")


def factor(norm: float, clip: float) -> float:
    """Opacus's clipping factor c_i (the 1e-6 included, so the oracle is exact)."""
    return min(1.0, clip / (norm + 1e-6))


def per_example(model: nn.Module, loss_of, examples: list) -> tuple[list[dict], list[float]]:
    """Each example's gradient {name: g_i} from its own backward pass, and ||g_i||."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads, norms = [], []
    for example in examples:
        model.zero_grad()
        loss_of(model, example).backward()
        grads.append({n: p.grad.detach().clone() for n, p in params.items()})
        norms.append(float(torch.sqrt(sum(g.pow(2).sum() for g in grads[-1].values()))))
    model.zero_grad()
    return grads, norms


def clipped_sum(grads: list[dict], norms: list[float], clip: float) -> dict:
    """sum_i c_i g_i."""
    return {n: sum(factor(norm, clip) * g[n] for g, norm in zip(grads, norms)) for n in grads[0]}


class Scale(nn.Module):
    """A layer Opacus has no grad sampler for (functorch computes its per-sample grads)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Toy(nn.Module):
    """Embedding (with a padding row) -> Linear on (B, T, d) -> LayerNorm -> Scale ->
    mean over ALL positions (padding included, so padding positions get gradient) ->
    Linear on (B, d): every path of BookKeepingHooks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6, padding_idx=0)
        self.mix, self.norm, self.scale = nn.Linear(6, 5), nn.LayerNorm(5), Scale(5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.scale(self.norm(torch.tanh(self.mix(self.embed(ids)))))  # (B, T, 5)
        return self.head(hidden.mean(1))                                       # (B, 3)


def toy_losses(model: nn.Module, batch: tuple) -> torch.Tensor:
    ids, labels = batch
    return nn.functional.cross_entropy(model(ids), labels, reduction="none")  # (B,)


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[3, 5, 3, 0, 0], [7, 7, 7, 2, 0], [1, 4, 6, 8, 9], [5, 0, 0, 0, 0]])
    return ids, torch.tensor([0, 2, 1, 2])  # repeated tokens, padding (id 0)


def test_one_pass_gives_the_clipped_sum_of_one_example_at_a_time_gradients() -> None:
    torch.manual_seed(0)
    model = Toy().double()
    ids, labels = toy_batch()
    loss_one = lambda m, ex: toy_losses(m, ex).sum()  # noqa: E731
    grads, norms = per_example(model, loss_one, [(ids[i:i + 1], labels[i:i + 1])
                                                 for i in range(len(ids))])
    clip = sorted(norms)[1] * 1.01  # some examples clipped, some not
    assert min(norms) < clip < max(norms)
    want = clipped_sum(grads, norms, clip)
    hooks = BookKeepingHooks(model, max_grad_norm=clip)
    hooks.new_batch()
    GhostClippedLoss(hooks, toy_losses(model, (ids, labels))).backward()
    torch.testing.assert_close(hooks.per_sample_gradient_norms,
                               torch.tensor(norms, dtype=torch.float64), rtol=1e-10, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-10, atol=1e-14,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert want["embed.weight"][0].abs().max() == 0  # the padding row, as autograd has it
    hooks.cleanup()


def test_embedding_norms_leave_the_padding_row_out() -> None:
    """Against autograd's per-example embedding gradient (which never updates the padding
    row), with gradient flowing into padding positions."""
    embed = nn.Embedding(12, 4, padding_idx=0).double()
    ids, b = toy_batch()[0], torch.randn(4, 5, 4, dtype=torch.float64)
    want = []
    for i in range(len(ids)):
        embed.zero_grad()
        (embed(ids[i:i + 1]) * b[i:i + 1]).sum().backward()
        want.append(embed.weight.grad.norm())
    torch.testing.assert_close(embedding_norms(ids, b, 0), torch.stack(want), rtol=1e-12, atol=0)
    assert not torch.allclose(embedding_norms(ids, b, None), torch.stack(want))  # it matters


def test_a_layer_without_norms_fails_loudly_instead_of_reusing_old_ones() -> None:
    """A linear layer fed 4-D input: Opacus's norm sampler returns nothing for it."""
    model = nn.Sequential(nn.Linear(3, 2))
    hooks = BookKeepingHooks(model, max_grad_norm=1.0)
    hooks.new_batch()
    losses = model(torch.randn(4, 2, 5, 3)).pow(2).sum((1, 2, 3))
    with pytest.raises(RuntimeError, match="no per-sample norm.*grad_sample_mode: hooks"):
        GhostClippedLoss(hooks, losses).backward()
    hooks.cleanup()


def test_a_layer_run_twice_in_one_forward_is_refused() -> None:
    norm = nn.LayerNorm(3)
    hooks = BookKeepingHooks(norm, max_grad_norm=1.0)
    hooks.new_batch()
    losses = norm(norm(torch.randn(4, 3))).pow(3).sum(1)
    with pytest.raises(NotImplementedError, match="ran twice.*grad_sample_mode: hooks"):
        GhostClippedLoss(hooks, losses).backward()
    hooks.cleanup()


# ---- through dp_train_steps, on the tiny BERT ---------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from clients.data.tasks import client_data

    scenario = load_scenario(ROOT / "scenarios" / "quick.yaml")
    return scenario, client_data(scenario, 0)


def tiny_model(scenario, trains: str) -> nn.Module:
    """float64 (agreement to rounding), dropout off (one-at-a-time passes are the oracle)."""
    model = build_model(scenario.model, 3, 0, trains).double()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def first(data: TensorDataset, n: int) -> TensorDataset:
    return TensorDataset(*[t[:n] for t in data.tensors])


@pytest.mark.parametrize("trains, mode, uses_ghost", [
    ("full", "ghost", True), ("full", "auto", True), ("full", "hooks", False),
    ("lora-b", "ghost", True), ("lora-b", "auto", False)])
def test_one_dp_step_is_the_one_example_at_a_time_step(tiny, monkeypatch, trains, mode,
                                                       uses_ghost) -> None:
    """sigma = 0, q = 1: the DP step is -lr (1/B) sum_i c_i g_i (full fine-tuning: every
    embedding, LayerNorm and linear weight of the BERT, padding in the batch)."""
    scenario, data = tiny
    batch, n, lr = first(data.train, 6), 6, 1.0
    calls = []
    kept_sum = BookKeepingHooks.clipped_sum
    monkeypatch.setattr(BookKeepingHooks, "clipped_sum",
                        lambda self, coef: calls.append(1) or kept_sum(self, coef))
    oracle = tiny_model(scenario, trains).train()
    grads, norms = per_example(oracle, train_loss, [[t[i:i + 1] for t in batch.tensors]
                                                    for i in range(n)])
    clip = sorted(norms)[n // 2]  # half the examples clipped
    want = {k: -lr * v / n for k, v in clipped_sum(grads, norms, clip).items()}
    private = tiny_model(scenario, trains)
    start = trainable_state(private)
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=clip, grad_sample_mode=mode)
    dp_train_steps(private, batch, 1, n, make_optimizer(private, OptimizerSpec(name="sgd", lr=lr)),
                   spec, 0.0, [], CPU)
    assert bool(calls) == uses_ghost
    scale = max(v.abs().max().item() for v in want.values())
    assert scale > 1e-6
    for name, value in trainable_state(private).items():
        torch.testing.assert_close(value - start[name], want[name], rtol=0, atol=1e-9 * scale,
                                   msg=lambda m, k=name: f"{k}: {m}")


def footprint(model: nn.Module) -> tuple:
    """Every hook and every attribute on the model's modules and parameters."""
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(m._backward_pre_hooks)) for n, m in model.named_modules()]
    attrs = [(n, sorted(vars(m))) for n, m in model.named_modules()]
    params = [(n, sorted(vars(p))) for n, p in model.named_parameters()]
    return hooks, attrs, params


def test_a_ghost_round_leaves_the_model_as_it_was(tiny) -> None:
    """After a round: no Opacus hook or attribute; a second round works; a plain step
    then is the plain step of a fresh model with the same weights."""
    scenario, data = tiny
    model = tiny_model(scenario, "full")
    before = footprint(model)
    spec = PrivacySpec(target_epsilon=8.0, grad_sample_mode="ghost")
    history = []
    for _ in range(2):
        optimizer = make_optimizer(model, OptimizerSpec(name="sgd", lr=0.1))
        _, history = dp_train_steps(model, first(data.train, 32), 3, 8, optimizer, spec, 1.0,
                                    history, CPU)
        assert footprint(model) == before
    assert history == [(1.0, 1 / 4, 6)]  # both rounds counted
    twin = tiny_model(scenario, "full")
    twin.load_state_dict(model.state_dict())
    from clients.training.loop import train_steps
    for net in (model, twin):
        train_steps(net, first(data.train, 8), 1, 8,
                    make_optimizer(net, OptimizerSpec(name="sgd", lr=0.1)),
                    torch.Generator().manual_seed(0), CPU)
    for name, value in trainable_state(twin).items():
        assert torch.equal(trainable_state(model)[name], value), name


def test_empty_poisson_batches_are_counted_noise_only_steps_under_ghost(tiny, monkeypatch) -> None:
    import clients.training.dp_training as dp

    scenario, data = tiny
    few = first(data.train, 3)  # q = 1/3: P(empty batch) = (2/3)^3, some of 30 steps are
    noise_only, empty = dp.noise_only_step, []

    def counted(dp_optimizer) -> None:
        before = [p.detach().clone() for p in dp_optimizer.params]
        noise_only(dp_optimizer)
        empty.append(all(not torch.equal(p, b) for p, b in zip(dp_optimizer.params, before)))

    monkeypatch.setattr(dp, "noise_only_step", counted)
    model = tiny_model(scenario, "full")
    spec = PrivacySpec(target_epsilon=1000.0, grad_sample_mode="ghost")
    result, history = dp_train_steps(model, few, 30, 1, make_optimizer(model, OptimizerSpec()),
                                     spec, 0.5, [], CPU, seed=0)
    assert history == [(0.5, 1 / 3, 30)] and result.steps == 30
    assert len(empty) > 0 and all(empty)  # each empty step moved every weight: noise


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_noise_only_step_adds_noise_of_std_sigma_c_over_the_batch(mode) -> None:
    """Empty batch, plain SGD lr 1: the update is -N(0, (sigma C)^2) / expected batch."""
    from opacus import PrivacyEngine

    from clients.training.dp_training import noise_only_step

    model = nn.Linear(64, 64)
    engine = PrivacyEngine(accountant="rdp")
    loader = torch.utils.data.DataLoader(TensorDataset(torch.zeros(10, 64)), batch_size=5)
    hooks, optimizer, *_ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=loader, noise_multiplier=2.0, max_grad_norm=1.5, poisson_sampling=True,
        grad_sample_mode=mode, wrap_model=False, noise_generator=torch.Generator().manual_seed(1))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    noise_only_step(optimizer)
    hooks.cleanup()
    step = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert step.std().item() == pytest.approx(2.0 * 1.5 / 5, rel=0.05)  # 4160 draws
    assert abs(step.mean().item()) < 0.05 and engine.accountant.history == [(2.0, 0.5, 1)]


# ---- which mode runs -----------------------------------------------------------------


def tied_llama() -> nn.Module:
    """The tiny LLaMA, full fine-tuning with its tied input/output embedding trainable."""
    from clients.models.causal_lm import language_model
    from scenarios.schema import ModelSpec

    model = build_model(ModelSpec(name="tiny-llama", max_length=48), 4, 0, "full")
    language_model(model).model.embed_tokens.weight.requires_grad = True
    return model


def test_auto_picks_hooks_for_adapters_and_ghost_for_full_fine_tuning(tiny) -> None:
    from clients.training.dp_training import resolve_mode

    scenario, _ = tiny
    full, lora = (build_model(scenario.model, 3, 0, trains) for trains in ("full", "lora-b"))
    assert (resolve_mode("auto", full), resolve_mode("auto", lora)) == ("ghost", "hooks")
    assert [resolve_mode(m, full) for m in ("hooks", "functorch", "ghost")] == [
        "hooks", "functorch", "ghost"]
    assert PrivacySpec(target_epsilon=1.0).grad_sample_mode == "auto"


def test_tied_trainable_weights_fall_back_to_hooks_or_fail_clearly(caplog) -> None:
    from clients.training.dp_training import resolve_mode

    model = tied_llama()
    with caplog.at_level("WARNING", logger="clients.training.dp_training"):
        assert resolve_mode("auto", model) == "hooks"
    assert "hooks, not ghost" in caplog.text and "lm_head.weight" in caplog.text
    with pytest.raises(ValueError, match=r"privacy\.grad_sample_mode: 'ghost' cannot clip a "
                                         r"trainable parameter shared by two modules"):
        resolve_mode("ghost", model)


def test_ghost_clipping_really_cannot_clip_tied_weights() -> None:
    """Why the rule above exists: Opacus's ghost hooks refuse the tied embedding."""
    from clients.models.causal_lm import target_loss
    from clients.models.factory import build_tokenizer
    from clients.data.prompts import PromptFormat, training_set
    from scenarios.schema import ModelSpec

    spec = ModelSpec(name="tiny-llama", max_length=48)
    rows = [{"text": "a late goal won the match", "text_pair": None, "label": 1}]
    data = training_set(rows, build_tokenizer(spec), PromptFormat("Topic?", ("a", "b")), 48)
    model = tied_llama().train()
    hooks = BookKeepingHooks(model, max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="Parameter tying"):
        target_loss(model, list(data.tensors))
    hooks.cleanup()


def test_ghost_is_in_the_schema_with_its_rule_documented() -> None:
    from pydantic import ValidationError

    field = PrivacySpec.model_fields["grad_sample_mode"]
    assert "'auto': 'hooks' when LoRA adapters train, 'ghost' for full" in field.description
    with pytest.raises(ValidationError, match="grad_sample_mode"):
        PrivacySpec(target_epsilon=1.0, grad_sample_mode="ew")
    assert ghost.ghost_unsupported(build_model(load_scenario(
        ROOT / "scenarios" / "quick.yaml").model, 3, 0, "full")) == []
