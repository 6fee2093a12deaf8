"""DP-SGD's un-noised diagnostics (clients.training.dp_diagnostics) against one-example-at-a-time
oracles: the clipped fraction from each example's own gradient norm, the noise read off
the step itself (SGD, lr 1, q = 1: the update is -(S + N) / n, so N = -n * update - S,
with S the oracle's clipped sum). Per-sample hooks and ghost clipping. (That a client
reports them only when asked: tests/clients/training/test_dp_noise.py.)"""

from __future__ import annotations

import pytest
import torch

from clients.training.dp_diagnostics import DPStepProbe
from clients.training.dp_training import dp_train_steps
from clients.models.factory import trainable_state
from clients.training.loop import make_optimizer, train_loss
from scenarios.schema import OptimizerSpec, PrivacySpec
from tests.clients.training.test_ghost_clipping import clipped_sum, first, per_example, tiny, tiny_model

CPU = torch.device("cpu")
__all__ = ["tiny"]  # the module fixture, shared with the ghost-clipping tests


@pytest.mark.parametrize("trains, mode", [("lora-b", "hooks"), ("lora-b", "ghost"),
                                          ("full", "ghost")])
def test_the_clipped_fraction_and_noise_to_signal_match_the_oracle(tiny, trains, mode) -> None:
    scenario, data = tiny
    batch, n = first(data.train, 8), 8
    oracle = tiny_model(scenario, trains).train()
    grads, norms = per_example(oracle, train_loss, [[t[i:i + 1] for t in batch.tensors]
                                                    for i in range(n)])
    ordered = sorted(norms)
    clip = (ordered[2] + ordered[3]) / 2  # five of eight clipped, no norm at the threshold
    summed = clipped_sum(grads, norms, clip)
    private = tiny_model(scenario, trains)
    start = trainable_state(private)
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=clip, grad_sample_mode=mode)
    optimizer = make_optimizer(private, OptimizerSpec(name="sgd", lr=1.0))
    result, _ = dp_train_steps(private, batch, 1, n, optimizer, spec, 0.7, [], CPU, seed=3,
                               diagnose=True)
    measured = [k for k in summed if ".lora_B." in k] or list(summed)
    assert (trains == "lora-b") == (len(measured) < len(summed))  # the head is left out
    after = trainable_state(private)
    noise = {k: -n * (after[k] - start[k]) - summed[k] for k in measured}
    ratio = (torch.sqrt(sum(v.pow(2).sum() for v in noise.values()))
             / torch.sqrt(sum(summed[k].pow(2).sum() for k in measured)))
    assert result.dp_diagnostics["clipped-fraction"] == pytest.approx(5 / 8)
    assert result.dp_diagnostics["noise-to-signal"] == pytest.approx(float(ratio), rel=1e-6)
    assert 0.1 < float(ratio) < 1e4  # noise was really there and measured


def test_without_asking_nothing_is_measured(tiny) -> None:
    scenario, data = tiny
    model = tiny_model(scenario, "lora-b")
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=1.0)
    result, _ = dp_train_steps(model, first(data.train, 8), 2, 4,
                               make_optimizer(model, OptimizerSpec(name="sgd", lr=0.1)),
                               spec, 1.0, [], CPU)
    assert result.dp_diagnostics == {}


def test_empty_poisson_batches_count_no_examples(tiny, monkeypatch) -> None:
    """A tiny sampling rate: most batches are empty (noise-only steps). They add no
    examples (ghost clipping's norms of the step before must not be counted again) and
    no ratio (no signal to compare with)."""
    scenario, data = tiny
    probes = []
    summary = DPStepProbe.summary
    monkeypatch.setattr(DPStepProbe, "summary", lambda self: probes.append(self) or summary(self))
    model = tiny_model(scenario, "lora-b")
    spec = PrivacySpec(target_epsilon=1.0, max_grad_norm=1.0, grad_sample_mode="ghost")
    result, _ = dp_train_steps(model, first(data.train, 64), 12, 1,
                               make_optimizer(model, OptimizerSpec(name="sgd", lr=0.1)),
                               spec, 1.0, [], CPU, seed=0, diagnose=True)
    nonempty = len(probes[0].ratios)
    assert 0 < nonempty < 12  # both kinds of step happened
    assert probes[0].examples == result.examples_seen
