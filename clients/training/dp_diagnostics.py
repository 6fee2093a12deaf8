"""How DP-SGD treated a round's gradients, measured on the client: un-noised diagnostics.

Per step t of DP-SGD (Abadi et al. 2016), g_t = (1/b) (S_t + N_t) with the clipped sum
S_t = sum_i clip_C(g_i) and the noise N_t ~ N(0, sigma^2 C^2 I). Two numbers explain
what a private round could learn:
- the clipped fraction: the share of the round's examples with ||g_i|| > C (those whose
  direction survives but whose size is cut to C);
- the noise-to-signal ratio of B's update: the mean over steps of ||N_t|| / ||S_t||,
  restricted to the LoRA B factors when any train (FedSVD and FFA-LoRA train only B),
  else over every trained parameter. Above 1, the step is mostly noise.

Both are computed from the client's data without noise, so they are outside the
(epsilon, delta) guarantee: a client reports them only when the scenario asks
(privacy.report_dp_diagnostics), and scenarios.disclosure marks the run.

The probe wraps the Opacus optimizer's own `add_noise` (called once per step, after the
clipped sum S_t is in p.summed_grad and before the gradient is scaled by 1/b): the
per-sample norms are read from what Opacus already holds (p.grad_sample for the
per-sample modes, p._norm_sample for ghost clipping), and N_t is p.grad - p.summed_grad
right after the noise is added. Nothing in the step changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class DPStepProbe:
    """Wraps `optimizer.add_noise`; `summary()` gives the round's two numbers."""

    optimizer: torch.optim.Optimizer  # an Opacus DPOptimizer (any grad_sample_mode)
    max_grad_norm: float
    measured: list[nn.Parameter]  # the parameters whose noise-to-signal is reported
    clipped: int = 0
    examples: int = 0
    ratios: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        original = self.optimizer.add_noise

        def add_noise_and_measure() -> None:
            norms = per_sample_norms(self.optimizer.params)
            if norms is not None:  # None: an empty Poisson batch (a noise-only step)
                self.clipped += int((norms > self.max_grad_norm).sum())
                self.examples += len(norms)
            signal = torch.sqrt(sum((p.summed_grad.double() ** 2).sum() for p in self.measured))
            original()
            noise = torch.sqrt(sum(((p.grad.double() - p.summed_grad.double()) ** 2).sum()
                                   for p in self.measured))
            if float(signal) > 0:  # an empty batch has no signal to compare with
                self.ratios.append(float(noise / signal))

        self.optimizer.add_noise = add_noise_and_measure

    def summary(self) -> dict[str, float]:
        """{clipped fraction, mean noise-to-signal}; a value is left out when no step
        measured it (every batch of the round empty)."""
        out = {}
        if self.examples:
            out["clipped-fraction"] = self.clipped / self.examples
        if self.ratios:
            out["noise-to-signal"] = sum(self.ratios) / len(self.ratios)
        return out


def per_sample_norms(params: list[nn.Parameter]) -> torch.Tensor | None:
    """||g_i|| over all trained parameters for each example of the step, from what
    Opacus keeps: p.grad_sample (hooks, functorch) or p._norm_sample (ghost clipping);
    None when the step had no examples."""
    squares = []
    for p in params:
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, list):  # accumulated over several backward passes
            sample = torch.cat(sample, dim=0)
        if sample is not None:
            squares.append(sample.reshape(len(sample), -1).double().pow(2).sum(dim=1))
        elif getattr(p, "_norm_sample", None) is not None:
            squares.append(p._norm_sample.double().pow(2))
    if not squares or len(squares[0]) == 0:
        return None
    return torch.stack(squares).sum(dim=0).sqrt()


def measured_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA B factors that train, if any; else every trained parameter."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    b_factors = [p for n, p in trained if ".lora_B." in n]
    return b_factors or [p for _, p in trained]
