"""DP-SGD local training with Opacus: per-sample clipping, Gaussian noise, Poisson batches.

Abadi et al. 2016: g = (1/b) (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)), batches drawn by
Poisson sampling at rate q. Opacus does the arithmetic; this module runs exactly
`steps` noisy steps on a model it does not wrap for good (`wrap_model=False`: the
hooks are removed after the round, so a client can reuse its model), counts empty
Poisson batches as noise-only steps (skipping them would under-count privacy), and
returns the accountant history with the new steps.

Where the randomness comes from is the guarantee: the noise and the Poisson batches are
drawn from generators seeded with fresh OS entropy (`secrets`, 63 bits) for every
client and round, on the parameters' device, so nobody holding the scenario (the
server, in a deployment) can regenerate and subtract them. A seed is accepted only for
debugging (privacy.reproducible_noise_voids_guarantee), which voids the guarantee.
Opacus's own `secure_mode` would add a cryptographic generator and a guard against
floating-point attacks, but needs `torchcsprng`, which has no build for this torch.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.privacy import Step
from clients.training import TrainResult, run_steps
from scenarios.schema import PrivacySpec


def dp_train_steps(model: nn.Module, data: TensorDataset, steps: int, batch_size: int,
                   optimizer: torch.optim.Optimizer, spec: PrivacySpec, noise_multiplier: float,
                   history: list[Step], device: torch.device, seed: int | None = None,
                   ) -> tuple[TrainResult, list[Step]]:
    """Run `steps` DP-SGD steps; returns the result and the extended accountant history.

    Noise and Poisson sampling come from generators of their own (never torch's global
    one, which the client seeds for dropout): seeded from OS entropy, or from `seed`
    when given (debugging only: anyone who knows it can remove the noise).
    """
    model.train()  # Opacus refuses eval-mode modules (its hooks skip them)
    engine = PrivacyEngine(accountant=spec.accountant)
    # The client's past steps, through the accountant's own (validated) loader.
    engine.accountant.load_state_dict({"history": list(history),
                                       "mechanism": engine.accountant.mechanism()})
    noise_seed, batch_seed = ((seed, seed + 1) if seed is not None
                              else (secrets.randbits(63), secrets.randbits(63)))
    hooks, dp_optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=batch_size,
                               generator=torch.Generator().manual_seed(batch_seed)),
        noise_multiplier=noise_multiplier, max_grad_norm=spec.max_grad_norm,
        poisson_sampling=True, grad_sample_mode=spec.grad_sample_mode, wrap_model=False,
        noise_generator=device_generator(device).manual_seed(noise_seed),
    )
    try:
        result = run_steps(model, forever(loader), steps, dp_optimizer, device,
                           empty_step=noise_only_step)
    finally:
        hooks.cleanup()  # the model is the client's for the next round: no hooks left behind
        dp_optimizer.zero_grad(set_to_none=True)
    return result, list(engine.accountant.history)


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
    """An empty Poisson batch: zero per-sample gradients, so the step adds only noise
    and the accountant still counts it."""
    for param in dp_optimizer.params:
        param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)
    dp_optimizer.step()
