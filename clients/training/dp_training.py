"""DP-SGD local training with Opacus: per-sample clipping, Gaussian noise, Poisson batches.

Abadi et al. 2016: g = (1/b) (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)), batches drawn by
Poisson sampling at rate q. Opacus does the arithmetic; this module runs exactly
`steps` noisy steps on a model it does not wrap for good (`wrap_model=False`: the
hooks are removed after the round, so a client can reuse its model), counts empty
Poisson batches as noise-only steps (skipping them would under-count privacy), and
returns the accountant history with the new steps.

Two ways to get the clipped sum sum_i clip_C(g_i) (privacy.grad_sample_mode):
- 'hooks' / 'functorch': materialise every per-sample gradient g_i (B x the trainable
  parameters: for full fine-tuning of MiniLM, 16 x 22.7M floats) and clip each.
- 'ghost': per-sample norms ||g_i|| without any g_i (ghost clipping, Li et al. 2022),
  then the clipped sum from what the one backward pass kept (book-keeping, Bu et al.
  2023): clients.training.ghost_clipping. Opacus's ghost optimizer adds the noise. The same
  step, to float rounding.
'auto' picks per model (`resolve_mode`): hooks when adapters train (their per-sample
gradients are tiny), ghost for full fine-tuning.

Where the randomness comes from is the guarantee: the noise and the Poisson batches are
drawn from generators seeded with fresh OS entropy (`secrets`, 63 bits) for every
client and round, on the parameters' device, so nobody holding the scenario (the
server, in a deployment) can regenerate and subtract them. A seed is accepted only for
debugging (privacy.reproducible_noise_voids_guarantee), which voids the guarantee.
Opacus's own `secure_mode` would add a cryptographic generator and a guard against
floating-point attacks, but needs `torchcsprng`, which has no build for this torch.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from collections.abc import Iterator

import torch
from opacus import PrivacyEngine
from opacus.grad_sample.gsm_base import OPACUS_PARAM_MONKEYPATCH_ATTRS
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.training.dp_diagnostics import DPStepProbe, measured_parameters
from clients.training.ghost_clipping import BookKeepingHooks, ghost_loss, ghost_unsupported
from clients.training.privacy import Step
from clients.training.loop import TrainResult, run_steps, train_loss
from scenarios.schema import PrivacySpec

log = logging.getLogger(__name__)


def dp_train_steps(model: nn.Module, data: TensorDataset, steps: int, batch_size: int,
                   optimizer: torch.optim.Optimizer, spec: PrivacySpec, noise_multiplier: float,
                   history: list[Step], device: torch.device, seed: int | None = None,
                   diagnose: bool = False) -> tuple[TrainResult, list[Step]]:
    """Run `steps` DP-SGD steps; returns the result and the extended accountant history.
    `diagnose`: also measure the clipped fraction and the noise-to-signal ratio
    (clients.training.dp_diagnostics; un-noised, in `result.dp_diagnostics`).

    Noise and Poisson sampling come from generators of their own (never torch's global
    one, which the client seeds for dropout): seeded from OS entropy, or from `seed`
    when given (debugging only: anyone who knows it can remove the noise).
    """
    model.train()  # Opacus refuses eval-mode modules (its hooks skip them)
    mode = resolve_mode(spec.grad_sample_mode, model)
    engine = PrivacyEngine(accountant=spec.accountant)
    # The client's past steps, through the accountant's own (validated) loader.
    engine.accountant.load_state_dict({"history": list(history),
                                       "mechanism": engine.accountant.mechanism()})
    noise_seed, batch_seed = ((seed, seed + 1) if seed is not None
                              else (secrets.randbits(63), secrets.randbits(63)))
    # Ghost mode also returns a criterion wrapper, unused: our losses are not one
    # criterion call (a causal LM averages each example's target tokens), so
    # clients.training.ghost_clipping takes the per-example loss vector itself.
    hooks, dp_optimizer, *_, loader = engine.make_private(
        module=model, optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=batch_size,
                               generator=torch.Generator().manual_seed(batch_seed)),
        noise_multiplier=noise_multiplier, max_grad_norm=spec.max_grad_norm,
        poisson_sampling=True, grad_sample_mode=mode, wrap_model=False,
        noise_generator=device_generator(device).manual_seed(noise_seed),
    )
    if mode == "ghost":  # Opacus's ghost optimizer and loader; our hooks (book-keeping)
        hooks.cleanup()
        hooks = BookKeepingHooks(model, max_grad_norm=spec.max_grad_norm)
    probe = (DPStepProbe(dp_optimizer, spec.max_grad_norm, measured_parameters(model))
             if diagnose else None)
    try:
        result = run_steps(model, forever(loader), steps, dp_optimizer, device,
                           empty_step=noise_only_step,
                           loss_fn=ghost_loss(hooks) if mode == "ghost" else train_loss)
        if probe is not None:
            result = replace(result, dp_diagnostics=probe.summary())
    finally:
        dp_optimizer.zero_grad(set_to_none=True)
        detach_opacus(hooks, model)
    return result, list(engine.accountant.history)


def resolve_mode(mode: str, model: nn.Module) -> str:
    """privacy.grad_sample_mode for this model. 'auto': 'hooks' when LoRA adapters train
    (per-sample gradients as small as the adapters: hooks cost about nothing), else
    'ghost' (full fine-tuning), except where ghost cannot clip
    (clients.training.ghost_clipping.ghost_unsupported: tied trainable weights, ...): 'hooks',
    with the reason logged. 'ghost' asked for there is an error naming the reason."""
    unsupported = ghost_unsupported(model) if mode in ("auto", "ghost") else []
    if mode == "ghost" and unsupported:
        raise ValueError(f"privacy.grad_sample_mode: 'ghost' cannot clip "
                         f"{'; '.join(unsupported)}; use 'hooks' (or 'auto', which falls "
                         "back to it)")
    if mode != "auto":
        return mode
    if any(".lora_" in n for n, p in model.named_parameters() if p.requires_grad):
        return "hooks"
    if unsupported:
        log.warning("privacy.grad_sample_mode 'auto': hooks, not ghost, for %s",
                    "; ".join(unsupported))
        return "hooks"
    return "ghost"


def detach_opacus(hooks, model: nn.Module) -> None:
    """Leave the model as it was before make_private: Opacus's hooks and the attributes
    its hooks and optimizer set on parameters and modules removed, so the client's next
    round (private or not) starts from a plain model."""
    hooks.cleanup()  # hooks; grad_sample, _forward_counter, _norm_sample, ...
    for param in model.parameters():
        for attr in ("summed_grad", *OPACUS_PARAM_MONKEYPATCH_ATTRS):
            if hasattr(param, attr):
                delattr(param, attr)
    for module in model.modules():
        for attr in ("activations", "max_batch_len"):  # left by the hooks (empty)
            if attr in module.__dict__:
                delattr(module, attr)


def device_generator(device: torch.device) -> torch.Generator:
    """A generator on `device` where torch has per-device generators (CUDA: Opacus draws
    the noise on the gradient's device and refuses a CPU generator there), else a CPU
    generator (the CPU; the `meta` device of the device tests, which has none)."""
    return torch.Generator(device=device) if device.type == "cuda" else torch.Generator()


def forever(loader: DataLoader) -> Iterator[list[torch.Tensor]]:
    """Poisson batches, epoch after epoch (each batch is an independent draw)."""
    while True:
        yield from loader


def noise_only_step(dp_optimizer) -> None:
    """An empty Poisson batch: a zero clipped sum, so the step adds only noise and the
    accountant still counts it. Per-sample modes clip p.grad_sample (here (0, *shape));
    ghost's optimizer noises p.grad (here zeros), the sum its two passes would leave."""
    ghost = isinstance(dp_optimizer, DPOptimizerFastGradientClipping)
    for param in dp_optimizer.params:
        if ghost:
            param.grad = torch.zeros_like(param)
            param._norm_sample = None  # the previous step's norms: no examples here
        else:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype,
                                            device=param.device)
    dp_optimizer.step()
